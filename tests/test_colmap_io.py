"""A COLMAP model reads the same in the add-on (numpy only) as in pycolmap, binary or text.

The add-on cannot use pycolmap inside Blender, so its reader is checked against pycolmap
on models pycolmap wrote: synthetic ones with several camera models and unregistered
images, and real ones from the shared data and the backend.
"""

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from blender_addon.shared import colmap_io
from conftest import DATA

pycolmap = pytest.importorskip("pycolmap")

MODELS = {
    "SIMPLE_RADIAL": [1280.0, 512.0, 384.0, 0.05],
    "PINHOLE": [900.0, 1000.0, 530.5, 370.25],
    "OPENCV": [1000.0, 1100.0, 500.0, 380.0, 0.01, -0.02, 0.001, 0.002],
    "OPENCV_FISHEYE": [700.0, 710.0, 515.0, 390.0, 0.01, -0.02, 0.003, -0.001],
}


def synthetic_reconstruction(camera_model: str, seed: int = 0):
    options = pycolmap.SyntheticDatasetOptions(
        num_rigs=2, num_frames_per_rig=4, num_points3D=300,
        camera_model_id=getattr(pycolmap.CameraModelId, camera_model), camera_params=MODELS[camera_model],
    )  # fmt: skip
    pycolmap.set_random_seed(seed)
    rec = pycolmap.synthesize_dataset(options)
    rng = np.random.default_rng(seed)
    for point_id in rec.point3D_ids():
        rec.point3D(point_id).color = rng.integers(0, 256, 3).astype(np.uint8)
    rec.deregister_frame(sorted(rec.reg_frame_ids())[-1])  # COLMAP writes registered images only
    return rec


def assert_same_model(ours: colmap_io.Model, rec, atol: float = 0.0) -> None:
    assert set(ours.cameras) == set(rec.cameras)
    for cam_id, cam in rec.cameras.items():
        mine = ours.cameras[cam_id]
        assert (mine.model, mine.width, mine.height) == (cam.model.name, cam.width, cam.height)
        np.testing.assert_allclose(mine.params, cam.params, atol=atol, rtol=0)

    assert set(ours.images) == set(rec.reg_image_ids())
    for image_id in rec.reg_image_ids():
        image, mine = rec.image(image_id), ours.images[image_id]
        assert (mine.name, mine.camera_id) == (image.name, image.camera_id)
        pose = image.cam_from_world()
        np.testing.assert_allclose(mine.R, pose.rotation.matrix(), atol=atol + 1e-15, rtol=0)
        np.testing.assert_allclose(mine.t, pose.translation, atol=atol, rtol=0)
        np.testing.assert_allclose(mine.center, image.projection_center(), atol=1e-10, rtol=0)

    ids = sorted(rec.point3D_ids())
    assert ours.xyz.shape == (len(ids), 3) and ours.xyz.dtype == np.float64
    assert ours.rgb.shape == (len(ids), 3) and ours.rgb.dtype == np.uint8
    points = [rec.point3D(i) for i in ids]
    np.testing.assert_allclose(ours.xyz, np.array([p.xyz for p in points]).reshape(-1, 3), atol=atol, rtol=0)
    np.testing.assert_array_equal(ours.rgb, np.array([p.color for p in points]).reshape(-1, 3))
    np.testing.assert_allclose(ours.error, [p.error for p in points], atol=max(atol, 1e-12), rtol=0)
    np.testing.assert_array_equal(ours.track_length, [p.track.length() for p in points])


@pytest.mark.parametrize("camera_model", MODELS)
@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_synthetic_model_reads_like_pycolmap(tmp_path, camera_model, fmt):
    rec = synthetic_reconstruction(camera_model)
    (rec.write_binary if fmt == "bin" else rec.write_text)(str(tmp_path))
    assert colmap_io.model_format(tmp_path) == fmt
    # Both read the same file: text rounds, so compare with what pycolmap reads back.
    assert_same_model(colmap_io.read_model(tmp_path), pycolmap.Reconstruction(str(tmp_path)), atol=0.0)
    if fmt == "txt":  # and the text is close to the original
        assert_same_model(colmap_io.read_model(tmp_path), rec, atol=1e-9)


