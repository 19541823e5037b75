"""A finished workspace becomes Blender data: one collection per job with
the cameras and the sparse point cloud. Used by the Reconstruct operator and
by the demo's .blend export, so both take the same path."""
from __future__ import annotations

from pathlib import Path

import bpy

from .colmap_io import read_model
from .importers.cameras import import_cameras, make_active_camera, workspace_model
from .importers.points import import_points


def import_workspace(workspace: Path, name: str, scene, point_size: float = 0.01):
    """Import `workspace` into a new collection (named `name`, made unique by
    Blender) in `scene`; returns the collection."""
    model_dir, image_dir = workspace_model(workspace)
    if not model_dir.is_dir():
        raise ValueError(f"{workspace} has no sparse model (sparse/model) yet")
    # Read once, before creating anything: a bad model leaves the scene as it was.
    # The undistorted model holds the same points as the SfM model.
    model = read_model(model_dir)
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)
    try:
        cameras = import_cameras(model, collection, image_dir)
        import_points(f"{name} sparse points", model.xyz, model.rgb, collection, point_size=point_size)
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
