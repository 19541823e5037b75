"""Dense points and the mesh of a real run, in real Blender (bpy): ordinary
data an artist can edit, with the colors the backend computed."""
from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
pytestmark = pytest.mark.every_blender

from blender_addon.importers.points import linear_rgba  # noqa: E402
from blender_addon.shared.ply_io import read_ply  # noqa: E402
from blender_addon.importers.results import import_workspace  # noqa: E402


@pytest.fixture
def imported(temple_run):
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("blender_addon", default_set=True)
    collection = import_workspace(temple_run, "temple", bpy.context.scene)
    yield collection
    addon_utils.disable("blender_addon", default_set=True)
    bpy.ops.wm.read_factory_settings(use_empty=True)


def _colors(mesh) -> np.ndarray:
    attr = mesh.color_attributes["Color"]
    out = np.empty(len(attr.data) * 4, np.float32)
    attr.data.foreach_get("color", out)
    return out.reshape(-1, 4)


def test_dense_points_and_mesh_arrive_with_their_counts_and_colors(imported, temple_run):
    dense = read_ply(temple_run / "dense" / "fused.ply")
    mesh = read_ply(temple_run / "mesh" / "mesh.ply")
    cloud = bpy.data.objects["temple dense points"]
    surface = bpy.data.objects["temple mesh"]
    assert cloud.name in imported.objects and surface.name in imported.objects
    assert len(cloud.data.vertices) == len(dense.vertices) > 50_000
    assert len(surface.data.vertices) == len(mesh.vertices)
    assert len(surface.data.polygons) == len(mesh.faces) > 10_000
    for obj, ply in ((cloud, dense), (surface, mesh)):
        expected = linear_rgba(ply.column("red", "green", "blue", dtype=np.uint8))
        assert np.allclose(_colors(obj.data), expected, atol=1e-6)
        co = np.empty(len(obj.data.vertices) * 3, np.float32)
        obj.data.vertices.foreach_get("co", co)
        assert np.allclose(co.reshape(-1, 3), ply.column("x", "y", "z"), atol=1e-6)
    loops = np.empty(len(surface.data.polygons) * 3, np.int32)
    surface.data.polygons.foreach_get("vertices", loops)
    assert np.array_equal(loops.reshape(-1, 3), mesh.faces)
    # the colors show in renders (the material reads the attribute) and in Solid view (active color)
    material = surface.data.materials[0]
    assert any(n.bl_idname == "ShaderNodeVertexColor" and n.layer_name == "Color" for n in material.node_tree.nodes)
    assert surface.data.color_attributes.active_color.name == "Color"
    assert surface.data.validate() is False  # nothing Blender had to fix


def test_the_mesh_is_editable_and_the_edit_undoes(imported):
    import bmesh

    obj = bpy.data.objects["temple mesh"]
    faces = len(obj.data.polygons)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.ed.undo_push(message="imported")
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="DESELECT")
    bm = bmesh.from_edit_mesh(obj.data)
    bm.faces.ensure_lookup_table()
    bm.faces[0].select = True
    bmesh.update_edit_mesh(obj.data)
    bpy.ops.ed.undo_push(message="select a face")  # Blender's UI pushes a step after each operator
    bpy.ops.mesh.delete(type="FACE")
    bpy.ops.ed.undo_push(message="delete the face")
    assert len(bmesh.from_edit_mesh(obj.data).faces) == faces - 1
    bpy.ops.ed.undo()
    assert len(bmesh.from_edit_mesh(bpy.context.object.data).faces) == faces
    bpy.ops.object.mode_set(mode="OBJECT")
    assert len(bpy.context.object.data.polygons) == faces


def test_any_object_can_be_the_region_of_interest():
    """A rotated, scaled cube's bounds become the oriented box the backend crops to."""
    from backend.dense.roi import Box
    from blender_addon.link.roi import object_box

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_cube_add(size=2.0)
    cube = bpy.context.object
    cube.location, cube.rotation_euler, cube.scale = (1.0, 2.0, 3.0), (0.0, 0.0, np.radians(30)), (2.0, 1.0, 0.5)
    bpy.context.view_layer.update()
    box = Box.from_dict(object_box(cube))
    assert box.center == pytest.approx([1, 2, 3])
    assert box.half_size == pytest.approx([2, 1, 0.5])
    M = np.array(bpy.context.object.matrix_world)
    inside = M[:3, :3] @ np.array([0.95, -0.95, 0.95]) + M[:3, 3]  # near a corner, in local units
    outside = M[:3, :3] @ np.array([1.05, 0.0, 0.0]) + M[:3, 3]
    assert box.contains(np.array([inside, outside])).tolist() == [True, False]
    bpy.ops.object.empty_add(location=(0, 0, 0))
    bpy.context.object.empty_display_size = 0.5
    assert Box.from_dict(object_box(bpy.context.object)).half_size == pytest.approx([0.5, 0.5, 0.5])


def test_the_sidebar_sends_the_chosen_stages_and_region(tmp_path):
    """What Reconstruct asks the backend for, from the sidebar's choices."""
    from addon_helpers import disable_addon, fresh_blender_with_addon
    from conftest import BACKEND_PYTHON

    jobs = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path))
    try:
        settings = bpy.context.scene.reconstruct
        assert settings.stage_dense and settings.stage_mesh and settings.stage_texture and settings.stage_splats
        assert jobs.requested_stages(settings) == ["undistort", "fusion", "mesh", "texture", "splats"]
        settings.stage_mesh = settings.stage_texture = False
        assert jobs.requested_stages(settings) == ["undistort", "fusion", "splats"]
        settings.stage_dense = settings.stage_splats = False
        assert jobs.requested_stages(settings) == ["undistort"]
        assert jobs.dense_options(settings, "cuda") == {"device": "cuda"}
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.5, 0, 0))
        settings.roi_object = bpy.context.object
        options = jobs.dense_options(settings, "cpu")
        assert options["device"] == "cpu" and options["roi"]["center"] == pytest.approx([0.5, 0, 0])
        bpy.context.object.scale = (1, 1, 0)  # a flat object has no volume to crop to
        bpy.context.view_layer.update()
        with pytest.raises(jobs.UserError, match="no volume"):
            jobs.dense_options(settings, "cpu")
    finally:
        disable_addon()
