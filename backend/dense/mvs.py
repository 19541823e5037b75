"""Multi-view stereo in torch: a depth and a normal map per undistorted image.

pycolmap's PatchMatch needs a CUDA build of COLMAP, which the registry's wheel
is not, so depth comes from our own coarse-to-fine plane sweep, on CUDA when
torch has it and on the CPU otherwise:

- source views: the images that share the most sparse points with the
  reference at a useful triangulation angle (covisibility and baseline);
- depth range: the sparse points the reference sees, cut by the region of interest;
- cost: 1 - ZNCC over a window, per source view, with the best half of the
  sources averaged per pixel (a view where the surface is hidden does not
  count against it);
- a full sweep of plane families on the coarsest level of an image pyramid
  (`sweeps`): fronto-parallel planes uniform in inverse depth, and the ground's
  and tilted planes, so surfaces seen at grazing angles (the ground, walls
  along a street, the sides of round things) are compared on windows warped by
  their own homography, as PatchMatch stereo does per pixel, at the cost of a
  few more sweeps of a small image;
- each finer level takes its parent's plane at its own pixel and searches a
  narrow band around it; a parabola through the costs of the best hypothesis
  and its neighbours gives sub-plane depth;
- pixels with too little texture or a poor best cost are left empty, unless
  only the finest window is flat and the level below matched confidently. The
  multi-view geometric consistency filter runs in fusion.py, which needs
  every depth map.

Depth maps are written in COLMAP's .bin layout (dense/stereo/depth_maps,
normal_maps), one file per image, atomically: a cancelled run keeps the maps
it finished and the next run computes only the rest.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from blender_addon.shared.layout import UNDISTORTED_MASKS
from backend.dense.roi import Box, automatic_region
from backend.dense.scene import Scene, View, load_grey, load_scene, map_paths, write_colmap_array
from backend.job.device import choose_device, memory_peak
from backend.options import DenseOptions

if TYPE_CHECKING:
    from backend.job.stage_context import StageContext

Progress = Callable[[float, str], None]

COARSEST_SIZE = 400  # px: the fronto-parallel sweep runs on a pyramid level no larger than this,
# the slanted families on the level below it (small photos, the temple's 640 px, lose thin parts at 200)
MIN_TEXTURE = 0.01  # std of a window's grey values (0..1) below which depth is not estimated
MAX_COST = 0.5  # best aggregated 1 - ZNCC above which a pixel is left empty
MAX_ANGLE_DEG = 60.0  # source views seeing the surface more obliquely than this match poorly
MEMORY_BUDGET = 256 * 2**20  # bytes of cost-volume work per chunk
MIN_PLANES, MAX_PLANES = 32, 128  # per plane family in the coarse sweep
TILT_DEG = 50.0  # the tilted plane families lean this far from fronto-parallel
TILT_MIN_DEG = 20.0  # a family this close to one already swept adds little
SLANT_MARGIN = 0.05  # 1 - ZNCC by which a slanted plane must beat the fronto-parallel one
SLANTED_NEAR = 0.5  # slanted planes may come this much nearer than the sparse points' depth range


def select_sources(scene: Scene, ref: int, count: int) -> list[int]:
    """The `count` views that share the most well-triangulated sparse points with `ref`."""
    mine = scene.visibility[ref]
    c_ref = scene.views[ref].center
    scores = []
    for j, other in enumerate(scene.visibility):
        if j == ref:
            continue
        shared = np.intersect1d(mine, other, assume_unique=True)
        if len(shared) == 0:
            continue
        p = scene.points[shared]
        a, b = p - c_ref, p - scene.views[j].center
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
        # Tiny baselines give no depth, very wide ones no matches.
        weight = np.clip(angle / 5.0, 0, 1) * (angle < MAX_ANGLE_DEG)
        scores.append((float(weight.sum()), j))
    scores.sort(reverse=True)
    return [j for score, j in scores[:count] if score > 0]


def depth_range(scene: Scene, ref: int, roi: Box | None) -> tuple[float, float] | None:
    """Depths to search for `ref`: its sparse points' (1st-99th percentile,
    with a margin) intersected with the region of interest. None when the
    region is not in front of the camera."""
    view = scene.views[ref]
    pts = scene.points[scene.visibility[ref]] if len(scene.visibility[ref]) else scene.points
    z = (pts @ view.R.T + view.t)[:, 2]
    z = z[z > 0]
    if len(z) == 0:
        return None
    near, far = np.percentile(z, 1) * 0.8, np.percentile(z, 99) * 1.25
    if roi is not None:
        zc = (roi.corners() @ view.R.T + view.t)[:, 2]
        if zc.max() <= 0:
            return None
        near, far = max(near, zc.min()), min(far, zc.max())
    near = max(near, 1e-6)
    return (float(near), float(far)) if far > near else None


# -- the plane sweep ---------------------------------------------------------


def _box(x, r: int):
    """Mean over (2r+1)^2 windows of x [N, C, H, W], edges replicated.
    Separable running sums: about 5x faster than avg_pool2d on the CPU, and
    the row and column sums stay small enough for float32."""
    import torch.nn.functional as F

    k = 2 * r + 1
    x = F.pad(x, (r + 1, r, r + 1, r), mode="replicate")
    c = x.cumsum(-1)
    x = c[..., k:] - c[..., :-k]
    c = x.cumsum(-2)
    return (c[..., k:, :] - c[..., :-k, :]) * (1.0 / (k * k))


class _Level:
    """One pyramid level: grey images, intrinsics and window statistics of the reference."""

    def __init__(self, ref_img, src_imgs, K_ref, K_srcs, radius: int):
        self.ref, self.srcs, self.K_ref, self.K_srcs, self.radius = ref_img, src_imgs, K_ref, K_srcs, radius
        x = ref_img[None, None]
        self.mean = _box(x, radius)[0, 0]
        self.std = (_box(x * x, radius)[0, 0] - self.mean ** 2).clamp_min(0).sqrt()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ref.shape)


def _halve(level: "_Level") -> "_Level":
    import torch.nn.functional as F

    half = lambda img: F.avg_pool2d(img[None, None], 2, ceil_mode=True)[0, 0]  # noqa: E731
    scale = np.diag([0.5, 0.5, 1.0])
    return _Level(half(level.ref), [half(s) for s in level.srcs], scale @ level.K_ref,
                  [scale @ K for K in level.K_srcs], level.radius)


def _pyramid(ref, srcs, K_ref, K_srcs, radius):
    levels = [_Level(ref, srcs, K_ref, K_srcs, radius)]
    while max(levels[-1].shape) > COARSEST_SIZE:
        levels.append(_halve(levels[-1]))
    return levels[::-1]  # coarsest first


def _costs(level: _Level, rel, inv_depth):
    """Aggregated cost [D, H, W] of the inverse-depth hypotheses `inv_depth`
    [D, H, W] (or [D, 1, 1] for planes): per pixel, the mean of the best half
    of the source views' 1 - ZNCC."""
    import torch
    import torch.nn.functional as F

    H, W = level.shape
    D = inv_depth.shape[0]
    r = level.radius
    keep = max(1, math.ceil(len(level.srcs) / 2))
    best = []  # the `keep` lowest costs so far, in order (torch's topk over a small dim is slow)
    for src, (A, b) in zip(level.srcs, rel):
        # Source pixel of each hypothesis: K_s (R X / inv + t) = (A X + b inv) / inv.
        P = A[:, None] + b[:, None, None, None] * inv_depth[None]  # [3, D, H, W]
        z = P[2].clamp_min(1e-9)
        u, v = P[0] / z, P[1] / z
        Hs, Ws = src.shape
        ok = (P[2] > 1e-9) & (u >= 0) & (u <= Ws) & (v >= 0) & (v <= Hs)
        grid = torch.stack([u * (2 / Ws) - 1, v * (2 / Hs) - 1], dim=-1).reshape(1, D * H, W, 2)
        s = F.grid_sample(src[None, None], grid, mode="bilinear", padding_mode="border",
                          align_corners=False).reshape(D, 1, H, W)
        mean_s = _box(s, r)[:, 0]
        var_s = (_box(s * s, r)[:, 0] - mean_s ** 2).clamp_min(0)
        ncc = (_box(s * level.ref, r)[:, 0] - mean_s * level.mean) / (var_s.sqrt() * level.std + 1e-6)
        # Outside the source image, or a flat window there, says nothing.
        cost = torch.where(ok & (var_s > MIN_TEXTURE ** 2), (1 - ncc).clamp(0, 2), 2.0)
        for k in range(len(best)):
            best[k], cost = torch.minimum(best[k], cost), torch.maximum(best[k], cost)
        if len(best) < keep:
            best.append(cost)
    return sum(best) / keep


