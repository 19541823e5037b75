"""Camera-aligned previews: the reconstruction rendered from every recovered
camera beside its photo, scored, sorted worst first; in real Blender."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from addon_helpers import disable_addon, fresh_blender_with_addon  # noqa: E402
from backend.tools.evaluate import umeyama  # noqa: E402
from blender_addon.shared.colmap_io import read_model  # noqa: E402
from conftest import BACKEND_PYTHON, CACHE, read_json, reusable_run, run_backend  # noqa: E402

SCENE = CACHE / "synthetic-scene"


@pytest.fixture
def addon(tmp_path):
    jobs = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path / "workspaces"))
    yield jobs
    from blender_addon.ui.preview_ops import preview_runner

    preview_runner.cancel()
    jobs.runner.stop_backend()
    disable_addon()


def _recovered_cameras_in_the_true_scene(ws):
    """The ground-truth scene (true meshes, original texture, lights) with our
    recovered cameras moved into its frame by the similarity that best maps
    their centres onto the true ones."""
    from mathutils import Matrix

    from blender_addon.importers.cameras import import_cameras

    bpy.ops.wm.open_mainfile(filepath=str(SCENE / "scene.blend"))
    for obj in [o for o in bpy.data.objects if o.type == "CAMERA"]:  # the true cameras
        bpy.data.objects.remove(obj)
    model = read_model(ws / "undistorted" / "sparse")
    truth = {im.name: im.center for im in read_model(SCENE / "gt_colmap").images.values()}
    names = sorted(im.name for im in model.images.values())
    sim = umeyama(np.stack([next(i.center for i in model.images.values() if i.name == n) for n in names]),
                  np.stack([truth[n] for n in names]))
    collection = bpy.data.collections.new("recovered")
    bpy.context.scene.collection.children.link(collection)
    cameras = import_cameras(model, collection, ws / "undistorted" / "images")
    for cam in cameras:
        m = np.array(cam.matrix_world)
        aligned = np.eye(4)
        aligned[:3, :3] = sim.rotation @ m[:3, :3]
        aligned[:3, 3] = sim.apply(m[:3, 3])
        cam.matrix_world = Matrix(aligned.tolist())
    bpy.context.view_layer.update()
    return {c.name: c for c in cameras}


def test_the_true_mesh_seen_through_a_recovered_camera_matches_its_photo(demo_run, tmp_path, addon):
    """Acceptance 1: photo -> SfM -> Blender camera is right to the pixel: the
    true textured scene rendered (Cycles) through recovered cameras matches the
    photos at 30 dB or more (measured 31.3 and 33.5 dB); a camera moved by 1% of
    the object's size does not (15.4 dB)."""
    from blender_addon.ui.previews import PreviewSession, run_to_end

    cameras = _recovered_cameras_in_the_true_scene(demo_run[0] / "workspace")
    shifted = cameras["view_003"].copy()
    bpy.context.scene.collection.objects.link(shifted)
    shifted.name = "view_003 shifted"
    diagonal = read_json(SCENE / "scene.json")["object_bbox"]["diagonal"]
    right = np.array(shifted.matrix_world)[:3, 0]
    shifted.location = np.array(shifted.location) + 0.01 * diagonal * right
    bpy.context.view_layer.update()
    chosen = [cameras["view_003"], cameras["view_013"], shifted]
    # Full size: a preview at 50% compares Cycles' filter at half size with a box-shrunk
    # photo, which alone costs some 6 dB on this texture.
    session = run_to_end(PreviewSession(bpy.context.scene, chosen, tmp_path, engine="CYCLES", samples=16,
                                        percentage=100))
    assert session.state == "DONE", session.message
    psnr = {c.name: c["reconstruct_psnr"] for c in chosen}
    assert psnr["view_003"] >= 30 and psnr["view_013"] >= 30, psnr
    assert psnr["view_003 shifted"] < psnr["view_003"] - 6, psnr
    assert min(c["reconstruct_coverage"] for c in chosen) > 0.5  # the ground and object fill the frame
    metrics = read_json(tmp_path / "previews" / "metrics.json")
    assert metrics["worst"] == "view_003 shifted" and metrics["engine"] == "CYCLES"


@pytest.fixture(scope="module")
def real_run(fountain_mesh_run):
    return fountain_mesh_run


