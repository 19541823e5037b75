"""A Blender object's bounds as the backend's region of interest: an
oriented box in the workspace's frame. That is Blender's world until Set
Scale / Set Ground moves the job's parent empty; then the box, drawn in
Blender's world, is brought into the workspace frame with the inverse of
the parent's matrix (`to_frame`)."""
from __future__ import annotations

import numpy as np


def object_box(obj, to_frame=None) -> dict:
    """{"center", "rotation", "half_size"} of `obj`'s bounding box as it
    stands in the world (its location, rotation and scale apply), expressed
    in the frame `to_frame` (4x4 world -> frame; a similarity) maps into."""
    corners = np.array([tuple(c) for c in obj.bound_box], np.float64)  # [8, 3], local
    lo, hi = corners.min(0), corners.max(0)
    M = np.array(obj.matrix_world, np.float64)
    if to_frame is not None:
        M = np.asarray(to_frame, np.float64) @ M
    axes = M[:3, :3]
    scale = np.linalg.norm(axes, axis=0)
    if np.any(scale < 1e-12) or np.any(hi - lo <= 0) and obj.type != "EMPTY":
        raise ValueError(f"{obj.name!r} has no volume to use as a region of interest")
    if obj.type == "EMPTY":  # an empty's box is its display size
        lo = -np.full(3, obj.empty_display_size)
        hi = -lo
    center = M[:3, :3] @ ((lo + hi) / 2) + M[:3, 3]
    return {"center": center.tolist(), "rotation": (axes / scale).tolist(),
            "half_size": ((hi - lo) / 2 * scale).tolist()}