def _relative(level: _Level, view_ref: View, views_src: list[View], torch_device):
    """Per source: A = K_s R_rel K_ref^-1 [u, v, 1] over the reference pixels
    [3, H, W], and b = K_s t_rel [3]."""
    import torch

    H, W = level.shape
    rays = _pixel_rays(level).reshape(3, -1)  # [3, HW]
    rel = []
    for view, K_s in zip(views_src, level.K_srcs):
        R_rel = view.R @ view_ref.R.T
        t_rel = view.t - R_rel @ view_ref.t
        A = (torch.from_numpy(K_s @ R_rel) @ rays).reshape(3, H, W)
        b = torch.from_numpy(K_s @ t_rel)
        rel.append((A.float().to(torch_device), b.float().to(torch_device)))
    return rel


def _chunks(D: int, H: int, W: int):
    per_hypothesis = H * W * 4 * 24  # bytes of intermediates per hypothesis and source
    step = max(1, min(D, MEMORY_BUDGET // per_hypothesis))
    return [(i, min(D, i + step)) for i in range(0, D, step)]


def _winner(costs, inv, step):
    """Best hypothesis per pixel with a parabola through its neighbours' costs.
    costs [D, H, W], inv [D, H, W] (or broadcastable): -> inverse depth, cost, at-border."""
    import torch

    D = costs.shape[0]
    best_cost, idx = costs.min(0)
    inv_full = inv.expand_as(costs)
    best_inv = inv_full.gather(0, idx[None])[0]
    lo = costs.gather(0, (idx - 1).clamp(0, D - 1)[None])[0]
    hi = costs.gather(0, (idx + 1).clamp(0, D - 1)[None])[0]
    curvature = lo - 2 * best_cost + hi
    offset = torch.where(curvature > 1e-6, 0.5 * (lo - hi) / curvature.clamp_min(1e-6), torch.zeros_like(lo))
    at_border = (idx == 0) | (idx == D - 1)
    return best_inv + offset.clamp(-0.5, 0.5) * step, best_cost, at_border


@dataclass
class Sweep:
    """One family of parallel planes n . X = c in the reference camera's frame:
    the coarse level tries planes of every family, so a surface slanted like
    one of them is compared on windows warped by its own homography."""
    name: str
    normal: np.ndarray  # [3] unit, camera frame; the planes' points have n . X = c > 0
    inv_offsets: np.ndarray  # 1 / c of the sparse points the view sees: where this family's planes may lie


def sweeps(view: View, points_cam: np.ndarray) -> list[Sweep]:
    """The plane families for a reference view: fronto-parallel, the ground
    (world +Z is up: the sfm stage made the model upright), and planes tilted
    left and right (walls seen along their length, the sides of round things).
    Families tilted up and down added nothing on fountain-P11 or the synthetic
    scenes (the ground family covers what lies below) and cost a fifth more
    time each. Families within TILT_MIN_DEG of one already chosen, or with too
    few sparse points in front of them, are left out."""
    s, c = math.sin(math.radians(TILT_DEG)), math.cos(math.radians(TILT_DEG))
    candidates = [("fronto-parallel", np.array([0.0, 0.0, 1.0])), ("ground", -view.R[:, 2]),
                  ("tilted left", np.array([s, 0, c])), ("tilted right", np.array([-s, 0, c]))]
    found: list[Sweep] = []
    for name, n in candidates:
        n = n / np.linalg.norm(n)
        if any(np.degrees(np.arccos(np.clip(n @ f.normal, -1, 1))) < TILT_MIN_DEG for f in found):
            continue
        offsets = points_cam @ n
        offsets = offsets[offsets > 0]
        if len(offsets) >= 10 or not found:
            found.append(Sweep(name, n, np.sort(1.0 / offsets)))
    return found


def _pixel_rays(level: "_Level"):
    """K^-1 [u, v, 1] at the level's pixel centres: [3, H, W] float64 on the CPU (z = 1)."""
    import torch

    H, W = level.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5,
                          torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)]).reshape(3, -1)
    return (torch.from_numpy(np.linalg.inv(level.K_ref)) @ pix).reshape(3, H, W)