def test_previews_from_the_command_line_cover_every_registered_photo(real_run):
    """Acceptance 2 (command line): mesh (through bpy) and splats previews for
    every registered photo; the contact sheet and metrics.json agree."""
    ws = real_run
    proc = run_backend("previews", ws, "--percentage", "25", check=True)
    assert "worst:" in proc.stdout and "splats: mean PSNR" in proc.stdout and "mesh: mean PSNR" in proc.stdout
    metrics = read_json(ws / "previews" / "metrics.json")
    registered = read_json(ws / "summary.json")["registered_images"]
    assert len(metrics["cameras"]) == registered
    for cam in metrics["cameras"]:
        assert cam["mesh"]["psnr"] > 10 and cam["splats"]["psnr"] > 10, cam
        assert (ws / cam["preview"]).is_file()
    worst_first = [min(c["mesh"]["psnr"], c["splats"]["psnr"]) for c in metrics["cameras"]]
    assert worst_first == sorted(worst_first)
    # The sheet is the previews in the metrics' order: 4 per row, thumbnails 480 px wide.
    from PIL import Image

    from blender_addon.shared import preview_math

    sheet = np.asarray(Image.open(ws / metrics["contact_sheet"]).convert("RGB")) / 255
    first = np.asarray(Image.open(ws / metrics["cameras"][0]["preview"]).convert("RGB")) / 255
    thumb = preview_math.shrink(first, 480)
    assert np.abs(sheet[8:8 + thumb.shape[0], 8:8 + thumb.shape[1]] - thumb).max() < 2 / 255
    rows = math.ceil(registered / 4)
    assert sheet.shape[0] == rows * (thumb.shape[0] + 8) + 8


def _start(context_cameras=None, engine="WORKBENCH", splats=True, percentage=25):
    from blender_addon.ui.preview_ops import preview_runner

    settings = bpy.context.scene.reconstruct
    settings.preview_engine, settings.preview_splats, settings.preview_percentage = engine, splats, percentage
    return preview_runner.start(bpy.context, context_cameras)


def _drive(session, timeout=600):
    import time

    from blender_addon.ui.preview_ops import preview_runner

    deadline = time.monotonic() + timeout
    while not session.done:
        assert time.monotonic() < deadline, session.message
        preview_runner.tick()
        time.sleep(0.01)


def _import(ws):
    from blender_addon.importers.results import import_workspace

    return import_workspace(ws, "fountain", bpy.context.scene)


@pytest.mark.every_blender
def test_the_sidebar_renders_previews_scores_cameras_and_lists_them_worst_first(real_run, addon):
    """Acceptance 2 and 4 (in Blender): every camera gets mesh and splat scores
    equal to metrics.json; each timer call does at most one render; the list
    is worst first and clicking an entry makes that camera active."""
    from blender_addon.ui.previews import job_cameras

    collection = _import(real_run)
    scene = bpy.context.scene
    before = (scene.render.engine, scene.render.resolution_x, scene.render.film_transparent, scene.camera)
    session = _start()
    _drive(session)
    assert session.state == "DONE", session.message
    assert max(session.renders_per_tick) == 1 and sum(session.renders_per_tick) == len(job_cameras(collection))
    assert (scene.render.engine, scene.render.resolution_x, scene.render.film_transparent, scene.camera) == before
    metrics = read_json(real_run / "previews" / "metrics.json")
    by_name = {c["camera"]: c for c in metrics["cameras"]}
    for cam in job_cameras(collection):
        assert cam["reconstruct_psnr"] == pytest.approx(by_name[cam.name]["mesh"]["psnr"])
        assert cam["reconstruct_splat_psnr"] == pytest.approx(by_name[cam.name]["splats"]["psnr"])
        assert cam["reconstruct_ssim"] == pytest.approx(by_name[cam.name]["mesh"]["ssim"])
    settings = scene.reconstruct
    assert [item.camera for item in settings.preview_scores] == [c["camera"] for c in metrics["cameras"]]
    settings.preview_index = 2
    chosen = bpy.data.objects[settings.preview_scores[2].camera]
    assert scene.camera == chosen
    assert (scene.render.resolution_x, scene.render.resolution_y) == tuple(chosen["reconstruct_resolution"])
    assert bpy.data.images["Reconstruct contact sheet"].size[0] > 0


