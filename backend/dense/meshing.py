"""Meshing: the fused point cloud to an editable, colored triangle mesh.

Screened Poisson (pycolmap's `poisson_meshing`, on the CPU) gives a closed,
smooth surface, but it also closes what no camera saw: a bubble around the
object and over the holes. We keep only what the points support:
1. faces further from every dense point than a few point spacings are
   unsupported. Large unsupported regions (the bubble, the caps over unseen
   areas) are dropped; small ones are holes in the points, where a patch
   had no texture to match, and Poisson's smooth fill is kept there;
2. faces outside the region of interest are dropped;
3. small disconnected pieces (under 1% of the faces) are dropped, before
   and after simplification: the reconstructed object is the large
   connected surface;
4. the mesh is simplified (quadric decimation) to the quality preset's face
   budget, and each vertex takes the colour of the dense points around it.
The result is written as PLY (vertex colours) and as GLB for other tools.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from blender_addon.shared.layout import MESH_GLB, MESH_PLY
from backend.errors import ErrorCode, ReconstructError
from backend.dense.fusion import MIN_DENSE_POINTS
from backend.job.device import memory_peak
from backend.options import DenseOptions
from backend.dense.roi import Box
from blender_addon.shared.ply_io import read_ply, write_ply

if TYPE_CHECKING:
    from backend.job.stage_context import StageContext

Progress = Callable[[float, str], None]

SUPPORT_SPACINGS = 4.0  # a face corner further than this many point spacings from the points is unsupported
MIN_PIECE = 0.01  # pieces with fewer than this fraction of the faces are dropped
MAX_HOLE = 0.05  # unsupported regions narrower than this fraction of the cloud's extent are filled holes


def point_spacing(tree, points: np.ndarray, sample: int = 20000) -> float:
    """Median distance from a point to its nearest neighbour."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(points), size=min(sample, len(points)), replace=False)
    d = tree.query(points[idx], k=2, workers=-1)[0][:, 1]
    return float(np.median(d))


def poisson_depth(extent: float, spacing: float, face_budget: int) -> int:
    """Octree depth whose cells are about two point spacings, within what the
    face budget can use (finer cells only to be decimated away cost time)."""
    depth = int(np.ceil(np.log2(max(extent / (2 * spacing), 2))))
    budget_depth = int(round(np.log2(np.sqrt(face_budget))))
    return int(np.clip(depth, 6, min(11, budget_depth)))


def mesh_points(fused_ply: Path, out_dir: Path, opts: DenseOptions, roi: Box, progress: Progress) -> dict:
    import pycolmap
    from scipy.spatial import cKDTree

    started = time.perf_counter()
    cloud = read_ply(fused_ply)
    points = cloud.column("x", "y", "z", dtype=np.float64)
    if len(points) < MIN_DENSE_POINTS:
        raise ReconstructError(ErrorCode.COULD_NOT_RECONSTRUCT, f"Only {len(points)} dense points: too few to mesh.",
                               "Check that the region of interest covers the subject.")
    colors = cloud.column("red", "green", "blue", dtype=np.float64)
    tree = cKDTree(points)
    spacing = point_spacing(tree, points)
    extent = float(np.linalg.norm(points.max(0) - points.min(0)))
    depth = opts.mesh_depth or poisson_depth(extent, spacing, opts.face_budget)
    progress(0.05, f"Poisson surface, octree depth {depth}")
    options = pycolmap.PoissonMeshingOptions()
    options.depth = depth
    options.trim = 0  # we trim by distance to the points below, which is sharper than density
    options.color = 0
    raw = out_dir / "poisson.ply"
    pycolmap.poisson_meshing(fused_ply, raw, options)
    mesh = read_ply(raw)
    raw.unlink()
    vertices, faces = mesh.column("x", "y", "z", dtype=np.float64), mesh.faces
    poisson_faces = len(faces)

    progress(0.6, "trimming unsupported faces")
    distance = tree.query(vertices, workers=-1)[0]
    unsupported = (distance >= SUPPORT_SPACINGS * spacing)[faces].any(1)
    faces = faces[~_large_regions(vertices, faces, unsupported, (MAX_HOLE * extent) ** 2)]
    faces = faces[roi.contains(vertices)[faces].all(1)]
    faces = _largest_pieces(faces, len(vertices))
    vertices, faces = _compact(vertices, faces)
    trimmed_faces = len(faces)

    if len(faces) > opts.face_budget:
        progress(0.75, f"simplifying {len(faces)} to {opts.face_budget} faces")
        import fast_simplification

        vertices, faces = fast_simplification.simplify(vertices.astype(np.float32), faces.astype(np.int32),
                                                       target_reduction=1 - opts.face_budget / len(faces))
        # Decimation can fold faces onto each other and split off slivers: drop them.
        faces = _largest_pieces(_without_folds(np.asarray(faces, np.int64)), len(vertices))
        vertices, faces = _compact(np.asarray(vertices, np.float64), faces)

    progress(0.9, "colouring")
    vertex_colors = _transfer_colors(tree, colors, vertices, spacing)
    normals = vertex_normals(vertices, faces)
    ply = out_dir / MESH_PLY
    write_ply(ply, {"x": vertices[:, 0].astype(np.float32), "y": vertices[:, 1].astype(np.float32),
                    "z": vertices[:, 2].astype(np.float32), "nx": normals[:, 0], "ny": normals[:, 1],
                    "nz": normals[:, 2], "red": vertex_colors[:, 0], "green": vertex_colors[:, 1],
                    "blue": vertex_colors[:, 2]}, faces)
    _write_glb(out_dir / MESH_GLB, vertices, faces, vertex_colors)
    edges = _boundary_edges(faces)
    return {"num_vertices": int(len(vertices)), "num_faces": int(len(faces)), "poisson_depth": depth,
            "poisson_faces": int(poisson_faces), "trimmed_faces": int(trimmed_faces),
            "boundary_edges": int(edges), "watertight": edges == 0, "point_spacing": spacing,
            "seconds": time.perf_counter() - started, **memory_peak()}


