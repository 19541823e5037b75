"""Set Scale / Set Ground in real Blender (bpy): the whole job moves as one
under its parent empty, the cameras still see the mesh exactly as before,
adjustment.json follows (a reimport in a fresh file applies it), and undo
puts both the scene and the file back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
pytestmark = pytest.mark.every_blender

import bmesh  # noqa: E402
from mathutils import Vector  # noqa: E402

from addon_helpers import disable_addon, fresh_blender_with_addon  # noqa: E402
from blender_addon.shared.colmap_io import write_text_model  # noqa: E402
from blender_addon.shared.layout import Layout  # noqa: E402
from blender_addon.shared.ply_io import write_ply  # noqa: E402
from blender_addon.shared.splat_ply import Splats, write_splats  # noqa: E402

W, H, F = 64, 48, 60.0
# The ground in the workspace: a plane tilted 20 degrees about X, through (0.3, -0.2, 0.5).
TILT = np.radians(20.0)
NORMAL = np.array([0.0, -np.sin(TILT), np.cos(TILT)])
U, V = np.array([1.0, 0.0, 0.0]), np.cross(NORMAL, [1.0, 0.0, 0.0])
CENTER = np.array([0.3, -0.2, 0.5])


def look_at(eye, target):
    """COLMAP world-to-camera R, t of a camera at `eye` looking at `target` (y down)."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return R, -R @ eye


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A small workspace (the layout the backend writes): 3 cameras on the normal's
    side of a tilted ground plane, sparse and dense points, a gridded mesh, splats."""
    ws = tmp_path / "ws"
    lay = Layout(ws)
    g = np.linspace(-1, 1, 5)
    grid = np.array([CENTER + a * U + b * V for a in g for b in g])
    eyes = [CENTER + 3 * NORMAL + off for off in ([0.5, 0, 0], [-0.5, 0.3, 0], [0, -0.5, 0.2])]
    images = [(i + 1, *look_at(eye, CENTER), 1, f"cam{i}.jpg") for i, eye in enumerate(eyes)]
    write_text_model(lay.model, {1: ("PINHOLE", W, H, [F, F, W / 2, H / 2])}, images,
                     grid, np.full((len(grid), 3), 200, np.uint8))
    rgb = {"red": np.full(len(grid), 90, np.uint8), "green": np.full(len(grid), 120, np.uint8),
           "blue": np.full(len(grid), 30, np.uint8)}
    xyz = {"x": grid[:, 0].astype(np.float32), "y": grid[:, 1].astype(np.float32), "z": grid[:, 2].astype(np.float32)}
    lay.fused.parent.mkdir(parents=True, exist_ok=True)
    write_ply(lay.fused, {**xyz, **rgb})
    faces = np.array([[r * 5 + c, r * 5 + c + 1, (r + 1) * 5 + c + 1] for r in range(4) for c in range(4)]
                     + [[r * 5 + c, (r + 1) * 5 + c + 1, (r + 1) * 5 + c] for r in range(4) for c in range(4)], np.int32)
    lay.mesh_dir.mkdir(parents=True, exist_ok=True)
    write_ply(lay.mesh_ply, {**xyz, **rgb}, faces)
    n = 6
    lay.splats_dir.mkdir(parents=True, exist_ok=True)
    write_splats(lay.splats_ply, Splats(means=grid[:n], log_scales=np.full((n, 3), np.log(0.05)),
                                        quats=np.tile([1.0, 0, 0, 0], (n, 1)),
                                        opacity_logits=np.full(n, 2.0), sh_dc=np.zeros((n, 3)), sh_rest=np.zeros((n, 0, 3))))
    return ws


@pytest.fixture
def addon(tmp_path):
    fresh_blender_with_addon("/nonexistent/python", str(tmp_path / "workspaces"))
    yield
    disable_addon()


def import_job(ws):
    from blender_addon.importers.results import import_workspace

    collection = import_workspace(ws, "job", bpy.context.scene)
    bpy.context.view_layer.update()  # children's world matrices follow a recorded placement
    return collection


def world_vertices(obj) -> np.ndarray:
    M = np.array(obj.matrix_world)
    co = np.array([tuple(v.co) for v in obj.data.vertices])
    return co @ M[:3, :3].T + M[:3, 3]


def projections(collection) -> np.ndarray:
    """Every camera's pixel coordinates of every mesh vertex (Blender's own projection)."""
    from bpy_extras.object_utils import world_to_camera_view

    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = W, H
    mesh = next(o for o in collection.objects if o.get("reconstruct_part") == "mesh")
    cams = sorted((o for o in collection.objects if o.type == "CAMERA"), key=lambda o: o.name)
    out = [[tuple(world_to_camera_view(scene, cam, Vector(p))) for p in world_vertices(mesh)] for cam in cams]
    ndc = np.array(out)
    assert np.all(ndc[..., 2] > 0) and np.all((ndc[..., :2] > 0) & (ndc[..., :2] < 1))  # in view
    return ndc[..., :2] * [W, H]  # pixels (the depth scales with the job; the image does not)


def render_cameras(collection) -> list[dict]:
    from blender_addon.ui.previews import camera_pixels

    cams = sorted((o for o in collection.objects if o.type == "CAMERA"), key=lambda o: o.name)
    return [camera_pixels(bpy.context.scene, cam) for cam in cams]


def edit_select(obj, indices) -> None:
    """Edit Mode on `obj` with exactly the vertices `indices` selected, as a user leaves it."""
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(obj.data)
    for v in bm.verts:
        v.select = v.index in indices
    bm.select_flush_mode()
    bmesh.update_edit_mesh(obj.data)
    bpy.ops.ed.undo_push(message="select")  # Blender's UI pushes a step after each user action


def recorded(ws) -> np.ndarray:
    return np.array(json.loads(Layout(ws).adjustment_file.read_text())["matrix"])


def part(collection, name):
    return next(o for o in collection.objects if o.get("reconstruct_part") == name)


def test_every_object_of_the_job_hangs_under_one_origin(addon, workspace):
    collection = import_job(workspace)
    origins = [o for o in collection.objects if o.type == "EMPTY"]
    assert [o.name for o in origins] == ["job Origin"]
    others = [o for o in collection.objects if o.type != "EMPTY"]
    assert {o.get("reconstruct_part") for o in others} == {"cameras", "sparse", "dense", "mesh", "splats"}
    assert all(o.parent == origins[0] for o in others)
    # Local coordinates are the workspace's: the mesh's vertices are the PLY's.
    mesh = part(collection, "mesh")
    assert np.allclose(world_vertices(mesh)[0], CENTER - U - V, atol=1e-6)
    assert not Layout(workspace).adjustment_file.exists()  # nothing adjusted, nothing written
    import_job(workspace)  # a reimport replaces the parts, keeps the one origin
    assert [o.name for o in collection.objects if o.type == "EMPTY"] == ["job Origin"]
    assert all(o.parent is not None for o in collection.objects if o.type != "EMPTY")


def test_set_scale_and_ground_move_the_job_as_one_and_survive_reimport_and_undo(addon, workspace, tmp_path):
    collection = import_job(workspace)
    origin = next(o for o in collection.objects if o.type == "EMPTY")
    mesh, splats, dense = part(collection, "mesh"), part(collection, "splats"), part(collection, "dense")
    before = projections(collection)
    splat_cameras = render_cameras(collection)
    bpy.ops.ed.undo_push(message="imported")

    # Poll says why it cannot run in Object Mode.
    bpy.context.view_layer.objects.active = mesh
    assert not bpy.ops.reconstruct.set_scale.poll()

    # Set Scale: vertices 0 and 4 are 2 m apart in the workspace; make them 5 m.
    edit_select(mesh, {0, 4})
    # undo=True: the undo push Blender's UI makes after an operator with the UNDO option.
    assert bpy.ops.reconstruct.set_scale("EXEC_DEFAULT", True, distance=5.0) == {"FINISHED"}
    assert bpy.context.mode == "OBJECT"
    p = world_vertices(mesh)
    assert np.linalg.norm(p[4] - p[0]) == pytest.approx(5.0, rel=1e-6)
    assert np.allclose(p, 2.5 * world_vertices_local(mesh), atol=1e-5)  # about the world origin
    for obj in (splats, dense):
        assert np.allclose(world_vertices(obj), 2.5 * world_vertices_local(obj), atol=1e-5)
    cams = [o for o in collection.objects if o.type == "CAMERA"]
    assert all(np.allclose(c.matrix_world.translation, 2.5 * c.matrix_basis.translation, atol=1e-5) for c in cams)
    assert np.abs(projections(collection) - before).max() < 1e-3  # px
    scaled = np.array(origin.matrix_world)
    assert np.allclose(recorded(workspace), scaled)

    # Set Ground: the mesh (the tilted plane) becomes the ground at Z = 0, cameras above.
    edit_select(mesh, set(range(25)))
    assert bpy.ops.reconstruct.set_ground("EXEC_DEFAULT", True) == {"FINISHED"}
    p = world_vertices(mesh)
    assert np.abs(p[:, 2]).max() < 1e-5
    assert all(c.matrix_world.translation.z > 1.0 for c in cams)  # the cameras' side is up
    assert np.linalg.norm(p[4] - p[0]) == pytest.approx(5.0, rel=1e-6)  # the scale stays
    assert np.abs(world_vertices(splats)[:, 2]).max() < 1e-5 and np.abs(world_vertices(dense)[:, 2]).max() < 1e-5
    assert np.abs(projections(collection) - before).max() < 1e-3  # px
    grounded = np.array(origin.matrix_world)
    # The splats' render request (previews) stays in the workspace frame the backend renders in.
    for want, got in zip(splat_cameras, render_cameras(collection)):
        assert np.allclose(want["R"], got["R"], atol=1e-5) and np.allclose(want["t"], got["t"], atol=1e-5)
    assert np.allclose(recorded(workspace), grounded)

    # Errors a user understands.
    edit_select(mesh, {0})
    with pytest.raises(RuntimeError, match="Select exactly two vertices"):
        bpy.ops.reconstruct.set_scale(distance=1.0)
    with pytest.raises(RuntimeError, match="three or more vertices"):
        bpy.ops.reconstruct.set_ground()
    bpy.ops.object.mode_set(mode="OBJECT")
    bpy.ops.ed.undo_push(message="object mode")

    # Undo back over Set Ground: the parent and the file are the scaled ones again.
    # (An undo reloads the data: Python's references go stale, look objects up by name.)
    steps = 0
    while not np.allclose(np.array(bpy.data.objects["job Origin"].matrix_world), scaled, atol=1e-6):
        bpy.ops.ed.undo()  # raises at the bottom of the stack: undo must reach the scaled state
        steps += 1
    assert steps > 0
    origin = bpy.data.objects["job Origin"]
    assert np.allclose(np.array(origin.matrix_world), scaled, atol=1e-6)
    assert np.allclose(recorded(workspace), scaled, atol=1e-6)
    bpy.ops.ed.redo()
    while not np.allclose(np.array(bpy.data.objects["job Origin"].matrix_world), grounded, atol=1e-6):
        bpy.ops.ed.redo()  # raises when the stack ends: redo must reach the grounded state
    assert np.allclose(recorded(workspace), grounded, atol=1e-6)

    # A fresh file importing the workspace puts the job where the user left it.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    collection = import_job(workspace)
    origin = next(o for o in collection.objects if o.type == "EMPTY")
    assert np.allclose(np.array(origin.matrix_world), grounded, atol=1e-6)
    assert np.abs(projections(collection) - before).max() < 1e-3  # px
    assert np.abs(world_vertices(part(collection, "mesh"))[:, 2]).max() < 1e-5


def world_vertices_local(obj) -> np.ndarray:
    return np.array([tuple(v.co) for v in obj.data.vertices])


def test_the_region_goes_to_the_backend_in_the_workspace_frame(addon, workspace):
    from backend.dense.roi import Box
    from blender_addon.link import jobs
    from mathutils import Matrix

    collection = import_job(workspace)
    origin = next(o for o in collection.objects if o.type == "EMPTY")
    origin.matrix_world = Matrix.Translation((0, 0, -1)) @ Matrix.Rotation(0.3, 4, "X") @ Matrix.Scale(2.0, 4)
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.4, 0.1, 0.2))  # drawn in Blender's world
    cube = bpy.context.object
    bpy.context.view_layer.update()
    settings = bpy.context.scene.reconstruct
    settings.roi_object = cube
    box = Box.from_dict(jobs.dense_options(settings, "cpu", workspace)["roi"])
    to_ws = np.linalg.inv(np.array(origin.matrix_world))
    inside = to_ws @ np.array([0.4 + 0.45, 0.1, 0.2 - 0.45, 1.0])
    outside = to_ws @ np.array([0.4 + 0.55, 0.1, 0.2, 1.0])
    assert box.contains(np.array([inside[:3], outside[:3]])).tolist() == [True, False]
    assert box.half_size == pytest.approx([0.25, 0.25, 0.25])  # 0.5 m in Blender is 0.25 workspace units