@pytest.mark.every_blender
def test_cancelled_previews_stop_before_the_next_render_and_restore_the_scene(real_run, addon):
    """Acceptance 4: Cancel is seen between renders, and leaves the scene and
    the last finished previews as they were."""
    from blender_addon.ui.preview_ops import preview_runner

    from conftest import tree_digest

    _import(real_run)
    scene = bpy.context.scene
    before = (scene.render.engine, scene.render.resolution_percentage, scene.view_settings.view_transform)
    finished = tree_digest(real_run / "previews")  # the last finished previews
    session = _start(splats=False)
    while sum(session.renders_per_tick) < 2:
        preview_runner.tick()
    assert bpy.ops.reconstruct.cancel_previews() == {"FINISHED"}
    renders = sum(session.renders_per_tick)
    preview_runner.tick()
    assert session.state == "CANCELLED" and sum(session.renders_per_tick) == renders == 2
    assert (scene.render.engine, scene.render.resolution_percentage, scene.view_settings.view_transform) == before
    assert scene.reconstruct.preview_state == "CANCELLED"
    assert tree_digest(real_run / "previews") == finished and not (real_run / "previews.partial").exists()


@pytest.mark.every_blender
def test_deleting_faces_changes_the_scores_of_the_cameras_that_saw_them_and_only_those(real_run,
                                                                                       tmp_path, addon):
    """Acceptance 3: edits count. A patch of the mesh that the first camera
    sees and the last does not is deleted; the cameras that had any of it in
    view score differently, every other camera exactly as before."""
    from blender_addon.ui.previews import job_cameras

    ws = tmp_path / "ws"
    shutil.copytree(real_run, ws, ignore=shutil.ignore_patterns("dense", "splats", "previews"))
    collection = _import(ws)
    cameras = job_cameras(collection)
    session = _start(cameras, splats=False)
    _drive(session)
    before = {c.name: c["reconstruct_psnr"] for c in cameras}

    mesh_obj = next(o for o in collection.objects if o.name.endswith("mesh"))
    scene = bpy.context.scene
    polys = mesh_obj.data.polygons
    centres = np.array([p.center for p in polys])
    first, last = cameras[0], cameras[-1]
    # The patch: around the face nearest the middle of the first camera's view
    # among those the last camera does not see.
    x, y, z = _project(scene, first, centres)
    seen_by_first = (z > 0) & (np.abs(x - 0.5) < 0.4) & (np.abs(y - 0.5) < 0.4)
    candidates = np.nonzero(seen_by_first & ~_in_view(scene, last, centres, margin=0.15))[0]
    assert len(candidates) > 100, "fountain-P11's first and last photos should not see the same parts"
    middle = candidates[np.argmin(np.hypot(x[candidates] - 0.5, y[candidates] - 0.5))]
    gone = np.linalg.norm(centres - centres[middle], axis=1) < 0.03 * np.ptp(centres, 0).max()
    gone &= ~_in_view(scene, last, centres, margin=0.15)
    assert gone.sum() > 20
    bpy.context.view_layer.objects.active = mesh_obj
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="DESELECT")
    bpy.ops.object.mode_set(mode="OBJECT")
    for i in np.nonzero(gone)[0]:
        polys[i].select = True
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.delete(type="FACE")
    bpy.ops.object.mode_set(mode="OBJECT")
    # What was deleted (edit mode's selection flush can take a few neighbouring faces too).
    kept = {tuple(c) for c in np.round([p.center for p in mesh_obj.data.polygons], 6)}
    removed = centres[[tuple(c) not in kept for c in np.round(centres, 6)]]
    assert gone.sum() <= len(removed) < gone.sum() + 20

    session = _start(cameras, splats=False)
    _drive(session)
    after = {c.name: c["reconstruct_psnr"] for c in cameras}
    changed = {n for n in before if after[n] != before[n]}
    in_view = {c.name for c in cameras if _in_view(scene, c, removed).any()}
    assert first.name in changed and last.name not in in_view
    assert changed <= in_view, (changed, in_view)  # only cameras that saw the patch changed
    assert len(changed) >= 2 and len(in_view) < len(cameras), (changed, in_view)


def _project(scene, cam, points):
    """Frame coordinates (x, y: 0..1 across the frame, y up) and depth of
    `points` in `cam` at its photo's resolution: the intrinsics the previews
    send the backend, through COLMAP's projection."""
    from blender_addon.importers.cameras import apply_camera_resolution
    from blender_addon.ui.previews import camera_pixels
    from projection import colmap_project

    apply_camera_resolution(scene, cam)
    c = camera_pixels(scene, cam)
    R, t = np.asarray(c["R"]), np.asarray(c["t"])
    uv = colmap_project(R, t, c["fx"], c["fy"], c["cx"], c["cy"], points)
    return uv[:, 0] / c["width"], 1 - uv[:, 1] / c["height"], (points @ R.T + t)[:, 2]


