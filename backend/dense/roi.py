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
