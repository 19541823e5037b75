"""Pose accuracy against ground truth, after a similarity alignment.

Reconstructions have an arbitrary position, rotation and scale, so the
estimated camera centres are aligned to the ground truth's with Umeyama's
least-squares similarity before any error is measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Similarity:
    scale: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]

    def apply(self, points: np.ndarray) -> np.ndarray:  # [..., 3]
        return self.scale * points @ self.rotation.T + self.translation


def umeyama(src: np.ndarray, dst: np.ndarray) -> Similarity:
    """Similarity that maps src [N, 3] onto dst [N, 3] in least squares."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign) / (s ** 2).sum(1).mean())
    return Similarity(scale, rotation, mu_d - scale * rotation @ mu_s)


@dataclass
class PoseErrors:
    num_compared: int
    median_centre_error: float  # in ground-truth units
    max_centre_error: float
    relative_median_centre_error: float  # / mean camera-to-centroid distance
    median_rotation_error_deg: float
    max_rotation_error_deg: float
    scene_radius: float  # mean camera-to-centroid distance (ground truth)

    def as_dict(self) -> dict:
        return asdict(self)


def _poses(model_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (camera centre [3], camera-to-world rotation [3, 3])."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    poses = {}
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        cam_from_world = image.cam_from_world()
        rotation = np.asarray(cam_from_world.rotation.matrix())
        poses[image.name] = (np.asarray(image.projection_center()), rotation.T)
    return poses


def compare_poses(estimated_model: Path, ground_truth_model: Path) -> PoseErrors:
    est, gt = _poses(Path(estimated_model)), _poses(Path(ground_truth_model))
    names = sorted(set(est) & set(gt))
    if len(names) < 3:
        raise ValueError(f"only {len(names)} images in common with the ground truth; need 3 to align")
    src = np.stack([est[n][0] for n in names])
    dst = np.stack([gt[n][0] for n in names])
    sim = umeyama(src, dst)
    centre_errors = np.linalg.norm(sim.apply(src) - dst, axis=1)
    rotation_errors = []
    for n in names:
        relative = gt[n][1].T @ sim.rotation @ est[n][1]
        cos = np.clip((np.trace(relative) - 1) / 2, -1.0, 1.0)
        rotation_errors.append(np.degrees(np.arccos(cos)))
    radius = float(np.linalg.norm(dst - dst.mean(0), axis=1).mean())
    return PoseErrors(len(names), float(np.median(centre_errors)), float(centre_errors.max()),
                      float(np.median(centre_errors) / radius), float(np.median(rotation_errors)),
                      float(np.max(rotation_errors)), radius)