def _family_planes(level: "_Level", sweep: Sweep, step: float, inv_near: float, inv_far: float):
    """The values of 1 / c to sweep for a slanted family, as dense as the
    fronto-parallel sweep (`step` of inverse depth) at the pixel where the
    planes move most: at most MAX_PLANES of them, over the window of 1 / c
    that holds the most sparse points (the ground's points bunch at the
    camera's height; a window over all of them would space the planes
    metres apart there)."""
    H, W = level.shape
    grid = np.stack(np.meshgrid(np.linspace(0.5, W - 0.5, 9), np.linspace(0.5, H - 0.5, 9)), -1).reshape(-1, 2)
    k = (np.c_[grid, np.ones(len(grid))] @ np.linalg.inv(level.K_ref).T) @ sweep.normal
    if k.max() <= 1e-6:
        return None
    dw = step / k.max()
    w = sweep.inv_offsets
    lo, hi = np.percentile(w, 1) / 1.25, np.percentile(w, 99) / 0.8
    # Only planes that cross the depth range somewhere in the image.
    lo, hi = max(lo, inv_far / k.max()), min(hi, inv_near / max(k[k > 1e-6].min(), 1e-6))
    if hi <= lo:
        return None
    span = (MAX_PLANES - 1) * dw
    if hi - lo > span:
        inside = w[(w >= lo) & (w <= hi)]
        if len(inside) == 0:
            return None
        ends = np.searchsorted(inside, inside + span, side="right")
        start = inside[int(np.argmax(ends - np.arange(len(inside))))]
        lo, hi = max(lo, start - span * 0.1), min(hi, start + span * 0.9)
    return np.arange(lo, hi + dw / 2, dw)


