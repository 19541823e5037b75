"""The splats of an F12 render, drawn on the CPU with numpy: premultiplied
colour, coverage and depth per pixel, by the conventions of
shared/splat_math.py (the backend's exact render and the viewport's shader
follow the same ones).

Why a third rasteriser: F12 in Blender's UI runs the render on a thread of
its own, where the `gpu` module has no context, and a background render
(`blender -b`, a render farm, Cycles) may have no GPU started at all; the
backend's renderer needs torch, which Blender's Python does not have. Numpy
works on any thread and releases the GIL in its loops, so the UI stays live
while a frame's splats are drawn.

It is the backend's tile algorithm (backend/splats/raster.py) without the
gradient: every (tile, splat) pair is listed, sorted by tile then depth, and
evaluated on the tile's pixels with one matmul (the exponent is a quadratic
in the pixel offsets); the pixel-pairs that contribute are kept, a pixel's
transmittance is a cumulative sum of log(1 - alpha) within its run, and it
stops taking splats once its transmittance would fall below T_MIN.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np

from ..shared.colmap_io import quaternion_to_matrix
from ..shared.splat_math import ALPHA_MAX, ALPHA_MIN, EPS2D, MAX_EXTEND, NEAR_PLANE, sh_basis_terms

TILE = 8
T_MIN = 1e-4  # as gsplat: a pixel takes no splat that would leave less light through than this
CHUNK_PIXELS = 1 << 22  # pair-pixel evaluations per chunk (about 30 bytes each while computed)


@dataclass
class Pinhole:
    """A camera looking down +z (x right, y down): intrinsics in pixels of a
    width x height frame, pixel centres at +0.5."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


@dataclass
class SplatLayer:
    """The splats seen from one camera: rgb premultiplied [H, W, 3] (the
    splats' own values, over transparent black), alpha [H, W], and depth [H, W]
    (the splats' weighted mean distance along the view axis; inf where none);
    top row first."""

    rgb: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray


def sh_colours(sh: list[np.ndarray], dirs: np.ndarray) -> np.ndarray:
    """[N, 3] colours of splats whose SH are `sh` (the file's columns: f_dc_0..2,
    then f_rest channel by channel), seen along unit `dirs` [N, 3]."""
    k = len(sh) // 3
    degree = int(round(math.sqrt(k))) - 1
    basis = sh_basis_terms(degree, dirs[:, 0], dirs[:, 1], dirs[:, 2])
    rgb = np.full((len(dirs), 3), 0.5, np.float64)
    for c in range(3):
        rgb[:, c] += basis[0] * sh[c]
        for j in range(1, k):
            rgb[:, c] += basis[j] * sh[3 + c * (k - 1) + j - 1]
    return np.maximum(rgb, 0.0)


def project(splats, view: np.ndarray, camera: Pinhole) -> np.ndarray:
    """[M, 12] per visible splat: mean (x, y in pixels), conic (a, b, c of the
    inverse 2D covariance), opacity, rgb, depth, box half-sizes (x, y, in pixels). `splats` holds means, opacity,
    scale, rotation (w, x, y, z) and sh (viewport/splat_draw.SplatArrays);
    `view` [3, 4] maps its coordinates into the camera's (any invertible
    linear part: an object's scale folds in)."""
    A, b = np.asarray(view[:, :3], np.float64), np.asarray(view[:, 3], np.float64)
    means = np.asarray(splats.means, np.float64)
    mc = means @ A.T + b
    z = mc[:, 2]
    keep = np.nonzero((z >= NEAR_PLANE) & (splats.opacity >= ALPHA_MIN))[0]
    mc, z, opacity = mc[keep], z[keep], np.asarray(splats.opacity, np.float64)[keep]
    fx, fy, cx, cy, width, height = camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    # gsplat's Jacobian clipping: splats far outside the view take the Jacobian at its edge (plus 30%).
    tx = z * np.clip(mc[:, 0] / z, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = z * np.clip(mc[:, 1] / z, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    # The rows of J A (J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]) times M = R S: cov2d = (J A M)(J A M)^T.
    jr0 = (fx / z)[:, None] * A[0] - (fx * tx / z**2)[:, None] * A[2]
    jr1 = (fy / z)[:, None] * A[1] - (fy * ty / z**2)[:, None] * A[2]
    scaled = quaternion_to_matrix(np.asarray(splats.rotation, np.float64)[keep]) \
        * np.asarray(splats.scale, np.float64)[keep][:, None, :]
    u = np.einsum("ni,nij->nj", jr0, scaled)
    v = np.einsum("ni,nij->nj", jr1, scaled)
    a = (u * u).sum(1) + EPS2D
    bb = (u * v).sum(1)
    c = (v * v).sum(1) + EPS2D
    det = a * c - bb * bb
    extend = np.minimum(np.sqrt(2 * np.log(np.maximum(opacity / ALPHA_MIN, 1.0))), MAX_EXTEND)
    rx = np.ceil(extend * np.sqrt(np.maximum(a, 0)))
    ry = np.ceil(extend * np.sqrt(np.maximum(c, 0)))
    mx, my = fx * mc[:, 0] / z + cx, fy * mc[:, 1] / z + cy
    on = ((det > 0) & ((rx > 0) | (ry > 0)) & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0)
          & (my - ry < height))
    idx = np.nonzero(on)[0]
    # Colours from the direction camera -> splat, in the splats' own frame (as the viewport's shader).
    centre = np.linalg.solve(A, -b)
    dirs = means[keep[idx]] - centre
    dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-12)
    rgb = sh_colours([np.asarray(s, np.float64)[keep[idx]] for s in splats.sh], dirs)
    d = det[idx]
    return np.column_stack([mx[idx], my[idx], c[idx] / d, -bb[idx] / d, a[idx] / d, opacity[idx], rgb, z[idx],
                            rx[idx], ry[idx]])


