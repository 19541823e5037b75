"""The world frame a model is put into after registration: +Z up, the
subject's centre on the ground at the origin, metres. (Skeleton: identity; the
estimation is being built.)"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap


@dataclass
class WorldFrame:
    """world = scale * rotation @ colmap + translation."""
    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    info: dict = field(default_factory=dict)
    """How each part was found, in plain data (frame.json, summary.json): up,
    ground plane, origin, scale method and its assumption, GPS's ENU origin."""

    def sim3(self) -> "pycolmap.Sim3d":
        return pycolmap.Sim3d(float(self.scale), pycolmap.Rotation3d(np.asarray(self.rotation, float)),
                              np.asarray(self.translation, float))

    def matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3] = self.scale * np.asarray(self.rotation, float)
        M[:3, 3] = self.translation
        return M

    def as_dict(self) -> dict:
        return {"colmap_to_world": self.matrix().tolist(), "scale": float(self.scale), **self.info}


def identity(reason: str) -> WorldFrame:
    return WorldFrame(info={"method": "colmap", "reason": reason})


def world_frame(rec: "pycolmap.Reconstruction", image_dir: Path, names: list[str]) -> WorldFrame:
    """The frame for `rec` (in COLMAP's frame), from its cameras, its points and
    the photos' EXIF GPS."""
    return identity("not estimated yet")
