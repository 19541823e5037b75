"""Triangles to pixels on the CPU: which triangle covers each pixel centre
(nearest first), in numpy.

Why our own: the texture stage needs face-index buffers (the mesh seen from
each photo, for the depth test, and the atlas in UV space, for baking), and
no maintained CPU rasteriser with a numpy interface ships wheels for the
backend's platforms (pyrender and moderngl need an OpenGL context; trimesh's
ray casting without Embree is orders of magnitude slower). Triangles are
grouped by their bounding box's size and each group tests the pixel centres
of its boxes at once, in chunks that bound memory.
"""
from __future__ import annotations

import numpy as np

CHUNK = 4_000_000  # candidate pixels per step: about 150 MB of temporaries


def rasterize(xy: np.ndarray, depth: np.ndarray | None, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of a width x height image, the triangle whose surface is
    nearest there. xy: [F, 3, 2] corner positions in pixels (pixel (i, j)
    spans [i, i+1] x [j, j+1], its centre at i + 0.5); depth: [F, 3] corner
    depths, or None for triangles that do not overlap (an atlas's charts: a
    pixel centre on a shared edge goes to either). Returns face index [H, W]
    int32 (-1: none) and depth [H, W] float32 (inf: none; 0 without depths)."""
    xy = np.asarray(xy, np.float64)
    face = np.full(width * height, -1, np.int32)
    zbuf = np.full(width * height, np.inf, np.float32)
    if len(xy) == 0:
        return face.reshape(height, width), zbuf.reshape(height, width)
    z = np.zeros(xy.shape[:2]) if depth is None else np.asarray(depth, np.float64)
    lo = np.floor(xy.min(1) - 0.5).astype(np.int64)
    hi = np.ceil(xy.max(1) - 0.5).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    size = hi - lo + 1  # pixel centres each box spans, per axis
    keep = (size > 0).all(1) & np.isfinite(xy).all((1, 2)) & np.isfinite(z).all(1)
    # Boxes bucketed by each side rounded up to a step of a ~1.4x ladder (1, 2, 3, 4, 6, 8, 11,
    # 16, ...): one grid of offsets per bucket, at most twice the pixels the boxes hold.
    steps = np.unique(np.round(np.sqrt(2) ** np.arange(0, 40)).astype(np.int64))
    bucket = np.where(keep[:, None], np.searchsorted(steps, np.maximum(size, 1)), -1)
    keys = bucket[:, 0] * 64 + bucket[:, 1]
    for key in np.unique(keys[keep]):
        bw, bh = int(steps[key // 64]), int(steps[key % 64])
        faces = np.nonzero(keys == key)[0]
        per_chunk = max(1, CHUNK // (bw * bh))
        oy, ox = np.mgrid[0:bh, 0:bw]
        ox, oy = ox.ravel(), oy.ravel()
        for start in range(0, len(faces), per_chunk):
            f = faces[start:start + per_chunk]
            px = lo[f, 0][:, None] + ox[None]  # [n, bw*bh]
            py = lo[f, 1][:, None] + oy[None]
            inside = (px <= hi[f, 0][:, None]) & (py <= hi[f, 1][:, None])
            w, dist = _weights(xy[f], px + 0.5, py + 0.5)
            inside &= dist <= 0
            fi = np.broadcast_to(f[:, None], inside.shape)[inside]
            pix = (py * width + px)[inside]
            if depth is None:
                face[pix] = fi
                zbuf[pix] = 0.0
                continue
            zz = np.einsum("nkc,nc->nk", w, z[f])[inside].astype(np.float32)
            # Nearest first per pixel, then only where nearer than what is there.
            order = np.lexsort((zz, pix))
            pix, zz, fi = pix[order], zz[order], fi[order]
            first = np.ones(len(pix), bool)
            first[1:] = pix[1:] != pix[:-1]
            pix, zz, fi = pix[first], zz[first], fi[first]
            nearer = zz < zbuf[pix]
            zbuf[pix[nearer]] = zz[nearer]
            face[pix[nearer]] = fi[nearer]
    return face.reshape(height, width), zbuf.reshape(height, width)


def _weights(tri: np.ndarray, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric weights [n, k, 3] of points (px, py) [n, k] in triangles
    tri [n, 3, 2], and each point's distance outside its triangle in pixels
    (<= 0 inside), measured to the nearest edge line."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    area = np.where(np.abs(area) < 1e-12, np.nan, area)[:, None]
    out, dist = [], None
    for p, q in ((b, c), (c, a), (a, b)):  # the weight of the corner opposite edge p -> q
        e = (q[:, 0] - p[:, 0])[:, None] * (py - p[:, 1][:, None]) - (q[:, 1] - p[:, 1])[:, None] * (px - p[:, 0][:, None])
        w = e / area
        length = np.hypot(q[:, 0] - p[:, 0], q[:, 1] - p[:, 1])[:, None]
        outside = -w * np.abs(area) / np.maximum(length, 1e-12)  # signed distance outside this edge
        dist = outside if dist is None else np.maximum(dist, outside)
        out.append(w)
    dist = np.where(np.isnan(dist), np.inf, dist)
    return np.stack(out, -1), dist


def weights_at(tri: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Barycentric weights [n, 3] of one point per triangle (tri [n, 3, 2], px, py [n])."""
    return _weights(tri, px[:, None], py[:, None])[0][:, 0]
