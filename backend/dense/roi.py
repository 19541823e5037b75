"""The region of interest: an oriented box that limits depth ranges, fusion
and meshing. World coordinates are the model's, which are Blender's too (the
add-on sends any object's bounds as such a box)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.errors import ErrorCode, ReconstructError


@dataclass
class Box:
    center: np.ndarray  # [3]
    rotation: np.ndarray  # [3, 3]; columns are the box's axes in world coordinates
    half_size: np.ndarray  # [3], along those axes

    @classmethod
    def from_dict(cls, data: dict) -> "Box":
        try:
            center = np.asarray(data["center"], np.float64).reshape(3)
            rotation = np.asarray(data.get("rotation", np.eye(3)), np.float64).reshape(3, 3)
            half = np.asarray(data["half_size"], np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"The region of interest is not a box: {exc}.",
                                   'Give {"center": [x, y, z], "half_size": [hx, hy, hz]} and optionally '
                                   '"rotation" (3 x 3, columns are the box axes).') from None
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(rotation)) and np.all(np.isfinite(half))):
            raise ReconstructError(ErrorCode.BAD_OPTIONS, "The region of interest is not a finite box "
                                   f"(centre {center.tolist()}, half sizes {half.tolist()}).",
                                   "Give finite numbers for its centre, half sizes and rotation.")
        if not np.all(half > 0) or abs(np.linalg.det(rotation)) < 1e-9:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, "The region of interest has no volume.",
                                   "Its half sizes must be positive numbers.")
        # Orthonormalise: an object's matrix may carry scale or shear.
        u, _, vt = np.linalg.svd(rotation)
        return cls(center, u @ vt, half)

    def as_dict(self) -> dict:
        return {"center": self.center.tolist(), "rotation": self.rotation.tolist(),
                "half_size": self.half_size.tolist()}

    @classmethod
    def around(cls, points: np.ndarray, margin: float = 0.1, percentile: float = 1.0) -> "Box":
        """Axis-aligned box around the bulk of `points` [N, 3]: per-axis
        percentiles (a few stray sparse points do not inflate it), grown by
        `margin` of its size on every side."""
        lo, hi = np.percentile(points, [percentile, 100 - percentile], axis=0)
        size = np.maximum(hi - lo, 1e-6)
        return cls((lo + hi) / 2, np.eye(3), size / 2 + margin * size)

    def contains(self, points: np.ndarray) -> np.ndarray:  # [N, 3] -> [N] bool
        local = (np.asarray(points, np.float64) - self.center) @ self.rotation
        return np.all(np.abs(local) <= self.half_size, axis=1)

    def corners(self) -> np.ndarray:  # [8, 3]
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
        return self.center + (signs * self.half_size) @ self.rotation.T

    @property
    def diagonal(self) -> float:
        return float(2 * np.linalg.norm(self.half_size))


SURROUND_DEG = 180.0
"""Cameras whose directions from the subject leave no gap wider than this (seen from above)
surround it: an object capture."""


def capture_kind(centres: np.ndarray, axes: np.ndarray, up=(0.0, 0.0, 1.0)) -> tuple[str, dict]:
    """"object" when the cameras (centres [N, 3], optical axes [N, 3]) look at one point from
    all around it, else "scene" (a facade, a room, a street: cameras on one side of what they
    see, inside it or along it). The model is upright (+Z up) after the sfm stage."""
    from backend.sfm.frame import convergence_point

    if len(centres) < 3:
        return "scene", {"reason": "fewer than 3 cameras"}
    point, info = convergence_point(centres, axes)
    if point is None:
        return "scene", {"reason": "the cameras' optical axes do not meet at a subject", **info}
    up = np.asarray(up, np.float64)
    flat = (centres - point) - np.outer((centres - point) @ up, up)
    e1 = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up, e1)
    azimuth = np.sort(np.degrees(np.arctan2(flat @ e2, flat @ e1)))
    gaps = np.diff(np.concatenate([azimuth, azimuth[:1] + 360.0]))
    gap = float(gaps.max())
    info = {**info, "subject": point.tolist(), "largest_gap_deg": gap}
    if gap > SURROUND_DEG:
        return "scene", {"reason": f"the cameras see the subject from one side (a gap of {gap:.0f} degrees)", **info}
    return "object", {"reason": f"the cameras surround the subject (no gap wider than {gap:.0f} degrees)", **info}


def automatic_region(points: np.ndarray, centres: np.ndarray, axes: np.ndarray) -> tuple[Box, dict]:
    """The region dense stereo reconstructs when the user gives none, and why:

    - an object capture: the bulk of the sparse points (per-axis 1st-99th percentiles, grown
      by a tenth), so the backdrop far behind the subject stays out;
    - a scene capture: that box stretched to take in the cameras too, so the ground they stand
      on and walk along, seen at the foot of every photo, stays in (the ground has few sparse
      points: SIFT finds little on paving at a grazing angle)."""
    kind, info = capture_kind(centres, axes)
    box = Box.around(points)
    if kind == "scene":
        lo = np.minimum(box.center - box.half_size, centres.min(0))
        hi = np.maximum(box.center + box.half_size, centres.max(0))
        box = Box((lo + hi) / 2, np.eye(3), (hi - lo) / 2)
    return box, {"kind": kind, **info}
