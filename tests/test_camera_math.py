"""A COLMAP camera imported into Blender sees the world exactly as COLMAP's pinhole model does.

Projection checks go through real Blender (bpy): its own viewplane code, via
``bpy_extras.object_utils.world_to_camera_view``, against COLMAP's x = fx * X / Z + cx.
"""

import numpy as np
import pytest

from blender_addon.shared.camera_math import (
    BlenderIntrinsics,
    blender_matrix_to_colmap,
    blender_to_intrinsics,
    colmap_to_blender_matrix,
    intrinsics_to_blender,
)
from projection import colmap_project, points_in_view, random_rotation

# (width, height, fx, fy, cx, cy)
CAMERAS = {
    "landscape_square_pixels": (640, 480, 600.0, 600.0, 320.0, 240.0),
    "landscape_fx_gt_fy_off_centre": (640, 480, 700.0, 560.0, 350.3, 221.7),
    "landscape_fy_gt_fx_off_centre": (800, 533, 640.0, 910.0, 371.9, 290.2),
    "portrait_square_pixels_off_centre": (480, 640, 520.0, 520.0, 251.5, 301.0),
    "portrait_fx_gt_fy_off_centre": (480, 640, 830.0, 610.0, 222.2, 345.6),
    "portrait_fy_gt_fx_off_centre": (1000, 1500, 1200.0, 1430.0, 530.0, 712.0),
    "square_image_far_off_centre": (512, 512, 450.0, 500.0, 140.0, 390.0),
}


@pytest.fixture
def bpy():
    bpy = pytest.importorskip("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


def make_blender_camera(bpy, intr: BlenderIntrinsics, matrix_world: np.ndarray):
    from mathutils import Matrix

    scene = bpy.context.scene
    render = scene.render
    render.resolution_x, render.resolution_y = intr.resolution_x, intr.resolution_y
    render.resolution_percentage = 100
    render.pixel_aspect_x, render.pixel_aspect_y = intr.pixel_aspect_x, intr.pixel_aspect_y

    data = bpy.data.cameras.new("photo")
    data.lens = intr.lens
    data.sensor_width = intr.sensor_width
    data.sensor_height = intr.sensor_height
    data.sensor_fit = intr.sensor_fit
    data.shift_x, data.shift_y = intr.shift_x, intr.shift_y
    obj = bpy.data.objects.new("photo", data)
    scene.collection.objects.link(obj)
    obj.matrix_world = Matrix(matrix_world.tolist())
    scene.camera = obj
    return scene, obj


@pytest.mark.parametrize("name", CAMERAS)
def test_blender_camera_projects_like_colmap(bpy, name):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    W, H, fx, fy, cx, cy = CAMERAS[name]
    rng = np.random.default_rng(list(CAMERAS).index(name))
    R = random_rotation(rng)
    t = rng.uniform(-3, 3, size=3)
    scene, cam = make_blender_camera(bpy, intrinsics_to_blender(W, H, fx, fy, cx, cy), colmap_to_blender_matrix(R, t))

    points = points_in_view(R, t, W, H, fx, fy, cx, cy, rng)
    expected = colmap_project(R, t, fx, fy, cx, cy, points)
    ndc = np.array([world_to_camera_view(scene, cam, Vector(p)) for p in points])
    blender_px = np.stack([ndc[:, 0] * W, (1.0 - ndc[:, 1]) * H], axis=1)

    assert np.all(ndc[:, 2] > 0), "points must be in front of the Blender camera"
    err = np.abs(blender_px - expected).max()
    assert err < 0.01, f"{name}: Blender and COLMAP disagree by {err:.4f} px"


def test_blender_camera_reads_back_its_colmap_camera(bpy):
    """Settings as they land in Blender (float32, clamped ranges) still give back the pinhole camera."""
    for name, (W, H, fx, fy, cx, cy) in CAMERAS.items():
        rng = np.random.default_rng(7)
        R, t = random_rotation(rng), rng.uniform(-3, 3, size=3)
        scene, cam = make_blender_camera(bpy, intrinsics_to_blender(W, H, fx, fy, cx, cy), colmap_to_blender_matrix(R, t))
        r, d = scene.render, cam.data
        read = BlenderIntrinsics(
            d.lens, d.sensor_width, d.sensor_height, d.sensor_fit, d.shift_x, d.shift_y,
            r.resolution_x, r.resolution_y, r.pixel_aspect_x, r.pixel_aspect_y,
        )  # fmt: skip
        np.testing.assert_allclose(blender_to_intrinsics(read), (fx, fy, cx, cy), atol=1e-3, err_msg=name)
        R2, t2 = blender_matrix_to_colmap(cam.matrix_world)
        np.testing.assert_allclose(R2, R, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(t2, t, atol=1e-5, err_msg=name)


def test_pose_round_trip_ignores_scale():
    rng = np.random.default_rng(0)
    for _ in range(20):
        R, t = random_rotation(rng), rng.uniform(-10, 10, size=3)
        M = colmap_to_blender_matrix(R, t)
        assert np.allclose(M[:3, :3].T @ M[:3, :3], np.eye(3))
        assert np.isclose(np.linalg.det(M[:3, :3]), 1.0)
        # The camera centre is where COLMAP's transform sends to the origin.
        assert np.allclose(R @ M[:3, 3] + t, 0.0)
        # Blender's camera looks down its local -Z; COLMAP's down +Z: the same world direction.
        assert np.allclose(M[:3, :3] @ [0, 0, -1], R.T @ [0, 0, 1])

        scaled = M @ np.diag([*rng.uniform(0.2, 5.0, size=3), 1.0])
        R2, t2 = blender_matrix_to_colmap(scaled)
        np.testing.assert_allclose(R2, R, atol=1e-12)
        np.testing.assert_allclose(t2, t, atol=1e-9)


def test_mirrored_camera_matrix_is_rejected():
    M = colmap_to_blender_matrix(np.eye(3), np.zeros(3)) @ np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="mirrored"):
        blender_matrix_to_colmap(M)


@pytest.mark.parametrize("name", CAMERAS)
def test_intrinsics_round_trip(name):
    W, H, fx, fy, cx, cy = CAMERAS[name]
    b = intrinsics_to_blender(W, H, fx, fy, cx, cy)
    assert min(b.pixel_aspect_x, b.pixel_aspect_y) == 1.0  # Blender clamps pixel aspect to >= 1
    assert b.sensor_fit == ("HORIZONTAL" if W >= H else "VERTICAL")
    assert np.isclose(b.sensor_width / b.sensor_height, W / H)
    np.testing.assert_allclose(blender_to_intrinsics(b), (fx, fy, cx, cy), rtol=1e-12)


def test_auto_sensor_fit_matches_blender_default_camera():
    """A default Blender camera (AUTO fit, 36 mm sensor, 50 mm lens) sees along its wider side."""
    landscape = BlenderIntrinsics(50.0, 36.0, 24.0, "AUTO", 0.0, 0.0, 640, 480)
    assert blender_to_intrinsics(landscape) == pytest.approx((50 * 640 / 36, 50 * 640 / 36, 320, 240))
    portrait = BlenderIntrinsics(50.0, 36.0, 24.0, "AUTO", 0.1, 0.0, 480, 640)
    fx, fy, cx, cy = blender_to_intrinsics(portrait)
    assert fx == fy == pytest.approx(50 * 640 / 36)
    assert cx == pytest.approx(240 - 0.1 * 640)
