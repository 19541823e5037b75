"""How a job sits in Blender's scene: one parent empty ("<job> Origin") per
job collection carries every imported object of the job, whose local
coordinates stay those of the workspace (the backend's frame: upright,
centred, metres). Set Scale and Set Ground (ui/frame_ops.py) change only that
empty's matrix, so cameras, clouds, mesh and splats move together.

The empty's matrix is kept in <workspace>/adjustment.json (Layout.adjustment_file)
so a reimport, a rerun's per-stage import or a fresh file puts the job back
where the user placed it. This is Blender's own edit of how the job sits in
the scene: the add-on is its only writer and reader; the backend never reads
it (its results stay in the workspace frame)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..shared.layout import Layout

ORIGIN_KEY = "reconstruct_origin"  # on a job's parent empty: the workspace it places
ADJUSTMENT_VERSION = 1


def _path_key(path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def read_adjustment(workspace) -> Matrix | None:
    """The recorded parent matrix of `workspace`'s job, or None (none recorded, or unreadable)."""
    path = Layout(workspace).adjustment_file
    try:
        data = json.loads(path.read_text())
        m = np.array(data["matrix"], np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        return None
    return Matrix(m.tolist())


def write_adjustment(workspace, matrix) -> Path:
    """Record `matrix` atomically (tmp + os.replace): a crash never leaves half a file."""
    path = Layout(workspace).adjustment_file
    tmp = path.with_name(path.name + ".tmp")
    body = {"version": ADJUSTMENT_VERSION, "matrix": [list(map(float, row)) for row in matrix],
            "note": "Blender's placement of the job (Set Scale / Set Ground); the backend never reads it."}
    tmp.write_text(json.dumps(body, indent=1))
    os.replace(tmp, path)
    return path


def job_origin(collection, create: bool = False):
    """The parent empty of a job's collection (tagged with ORIGIN_KEY); a new one,
    named "<collection> Origin", placed as adjustment.json says, when `create`."""
    for obj in collection.objects:
        if obj.get(ORIGIN_KEY) is not None and obj.type == "EMPTY":
            return obj
    if not create:
        return None
    workspace = collection.get("reconstruct_workspace")
    origin = bpy.data.objects.new(f"{collection.name} Origin", None)
    origin.empty_display_type = "ARROWS"
    origin[ORIGIN_KEY] = str(workspace or "")
    collection.objects.link(origin)
    recorded = read_adjustment(workspace) if workspace else None
    if recorded is not None:
        origin.matrix_world = recorded
    return origin


def parent_to_origin(objects, origin) -> None:
    """Parent `objects` to `origin` keeping their local (workspace-frame) coordinates."""
    for obj in objects:
        obj.parent = origin
        obj.matrix_parent_inverse = Matrix.Identity(4)


def origin_of(obj):
    """The job parent empty `obj` hangs under (or is), else None."""
    while obj is not None:
        if obj.type == "EMPTY" and obj.get(ORIGIN_KEY) is not None:
            return obj
        obj = obj.parent
    return None


def to_workspace(collection_or_origin) -> np.ndarray:
    """4x4 world -> workspace frame of a job (identity when it has no parent empty)."""
    origin = collection_or_origin
    if origin is not None and not isinstance(origin, bpy.types.Object):
        origin = job_origin(origin)
    if origin is None:
        return np.eye(4)
    return np.linalg.inv(np.array(origin.matrix_world, np.float64))


def origin_for_workspace(workspace):
    """The parent empty placing `workspace`'s job, in any scene, else None."""
    key = _path_key(workspace)
    for obj in bpy.data.objects:
        tag = obj.get(ORIGIN_KEY)
        if obj.type == "EMPTY" and tag and obj.library is None and _path_key(tag) == key:
            return obj
    return None


def placement(origin) -> Matrix:
    """The parent empty's matrix in the world. From its own location, rotation and
    scale when it has no parent: right after an undo, matrix_world can still be
    the one from before the undo until the depsgraph runs; these are restored."""
    return origin.matrix_basis.copy() if origin.parent is None else origin.matrix_world.copy()


def record(origin) -> None:
    """Write `origin`'s matrix to its workspace's adjustment.json when it differs from it."""
    workspace = origin.get(ORIGIN_KEY)
    if not workspace or not Path(workspace).is_dir():
        return
    recorded = read_adjustment(workspace)
    current = np.array(placement(origin), np.float64)
    if recorded is None:
        if np.allclose(current, np.eye(4), atol=1e-9):
            return  # never adjusted: nothing to record
    elif np.allclose(np.array(recorded, np.float64), current, atol=1e-9):
        return
    write_adjustment(workspace, Matrix(current.tolist()))


@bpy.app.handlers.persistent
def record_after_undo(*_args) -> None:
    """Undo/redo puts a parent empty back to an earlier matrix: the file follows, so
    the recorded adjustment always matches what the scene shows. Cheap: one small
    file read per job origin, only on undo/redo."""
    for obj in bpy.data.objects:
        if obj.type == "EMPTY" and obj.get(ORIGIN_KEY) and obj.library is None:
            try:
                record(obj)
            except OSError:
                pass  # a workspace that went read-only or away: the scene is still right


def register_handlers() -> None:
    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        if record_after_undo not in handlers:
            handlers.append(record_after_undo)


def unregister_handlers() -> None:
    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        if record_after_undo in handlers:
            handlers.remove(record_after_undo)
