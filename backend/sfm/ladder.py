"""Registration: photos and verified matches to one calibrated model.

The first attempt is COLMAP's incremental mapper with its defaults. When it
leaves photos out, or its focal drifts far from the EXIF prior, the ladder
tries other settings in turn and keeps the attempt with the most photos that
passes the sanity checks. (Skeleton: one attempt; the ladder is being built.)
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pycolmap

from backend.options import SfmOptions

Progress = Callable[[float, str], None]
Log = Callable[[str], None]


@dataclass
class Attempt:
    """One way of registering the photos, with its figures and the verdict."""
    name: str
    """Machine name (summary.json), e.g. "incremental", "exif_focal"."""
    label: str
    """What users read: "EXIF focal held"."""
    registered: int = 0
    num_models: int = 0
    seconds: float = 0.0
    focal_ratio: float | None = None
    """Estimated focal / EXIF prior focal (None without an EXIF prior)."""
    mean_reprojection_error: float | None = None
    mean_track_length: float | None = None
    failed_checks: list[str] = field(default_factory=list)
    """Sanity checks the model failed, in words; a model that fails any is not kept."""
    kept: bool = False
    verdict: str = ""
    """Why it was kept or dropped, in words."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Registration:
    model: "pycolmap.Reconstruction | None"
    """The kept model (None: no attempt produced one)."""
    attempts: list[Attempt]
    num_models: int = 0
    """Models (fragments) the kept attempt produced."""

    @property
    def kept(self) -> Attempt | None:
        return next((a for a in self.attempts if a.kept), None)

    def summary_line(self, total: int) -> str:
        """"tried 3 ways; kept: EXIF focal held, 29/29" (the sidebar's and terminal's line)."""
        kept = self.kept
        what = f"kept: {kept.label}, {kept.registered}/{total}" if kept else "none kept"
        return f"tried {len(self.attempts)} way{'s' if len(self.attempts) != 1 else ''}; {what}"


def register(database: Path, image_dir: Path, scratch: Path, opts: SfmOptions, num_images: int,
             progress: Progress, log: Log) -> Registration:
    """Run the attempts `opts.mapper` asks for, in `scratch` (removed after)."""
    attempt = Attempt("global" if opts.mapper == "global" else "incremental",
                      "global mapper" if opts.mapper == "global" else "incremental, COLMAP defaults")
    started = time.perf_counter()
    models = _map(database, image_dir, scratch, opts, num_images, progress, global_mapper=opts.mapper == "global")
    attempt.seconds = round(time.perf_counter() - started, 3)
    attempt.num_models = len(models)
    best = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    if best is not None:
        attempt.registered = best.num_reg_images()
        attempt.mean_reprojection_error = float(best.compute_mean_reprojection_error())
        attempt.kept, attempt.verdict = True, "the only attempt"
    shutil.rmtree(scratch, ignore_errors=True)
    return Registration(best, [attempt], len(models))


def _map(database: Path, image_dir: Path, scratch: Path, opts: SfmOptions, num_images: int, progress: Progress,
         global_mapper: bool) -> dict:
    scratch.mkdir(parents=True, exist_ok=True)
    if global_mapper:
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = opts.num_threads
        progress(0.0, "global mapping")
        return pycolmap.global_mapping(database, image_dir, scratch, options)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = opts.num_threads
    # Counted per model: the mapper starts a new model (another initial
    # pair) when the photos fall apart, and a count over all of them
    # read "registered 48 of 16 photos".
    count = {"models": 0, "placed": 0}

    def on_initial_pair() -> None:
        count["models"] += 1
        count["placed"] = 2
        progress(2 / max(2, num_images), "initial pair" if count["models"] == 1 else
                 f"initial pair of model {count['models']}")

    def on_image() -> None:
        count["placed"] = min(num_images, count["placed"] + 1)
        model = f"model {count['models']}: " if count["models"] > 1 else ""
        progress(count["placed"] / max(1, num_images), f"{model}registered {count['placed']} of {num_images} photos")

    return pycolmap.incremental_mapping(database, image_dir, scratch, options,
                                        initial_image_pair_callback=on_initial_pair,
                                        next_image_callback=on_image)