# Text quaternions are normalised on reading, which pycolmap (Eigen) and numpy round differently.
REAL_MODELS = {
    "fountain_gt_text": DATA / "strecha_fountain_p11" / "gt_colmap",
    "temple_backend_bin": Path("/tmp/ws/temple/sparse/model"),
    "temple_undistorted_bin": Path("/tmp/ws/temple/undistorted/sparse"),
}


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_model_reads_like_pycolmap(name):
    folder = REAL_MODELS[name]
    if colmap_io.model_format(folder) is None:
        pytest.skip(f"no model at {folder}")
    atol = 1e-9 if colmap_io.model_format(folder) == "txt" else 0.0
    assert_same_model(colmap_io.read_model(folder), pycolmap.Reconstruction(str(folder)), atol=atol)


def test_pinhole_part_of_every_camera_model():
    for model_id, (name, num_params) in colmap_io.CAMERA_MODELS.items():
        info = getattr(pycolmap.CameraModelId, name)
        assert int(info) == model_id
        cam = pycolmap.Camera.create_from_model_name(1, name, 500.0, 640, 480)
        assert len(cam.params) == num_params, name
        if name == "EQUIRECTANGULAR":
            with pytest.raises(ValueError, match="no pinhole"):
                colmap_io.Camera(1, name, 640, 480, np.array(cam.params)).pinhole()
            continue
        cam.params = np.arange(1.0, num_params + 1) * 100
        ours = colmap_io.Camera(1, name, 640, 480, np.array(cam.params))
        fx, fy, cx, cy = ours.pinhole()
        assert (fx, fy) == (cam.focal_length_x, cam.focal_length_y), name
        assert (cx, cy) == (cam.principal_point_x, cam.principal_point_y), name

    assert colmap_io.Camera(1, "PINHOLE", 10, 10, np.array([5.0, 6, 5, 5])).is_pinhole
    assert colmap_io.Camera(1, "SIMPLE_RADIAL", 10, 10, np.array([5.0, 5, 5, 0])).is_pinhole
    assert not colmap_io.Camera(1, "SIMPLE_RADIAL", 10, 10, np.array([5.0, 5, 5, 0.1])).is_pinhole
    assert not colmap_io.Camera(1, "OPENCV_FISHEYE", 10, 10, np.array([5.0, 5, 5, 5, 0, 0, 0, 0])).is_pinhole


def test_empty_lines_in_text_images_are_empty_observation_lists(tmp_path):
    (tmp_path / "cameras.txt").write_text("# c\n1 PINHOLE 640 480 500 510 320 240\n")
    (tmp_path / "images.txt").write_text(
        "# header\n1 1 0 0 0 0 0 1 1 a photo.jpg\n\n2 0 1 0 0 1 2 3 1 b.jpg\n100 200 -1\n"
    )
    (tmp_path / "points3D.txt").write_text("")
    model = colmap_io.read_model(tmp_path)
    assert [model.images[i].name for i in (1, 2)] == ["a photo.jpg", "b.jpg"]
    np.testing.assert_allclose(model.images[2].R, np.diag([1.0, -1.0, -1.0]))
    assert model.xyz.shape == (0, 3) and model.rgb.shape == (0, 3)


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        colmap_io.read_model(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no COLMAP model in"):
        colmap_io.read_model(tmp_path)

    rec = synthetic_reconstruction("PINHOLE")
    rec.write_binary(str(tmp_path))
    (tmp_path / "images.bin").unlink()
    with pytest.raises(ValueError, match=r"images\.bin is missing"):
        colmap_io.read_model(tmp_path)

    rec.write_binary(str(tmp_path))
    data = (tmp_path / "points3D.bin").read_bytes()
    (tmp_path / "points3D.bin").write_bytes(data[:-5])
    with pytest.raises(ValueError, match=r"points3D\.bin is malformed"):
        colmap_io.read_model(tmp_path)
    (tmp_path / "points3D.bin").write_bytes(struct.pack("<Q", 10**9))
    with pytest.raises(ValueError, match=r"points3D\.bin is malformed.*holds 1000000000 records"):
        colmap_io.read_model(tmp_path)

    text = tmp_path / "text"
    shutil.rmtree(tmp_path)
    text.mkdir(parents=True)
    rec.write_text(str(text))
    (text / "cameras.txt").write_text("1 NOT_A_MODEL 640 480 1 2 3\n")
    with pytest.raises(ValueError, match=r"cameras\.txt is malformed.*unknown model 'NOT_A_MODEL'"):
        colmap_io.read_model(text)
