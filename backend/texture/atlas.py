"""The UV atlas: charts packed into one square image.

The charts are the texture patches themselves (Waechter et al. 2014): each
connected group of faces that takes its colour from the same photo is laid
out as that photo sees it, its UVs its pixel positions there. That layout has
no distortion relative to the source, keeps the photo's own texel density,
and needs no unwrap. xatlas (MIT, Python wheels) packs the charts; its own
chart segmentation and parametrisation would cost about 30 s per 50k faces on
two cores, so it is not used. Faces no photo sees get charts of their own,
projected onto the plane of their region (or one face per chart where that
plane folds); their colour comes from the mesh's vertex colours.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.errors import ErrorCode, ReconstructError

FILL = 0.55  # the charts' share of the atlas the first packing attempt aims at
PADDING_PER_1K = 1  # texels between charts per 1024 px of atlas: 4 at 4k, room for two mip levels


@dataclass
class Atlas:
    size: int
    corner_uv: np.ndarray  # [F, 3, 2] texel coordinates (x right, y down) in the size x size image
    uv: np.ndarray  # [V', 2] the same per atlas vertex, as OBJ and glTF store them (0-1, v up)
    faces: np.ndarray  # [F, 3] int32 atlas vertex per corner (same face order as the mesh)
    vertex: np.ndarray  # [V'] the mesh vertex each atlas vertex is a copy of
    charts: int
    scale: float  # atlas texels per photo pixel
    utilization: float


def patches(labels: np.ndarray, adjacency) -> np.ndarray:
    """[F] patch id: connected faces (through shared edges) with the same label."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a = adjacency.tocoo()
    same = labels[a.row] == labels[a.col]
    graph = coo_matrix((np.ones(int(same.sum()), np.int8), (a.row[same], a.col[same])), shape=adjacency.shape)
    return connected_components(graph, directed=False)[1]


def layout_charts(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray, patch: np.ndarray,
                  photo_xy: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every face's corners in chart space, in photo pixels (before packing):
    [F, 3, 2], and [F] the chart of each face. photo_xy[view]: [F, 3, 2] the
    faces' projections into that photo."""
    corner = np.zeros((len(faces), 3, 2))
    chart = patch.copy()
    seen = labels >= 0
    for view, xy in photo_xy.items():
        mine = labels == view
        corner[mine] = xy[mine]
    # The texel density of the seen charts (pixels per world unit), for the unseen ones.
    tri = vertices[faces]
    world_area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pixel_area = _area(corner)
    density = float(np.sqrt(np.median(pixel_area[seen] / np.maximum(world_area[seen], 1e-30)))) if seen.any() \
        else 1.0 / max(np.sqrt(np.median(world_area)), 1e-12)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    unit = normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-30)
    unseen = np.nonzero(~seen)[0]
    if len(unseen):
        # Each unseen region onto the plane of its mean normal...
        region = np.unique(patch[unseen], return_inverse=True)[1]
        n = np.zeros((region.max() + 1, 3))
        np.add.at(n, region, normal[unseen])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)
        helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        u = np.cross(n, helper)
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-30)
        v = np.cross(n, u)
        pts = tri[unseen]
        corner[unseen] = np.stack([np.einsum("fkc,fc->fk", pts, u[region]),
                                   np.einsum("fkc,fc->fk", pts, v[region])], -1) * density
        # ... except the faces that plane shows folded or edge-on: a chart each, in their own plane.
        folded = unseen[np.einsum("fc,fc->f", unit[unseen], n[region]) <= 0.3]
        if len(folded):
            e1 = tri[folded, 1] - tri[folded, 0]
            fu = e1 / np.maximum(np.linalg.norm(e1, axis=1, keepdims=True), 1e-30)
            fv = np.cross(unit[folded], fu)
            rel = tri[folded] - tri[folded, :1]
            corner[folded] = np.stack([np.einsum("fkc,fc->fk", rel, fu),
                                       np.einsum("fkc,fc->fk", rel, fv)], -1) * density
            chart[folded] = int(patch.max()) + 1 + np.arange(len(folded))
    return corner, chart


def pack(corner: np.ndarray, chart: np.ndarray, faces: np.ndarray, size: int) -> Atlas:
    """Pack the charts into one size x size atlas with xatlas, as large as fits."""
    import xatlas

    # Atlas vertices: one per (mesh vertex, chart), so charts share nothing; each
    # chart is moved apart from the others so that none touches another before packing.
    keys = faces.astype(np.int64).ravel() * (int(chart.max()) + 1) + np.repeat(chart, 3)
    unique, inverse = np.unique(keys, return_inverse=True)
    vertex = unique // (int(chart.max()) + 1)
    atlas_faces = inverse.reshape(-1, 3).astype(np.uint32)
    uv = np.zeros((len(unique), 2))
    uv[inverse] = corner.reshape(-1, 2)
    vchart = unique % (int(chart.max()) + 1)
    lo = np.full((int(chart.max()) + 1, 2), np.inf)
    np.minimum.at(lo, vchart, uv)
    uv -= lo[vchart]
    span = float(np.nanmax(uv)) + 10.0
    columns = int(np.ceil(np.sqrt(chart.max() + 1)))
    uv += np.stack([vchart % columns, vchart // columns], 1) * span
    area = float(_area(corner).sum())
    scale = np.sqrt(FILL * size * size / max(area, 1e-12))
    for _ in range(24):
        atlas = xatlas.Atlas()
        atlas.add_uv_mesh(uv.astype(np.float32), atlas_faces)
        options = xatlas.PackOptions()
        options.resolution, options.bilinear = size, True
        options.padding = max(1, PADDING_PER_1K * size // 1024)
        options.texels_per_unit = float(scale)
        atlas.generate(xatlas.ChartOptions(), options)
        if atlas.atlas_count == 1:
            break
        scale *= 0.85
    else:
        raise ReconstructError(ErrorCode.STAGE_FAILED, f"The mesh's {chart.max() + 1} texture charts do not fit "
                               f"one {size} px atlas.", "Choose a larger texture size (--texture-size, the "
                               "sidebar's Texture) or a smaller face budget.")
    mapping, indices, out_uv = atlas[0]
    out_uv = np.asarray(out_uv, np.float64)
    # xatlas: texel coordinates, y down. A zero-area chart (a degenerate face) is left
    # unpacked, outside the atlas: clamped into it, it shows a gutter colour.
    texel = np.clip(out_uv * [atlas.width, atlas.height], 0.0, float(size))
    corner_uv = texel[np.asarray(indices, np.int64)]
    return Atlas(size, corner_uv, np.stack([texel[:, 0] / size, 1.0 - texel[:, 1] / size], 1),
                 np.asarray(indices, np.int32), vertex[np.asarray(mapping, np.int64)], int(atlas.chart_count),
                 float(scale), float(atlas.utilization))


def _area(corner: np.ndarray) -> np.ndarray:
    a, b, c = corner[:, 0], corner[:, 1], corner[:, 2]
    return 0.5 * np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