def _sweep_family(level: "_Level", rel, sweep: Sweep, w: np.ndarray, inv_near: float, inv_far: float, device):
    """The best plane of one family (1 / c in `w`, evenly spaced) per pixel:
    inverse depth, cost, at-border, and the inverse depth's gradient per pixel
    (du, dv) that the plane gives."""
    import torch

    n = torch.tensor(sweep.normal, dtype=torch.float32, device=device)
    k = torch.einsum("c,chw->hw", n, _pixel_rays(level).float().to(device))  # 1/z = k / c
    step = float(w[1] - w[0]) if len(w) > 1 else 1.0
    w = torch.tensor(w, dtype=torch.float32, device=device)[:, None, None]
    H, W = level.shape
    volume = []
    for a, b in _chunks(len(w), H, W):
        hyp = w[a:b] * k
        valid = (k > 1e-6) & (hyp >= inv_far * 0.999) & (hyp <= inv_near * 1.001)
        volume.append(torch.where(valid, _costs(level, rel, hyp), 2.0))
    inv, cost, border = _winner(torch.cat(volume), w * k, step * k)
    # The plane through the winner: 1/z = w n . K^-1 [u, v, 1], so its gradient in pixels is w K^-T n.
    grad = torch.from_numpy(np.linalg.inv(level.K_ref).T @ sweep.normal).float().to(device)
    w_best = inv / k.clamp_min(1e-6)
    return inv, cost, border, (w_best * grad[0], w_best * grad[1])


def _fronto_planes(level: "_Level", view_ref: View, views_src: list[View], near: float, far: float) -> np.ndarray:
    """Inverse depths two pixels of disparity apart in the widest-baseline
    source at the reference's centre: a 7 x 7 ZNCC's cost curve is smooth at
    that scale, the parabola and the finer levels do the rest."""
    H, W = level.shape
    ray = np.linalg.inv(level.K_ref) @ np.array([W / 2, H / 2, 1.0])
    planes = int(np.clip(_disparity_span(level, view_ref, views_src, near, far, ray) / 2, MIN_PLANES, MAX_PLANES))
    return np.linspace(1.0 / far, 1.0 / near, planes)


