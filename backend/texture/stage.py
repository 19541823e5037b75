"""The texture stage: the mesh stage's mesh, coloured from the undistorted
photos into a texture atlas (views.py chooses a photo per face, atlas.py
lays out and packs the charts, level.py levels the colours across seams,
bake.py fills the texels, files.py writes OBJ + MTL + PNG and GLB).

Runs on the CPU with numpy and scipy: every step is a vectorised pass over
faces or texels, about a minute for a 200k-face mesh into a 4k atlas on two
cores (benchmarks/texture_fountain.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from blender_addon.shared.layout import ATLAS_PNG, TEXTURE_INFO, TEXTURED_GLB, TEXTURED_OBJ, UNDISTORTED_IMAGES
from blender_addon.shared.obj_io import write_obj
from blender_addon.shared.ply_io import read_ply
from backend.dense.scene import load_scene
from backend.job.device import memory_peak
from backend.texture import atlas as atlas_
from backend.texture import bake as bake_
from backend.texture import files, level, views as views_
from backend.texture.photos import Photos

if TYPE_CHECKING:
    from backend.job.stage_context import StageContext
    from backend.options import TextureOptions

Progress = Callable[[float, str], None]


def texture_mesh(mesh_ply: Path, undistorted: Path, out: Path, size: int, progress: Progress) -> dict:
    started = time.perf_counter()
    ply = read_ply(mesh_ply)
    vertices = ply.column("x", "y", "z", dtype=np.float64)
    faces = np.asarray(ply.faces, np.int64)
    rgb = ply.column("red", "green", "blue", dtype=np.float64) if ply.has("red", "green", "blue") else None
    scene = load_scene(undistorted, 1 << 30)  # the photos' full undistorted size
    photos = Photos(undistorted / UNDISTORTED_IMAGES, scene.views)
    timings = {}

    progress(0.02, f"seeing {len(faces):,} faces from {len(scene.views)} photos")
    t = time.perf_counter()
    quality = np.zeros((len(faces), len(scene.views)))
    projections = {}
    for i, view in enumerate(scene.views):
        proj = views_.project(view, vertices, faces)
        visible = views_.visible_faces(view, proj)
        quality[:, i] = views_.face_quality(view, proj, vertices, faces, visible)
        if quality[:, i].any():
            projections[i] = proj
        progress(0.02 + 0.3 * (i + 1) / len(scene.views), f"depth test from photo {i + 1} of {len(scene.views)}")
    colours = level.face_colours(photos, projections, quality)
    quality = views_.consistent_views(quality, colours)
    adjacency = views_.face_adjacency(faces)
    labels = views_.select_views(quality, adjacency)
    timings["views"] = time.perf_counter() - t

    progress(0.35, "packing the atlas")
    t = time.perf_counter()
    patch = atlas_.patches(labels, adjacency)
    corner, chart = atlas_.layout_charts(vertices, faces, labels, patch,
                                         {i: p.xy for i, p in projections.items()})
    packed = atlas_.pack(corner, chart, faces, size)
    timings["atlas"] = time.perf_counter() - t

    progress(0.45, "levelling colours across seams")
    t = time.perf_counter()
    colours[quality == 0] = np.nan  # only the photos that passed the consistency check
    gains = level.photo_gains(colours)
    del colours
    offsets, offset_index = level.seam_offsets(photos, projections, faces, labels, gains)
    timings["levelling"] = time.perf_counter() - t

    t = time.perf_counter()
    image, baked = bake_.bake(packed, vertices, faces, rgb, labels, scene.views, photos, gains, offsets,
                              offset_index, lambda f, m: progress(0.5 + 0.35 * f, m))
    timings["bake"] = time.perf_counter() - t

    progress(0.88, "writing textured.obj, textured.glb and the atlas")
    t = time.perf_counter()
    files.write_png(out / ATLAS_PNG, image)
    atlas_vertices = vertices[packed.vertex]
    atlas_rgb = None if rgb is None else np.clip(np.round(rgb[packed.vertex]), 0, 255)
    write_obj(out / TEXTURED_OBJ, atlas_vertices, atlas_rgb, packed.uv, packed.faces, ATLAS_PNG, files.MATERIAL)
    files.write_glb(out / TEXTURED_GLB, atlas_vertices, packed.uv, packed.faces, image)
    timings["files"] = time.perf_counter() - t

    seen = labels >= 0
    used = np.unique(labels[seen])
    edges = adjacency.tocoo()  # each pair of neighbouring faces twice
    seams = int((labels[edges.row] != labels[edges.col]).sum() // 2)
    stat = mesh_ply.stat()
    result = {
        "size": size, "atlas": ATLAS_PNG, "num_vertices": int(len(atlas_vertices)), "num_faces": int(len(faces)),
        "charts": packed.charts, "texels_per_pixel": packed.scale, "utilization": packed.utilization,
        "faces_seen": float(seen.mean()), "photos_used": int(len(used)), "seam_edges": seams,
        "gains": {scene.views[i].name: [round(float(g), 4) for g in gains[i]] for i in used},
        **baked, "timings": {k: round(v, 2) for k, v in timings.items()},
        # Which mesh this texture is for: the add-on uses it only while mesh.ply is this one.
        "mesh_file": {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "seconds": time.perf_counter() - started, **memory_peak(),
    }
    (out / TEXTURE_INFO).write_text(json.dumps(result, indent=1))
    return result


def texture_stage(ctx: "StageContext") -> dict:
    """The texture stage: the mesh coloured from the photos into one atlas."""
    ctx.out.mkdir(parents=True)
    opts: "TextureOptions" = ctx.options.texture
    return texture_mesh(ctx.layout.mesh_ply, ctx.path("undistort"), ctx.out, opts.size, ctx.progress)
