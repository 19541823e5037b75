"""The job's folder on disk: where each stage's output lives, and job.json,
which records what the workspace was made for and every stage's input hash
and state.

A workspace belongs to one job. `open` refuses a folder that is neither empty
nor a workspace of ours (job.json says who made it), so pointing a run at a
COLMAP project or a home folder changes nothing there; and a workspace made
for other photos is only reused when the caller says to start over, which
removes our own outputs and nothing else.

Stages write into `<output>.tmp` and are moved into place only when they
succeed (the old output is moved aside first and removed only once the new
one is in place), and job.json is replaced atomically, so a run killed at any
moment leaves finished stages intact and the interrupted stage is simply redone.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from blender_addon.shared.layout import ATLAS_PNG, MODEL_FILES, Layout
from blender_addon.shared.stages import NAMES
from backend.errors import ErrorCode, ReconstructError, file_error

JOB_FORMAT = 1
MADE_BY = "blender-reconstruct"
"""job.json's "made_by": the mark of a workspace of ours."""
_PARTIAL_MARKER = ".stage-hash"
# Siblings of a stage's output that the workspace itself creates.
_SIBLINGS = (".tmp", ".tmp-wal", ".tmp-shm", ".tmp.models", "-wal", "-shm", ".partial", ".old")
# Files an operating system drops into any folder; they do not make it someone else's.
_OS_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini", ".localized"}