def _face_pieces(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """[F] label of the connected piece (through shared vertices) each face is in."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    return connected_components(graph, directed=False)[1][faces[:, 0]]


def _large_regions(vertices: np.ndarray, faces: np.ndarray, selected: np.ndarray, max_area: float) -> np.ndarray:
    """[F] bool: the `selected` faces that lie in connected regions of selected
    faces with more than `max_area` of surface."""
    out = np.zeros(len(faces), bool)
    if not selected.any():
        return out
    chosen = faces[selected]
    labels = _face_pieces(chosen, len(vertices))
    tri = vertices[chosen]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    region_area = np.bincount(labels, weights=area)
    out[np.nonzero(selected)[0]] = region_area[labels] > max_area
    return out


def _largest_pieces(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Faces of the connected pieces holding at least MIN_PIECE of all faces."""
    if len(faces) == 0:
        return faces
    labels = _face_pieces(faces, num_vertices)
    sizes = np.bincount(labels)
    return faces[sizes[labels] >= MIN_PIECE * len(faces)]


def _without_folds(faces: np.ndarray) -> np.ndarray:
    """Drop degenerate faces and every face that shares its three corners with another."""
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    _, inverse, counts = np.unique(np.sort(faces, axis=1), axis=0, return_inverse=True, return_counts=True)
    return faces[counts[inverse.ravel()] == 1]


def _compact(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the vertices no face uses."""
    used, inverse = np.unique(faces, return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3)


def _transfer_colors(tree, colors: np.ndarray, vertices: np.ndarray, spacing: float) -> np.ndarray:
    """[V, 3] uint8: inverse-distance mean of the 8 nearest dense points' colours."""
    d, idx = tree.query(vertices, k=8, workers=-1)
    w = 1.0 / np.maximum(d, 0.25 * spacing)
    rgb = np.einsum("vk,vkc->vc", w, colors[idx]) / w.sum(1, keepdims=True)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V, 3] float32 area-weighted vertex normals."""
    tri = vertices[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _boundary_edges(faces: np.ndarray) -> int:
    """Edges used by exactly one face (0 for a closed surface)."""
    if len(faces) == 0:
        return 0
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int(np.sum(counts == 1))


def _write_glb(path: Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    import trimesh

    rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
    # glTF is +Y up; Blender's importer turns (x, y, z) back into (x, -z, y),
    # so the mesh lands where the add-on puts it, beside the cameras.
    y_up = vertices[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    mesh = trimesh.Trimesh(vertices=y_up, faces=faces, vertex_colors=rgba, process=False)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(mesh.export(file_type="glb"))
    tmp.replace(path)


def mesh_stage(ctx: "StageContext") -> dict:
    """The mesh stage: meshes the fused cloud inside the region fusion used."""
    ctx.out.mkdir(parents=True)
    return mesh_points(ctx.path("fusion"), ctx.out, ctx.options.dense, Box.from_dict(ctx.input["roi"]), ctx.progress)
