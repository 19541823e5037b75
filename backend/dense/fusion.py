"""Fusion: depth maps to one dense point cloud with colors and normals.

Our own rather than pycolmap's `stereo_fusion`: the geometric consistency
check needs every depth map side by side anyway, and done per image with
numpy it fuses the synthetic scene's 24 maps in seconds, where COLMAP's
fusion walks pixel by pixel in one thread and would need our maps rewritten
with its PatchMatch configuration files.

For each reference pixel with a depth, every neighbouring view (its source
views, and the views that chose it as a source) checks it: the 3D point is
projected into the neighbour, the neighbour's own depth there is lifted back
to 3D and projected into the reference. The neighbour agrees when that round
trip lands within `MAX_REPROJECTION` px and `MAX_DEPTH_DIFF` relative depth.
A pixel that enough neighbours agree with becomes one point: the mean of its
and the agreeing neighbours' 3D points, colors and normals. The neighbours'
pixels it used are marked, so the same surface patch is not emitted again
when those views take their turn as the reference.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from backend.errors import ErrorCode, ReconstructError
from backend.dense.scene import View, load_rgb, load_scene, map_paths, read_colmap_array
from backend.job.device import memory_peak
from backend.options import DenseOptions
from backend.dense.roi import Box
from blender_addon.shared.ply_io import write_ply

if TYPE_CHECKING:
    from backend.job.stage_context import StageContext

MAX_REPROJECTION = 1.0  # px
MAX_DEPTH_DIFF = 0.01  # relative

Progress = Callable[[float, str], None]


def _lift(view: View, depth: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """World points [N, 3] of pixel centres `pixels` [N, 2] (x, y) at `depth` [N]."""
    rays = np.concatenate([pixels + 0.5, np.ones((len(pixels), 1))], 1) @ np.linalg.inv(view.K).T
    return (rays * depth[:, None] - view.t) @ view.R


def _project(view: View, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates [N, 2] (COLMAP: pixel centres at +0.5) and depths [N]."""
    cam = X @ view.R.T + view.t
    z = cam[:, 2]
    p = cam @ view.K.T
    return p[:, :2] / np.where(np.abs(z) > 1e-12, z, 1e-12)[:, None], z


def fuse(undistorted: Path, stereo: Path, out_ply: Path, opts: DenseOptions, progress: Progress) -> dict:
    started = time.perf_counter()
    config = json.loads((stereo / "mvs.json").read_text())
    roi = Box.from_dict(config["roi"])
    scene = load_scene(undistorted, opts.max_image_size)
    names = [v.name for v in scene.views]
    index = {n: i for i, n in enumerate(names)}
    depths, normals = [], []
    for view in scene.views:
        depth_path, normal_path = map_paths(stereo, view.name)
        depths.append(read_colmap_array(depth_path))
        normals.append(read_colmap_array(normal_path))
        if depths[-1].shape != (view.height, view.width):
            raise ValueError(f"depth map of {view.name} is {depths[-1].shape}, expected "
                             f"{(view.height, view.width)}: rerun the mvs stage")
    neighbours = [set() for _ in names]
    for name, entry in config["views"].items():
        for src in entry["sources"]:
            if name in index and src in index:
                neighbours[index[name]].add(index[src])
                neighbours[index[src]].add(index[name])
    used = [np.zeros(d.shape, bool) for d in depths]
    colors = {}
    out_xyz, out_rgb, out_normal = [], [], []
    for i, view in enumerate(scene.views):
        ys, xs = np.nonzero((depths[i] > 0) & ~used[i])
        if len(xs):
            pix = np.stack([xs, ys], 1).astype(np.float64)
            d = depths[i][ys, xs].astype(np.float64)
            X = _lift(view, d, pix)
            sum_X, count = X.copy(), np.ones(len(X), np.int32)
            sum_n = normals[i][ys, xs] @ view.R  # camera -> world
            if i not in colors:
                colors[i] = load_rgb(scene, view)
            sum_c = colors[i][ys, xs].astype(np.float64)
            for j in sorted(neighbours[i]):
                other = scene.views[j]
                p, _ = _project(other, X)
                qx, qy = np.floor(p[:, 0]).astype(np.int64), np.floor(p[:, 1]).astype(np.int64)
                inside = (qx >= 0) & (qx < other.width) & (qy >= 0) & (qy < other.height)
                k = np.nonzero(inside)[0]
                dj = depths[j][qy[k], qx[k]].astype(np.float64)
                k, dj = k[dj > 0], dj[dj > 0]
                Xj = _lift(other, dj, np.stack([qx[k], qy[k]], 1).astype(np.float64))
                back, zb = _project(view, Xj)
                agree = ((np.linalg.norm(back - (pix[k] + 0.5), axis=1) < MAX_REPROJECTION)
                         & (np.abs(zb - d[k]) < MAX_DEPTH_DIFF * d[k]))
                k, Xj = k[agree], Xj[agree]
                sum_X[k] += Xj
                count[k] += 1
                sum_n[k] += normals[j][qy[k], qx[k]] @ other.R
                if j not in colors:
                    colors[j] = load_rgb(scene, other)
                sum_c[k] += colors[j][qy[k], qx[k]]
                used[j][qy[k], qx[k]] = True
            keep = count > opts.min_consistent
            keep_pts = sum_X[keep] / count[keep, None]
            inside = roi.contains(keep_pts)
            out_xyz.append(keep_pts[inside])
            out_rgb.append((sum_c[keep] / count[keep, None])[inside])
            n = sum_n[keep][inside]
            out_normal.append(n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12))
        for j in list(colors):  # keep only the images still needed
            if j < i and all(k <= i for k in neighbours[j]):
                del colors[j]
        progress((i + 1) / len(names), f"fused {i + 1} of {len(names)} depth maps")
    xyz = np.concatenate(out_xyz) if out_xyz else np.zeros((0, 3))
    rgb = np.concatenate(out_rgb) if out_rgb else np.zeros((0, 3))
    nrm = np.concatenate(out_normal) if out_normal else np.zeros((0, 3))
    write_ply(out_ply, {"x": xyz[:, 0].astype(np.float32), "y": xyz[:, 1].astype(np.float32),
                        "z": xyz[:, 2].astype(np.float32), "nx": nrm[:, 0].astype(np.float32),
                        "ny": nrm[:, 1].astype(np.float32), "nz": nrm[:, 2].astype(np.float32),
                        "red": np.clip(np.round(rgb[:, 0]), 0, 255).astype(np.uint8),
                        "green": np.clip(np.round(rgb[:, 1]), 0, 255).astype(np.uint8),
                        "blue": np.clip(np.round(rgb[:, 2]), 0, 255).astype(np.uint8)})
    return {"num_points": int(len(xyz)), "roi": roi.as_dict(), "seconds": time.perf_counter() - started,
            **memory_peak()}


MIN_DENSE_POINTS = 100
"""Fewer dense points than this cannot be meshed, and mean the depth maps failed."""


def fusion_stage(ctx: "StageContext") -> dict:
    result = fuse(ctx.path("undistort"), ctx.path("mvs"), ctx.out, ctx.options.dense, ctx.progress)
    if result["num_points"] < MIN_DENSE_POINTS:
        raise ReconstructError(
            ErrorCode.COULD_NOT_RECONSTRUCT,
            f"Dense stereo found only {result['num_points']} points that several photos agree on.",
            "Check that the region of interest covers the subject; textureless, shiny or moving surfaces "
            "cannot be matched. Lowering min_consistent or raising the image size may help.", result)
    return result