def _upsample(inv, grad, size, device):
    """Each pixel of the finer level takes its parent's plane (inverse depth
    and its gradient) evaluated at its own centre: a slanted surface stays a
    smooth ramp instead of 2 x 2 steps, and a depth edge stays sharp."""
    import torch

    Hc, Wc = inv.shape
    H, W = size
    y = torch.arange(H, device=device, dtype=torch.float32) + 0.5
    x = torch.arange(W, device=device, dtype=torch.float32) + 0.5
    iy = (y / 2).floor().long().clamp(0, Hc - 1)  # K halves between levels: coarse = fine / 2
    ix = (x / 2).floor().long().clamp(0, Wc - 1)
    dy = (y / 2 - (iy.float() + 0.5))[:, None]
    dx = (x / 2 - (ix.float() + 0.5))[None, :]
    gu, gv = grad[0][iy][:, ix], grad[1][iy][:, ix]
    up = inv[iy][:, ix] + gu * dx + gv * dy
    return up, (gu / 2, gv / 2), lambda a: a[iy][:, ix]


def _refine(level: "_Level", rel, up, step: float, inv_near: float, inv_far: float):
    """The best of 7 inverse depths `step` apart around `up` [H, W] per pixel."""
    import torch

    H, W = level.shape
    offsets = torch.arange(-3, 4, device=up.device, dtype=torch.float32)[:, None, None] * step
    hyp = (up + offsets).clamp(inv_far * 0.5, inv_near / SLANTED_NEAR * 2)
    volume = torch.cat([_costs(level, rel, hyp[a:b]) for a, b in _chunks(7, H, W)])
    return _winner(volume, hyp, step)


def _slanted_sweep(level: "_Level", rel_level, view_ref: View, views_src: list[View], families: list[Sweep],
                   near: float, far: float, device):
    """The best plane of the slanted families per pixel, swept on the level below `level`
    (a quarter of the pixels: three families cost about what the fronto-parallel sweep does
    on `level`) and refined on `level` (`rel_level`: its _relative, made for the
    fronto-parallel sweep): inverse depth, cost, at-border, gradient; None when no family
    has planes there."""
    import torch

    half = _halve(level)
    rel = _relative(half, view_ref, views_src, device)
    w = _fronto_planes(half, view_ref, views_src, near, far)
    step = float(w[1] - w[0])
    inv_near, inv_far = 1.0 / near, 1.0 / far
    best = None
    for family in families:
        w = _family_planes(half, family, step, inv_near, inv_far)
        if w is None or len(w) < 2:
            continue
        # The ground at a photo's foot is nearer than anything SIFT found there.
        found = _sweep_family(half, rel, family, w, inv_near / SLANTED_NEAR, inv_far, device)
        if best is None:
            best = found
            continue
        better = found[1] < best[1]
        best = (*(torch.where(better, new, old) for new, old in zip(found[:3], best[:3])),
                tuple(torch.where(better, new, old) for new, old in zip(found[3], best[3])))
    if best is None:
        return None
    up, grad, _ = _upsample(best[0], best[3], level.shape, device)
    inv, cost, border = _refine(level, rel_level, up, step / 2,
                                inv_near, inv_far)
    return inv, cost, border, grad