def _in_view(scene, cam, points, margin=0.05):
    """Which of `points` lie in `cam`'s frame, grown by `margin` on each side
    (a face can reach in from just outside)."""
    x, y, z = _project(scene, cam, points)
    return (z > 0) & (x >= -margin) & (x <= 1 + margin) & (y >= -margin) & (y <= 1 + margin)


# Render cameras: converted once, on the add-on's side; large ones scaled to fit -------------
def _blender_camera(name="render camera"):
    """A Blender camera 5 units from the origin, turned and shifted, in an empty scene."""
    from mathutils import Euler, Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    scene.collection.objects.link(cam)
    cam.rotation_euler = Euler((1.1, 0.2, 0.7))
    cam.location = Vector((3.0, -4.0, 1.5))
    cam.data.lens, cam.data.shift_x, cam.data.shift_y = 42.0, 0.05, -0.02
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 640, 480, 100
    bpy.context.view_layer.update()
    return scene, cam


@pytest.mark.every_blender
def test_the_render_camera_is_colmaps_world_to_camera_pose_and_pixel_intrinsics():
    """camera_pixels sends what the backend renders directly: a rotation R and
    t with x_cam = R @ x_world + t (+Z forward), so the point straight ahead
    of the Blender camera projects through K onto the principal point."""
    from blender_addon.shared.camera_math import blender_matrix_to_colmap
    from blender_addon.ui.previews import camera_pixels

    scene, cam = _blender_camera()
    c = camera_pixels(scene, cam)
    R, t = np.asarray(c["R"]), np.asarray(c["t"])
    assert set(c) == {"R", "t", "width", "height", "fx", "fy", "cx", "cy"} and "matrix_world" not in c
    assert np.abs(R @ R.T - np.eye(3)).max() < 1e-12 and np.linalg.det(R) == pytest.approx(1.0)
    expected_R, expected_t = blender_matrix_to_colmap(np.array(cam.matrix_world))
    assert np.allclose(R, expected_R) and np.allclose(t, expected_t)
    m = np.array(cam.matrix_world)
    ahead = m[:3, 3] - 2.0 * m[:3, 2]  # Blender cameras look down their -Z
    x = R @ ahead + t
    assert x[2] == pytest.approx(2.0)
    assert (c["fx"] * x[0] / x[2] + c["cx"], c["fy"] * x[1] / x[2] + c["cy"]) == pytest.approx((c["cx"], c["cy"]))
    assert (c["width"], c["height"]) == (640, 480) and c["cx"] != 320  # the lens shift is in K


def test_a_mirrored_camera_is_refused_by_name_before_anything_is_sent():
    from blender_addon.ui.previews import camera_pixels

    scene, cam = _blender_camera("mirror")
    cam.scale = (1.0, 1.0, -1.0)
    bpy.context.view_layer.update()
    with pytest.raises(ValueError, match="mirror.*mirrored"):
        camera_pixels(scene, cam)


