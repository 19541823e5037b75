"""Pose accuracy against ground truth, after a similarity alignment.

Reconstructions have an arbitrary position, rotation and scale, so the
estimated camera centres are aligned to the ground truth's with Umeyama's
least-squares similarity before any error is measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from blender_addon.shared.layout import Layout


@dataclass
class Similarity:
    scale: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]

    def apply(self, points: np.ndarray) -> np.ndarray:  # [..., 3]
        return self.scale * points @ self.rotation.T + self.translation


def up_error_deg(sim: Similarity, truth_up=(0.0, 0.0, 1.0)) -> float:
    """Degrees between a model's +Z, carried into the truth by `sim` (model to
    truth), and the truth's up: how upright the model's world frame is."""
    cos = float(np.clip(sim.rotation[:, 2] @ np.asarray(truth_up, float), -1.0, 1.0))
    return float(np.degrees(np.arccos(cos)))


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


def align_to_ground_truth(estimated_model: Path, ground_truth_model: Path) -> Similarity:
    """The similarity that maps the estimated model's world onto the ground
    truth's, from the camera centres the two share."""
    return _align(_poses(Path(estimated_model)), _poses(Path(ground_truth_model)))[0]


def _align(est: dict, gt: dict) -> tuple[Similarity, list[str], np.ndarray, np.ndarray]:
    names = sorted(set(est) & set(gt))
    if len(names) < 3:
        raise ValueError(f"only {len(names)} images in common with the ground truth; need 3 to align")
    src = np.stack([est[n][0] for n in names])
    dst = np.stack([gt[n][0] for n in names])
    return umeyama(src, dst), names, src, dst


def compare_poses(estimated_model: Path, ground_truth_model: Path) -> PoseErrors:
    est, gt = _poses(Path(estimated_model)), _poses(Path(ground_truth_model))
    sim, names, src, dst = _align(est, gt)
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


# -- dense geometry ------------------------------------------------------------
# Distances to a surface are measured to dense samples of it (a k-d tree over
# them), which overstates each distance by at most half the sample spacing:
# `sample_surface` is called with spacing well under the thresholds used.


def sample_surface(vertices: np.ndarray, faces: np.ndarray, spacing: float, seed: int = 0) -> np.ndarray:
    """Points [N, 3] spread uniformly over a triangle mesh, about `spacing` apart."""
    tri = vertices[faces]  # [F, 3, 3]
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    n = int(areas.sum() / spacing ** 2)
    rng = np.random.default_rng(seed)
    which = rng.choice(len(faces), size=n, p=areas / areas.sum())
    a, b = rng.random((2, n, 1))
    flip = a + b > 1
    a, b = np.where(flip, 1 - a, a), np.where(flip, 1 - b, b)
    t = tri[which]
    return t[:, 0] + a * (t[:, 1] - t[:, 0]) + b * (t[:, 2] - t[:, 0])


def visible_in(samples: np.ndarray, model_dir: Path, min_views: int = 2, tolerance: float = 0.005) -> np.ndarray:
    """[N] bool: which surface samples at least `min_views` cameras of a COLMAP
    model see unoccluded. A z-buffer of the samples themselves per camera: a
    sample is seen where it lies within `tolerance` (relative depth) of the
    nearest sample in its pixel. Stereo cannot reconstruct what fewer than two
    cameras see, so completeness is measured over these."""
    from blender_addon.shared.colmap_io import read_model

    model = read_model(Path(model_dir))
    seen = np.zeros(len(samples), np.int32)
    for image in model.images.values():
        cam = model.cameras[image.camera_id]
        fx, fy, cx, cy = cam.pinhole()
        X = samples @ image.R.T + image.t
        z = X[:, 2]
        front = z > 1e-9
        u = np.floor(fx * X[:, 0] / np.where(front, z, 1) + cx).astype(np.int64)
        v = np.floor(fy * X[:, 1] / np.where(front, z, 1) + cy).astype(np.int64)
        ok = front & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        pixel = v * cam.width + u
        nearest = np.full(cam.width * cam.height, np.inf)
        np.minimum.at(nearest, pixel[ok], z[ok])
        seen += ok & (z <= nearest[np.where(ok, pixel, 0)] * (1 + tolerance))
    return seen >= min_views


