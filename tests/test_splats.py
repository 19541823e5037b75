"""Gaussian splats in Blender (bpy): files in the standard 3DGS PLY layout,
ours or another tool's, become oriented, colored ellipsoids that Cycles
renders from a photo's camera. (Training splats is issue 5's next step; these
tests cover the file layout and the Blender side.)"""
from __future__ import annotations

import numpy as np
import pytest

plyfile = pytest.importorskip("plyfile")
bpy = pytest.importorskip("bpy")

from blender_addon.shared.colmap_io import Camera, Image, Model  # noqa: E402
from blender_addon.importers.cameras import import_cameras, make_active_camera  # noqa: E402
from blender_addon.importers.points import linear_rgba  # noqa: E402
from blender_addon.importers.splats import import_splats, set_display  # noqa: E402
from blender_addon.shared.ply_io import PlyError  # noqa: E402
from blender_addon.shared.splat_ply import SH_C0, Splats, read_splats, write_splats  # noqa: E402

STANDARD = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.fixture(autouse=True)
def empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)


def blob(n: int = 3000, degree: int = 3, seed: int = 0) -> Splats:
    """Splats filling a ball of radius ~0.5 at the origin."""
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(rng.normal(size=(n, 3)).astype(np.float32) * 0.25, np.full((n, 3), np.log(0.05), np.float32),
                  rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=n).astype(np.float32) + 2,
                  rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, k, 3)).astype(np.float32))


def test_our_ply_has_the_standard_layout_and_conventions(tmp_path):
    splats = blob(50)
    write_splats(tmp_path / "s.ply", splats)
    theirs = plyfile.PlyData.read(str(tmp_path / "s.ply"))["vertex"]
    assert [p.name for p in theirs.properties] == STANDARD
    assert all(p.val_dtype in ("f4", "float32", "float") for p in theirs.properties)
    assert np.allclose(theirs["opacity"], splats.opacity_logits)  # a logit, not 0..1
    assert np.allclose(theirs["scale_1"], splats.log_scales[:, 1])  # a log
    assert np.allclose(theirs["rot_0"], splats.quats[:, 0])  # w first
    # f_rest: all of red's 15 coefficients, then green's, then blue's
    assert np.allclose(theirs["f_rest_0"], splats.sh_rest[:, 0, 0])
    assert np.allclose(theirs["f_rest_1"], splats.sh_rest[:, 1, 0])
    assert np.allclose(theirs["f_rest_15"], splats.sh_rest[:, 0, 1])
    back = read_splats(tmp_path / "s.ply")
    assert back.degree == 3
    for field in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert np.array_equal(getattr(back, field), getattr(splats, field)), field


def test_a_degree_0_ply_from_another_tool_imports_with_its_colors(tmp_path):
    """Written by plyfile, with no f_rest and extra properties another tool adds."""
    n = 777
    rng = np.random.default_rng(2)
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3", "filter_3D", "semantic_id"]
    rows = np.zeros(n, [(name, "f4") for name in names[:-1]] + [("semantic_id", "i4")])
    for name in names:
        rows[name] = rng.normal(size=n)
    rows["semantic_id"] = 7
    plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")]).write(str(tmp_path / "other.ply"))
    splats = read_splats(tmp_path / "other.ply")
    assert len(splats) == n and splats.degree == 0
    obj = import_splats("other", splats, bpy.context.scene.collection)
    assert len(obj.data.vertices) == n
    expected = np.clip(0.5 + SH_C0 * np.stack([rows[f"f_dc_{c}"] for c in range(3)], 1), 0, 1)
    colors = np.empty(n * 4, np.float32)
    obj.data.color_attributes["Color"].data.foreach_get("color", colors)
    assert np.allclose(colors.reshape(n, 4), linear_rgba(expected), atol=1e-5)
    opacity = np.empty(n, np.float32)
    obj.data.attributes["opacity"].data.foreach_get("value", opacity)
    assert np.allclose(opacity, 1 / (1 + np.exp(-rows["opacity"])), atol=1e-6)


def test_file_import_menu_reads_splats_and_refuses_other_plys(tmp_path):
    import addon_utils

    addon_utils.enable("blender_addon", default_set=True)
    try:
        write_splats(tmp_path / "ours.ply", blob(100))
        assert bpy.ops.reconstruct.import_splats(filepath=str(tmp_path / "ours.ply"), density=0.5) == {"FINISHED"}
        assert len(bpy.data.objects["ours"].data.vertices) == 100
        rows = np.zeros(3, [("x", "f4"), ("y", "f4"), ("z", "f4")])
        plyfile.PlyData([plyfile.PlyElement.describe(rows, "vertex")]).write(str(tmp_path / "cloud.ply"))
        with pytest.raises(PlyError, match="not a Gaussian splat PLY: it lacks f_dc_0"):
            read_splats(tmp_path / "cloud.ply")
        with pytest.raises(RuntimeError, match="Cannot import cloud.ply"):
            bpy.ops.reconstruct.import_splats(filepath=str(tmp_path / "cloud.ply"))
        assert "cloud" not in bpy.data.objects
    finally:
        addon_utils.disable("blender_addon", default_set=True)


def _instances(obj) -> int:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    return sum(1 for inst in depsgraph.object_instances if inst.is_instance and inst.parent.original == obj)


def test_splats_render_with_cycles_from_a_photo_camera(tmp_path):
    """Acceptance 4 of issue 5: from an imported camera, the render covers the
    splats (alpha) and nothing else."""
    splats = blob()
    obj = import_splats("splats", splats, bpy.context.scene.collection)
    assert _instances(obj) == 0  # the viewport draws the Gaussians; the ellipsoids are hidden there...
    set_display(obj, ellipsoids=True)  # ...until asked for (the editable geometry)
    assert _instances(obj) == len(splats)
    set_display(obj, density=0.25)  # large captures stay usable: a quarter is shown
    assert 0.2 * len(splats) < _instances(obj) < 0.3 * len(splats)
    set_display(obj, density=1.0)
    # A photo's camera 4 units in front of the blob (COLMAP: looking down +Z).
    model = Model({1: Camera(1, "PINHOLE", 160, 120, np.array([200.0, 200.0, 80.0, 60.0]))},
                  {1: Image(1, "photo.jpg", 1, np.eye(3), np.array([0.0, 0.0, 4.0]))})
    camera = import_cameras(model, bpy.context.scene.collection)[0]
    scene = bpy.context.scene
    make_active_camera(scene, camera)
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples = "CPU", 4
    scene.render.film_transparent = True
    scene.render.filepath = str(tmp_path / "render.png")
    bpy.ops.render.render(write_still=True)
    from PIL import Image as PILImage

    rgba = np.asarray(PILImage.open(tmp_path / "render.png"))
    assert rgba.shape == (120, 160, 4)
    alpha = rgba[..., 3] / 255.0
    # The blob (radius ~0.5 at depth 4) covers ~25 px around the centre.
    assert alpha[50:70, 70:90].mean() > 0.9
    assert alpha[:15].mean() < 0.05 and alpha[:, :30].mean() < 0.05
    assert rgba[50:70, 70:90, :3].std() > 10  # colored splats, not one flat color
