"""A finished workspace becomes Blender data: one collection per job with
the cameras, the sparse and dense point clouds, the mesh and the splats. Used by the
Reconstruct operator and by the demo's .blend export, so both take the
same path."""
from __future__ import annotations

from pathlib import Path

import bpy

from .colmap_io import read_model
from .importers.cameras import import_cameras, make_active_camera, workspace_model
from .importers.mesh import import_mesh, show_vertex_colors_in_solid_view
from .importers.points import import_points
from .importers.splats import import_splats
from .ply_io import read_ply
from .splat_ply import read_splats

PARTS = ("cameras", "sparse", "dense", "mesh", "splats")
# Splats shown at full density up to this many; beyond, the display keeps a
# random fraction (the Density input of the object's modifier; renders and
# exports can turn it back up).
DISPLAY_SPLATS = 300_000


def dense_points_file(workspace: Path) -> Path:
    return Path(workspace) / "dense" / "fused.ply"


def mesh_file(workspace: Path) -> Path:
    return Path(workspace) / "mesh" / "mesh.ply"


def splats_file(workspace: Path) -> Path:
    return Path(workspace) / "splats" / "splats.ply"


def import_workspace(workspace: Path, name: str, scene, point_size: float = 0.01,
                     parts: tuple[str, ...] = PARTS):
    """Import `parts` of `workspace` into a new collection (named `name`,
    made unique by Blender) in `scene`; returns the collection. Parts whose
    files the workspace lacks are skipped."""
    model_dir, image_dir = workspace_model(workspace)
    if not model_dir.is_dir():
        raise ValueError(f"{workspace} has no sparse model (sparse/model) yet")
    # Read everything before creating anything: a bad file leaves the scene as it was.
    # The undistorted model holds the same points as the SfM model.
    model = read_model(model_dir)
    dense = read_ply(dense_points_file(workspace)) if "dense" in parts and dense_points_file(workspace).exists() \
        else None
    mesh = read_ply(mesh_file(workspace)) if "mesh" in parts and mesh_file(workspace).exists() else None
    splats = read_splats(splats_file(workspace)) if "splats" in parts and splats_file(workspace).exists() else None
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)
    try:
        cameras = import_cameras(model, collection, image_dir) if "cameras" in parts else []
        if "sparse" in parts:
            import_points(f"{name} sparse points", model.xyz, model.rgb, collection, point_size=point_size)
        if dense is not None:
            # Dense points sit far closer together than sparse ones.
            import_points(f"{name} dense points", dense.column("x", "y", "z"), _rgb(dense), collection,
                          point_size=point_size / 4)
        if mesh is not None:
            import_mesh(f"{name} mesh", mesh.column("x", "y", "z"), mesh.faces, _rgb(mesh), collection)
            show_vertex_colors_in_solid_view(getattr(bpy.context, "screen", None))
        if splats is not None:
            import_splats(f"{name} splats", splats, collection,
                          density=min(1.0, DISPLAY_SPLATS / max(1, len(splats))))
    except Exception:
        # A failed import leaves the scene as it was.
        for obj in list(collection.objects):
            bpy.data.objects.remove(obj)
        bpy.data.collections.remove(collection)
        raise
    collection["reconstruct_workspace"] = str(workspace)
    if cameras and scene.camera is None:
        make_active_camera(scene, cameras[0])
    return collection


def _rgb(ply):
    return ply.column("red", "green", "blue", dtype="uint8") if ply.has("red", "green", "blue") else None