def estimate_depth(ref: np.ndarray, srcs: list[np.ndarray], view_ref: View, views_src: list[View],
                   near: float, far: float, opts: DenseOptions, device,
                   families: list[Sweep] | None = None) -> np.ndarray:
    """Depth [H, W] (0 where unknown) for a reference grey image and its
    source images (float32, 0..1, at the views' sizes). `families`: the plane
    families of the coarse sweep (default: fronto-parallel only)."""
    import torch

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(device)  # noqa: E731
    levels = _pyramid(t(ref), [t(s) for s in srcs], view_ref.K, [v.K for v in views_src], opts.window_radius)
    inv_near, inv_far = 1.0 / near, 1.0 / far
    fronto = Sweep("fronto-parallel", np.array([0.0, 0.0, 1.0]), np.array([inv_far]))
    slanted = [f for f in families or [] if f.name != fronto.name]
    coarse = levels[0]
    w = _fronto_planes(coarse, view_ref, views_src, near, far)
    step = float(w[1] - w[0])
    rel = _relative(coarse, view_ref, views_src, device)
    inv_depth, cost, border, grad = _sweep_family(coarse, rel, fronto, w, inv_near, inv_far, device)
    found = _slanted_sweep(coarse, rel, view_ref, views_src, slanted, near, far, device) if slanted else None
    if found is not None:
        # A slanted plane must beat the fronto-parallel one clearly: on a surface facing the
        # camera some tilt fits a low-resolution window about as well, and its slant would
        # carry into the finer levels.
        better = found[1] < cost - SLANT_MARGIN
        inv_depth, cost, border = (torch.where(better, new, old) for new, old in
                                   zip(found[:3], (inv_depth, cost, border)))
        grad = tuple(torch.where(better, new, old) for new, old in zip(found[3], grad))
    confident = (cost < MAX_COST) & ~border & (coarse.std > MIN_TEXTURE)
    for level in levels[1:]:
        step /= 2
        up, grad, parent = _upsample(inv_depth, grad, level.shape, device)
        inv_depth, cost, border = _refine(level, _relative(level, view_ref, views_src, device), up, step,
                                          inv_near, inv_far)
        # Where this level's window is flat but the level below matched confidently (a dark
        # pavement is textured at a quarter of the size, not at full size), keep the plane
        # from below: fusion's multi-view check judges it like any other depth.
        textured = level.std > MIN_TEXTURE
        inherit = ~textured & parent(confident)
        inv_depth = torch.where(inherit, up, inv_depth)
        confident = ((cost < MAX_COST) & ~border & textured) | inherit
    good = confident & (inv_depth > 0)
    good &= (inv_depth >= inv_far * 0.999) & (inv_depth <= inv_near * (1.001 / SLANTED_NEAR if slanted else 1.001))
    return torch.where(good, 1.0 / inv_depth.clamp_min(1e-9), torch.zeros_like(inv_depth)).cpu().numpy()


def _disparity_span(level: _Level, view_ref: View, views_src: list[View], near: float, far: float,
                    ray: np.ndarray) -> float:
    """Largest shift (px) along the reference's `ray` between the near and
    far depth, over the source views."""
    span = 0.0
    for view, K_s in zip(views_src, level.K_srcs):
        ends = []
        for d in (near, far):
            X = view_ref.R.T @ (ray * d - view_ref.t)
            p = K_s @ (view.R @ X + view.t)
            ends.append(p[:2] / max(p[2], 1e-9))
        span = max(span, float(np.linalg.norm(ends[0] - ends[1])))
    return span


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame unit normals [H, W, 3] facing the camera, from the depth
    map's neighbours (zero where a neighbour is missing)."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    Kinv = np.linalg.inv(K).astype(np.float32)
    X = np.stack([u, v, np.ones_like(u)], -1) @ Kinv.T * depth[..., None]
    dx = np.zeros_like(X)
    dy = np.zeros_like(X)
    dx[:, 1:-1] = X[:, 2:] - X[:, :-2]
    dy[1:-1] = X[2:] - X[:-2]
    n = np.cross(dy, dx)
    valid = depth > 0
    ok = np.zeros_like(valid)
    ok[1:-1, 1:-1] = valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1]
    # Neighbours across a depth edge would give a normal along the edge.
    ok &= np.abs(dx[..., 2]) + np.abs(dy[..., 2]) < 0.1 * depth
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = n / np.maximum(norm, 1e-12)
    n *= np.where(np.sum(n * X, -1, keepdims=True) > 0, -1, 1)  # face the camera
    return np.where(ok[..., None], n, 0).astype(np.float32)


# -- COLMAP's depth/normal map files --------------------------------------------


def resolve_roi(scene: Scene, roi: dict | None) -> tuple[Box, dict]:
    """The user's region, else the automatic one (roi.automatic_region), with how it was chosen."""
    if roi:
        return Box.from_dict(roi), {"kind": "given", "reason": "the region of interest given"}
    centres = np.array([v.center for v in scene.views])
    axes = np.array([v.R[2] for v in scene.views])  # optical axes in the world
    return automatic_region(scene.points, centres, axes)