class Workspace(Layout):
    """A job's folder: its layout (blender_addon/shared/layout.py) plus the rules for
    owning, locking and writing it."""

    def __init__(self, root: str | os.PathLike):
        super().__init__(Path(root).expanduser().resolve())
        self._lock_file = None

    def own_paths(self) -> list[Path]:
        """Every path this workspace may create: all that `start_over` removes."""
        outputs = [self.stage_output(stage) for stage in NAMES] + [self.previews_dir, self.upright_photos]
        return ([p.with_name(p.name + suffix) for p in outputs for suffix in ("", *_SIBLINGS)]
                + [self.summary_file, self.job_file, self.adjustment_file,
                   self.adjustment_file.with_name(self.adjustment_file.name + ".tmp"), self.job_file.with_name("job.json.tmp"),
                   self.summary_file.with_name("summary.json.tmp")])

    def stage_output(self, stage: str) -> Path:
        return self.output(stage)

    def stage_complete(self, stage: str) -> bool:
        """Whether a finished stage's files are all still there (a file deleted
        by hand makes the stage run again instead of failing downstream)."""
        out = self.stage_output(stage)
        required = {"mapping": [out / name for name in MODEL_FILES],
                    "undistort": [self.undistorted_model / name for name in MODEL_FILES] + [self.undistorted_images],
                    "mesh": [self.mesh_ply, self.mesh_glb],
                    "texture": [self.textured_obj, self.textured_glb, self.texture_dir / ATLAS_PNG, self.texture_info],
                    "splats": [self.splats_ply]}.get(stage, [out])
        return all(path.exists() for path in required)

    def stage_artifacts(self, stage: str) -> dict[str, str]:
        """The files a finished stage hands on, by name (what the add-on imports)."""
        out = {stage: self.stage_output(stage)}
        if stage == "undistort":
            out.update(cameras=self.undistorted_model, camera_photos=self.undistorted_images, region=self.region)
        elif stage == "fusion":
            out["dense_points"] = self.fused
        elif stage == "mesh":
            out.update(mesh=self.mesh_ply, mesh_glb=self.mesh_glb)
        elif stage == "texture":
            out.update(textured_obj=self.textured_obj, textured_glb=self.textured_glb)
        elif stage == "splats":
            out["splats_ply"] = self.splats_ply
        return {name: str(path) for name, path in out.items()}

    def check_ours(self) -> None:
        """Refuse a folder that is not empty and not a workspace of ours,
        before anything is written there."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise ReconstructError(ErrorCode.WORKSPACE_NOT_OURS, f"The workspace {self.root} is a file, not a folder.",
                                   "Choose a folder for the results (it is created if needed).")
        try:
            entries = sorted(e.name for e in os.scandir(self.root) if e.name not in _OS_LITTER)
        except OSError as exc:
            raise file_error(exc, "opening the workspace") from None
        # What an early failure leaves (the lock, the worker's log) before job.json exists.
        if set(entries) <= {self.lock_file.name, self.log_file.parent.name, ".write-test"}:
            return
        if self.job_file.name not in entries:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            raise ReconstructError(
                ErrorCode.WORKSPACE_NOT_OURS,
                f"The folder {self.root} already holds files that Reconstruct did not make ({shown}); "
                "nothing there was changed.",
                "Choose an empty folder or a new folder name for the workspace.", {"entries": entries[:50]})
        if self.read_job() is None:
            raise ReconstructError(
                ErrorCode.WORKSPACE_NOT_OURS,
                f"{self.job_file} is not a Reconstruct job file, or it is damaged; nothing in {self.root} was changed.",
                "Choose another workspace folder. If the folder is an old workspace you no longer need, delete it.")

    def open(self) -> "Workspace":
        """Check the folder is ours (or empty), create it if needed, check it
        is writable, and lock it so two runs never write the same workspace."""
        self.check_ours()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
            self._lock_file = open(self.lock_file, "w")
        except OSError as exc:
            raise ReconstructError(ErrorCode.WORKSPACE_UNWRITABLE,
                                   f"Cannot write to the workspace {self.root}: {exc.strerror or exc}.",
                                   "Choose a folder you can write to, on a disk with free space.") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReconstructError(ErrorCode.WORKSPACE_BUSY, f"Another reconstruction is using {self.root}.",
                                   "Wait for it to finish or cancel it, or choose another workspace.") from None
        if not self.job_file.exists():
            self.save_job(self.load_job())  # claim the folder at once: ours from now on, whatever fails next
        return self

    def start_over(self) -> None:
        """Remove every output this workspace made (and only those)."""
        for path in self.own_paths():
            remove(path)

    def close(self) -> None:
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None

    def read_job(self) -> dict | None:
        """job.json if it is ours and well formed; None otherwise."""
        try:
            job = json.loads(self.job_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        if not (isinstance(job, dict) and job.get("format") == JOB_FORMAT and isinstance(job.get("stages"), dict)
                and all(isinstance(r, dict) for r in job["stages"].values())
                and job.get("made_by", MADE_BY) == MADE_BY):
            return None
        return job

    def load_job(self) -> dict:
        return self.read_job() or {"format": JOB_FORMAT, "made_by": MADE_BY, "stages": {}}

    def save_job(self, job: dict) -> None:
        job["made_by"] = MADE_BY
        try:
            write_json_atomic(self.job_file, job)
        except OSError as exc:
            remove_quietly(self.job_file.with_name(self.job_file.name + ".tmp"))
            raise file_error(exc, "saving the job's state (job.json)") from None

    def temp_for(self, output: Path) -> Path:
        """A clean temporary path beside `output` for a stage to write into."""
        tmp = output.with_name(output.name + ".tmp")
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm"),
                         output.with_name(output.name + ".old")):
            remove(leftover)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        return tmp

    def partial_for(self, output: Path, digest: str) -> Path:
        """A folder beside `output` that keeps its contents across runs with
        the same input hash `digest` (finished parts of a cancelled stage),
        and is emptied for any other."""
        partial = output.with_name(output.name + ".partial")
        marker = partial / _PARTIAL_MARKER
        if partial.exists() and not (marker.is_file() and marker.read_text() == digest):
            remove(partial)
        partial.mkdir(parents=True, exist_ok=True)
        marker.write_text(digest)
        return partial

    @staticmethod
    def discard_partial(output: Path) -> None:
        remove(output.with_name(output.name + ".partial"))

    @staticmethod
    def discard_temp(output: Path) -> None:
        """Remove a failed stage's temporary output (a partial one is kept: it
        holds finished work the next run resumes from)."""
        for suffix in (".tmp", ".tmp-wal", ".tmp-shm", ".tmp.models"):
            remove_quietly(output.with_name(output.name + suffix))

    def commit_partial(self, partial: Path, output: Path) -> None:
        remove(partial / _PARTIAL_MARKER)
        self.commit(partial, output)

    @staticmethod
    def commit(tmp: Path, output: Path) -> None:
        """Put a finished stage's output in place of the old one. A file is
        replaced atomically; a folder cannot be, so the old one is moved aside
        first and removed only once the new one is in place."""
        if output.is_dir() and not output.is_symlink():
            old = output.with_name(output.name + ".old")
            remove(old)
            os.replace(output, old)
            os.replace(tmp, output)
            remove(old)
        else:
            os.replace(tmp, output)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_quietly(path: Path) -> None:
    """Clean up after a failure without hiding the failure itself."""
    try:
        remove(path)
    except OSError:
        pass


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def stable_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
