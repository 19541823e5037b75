"""An artist's session in real Blender (bpy) with a real backend process:
point the sidebar at photos, press Reconstruct, keep working, get cameras
and points; cancel; survive a crashed or mismatched backend."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon_helpers import assert_ticks_short, disable_addon, drive, fresh_blender_with_addon, scene_snapshot  # noqa: E402
from blender_addon.shared import camera_math  # noqa: E402
from blender_addon.shared.colmap_io import read_model  # noqa: E402
from backend.tools.evaluate import umeyama  # noqa: E402
from conftest import BACKEND_PYTHON, CACHE, dataset  # noqa: E402


@pytest.fixture
def jobs(tmp_path):
    module = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path / "workspaces"))
    yield module
    module.runner.stop_backend()
    disable_addon()


def _reconstruct(photos: Path, quality: str = "fast", dense: bool = True):
    settings = bpy.context.scene.reconstruct
    settings.photos_dir = str(photos)
    settings.quality = quality
    settings.stage_dense = settings.stage_mesh = settings.stage_texture = dense
    # Splats at a preset size take long on the CPU: the sidebar's request and the import of
    # splats are tested in test_dense_import.py and test_demo.py.
    settings.stage_splats = False
    assert bpy.ops.reconstruct.run() == {"FINISHED"}
    return settings


def _our_cameras(collection):
    return [o for o in collection.objects if o.type == "CAMERA"]


def test_photos_become_cameras_points_and_a_mesh_while_blender_stays_responsive(jobs):
    sceaux = dataset("sceaux_castle")
    settings = _reconstruct(sceaux / "images")  # 'fast': SIFT at 1024 px, depth at 800 px, 100k faces
    drive(jobs, lambda: settings.state in ("DONE", "ERROR", "CANCELLED"))
    assert settings.state == "DONE", f"{settings.error} {settings.hint}"
    assert settings.message.startswith("11/11 photos registered")
    assert "dense points" in settings.message and "mesh faces" in settings.message
    collection = bpy.data.collections[settings.collection]
    # Named after the job: the photo folder, with its parent's name as the folder is just 'images'.
    assert collection.name == "sceaux_castle_images" == Path(settings.workspace).name
    cameras = _our_cameras(collection)
    assert len(cameras) == 11
    for cam in cameras:
        backgrounds = cam.data.background_images
        assert len(backgrounds) == 1 and backgrounds[0].image is not None
        photo = Path(bpy.path.abspath(backgrounds[0].image.filepath))
        assert photo.exists() and "undistorted" in photo.parts  # the undistorted photo
        assert tuple(cam["reconstruct_resolution"]) == tuple(backgrounds[0].image.size)
    meshes = {o.name: o for o in collection.objects if o.type == "MESH"}
    name = collection.name
    assert sorted(meshes) == [f"{name} dense points", f"{name} mesh", f"{name} sparse points"]
    sparse, dense, mesh = (meshes[f"{name} {part}"] for part in ("sparse points", "dense points", "mesh"))
    assert len(sparse.data.vertices) > 1000
    assert len(dense.data.vertices) > 10 * len(sparse.data.vertices)
    assert 1000 < len(mesh.data.polygons) <= 100_000  # the 'fast' face budget
    assert all(o.data.color_attributes for o in meshes.values()), "a cloud or the mesh has no colors"
    from blender_addon.importers.mesh import is_textured

    assert is_textured(mesh) and mesh.data.uv_layers, "the mesh did not get its texture"
    # The timer callback never held Blender's main thread for more than 20 ms while the job ran,
    # but for the calls that created a part's datablocks (one call per part; the files were
    # read on the add-on's reader thread meanwhile).
    assert_ticks_short(jobs.runner, minimum=20)
    # The mesh comes twice: vertex-coloured when the mesh stage is done, then textured.
    assert [t["part"] for t in jobs.runner.import_ticks] == ["cameras", "sparse", "region", "dense", "mesh", "mesh"]
    assert settings.roi_object == bpy.data.objects[f"{name} region"]  # the automatic region, to adjust


def test_synthetic_scene_cameras_match_the_ground_truth(jobs):
    from backend.tools.synthetic_scene import SceneParams, ensure_scene

    scene_dir = ensure_scene(CACHE / "synthetic-scene", SceneParams())
    settings = _reconstruct(scene_dir / "images", quality="balanced", dense=False)
    drive(jobs, lambda: settings.state in ("DONE", "ERROR", "CANCELLED"))
    assert settings.state == "DONE", f"{settings.error} {settings.hint}"
    truth = read_model(scene_dir / "gt_colmap")
    truth_centres = {Path(im.name).stem: -im.R.T @ im.t for im in truth.images.values()}
    cameras = _our_cameras(bpy.data.collections[settings.collection])
    assert len(cameras) == len(truth_centres) == 24
    names = sorted(truth_centres)
    blender_poses = {c.name: camera_math.blender_matrix_to_colmap(np.array(c.matrix_world)) for c in cameras}
    est = np.stack([-blender_poses[n][0].T @ blender_poses[n][1] for n in names])
    gt = np.stack([truth_centres[n] for n in names])
    sim = umeyama(est, gt)
    error = np.linalg.norm(sim.apply(est) - gt, axis=1)
    radius = np.linalg.norm(gt - gt.mean(0), axis=1).mean()
    assert np.median(error) / radius < 0.002  # the backend's own report measures 0.04%


@pytest.mark.every_blender
def test_cancel_stops_the_job_and_leaves_the_scene_unchanged(jobs):
    fountain = dataset("strecha_fountain_p11")
    before = scene_snapshot()
    settings = _reconstruct(fountain / "images")
    drive(jobs, lambda: settings.state == "RUNNING" and settings.stage == "features" and settings.progress > 0)
    asked = time.monotonic()
    assert bpy.ops.reconstruct.cancel() == {"FINISHED"}
    drive(jobs, lambda: settings.state != "RUNNING", timeout=10)
    assert settings.state == "CANCELLED"
    assert time.monotonic() - asked < 5
    assert scene_snapshot() == before
    assert not jobs.runner.running


@pytest.mark.every_blender
def test_a_killed_backend_is_reported_and_blender_keeps_working(jobs):
    fountain = dataset("strecha_fountain_p11")
    settings = _reconstruct(fountain / "images")
    drive(jobs, lambda: settings.state == "RUNNING")
    os.kill(jobs.runner.client.pid, signal.SIGKILL)
    drive(jobs, lambda: settings.state != "RUNNING", timeout=10)
    assert settings.state == "ERROR"
    assert "stopped unexpectedly" in settings.error
    assert "finished stages are kept" in settings.hint
    bpy.ops.mesh.primitive_cube_add()  # Blender still works
    assert bpy.context.active_object.type == "MESH"


@pytest.mark.every_blender
def test_a_backend_without_its_packages_says_what_to_do(jobs, tmp_path):
    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.backend_python = "/usr/bin/python3"  # a Python without the backend's packages
    settings = _reconstruct(dataset("middlebury_temple_sparse_ring") / "images")
    drive(jobs, lambda: settings.state not in ("STARTING", "RUNNING"), timeout=30)
    assert settings.state == "ERROR"
    assert "missing the package" in settings.error
    assert "Set up backend" in settings.hint


@pytest.mark.every_blender
def test_a_backend_of_another_protocol_version_says_what_to_do(jobs, monkeypatch):
    from blender_addon.shared import protocol

    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", protocol.PROTOCOL_VERSION + 1)  # an older backend
    settings = _reconstruct(dataset("middlebury_temple_sparse_ring") / "images")
    drive(jobs, lambda: settings.state not in ("STARTING", "RUNNING"), timeout=60)
    assert settings.state == "ERROR"
    assert "protocol" in settings.error
    assert "Set up backend" in settings.hint


@pytest.mark.every_blender
def test_reconstruct_without_a_photo_folder_is_refused_with_a_reason(jobs):
    with pytest.raises(RuntimeError, match=r"Choose the folder of photos \(or a video\) first"):
        bpy.ops.reconstruct.run()


@pytest.mark.every_blender
def test_backend_python_is_detected_from_the_checkout(jobs):
    from blender_addon.ui import preferences

    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.backend_python = ""
    detected = preferences.backend_python()
    venv_python = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    if not venv_python.exists() and not preferences.managed_venv().exists():
        pytest.skip("no .venv in this checkout (the README's commands create it)")
    assert detected and Path(detected).exists()


@pytest.mark.every_blender
def test_set_up_backend_runs_in_the_background_and_names_a_failing_command(jobs, tmp_path):
    from blender_addon.link import setup_backend

    assert setup_backend.backend_source() is not None  # the checkout (or the zip's backend_src)
    bpy.context.preferences.system.use_online_access = True  # it downloads: Blender must allow it
    started = time.monotonic()
    setup_backend.start(str(tmp_path / "no-python-here"), tmp_path / "venv")
    assert time.monotonic() - started < 0.5  # returned at once: the work is in a thread
    deadline = time.monotonic() + 30
    while setup_backend.state.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert setup_backend.state.error.startswith("Creating the environment failed")
    assert setup_backend.state.failed_command.startswith(str(tmp_path / "no-python-here"))
    assert "-m venv" in setup_backend.state.failed_command