@dataclass
class DenseScores:
    threshold: float
    accuracy: float  # fraction of reconstructed points within threshold of the truth (precision)
    completeness: float  # fraction of the visible true surface within threshold of a point (recall)
    f_score: float
    mean_distance: float  # reconstructed points to the truth
    median_distance: float
    num_points: int

    def as_dict(self) -> dict:
        return asdict(self)


def dense_scores(points: np.ndarray, truth: np.ndarray, threshold: float) -> DenseScores:
    """Accuracy, completeness and their F-score at `threshold` of `points`
    against surface samples `truth` (both [N, 3], same coordinates)."""
    from scipy.spatial import cKDTree

    to_truth = cKDTree(truth).query(points, workers=-1)[0]
    to_points = cKDTree(points).query(truth, workers=-1)[0]
    precision = float(np.mean(to_truth < threshold))
    recall = float(np.mean(to_points < threshold))
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return DenseScores(threshold, precision, recall, f, float(to_truth.mean()), float(np.median(to_truth)),
                       len(points))


def evaluate_synthetic(workspace: Path, scene_dir: Path, margin: float = 0.25) -> dict:
    """Dense points and mesh of a workspace against a synthetic scene's true
    surface (backend/tools/synthetic_scene.py), in the scene's units after aligning
    the cameras. Scored inside the object's bounding box grown by `margin` of
    its size (the object and the ground around it), at 1% of the object's
    bounding-box diagonal."""
    import json

    from scipy.spatial import cKDTree

    from blender_addon.shared.ply_io import read_ply

    workspace, scene_dir = Path(workspace), Path(scene_dir)
    info = json.loads((scene_dir / "scene.json").read_text())
    lo, hi = np.array(info["object_bbox"]["min"]), np.array(info["object_bbox"]["max"])
    diagonal = float(info["object_bbox"]["diagonal"])
    lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
    inside = lambda p: np.all((p >= lo) & (p <= hi), axis=1)  # noqa: E731
    layout = Layout(workspace)
    sim = align_to_ground_truth(layout.model, scene_dir / "gt_colmap")
    truth = read_ply(scene_dir / "gt_scene.ply")
    truth_v = truth.column("x", "y", "z", dtype=np.float64)
    samples = sample_surface(truth_v, truth.faces, diagonal / 1000)  # spacing 0.1% of the diagonal
    samples = samples[inside(samples)]
    visible = visible_in(samples, scene_dir / "gt_colmap")
    threshold = 0.01 * diagonal
    report = {"diagonal": diagonal, "threshold": threshold, "region": {"min": lo.tolist(), "max": hi.tolist()},
              "visible_fraction": float(visible.mean())}
    fused = layout.fused
    if fused.exists():
        points = sim.apply(read_ply(fused).column("x", "y", "z", dtype=np.float64))
        report["dense"] = dense_scores(points[inside(points)], samples[visible], threshold).as_dict()
    mesh_ply = layout.mesh_ply
    if mesh_ply.exists():
        mesh = read_ply(mesh_ply)
        on_mesh = sample_surface(sim.apply(mesh.column("x", "y", "z", dtype=np.float64)), mesh.faces,
                                 diagonal / 500)
        # The whole mesh against the whole true scene (object and ground): nothing may float.
        everywhere = sample_surface(truth_v, truth.faces, diagonal / 500, seed=1)
        d_all = cKDTree(everywhere).query(on_mesh, workers=-1)[0]
        region = inside(on_mesh)
        d_region = cKDTree(samples).query(on_mesh[region], workers=-1)[0]
        report["mesh"] = {"mean_distance": float(d_region.mean()),
                          "mean_distance_fraction": float(d_region.mean() / diagonal),
                          "p99_distance_fraction": float(np.percentile(d_region, 99) / diagonal),
                          "max_distance_fraction": float(d_all.max() / diagonal),
                          "faces": int(len(mesh.faces))}
    return report
