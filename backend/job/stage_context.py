"""What a stage's function is given, in the worker process: one object in
place of a long argument list, holding only what the stage declares (its
options, the result of the stage it reads, the outputs of that stage and
those above it) and the ways it reports back."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from blender_addon.shared import protocol
from blender_addon.shared.layout import Layout
from blender_addon.shared.stages import ancestors
from backend.options import JobOptions


@dataclass
class StageContext:
    stage: str
    layout: Layout
    photos_folder: Path
    photo_names: list[str]
    options: JobOptions
    decided: dict
    """What the job decided for this stage from the photos (matcher, SIFT octave, camera sharing)."""
    input: dict
    """The recorded result of the stage this one reads ({} for the first)."""
    out: Path
    """Where the stage writes: `<output>.tmp` or `<output>.partial` (see Stage.kind)."""
    send: Callable[[dict], None] = field(default=lambda message: None, repr=False)
    """How messages reach the job runner (the worker's pipe; protocol.py's worker messages)."""

    def path(self, stage: str) -> Path:
        """The finished output of `stage`, which must be one this stage reads."""
        if stage not in ancestors(self.stage):
            raise KeyError(f"the {self.stage} stage does not read the {stage} stage's output")
        return self.layout.output(stage)

    def progress(self, fraction: float, message: str) -> None:
        self.send(protocol.message(protocol.PROGRESS, fraction=float(fraction), message=message))

    def warn(self, code: str, message: str, details: dict | None = None) -> None:
        self.send(protocol.message(protocol.WARNING, code=code, message=message, details=details or {}))

    def log(self, message: str) -> None:
        self.send(protocol.message(protocol.LOG, message=message))

    def poll_rows(self, database: Path, table: str, total: int, what: str) -> None:
        """Ask the job runner to report progress by counting rows of `table`
        (pycolmap's extraction and matching have no progress callback)."""
        self.send(protocol.message(protocol.POLL, database=str(database), table=table, total=int(total),
                                   what=what))

    def to_plain(self) -> dict:
        return {"stage": self.stage, "workspace": str(self.layout.root), "photos_folder": str(self.photos_folder),
                "photo_names": list(self.photo_names), "options": self.options.to_dict(), "decided": self.decided,
                "input": self.input, "out": str(self.out)}

    @classmethod
    def from_plain(cls, data: dict, send: Callable[[dict], None]) -> "StageContext":
        return cls(data["stage"], Layout(data["workspace"]), Path(data["photos_folder"]), data["photo_names"],
                   JobOptions.from_dict(data["options"]), data["decided"], data["input"], Path(data["out"]), send)
