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


def _pixels(cam, image, points: np.ndarray):
    """Pinhole image coordinates u, v [N] (pixel centres at +0.5), depths z [N] and whether
    each point is in front of the camera, for world `points` [N, 3]."""
    fx, fy, cx, cy = cam.pinhole()
    X = points @ image.R.T + image.t
    z = X[:, 2]
    front = z > 1e-9
    return fx * X[:, 0] / np.where(front, z, 1) + cx, fy * X[:, 1] / np.where(front, z, 1) + cy, z, front


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
        u, v, z, front = _pixels(cam, image, samples)
        u, v = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
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
    bounding-box diagonal ("dense", "mesh"), and the dense points at 0.5% too ("dense_half")."""
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
        report["dense_half"] = dense_scores(points[inside(points)], samples[visible], threshold / 2).as_dict()
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


# -- a facade capture without a true surface: the ground in front of it, and the wall -----------


def _ransac_plane(points: np.ndarray, threshold: float, normal_ok, iterations: int = 2000, seed: int = 0):
    """(unit normal n, offset d with n . p = d, inlier mask) of the plane with the most points
    within `threshold`, among planes whose normal passes `normal_ok`; refined by least squares."""
    rng = np.random.default_rng(seed)
    best, best_count = None, -1
    for _ in range(iterations):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        n = np.cross(b - a, c - a)
        if np.linalg.norm(n) < 1e-12:
            continue
        n /= np.linalg.norm(n)
        if not normal_ok(n):
            continue
        count = int((np.abs(points @ n - n @ a) < threshold).sum())
        if count > best_count:
            best, best_count = (n, float(n @ a)), count
    n, d = best
    inliers = np.abs(points @ n - d) < threshold
    centre = points[inliers].mean(0)
    n = np.linalg.svd(points[inliers] - centre, full_matrices=False)[2][-1]
    n = n if n @ best[0] > 0 else -n
    d = float(n @ centre)
    return n, d, np.abs(points @ n - d) < threshold


def facade_scores(workspaces: list[Path], min_views: int = 2) -> list[dict]:
    """How much of the ground in front of a facade each workspace's dense cloud covers, and how
    flat its wall is, with no true surface to compare against. The workspaces share one sparse
    model (the same cameras; the upright frame, +Z up), so one reference serves them all:

    - the wall: a vertical plane fitted (RANSAC) to the sparse points; the ground: a plane with
      its normal within 20 degrees of up fitted to the lowest points, away from the wall's foot,
      of all the dense clouds together (a street's paving has few sparse points; fitting to
      every run's points favours none of them);
    - the ground in front of the facade's subject: cells (1/300 of the cameras' median distance
      to the wall) of the ground plane, along the wall as far as the subject stands out from it
      (the run of strips around the cameras' middle where the sparse points standing on the
      ground reach a twentieth of that distance from the wall), from the subject's front (per
      strip, the farthest of those points) out to that distance, seen by at least `min_views`
      cameras; a cell is covered when a dense point lies over it within 1/200 of that distance
      of the plane;
    - the wall's accuracy: the median and 90th percentile distance to the wall plane of the dense
      points within 1/50 of the cameras' distance of it (the fountain's relief included, the
      same for every run), as fractions of that distance."""
    from blender_addon.shared.colmap_io import read_model
    from blender_addon.shared.ply_io import read_ply

    model = read_model(Layout(workspaces[0]).model)
    sparse = model.xyz
    clouds = [read_ply(Layout(ws).fused).column("x", "y", "z", dtype=np.float64) for ws in workspaces]
    centres = np.array([im.center for im in model.images.values()])
    up = np.array([0.0, 0.0, 1.0])
    cam_height = float(np.median(centres[:, 2] - np.percentile(sparse[:, 2], 2)))
    wall_n, wall_d, _ = _ransac_plane(sparse, 0.01 * cam_height, lambda n: abs(n @ up) < np.sin(np.radians(10)))
    if np.median(centres @ wall_n - wall_d) < 0:
        wall_n, wall_d = -wall_n, -wall_d
    distance = float(np.median(centres @ wall_n - wall_d))  # cameras to wall
    every = np.concatenate(clouds)
    # Low points away from the wall's foot: a horizontal line of points there fits any plane through it.
    every = every[every @ wall_n - wall_d > distance / 20]
    low = every[every[:, 2] < np.percentile(every[:, 2], 2) + 0.1 * cam_height]
    low = low[np.random.default_rng(0).choice(len(low), min(len(low), 200_000), replace=False)]
    ground_n, ground_d, _ = _ransac_plane(low, distance / 300, lambda n: abs(n @ up) > np.cos(np.radians(20)))
    if ground_n @ up < 0:
        ground_n, ground_d = -ground_n, -ground_d
    height = lambda p: p @ ground_n - ground_d  # noqa: E731
    # Cells on the ground plane between the wall and the cameras: e1 along the wall, e2 toward the cameras.
    e1 = np.cross(ground_n, wall_n)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(ground_n, e1)
    if e2 @ wall_n < 0:
        e2 = -e2
    cell = distance / 300
    origin = ground_n * ground_d
    along = (centres - origin) @ e1
    grid_u = np.arange(along.min() - distance, along.max() + distance, cell)
    grid_v = np.arange(0, distance * 1.2, cell)
    uu, vv = np.meshgrid(grid_u, grid_v, indexing="ij")
    cells = (origin + uu[..., None] * e1 + vv[..., None] * e2).reshape(-1, 3)
    to_wall = cells @ wall_n - wall_d
    # What stands on the ground (the fountain's basin, a building's corner) is not ground: per
    # strip along the wall, the ground starts past the farthest from the wall of the sparse
    # points standing there (a tenth of the camera height up to the camera height).
    standing = sparse[(height(sparse) > 0.1 * cam_height) & (height(sparse) < cam_height)]
    s_along, s_out = (standing - origin) @ e1, standing @ wall_n - wall_d
    front = np.zeros(len(grid_u))
    for k, u in enumerate(grid_u):
        near = np.abs(s_along - u) < distance / 30
        if near.sum() >= 3:
            front[k] = np.percentile(s_out[near], 95)
    # In front of the fountain: along the wall, the run of strips where something stands out from
    # it (by a twentieth of the cameras' distance) around the cameras' middle.
    out = front > distance / 20
    k0 = int(np.argmin(np.abs(grid_u - np.median(along))))
    if not out[k0]:
        k0 = int(np.flatnonzero(out)[np.argmin(np.abs(np.flatnonzero(out) - k0))])
    k1, k2 = k0, k0
    while k1 > 0 and out[k1 - 1]:
        k1 -= 1
    while k2 < len(out) - 1 and out[k2 + 1]:
        k2 += 1
    strips = np.zeros(len(grid_u), bool)
    strips[k1:k2 + 1] = True
    keep = (to_wall > np.repeat(front, len(grid_v)) + 2 * cell) & (to_wall < distance) & np.repeat(strips, len(grid_v))
    seen = np.zeros(len(cells), np.int32)
    for im in model.images.values():
        cam = model.cameras[im.camera_id]
        u, v, _, ok = _pixels(cam, im, cells)
        seen += ok & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    keep &= seen >= min_views
    results = []
    for dense in clouds:
        near_ground = dense[np.abs(height(dense)) < distance / 200]
        iu = np.floor(((near_ground - origin) @ e1 - grid_u[0]) / cell).astype(np.int64)
        iv = np.floor(((near_ground - origin) @ e2 - grid_v[0]) / cell).astype(np.int64)
        inside = (iu >= 0) & (iu < len(grid_u)) & (iv >= 0) & (iv < len(grid_v))
        covered = np.zeros(len(cells), bool)
        covered[iu[inside] * len(grid_v) + iv[inside]] = True
        wall_dist = np.abs(dense @ wall_n - wall_d)
        on_wall = wall_dist[wall_dist < distance / 50]
        results.append({
            "ground_cells": int(keep.sum()), "ground_covered": float(covered[keep].mean()) if keep.any() else 0.0,
            "ground_tilt_deg": float(np.degrees(np.arccos(np.clip(ground_n @ up, -1, 1)))),
            "camera_to_wall": distance, "cell": cell, "wall_points": int(len(on_wall)),
            "wall_median_distance": float(np.median(on_wall) / distance),
            "wall_p90_distance": float(np.percentile(on_wall, 90) / distance), "num_points": int(len(dense))})
    return results
