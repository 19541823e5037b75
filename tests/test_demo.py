"""The README's demo, as a user runs it: the synthetic scene (rendered with
Cycles from known cameras) is reconstructed and the report states how close
the recovered cameras are to the truth."""
from __future__ import annotations

import pytest

from conftest import read_json


@pytest.fixture(scope="module")
def demo(demo_run):
    return demo_run


def test_demo_recovers_every_synthetic_camera(demo):
    out, proc = demo
    assert "registered photos      24/24" in proc.stdout
    assert "camera centre error" in proc.stdout and "camera rotation error" in proc.stdout
    report = read_json(out / "report.json")
    assert report["registered_images"] == report["total_images"] == 24
    errors = report["pose_errors"]
    assert errors["num_compared"] == 24
    # measured 0.037% and 0.017 degrees on 2 CPU cores; the bounds leave room for run-to-run noise
    assert errors["relative_median_centre_error"] < 0.002, errors
    assert errors["median_rotation_error_deg"] < 0.1, errors
    assert report["mean_reprojection_error"] < 0.5


def test_demo_reports_dense_points_and_mesh_against_the_true_surface(demo):
    out, proc = demo
    assert "dense F-score" in proc.stdout and "mean distance to the true surface" in proc.stdout
    geometry = read_json(out / "report.json")["geometry"]
    assert geometry["dense"]["f_score"] >= 0.8  # tests/test_dense.py checks the workspace itself
    assert geometry["mesh"]["mean_distance_fraction"] < 0.01


def test_demo_writes_a_blend_with_the_imported_cameras_and_points(demo):
    bpy = pytest.importorskip("bpy")
    out, proc = demo
    blend = out / "demo.blend"
    assert read_json(out / "report.json")["blend"] == str(blend)
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    collection = bpy.data.collections["demo"]
    cameras = [o for o in collection.objects if o.type == "CAMERA"]
    clouds = [o for o in collection.objects if o.type == "MESH"]
    assert len(cameras) == 24
    assert all(cam.data.background_images[0].image for cam in cameras)
    names = sorted(o.name for o in clouds)
    assert names == ["demo dense points", "demo mesh", "demo sparse points", "demo splats"]
    assert all(len(o.data.vertices) > 1000 for o in clouds)
    assert len(bpy.data.objects["demo splats"].data.vertices) == read_json(out / "report.json")["splats"]["num_splats"]
    assert len(bpy.data.objects["demo mesh"].data.polygons) > 10000
    from blender_addon.importers.mesh import UV_MAP, is_textured

    mesh = bpy.data.objects["demo mesh"]  # the texture stage's mesh: UVs, the atlas, vertex colours kept
    assert is_textured(mesh) and UV_MAP in mesh.data.uv_layers and mesh.data.color_attributes.active_color
    assert "texture                4096 px atlas" in proc.stdout
    bpy.ops.wm.read_factory_settings(use_empty=True)


def test_demo_ends_with_previews_of_every_camera(demo):
    """The demo's last step: previews of the mesh and the splats from all 24
    cameras, with the mean and worst scores printed."""
    out, proc = demo
    assert "previews               mesh: mean PSNR" in proc.stdout and "worst:" in proc.stdout
    report = read_json(out / "report.json")["previews"]
    metrics = read_json(out / "workspace" / "previews" / "metrics.json")
    assert len(metrics["cameras"]) == 24 and report["worst"] == metrics["cameras"][0]
    # Measured 24.2 (mesh) and 24.3 dB (splats) on 2 CPU cores; a camera off by 1% of the scene
    # scores about 15 dB (tests/test_previews.py), so 22 dB fails a broken pose with 2 dB to spare.
    assert report["mean"]["mesh"]["psnr"] > 22 and report["mean"]["splats"]["psnr"] > 22, report["mean"]
    assert (out / "workspace" / "previews" / "contact_sheet.png").is_file()


def test_demo_lands_upright_with_the_object_at_the_origin_on_the_ground(demo):
    """The ring of cameras around the object: +Z within 1 degree of the truth's up
    after a similarity alignment, and the origin on the ground under the object's
    centre within 5% of its size. (No GPS: the scale is a stated guess.)"""

    import numpy as np

    from backend.tools.evaluate import align_to_ground_truth, up_error_deg
    from conftest import CACHE

    out, _ = demo
    scene_dir = CACHE / "synthetic-scene"
    scene = read_json(scene_dir / "scene.json")
    box = scene["object_bbox"]
    foot = [(box["min"][0] + box["max"][0]) / 2, (box["min"][1] + box["max"][1]) / 2,
            scene.get("ground_z", box["min"][2])]
    sim = align_to_ground_truth(out / "workspace" / "sparse" / "model", scene_dir / "gt_colmap")
    up_deg = up_error_deg(sim)
    offset = float(np.linalg.norm(sim.apply(np.zeros(3)) - foot))
    frame = read_json(out / "workspace" / "sparse" / "model" / "frame.json")
    print(f"demo frame: up {up_deg:.3f} deg off, origin {offset / box['diagonal']:.2%} of the object's size "
          f"from its foot, scale guess {1 / sim.scale:.2f}x the truth ({frame['scale']['assumption']})")
    assert up_deg <= 1.0
    assert offset <= 0.05 * box["diagonal"]
    assert frame["warnings"], "a guessed scale must say so"