def render(projected: list[np.ndarray], camera: Pinhole) -> SplatLayer:
    """The splats of every array in `projected` (from :func:`project`, one per
    object) composited together near to far."""
    width, height = camera.width, camera.height
    p = np.concatenate(projected) if projected else np.zeros((0, 12))
    p = p[np.argsort(p[:, 9], kind="stable")]  # near to far
    tiles_w, tiles_h = -(-width // TILE), -(-height // TILE)
    n_tiles = tiles_w * tiles_h
    out = np.zeros((n_tiles, TILE * TILE, 5))  # premultiplied rgb, alpha, weighted depth
    if len(p):
        _composite(p, tiles_w, tiles_h, out)
    image = out.reshape(tiles_h, tiles_w, TILE, TILE, 5).transpose(0, 2, 1, 3, 4)
    image = image.reshape(tiles_h * TILE, tiles_w * TILE, 5)[:height, :width]
    alpha = image[..., 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(alpha > 0, image[..., 4] / alpha, np.inf)
    return SplatLayer(image[..., :3].astype(np.float32), alpha.astype(np.float32), depth.astype(np.float32))


def _composite(p: np.ndarray, tiles_w: int, tiles_h: int, out: np.ndarray) -> None:
    mx, my, rx, ry = p[:, 0] / TILE, p[:, 1] / TILE, p[:, 10] / TILE, p[:, 11] / TILE
    x0 = np.clip(np.floor(mx - rx), 0, tiles_w).astype(np.int64)
    x1 = np.clip(np.ceil(mx + rx), 0, tiles_w).astype(np.int64)
    y0 = np.clip(np.floor(my - ry), 0, tiles_h).astype(np.int64)
    y1 = np.clip(np.ceil(my + ry), 0, tiles_h).astype(np.int64)
    nx, ny = x1 - x0, y1 - y0
    counts = nx * ny
    splat = np.repeat(np.arange(len(p)), counts)
    local = np.arange(len(splat)) - (np.cumsum(counts) - counts)[splat]
    tile = (y0[splat] + local // nx[splat]) * tiles_w + x0[splat] + local % nx[splat]
    order = np.argsort(tile, kind="stable")  # splats are near to far: each tile's run stays so
    tile, splat = tile[order], splat[order]
    bounds = np.searchsorted(tile, np.arange(tiles_w * tiles_h + 1)).tolist()
    off = np.arange(TILE) + 0.5
    oy, ox = (m.ravel() for m in np.meshgrid(off, off, indexing="ij"))
    monomials = np.stack([np.ones_like(ox), ox, oy, ox * ox, oy * oy, ox * oy])  # [6, TILE^2]
    step = max(1, CHUNK_PIXELS // (TILE * TILE))
    t0 = 0
    while t0 < len(bounds) - 1:
        t1 = min(len(bounds) - 1, max(t0 + 1, bisect.bisect_right(bounds, bounds[t0] + step) - 1))
        start, end = bounds[t0], bounds[t1]
        if end > start:
            _composite_tiles(p[splat[start:end]], tile[start:end] - t0, t1 - t0, tiles_w, t0, monomials,
                             out[t0:t1])
        t0 = t1


def _composite_tiles(q, tile, n_tiles, tiles_w, first_tile, monomials, out) -> None:
    """Composite pairs (splat rows `q`, local tile index `tile`, sorted by tile then depth) into `out` [n_tiles, TILE^2, 5]."""
    g = tile + first_tile
    ux = (g % tiles_w) * TILE - q[:, 0]
    uy = (g // tiles_w) * TILE - q[:, 1]
    ca, cb, cc = q[:, 2], q[:, 3], q[:, 4]
    # sigma = 0.5 (a dx^2 + c dy^2) + b dx dy, d = tile origin - mean + pixel offset: a quadratic in the offsets.
    coeffs = np.stack([0.5 * (ca * ux * ux + cc * uy * uy) + cb * ux * uy, ca * ux + cb * uy, cc * uy + cb * ux,
                       0.5 * ca, 0.5 * cc, cb])  # [6, P]
    sigma = monomials.T @ coeffs  # [TILE^2, P]
    alpha = q[:, 5] * np.exp(-sigma)
    entry = np.flatnonzero((sigma >= 0) & (alpha >= ALPHA_MIN))  # by pixel, then tile, then depth
    n_pairs = len(q)
    pixel, pair = entry // n_pairs, entry % n_pairs
    alpha = np.minimum(alpha.ravel()[entry], ALPHA_MAX)
    segment = pixel * n_tiles + tile[pair]  # non-decreasing: one run per pixel of the image
    new = np.ones(len(segment), bool)
    new[1:] = segment[1:] != segment[:-1]
    first = np.flatnonzero(new)[np.cumsum(new) - 1]
    log_keep = np.log1p(-alpha)
    total = np.cumsum(log_keep)
    upto = total - (total - log_keep)[first]  # inclusive, within the pixel's run
    alpha = alpha * (upto > math.log(T_MIN))
    weight = np.exp(upto - log_keep) * alpha
    size = n_tiles * monomials.shape[1]
    sums = [np.bincount(segment, weight * q[pair, 6 + k], minlength=size) for k in range(3)]
    sums += [np.bincount(segment, weight, minlength=size), np.bincount(segment, weight * q[pair, 9], minlength=size)]
    out += np.stack(sums, -1).reshape(monomials.shape[1], n_tiles, 5).transpose(1, 0, 2)
