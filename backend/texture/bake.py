"""Texels from photos: every atlas texel takes the colour of its face's photo
where the texel's surface point projects, levelled (level.py); texels of
faces no photo sees take the mesh's vertex colours, and the texels between
charts (and those a chart's edge only partly covers) take the nearest baked
colour, so that filtering and mipmaps do not bleed the background in. Works tile by tile, so memory stays bounded at 8k."""
from __future__ import annotations

from typing import Callable

import numpy as np

from backend.dense.scene import View
from backend.texture.atlas import Atlas
from backend.texture.photos import Photos, bilinear
from backend.texture.raster import rasterize, weights_at

TILE = 4096


def bake(atlas: Atlas, vertices: np.ndarray, faces: np.ndarray, vertex_rgb: np.ndarray | None,
         labels: np.ndarray, views: list[View], photos: Photos, gains: np.ndarray, offsets: np.ndarray,
         offset_index: np.ndarray, progress: Callable[[float, str], None]) -> tuple[np.ndarray, dict]:
    """[size, size, 3] uint8 atlas image and what was baked."""
    size = atlas.size
    image = np.zeros((size, size, 3), np.uint8)
    filled = np.zeros((size, size), bool)
    uv = atlas.corner_uv
    lo, hi = uv.min(1), uv.max(1)
    tiles = [(x, y) for y in range(0, size, TILE) for x in range(0, size, TILE)]
    texels_from_photos = texels_from_vertices = 0
    for i, (x0, y0) in enumerate(tiles):
        w, h = min(TILE, size - x0), min(TILE, size - y0)
        near = np.nonzero((hi[:, 0] >= x0 - 2) & (lo[:, 0] <= x0 + w + 2) & (hi[:, 1] >= y0 - 2) &
                          (lo[:, 1] <= y0 + h + 2))[0]
        local = uv[near] - [x0, y0]
        face_of, _ = rasterize(local, None, w, h)
        rows, cols = np.nonzero(face_of >= 0)
        which = near[face_of[rows, cols]]
        weights = weights_at(local[face_of[rows, cols]], cols + 0.5, rows + 0.5)
        points = np.einsum("nk,nkc->nc", weights, vertices[faces[which]])
        colour = np.zeros((len(which), 3), np.float32)
        label = labels[which]
        for view in np.unique(label[label >= 0]):
            mine = np.nonzero(label == view)[0]
            v = views[int(view)]
            cam = points[mine] @ v.R.T + v.t
            pix = cam[:, :2] / np.maximum(cam[:, 2:], 1e-12) * np.diag(v.K)[:2] + v.K[:2, 2]
            c = bilinear(photos.full(int(view)), pix[:, 0], pix[:, 1]) * gains[int(view)]
            if len(offsets):
                c += np.einsum("nk,nkc->nc", weights[mine], offsets[offset_index[which[mine]]])
            colour[mine] = c
        texels_from_photos += int((label >= 0).sum())
        unseen = np.nonzero(label < 0)[0]
        if len(unseen):
            texels_from_vertices += len(unseen)
            if vertex_rgb is not None:
                colour[unseen] = np.einsum("nk,nkc->nc", weights[unseen], vertex_rgb[faces[which[unseen]]])
            else:
                colour[unseen] = 128
        image[y0 + rows, x0 + cols] = np.clip(np.round(colour), 0, 255).astype(np.uint8)
        filled[y0 + rows, x0 + cols] = True
        progress((i + 1) / len(tiles), f"baked tile {i + 1} of {len(tiles)}")
    coverage = float(filled.mean())
    fill_gutters(image, filled)
    return image, {"texels_from_photos": texels_from_photos, "texels_from_vertex_colours": texels_from_vertices,
                   "atlas_coverage": coverage}


def fill_gutters(image: np.ndarray, filled: np.ndarray) -> None:
    """In place: every empty texel takes the colour of the nearest baked one
    (edge padding), so that filtering and mipmaps near a chart's border blend
    in the chart's own colours, never black."""
    from scipy.ndimage import distance_transform_edt

    if filled.all():
        return
    if not filled.any():
        image[:] = 128
        return
    rows, cols = distance_transform_edt(~filled, return_distances=False, return_indices=True)
    empty = ~filled
    image[empty] = image[rows[empty], cols[empty]]
