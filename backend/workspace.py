"""The job's folder on disk: where each stage's output lives, and job.json,
which records every stage's input hash and state.

Stages write into `<output>.tmp` and are renamed into place only when they
succeed, and job.json is replaced atomically, so a run killed at any moment
leaves finished stages intact and the interrupted stage is simply redone.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from backend.errors import ErrorCode, ReconstructError

JOB_FORMAT = 1
_PARTIAL_MARKER = ".stage-hash"


class Workspace:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self._lock_file = None

    # The layout (see README): one fact, one place.
    @property
    def job_file(self) -> Path: return self.root / "job.json"
    @property
    def summary_file(self) -> Path: return self.root / "summary.json"
    @property
    def features_db(self) -> Path: return self.root / "sparse" / "features.db"
    @property
    def database(self) -> Path: return self.root / "sparse" / "database.db"
    @property
    def model(self) -> Path: return self.root / "sparse" / "model"
    @property
    def undistorted(self) -> Path: return self.root / "undistorted"
    @property
    def stereo(self) -> Path: return self.root / "dense" / "stereo"
    @property
    def fused(self) -> Path: return self.root / "dense" / "fused.ply"
    @property
    def mesh_dir(self) -> Path: return self.root / "mesh"
    @property
    def splats_dir(self) -> Path: return self.root / "splats"
    @property
    def splats_ply(self) -> Path: return self.splats_dir / "splats.ply"
    @property
    def splats_info(self) -> Path: return self.splats_dir / "splats.json"
    @property
    def log_file(self) -> Path: return self.root / "logs" / "worker.log"

    def stage_output(self, stage: str) -> Path:
        return {"features": self.features_db, "matching": self.database, "mapping": self.model,
                "undistort": self.undistorted, "mvs": self.stereo, "fusion": self.fused,
                "mesh": self.mesh_dir, "splats": self.splats_dir}[stage]

    def stage_artifacts(self, stage: str) -> dict[str, str]:
        """The files a finished stage hands on, by name (what the add-on imports)."""
        out = {stage: self.stage_output(stage)}
        if stage == "undistort":
            out["cameras"] = self.undistorted / "sparse"
        elif stage == "fusion":
            out["dense_points"] = self.fused
        elif stage == "mesh":
            out.update(mesh=self.mesh_dir / "mesh.ply", mesh_glb=self.mesh_dir / "mesh.glb")
        elif stage == "splats":
            out["splats_ply"] = self.splats_ply
        return {name: str(path) for name, path in out.items()}

    def open(self) -> "Workspace":
        """Create the folder if needed, check it is writable, and lock it so
        two runs never write the same workspace."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
            self._lock_file = open(self.root / ".lock", "w")
        except OSError as exc:
            raise ReconstructError(ErrorCode.WORKSPACE_UNWRITABLE,
                                   f"Cannot write to the workspace {self.root}: {exc.strerror or exc}.",
                                   "Choose a folder you can write to, on a disk with free space.") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReconstructError(ErrorCode.WORKSPACE_BUSY, f"Another reconstruction is using {self.root}.",
                                   "Wait for it to finish or cancel it, or choose another workspace.") from None
        return self

    def close(self) -> None:
        if self._lock_file:
            self._lock_file.close()
            self._lock_file = None

    def load_job(self) -> dict:
        try:
            job = json.loads(self.job_file.read_text())
            if job.get("format") == JOB_FORMAT:
                return job
        except (OSError, ValueError):
            pass
        return {"format": JOB_FORMAT, "stages": {}}

    def save_job(self, job: dict) -> None:
        write_json_atomic(self.job_file, job)

    def temp_for(self, output: Path) -> Path:
        """A clean temporary path beside `output` for a stage to write into."""
        tmp = output.with_name(output.name + ".tmp")
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
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

    def commit_partial(self, partial: Path, output: Path) -> None:
        remove(partial / _PARTIAL_MARKER)
        self.commit(partial, output)

    @staticmethod
    def commit(tmp: Path, output: Path) -> None:
        """Put a finished stage's output in place of the old one."""
        remove(output)
        os.replace(tmp, output)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def stable_hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