def test_a_24mp_camera_is_scaled_to_the_render_limit_with_its_intrinsics():
    """A 6000 x 4000 photo at 100% is over the backend's 16 MP: fit_render
    asks for the largest size under it, aspect kept, K scaled with the size, so
    every point lands on the same spot of the frame."""
    from blender_addon.shared import protocol
    from blender_addon.ui.previews import fit_render

    camera = {"R": np.eye(3).tolist(), "t": [0.0, 0.0, 0.0], "width": 6000, "height": 4000,
              "fx": 5100.0, "fy": 5050.0, "cx": 3010.5, "cy": 1990.25}
    fit = fit_render(camera)
    w, h = fit["width"], fit["height"]
    assert w * h <= protocol.MAX_RENDER_PIXELS and w * h > 0.999 * protocol.MAX_RENDER_PIXELS
    assert abs(w / h - 1.5) < 1 / h
    assert (fit["R"], fit["t"]) == (camera["R"], camera["t"])
    assert fit["fx"] / camera["fx"] == pytest.approx(w / 6000, rel=1e-12)
    assert fit["cx"] / camera["cx"] == pytest.approx(w / 6000, rel=1e-12)
    assert fit["fy"] / camera["fy"] == pytest.approx(h / 4000, rel=1e-12)
    assert fit["cy"] / camera["cy"] == pytest.approx(h / 4000, rel=1e-12)
    rng = np.random.default_rng(0)
    points = rng.uniform([-1, -1, 2], [1, 1, 6], (50, 3))
    for c in (camera, fit):  # frame fractions, (0, 0) to (1, 1)
        u = (c["fx"] * points[:, 0] / points[:, 2] + c["cx"]) / c["width"]
        v = (c["fy"] * points[:, 1] / points[:, 2] + c["cy"]) / c["height"]
        c["frame"] = np.stack([u, v], 1)
    assert np.allclose(camera["frame"], fit["frame"], atol=1e-12)
    assert fit_render({**camera, "width": 4000, "height": 4000}) == {**camera, "width": 4000, "height": 4000}
    wide = fit_render({**camera, "width": 12000, "height": 1000})  # 12 MP, but over 8192 px wide
    assert wide["width"] == protocol.MAX_RENDER_SIDE and wide["height"] == 682
    tall = fit_render({**camera, "width": 4001, "height": 4001})
    assert tall["width"] * tall["height"] <= protocol.MAX_RENDER_PIXELS


def test_resampling_keeps_pixel_centres_aligned():
    """A render made smaller and brought back up to the preview's size: a ramp
    across the frame stays the same ramp (away from the clamped edges)."""
    from blender_addon.ui.previews import resample

    small_w, small_h, w, h = 80, 60, 97, 73
    ramp = ((np.arange(small_w) + 0.5) / small_w)[None, :, None] * np.ones((small_h, 1, 4), np.float32)
    ramp[..., 1] = ((np.arange(small_h) + 0.5) / small_h)[:, None]
    big = resample(ramp.astype(np.float32), w, h)
    assert big.shape == (h, w, 4) and big.dtype == np.float32
    x = (np.arange(w) + 0.5) / w
    y = (np.arange(h) + 0.5) / h
    inner_x = (x > 1 / small_w) & (x < 1 - 1 / small_w)
    inner_y = (y > 1 / small_h) & (y < 1 - 1 / small_h)
    assert np.allclose(big[0, inner_x, 0], x[inner_x], atol=1e-6)
    assert np.allclose(big[inner_y, 0, 1], y[inner_y], atol=1e-6)
    assert resample(ramp, small_w, small_h) is ramp


@pytest.mark.every_blender
def test_a_splat_render_over_the_limit_comes_back_at_the_previews_size(addon, tmp_path):
    """The backend is asked for at most max_pixels (here 1/16 of the camera:
    the same path as a 24 MP photo against the real 16 MP): the render is made
    at the scaled size, brought back to the camera's size, and shows what the
    render at full size shows."""
    import time

    from blender_addon.ui.preview_ops import BackendSplats
    from protocol_helpers import write_grey_splats

    ws = write_grey_splats(tmp_path / "ws")
    addon.runner.ensure_backend(bpy.context)
    camera = {"R": [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]], "t": [0.0, 0.0, 3.0],
              "width": 320, "height": 240, "fx": 300.0, "fy": 300.0, "cx": 161.0, "cy": 119.0}
    full, scaled = BackendSplats(addon.runner, ws), BackendSplats(addon.runner, ws, max_pixels=320 * 240 // 16)
    full.request("cam", camera)
    scaled.request("cam", camera)
    images, deadline = {}, time.monotonic() + 120
    while len(images) < 2:
        assert time.monotonic() < deadline, "no splat renders within 120 s"
        for name, source in (("full", full), ("scaled", scaled)):
            if name not in images and (image := source.poll("cam")) is not None:
                images[name] = image
        time.sleep(0.02)
    assert images["full"].shape == images["scaled"].shape == (240, 320, 4)
    alpha_full, alpha_scaled = images["full"][..., 3], images["scaled"][..., 3]
    assert alpha_full[100:140, 140:180].mean() > 0.5 and alpha_full[:10, :10].max() < 0.05  # blobs, centred
    difference = np.abs(alpha_scaled - alpha_full)  # measured: mean 0.0012, largest 0.009
    assert difference.mean() < 0.005 and difference.max() < 0.05
    assert difference.max() > 0  # it was rendered at the smaller size