def masked(scene: Scene, view: View, depth: np.ndarray) -> np.ndarray:
    """No depth where the user's mask is black (undistorted/masks, when the job has masks),
    so fusion takes no point from those pixels."""
    from PIL import Image

    from backend.job.masks import mask_name

    path = scene.folder / UNDISTORTED_MASKS / mask_name(view.name)
    if not path.exists():
        return depth
    with Image.open(path) as im:
        keep = np.asarray(im.convert("L").resize((view.width, view.height), Image.NEAREST)) >= 128
    return np.where(keep, depth, 0).astype(depth.dtype)


def run_mvs(undistorted: Path, stereo: Path, opts: DenseOptions, progress: Progress, warn=None) -> dict:
    """Depth and normal maps for every view into `stereo` (COLMAP layout),
    skipping the views whose maps are already there."""
    import torch

    started = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    device = choose_device(opts.device, "dense", warn)
    scene = load_scene(undistorted, opts.max_image_size)
    roi, region = resolve_roi(scene, opts.roi)
    for sub in ("depth_maps", "normal_maps"):
        (stereo / sub).mkdir(parents=True, exist_ok=True)
    config = {"roi": roi.as_dict(), "region": region, "views": {}}
    computed, reused, seconds, grey = [], [], [], {}
    n = len(scene.views)
    for i, view in enumerate(scene.views):
        sources = select_sources(scene, i, opts.num_sources)
        rng = depth_range(scene, i, roi)
        families = None
        if rng is not None:
            seen = scene.points[scene.visibility[i]] if len(scene.visibility[i]) else scene.points
            families = sweeps(view, seen @ view.R.T + view.t) if opts.slanted else None
        config["views"][view.name] = {"sources": [scene.views[j].name for j in sources],
                                      "depth_range": rng, "scale": view.scale,
                                      "plane_families": [f.name for f in families or []],
                                      "K": view.K.tolist(), "size": [view.width, view.height]}
        depth_path, normal_path = map_paths(stereo, view.name)
        depth_path.parent.mkdir(parents=True, exist_ok=True)
        normal_path.parent.mkdir(parents=True, exist_ok=True)
        if depth_path.exists() and normal_path.exists():
            reused.append(view.name)
            progress((i + 1) / n, f"{view.name}: kept from the last run")
            continue
        tic = time.perf_counter()
        if rng is None or not sources:
            depth = np.zeros((view.height, view.width), np.float32)
        else:
            for j in [i, *sources]:
                if j not in grey:
                    grey[j] = load_grey(scene, scene.views[j])
            depth = estimate_depth(grey[i], [grey[j] for j in sources], view,
                                   [scene.views[j] for j in sources], *rng, opts, device, families)
        depth = masked(scene, view, depth)
        for j in list(grey):  # keep memory bounded: only images near the current one
            if abs(j - i) > opts.num_sources * 2:
                del grey[j]
        write_colmap_array(normal_path, normals_from_depth(depth, view.K))
        write_colmap_array(depth_path, depth)  # last: its presence means this view is done
        seconds.append(time.perf_counter() - tic)
        computed.append(view.name)
        progress((i + 1) / n, f"depth map {i + 1} of {n} ({view.name}, {seconds[-1]:.1f} s)")
    (stereo / "mvs.json").write_text(json.dumps(config, indent=1))
    megapixels = [v.width * v.height / 1e6 for v in scene.views if v.name in computed]
    return {"num_depth_maps": n, "computed": computed, "reused": reused, "device": device.type,
            "seconds_per_depth_map": float(np.mean(seconds)) if seconds else None,
            "seconds_per_megapixel": float(sum(seconds) / sum(megapixels)) if megapixels else None,
            "size": [max(v.width for v in scene.views), max(v.height for v in scene.views)],
            "roi": roi.as_dict(), "region": region, "seconds": time.perf_counter() - started,
            **memory_peak(device)}


def mvs_stage(ctx: "StageContext") -> dict:
    """The mvs stage (blender_addon/shared/stages.py): depth maps into ctx.out, which
    keeps the finished ones across a cancel."""
    return run_mvs(ctx.path("undistort"), ctx.out, ctx.options.dense, ctx.progress, ctx.warn)
