"""COLMAP's pinhole projection, the reference the Blender cameras are checked against."""
from __future__ import annotations

import numpy as np


def colmap_project(R, t, fx, fy, cx, cy, points):  # points [N, 3] -> pixels [N, 2]
    cam = points @ R.T + t
    return np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], axis=1)


def points_in_view(R, t, W, H, fx, fy, cx, cy, rng, n=50):
    """World points spread over (and a little beyond) the frame at varied depths."""
    px = rng.uniform([-0.2 * W, -0.2 * H], [1.2 * W, 1.2 * H], size=(n, 2))
    depth = rng.uniform(0.5, 20.0, size=n)
    cam = np.stack([(px[:, 0] - cx) / fx * depth, (px[:, 1] - cy) / fy * depth, depth], axis=1)
    return (cam - t) @ R  # R^T (cam - t), row-wise


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    from blender_addon.shared.colmap_io import quaternion_to_matrix

    return quaternion_to_matrix(rng.normal(size=4))
