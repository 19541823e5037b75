"""A synthetic scene's ground truth is true: its COLMAP cameras see the object where Blender rendered it.

The scene is generated in a subprocess (``ensure_scene``), so this process never imports bpy.
"""

import json

import numpy as np
import pytest

from backend.tools.synthetic_scene import GENERATOR_VERSION, SceneParams, ensure_scene

PARAMS = SceneParams(views=6, width=160, height=120, samples=4)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return ensure_scene(tmp_path_factory.mktemp("synthetic") / "scene", PARAMS)


def read_gt(scene_dir):
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction()
    rec.read_text(str(scene_dir / "gt_colmap"))
    return rec


def project(image, camera, points):  # points [N, 3] -> [N, 2], depth [N]
    cam_from_world = image.cam_from_world().matrix()  # [3, 4]
    X = points @ cam_from_world[:, :3].T + cam_from_world[:, 3]
    fx, fy, cx, cy = camera.params
    return np.stack([fx * X[:, 0] / X[:, 2] + cx, fy * X[:, 1] / X[:, 2] + cy], axis=1), X[:, 2]


def dilate(mask):
    """One pixel of slack: a vertex on the silhouette may land in a pixel the object covers less than half."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)


def test_scene_has_photos_masks_meshes_and_a_gt_model(scene_dir):
    from PIL import Image

    info = json.loads((scene_dir / "scene.json").read_text())
    assert info["generator_version"] == GENERATOR_VERSION
    assert len(info["cameras"]) == PARAMS.views
    assert (scene_dir / "scene.blend").is_file() and (scene_dir / "texture.png").is_file()
    assert not list(scene_dir.parent.glob("scene.tmp-*")), "the temporary folder was left behind"

    for name in info["cameras"]:
        photo = Image.open(scene_dir / "images" / f"{name}.png")
        assert (photo.mode, photo.size) == ("RGB", (PARAMS.width, PARAMS.height))
        assert np.asarray(photo).std() > 20, f"{name} has too little texture"
        assert Image.open(scene_dir / "masks" / f"{name}.png").size == (PARAMS.width, PARAMS.height)

    rec = read_gt(scene_dir)
    assert rec.num_images() == PARAMS.views
    assert sorted(im.name for im in rec.images.values()) == sorted(f"{n}.png" for n in info["cameras"])
    assert all(cam.model.name == "PINHOLE" for cam in rec.cameras.values())

    trimesh = pytest.importorskip("trimesh")
    obj = trimesh.load(scene_dir / "gt_object.ply", process=False)
    full = trimesh.load(scene_dir / "gt_scene.ply", process=False)
    assert obj.is_watertight, "the object should be one closed surface"
    assert len(full.faces) > len(obj.faces)
    bbox = info["object_bbox"]
    np.testing.assert_allclose(obj.bounds, [bbox["min"], bbox["max"]], atol=1e-5)
    np.testing.assert_allclose(full.bounds[0, 2], info["ground_z"], atol=1e-5)


def test_gt_cameras_project_the_object_onto_its_silhouette(scene_dir):
    from PIL import Image

    trimesh = pytest.importorskip("trimesh")
    vertices = np.asarray(trimesh.load(scene_dir / "gt_object.ply", process=False).vertices)
    rec = read_gt(scene_dir)
    for image in rec.images.values():
        mask = np.asarray(Image.open(scene_dir / "masks" / image.name)) > 0
        xy, depth = project(image, rec.cameras[image.camera_id], vertices)
        assert np.all(depth > 0)
        H, W = mask.shape
        in_frame = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
        assert in_frame.mean() > 0.99, f"{image.name}: the object should be in view"
        pix = np.floor(xy[in_frame]).astype(int)
        inside = dilate(mask)[pix[:, 1], pix[:, 0]]
        assert inside.mean() > 0.999, f"{image.name}: {1 - inside.mean():.2%} of vertices fall off the silhouette"

        # Containment alone would pass for a camera that sees the object too small; the
        # silhouette's extent must match the projected vertices' extent too.
        ys, xs = np.nonzero(mask)
        mask_box = np.array([xs.min(), xs.max() + 1, ys.min(), ys.max() + 1])
        proj_box = np.array([xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()])
        clipped = np.clip(proj_box, 0, [W, W, H, H])
        assert np.abs(mask_box - clipped).max() < 1.0, f"{image.name}: silhouette {mask_box} vs cameras {proj_box}"


def test_ensure_scene_reuses_a_matching_scene(scene_dir):
    stamp = (scene_dir / "scene.json").stat().st_mtime_ns
    assert ensure_scene(scene_dir, PARAMS) == scene_dir
    assert (scene_dir / "scene.json").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------------------
# The scene kinds for hard captures (issue 13): photos as a phone stores them.

from backend.tools.synthetic_scene import (  # noqa: E402
    _scene_matches,
    focal_35mm,
    gps_to_enu,
    hemisphere_params,
    portrait_params,
    street_params,
)

STREET = street_params(views=4, width=128, height=96, samples=2)
PORTRAIT = portrait_params(views=4, width=96, height=128, samples=2)
HEMISPHERE = hemisphere_params(views=5, width=128, height=96, samples=2)


@pytest.fixture(scope="module")
def small_street(tmp_path_factory):
    return ensure_scene(tmp_path_factory.mktemp("street") / "scene", STREET)


@pytest.fixture(scope="module")
def small_portrait(tmp_path_factory):
    return ensure_scene(tmp_path_factory.mktemp("portrait") / "scene", PORTRAIT)


def gt_centres(rec) -> dict[str, np.ndarray]:
    return {im.name: im.projection_center() for im in rec.images.values()}


def exif_gps(exif) -> np.ndarray:
    gps = exif.get_ifd(0x8825)

    def degrees(dms, ref):
        d, m, s = (float(v) for v in dms)
        return (d + m / 60 + s / 3600) * (-1 if ref in ("S", "W") else 1)

    alt = float(gps[6]) * (-1 if gps.get(5) == b"\x01" else 1)
    return np.array([degrees(gps[2], gps[1]), degrees(gps[4], gps[3]), alt])


def test_street_photos_carry_exif_focal_and_gps_that_match_the_ground_truth(small_street):
    from PIL import Image

    info = json.loads((small_street / "scene.json").read_text())
    assert (info["kind"], info["units"], info["up"]) == ("street", "m", [0.0, 0.0, 1.0])
    rec = read_gt(small_street)
    (camera,) = rec.cameras.values()
    fx = camera.params[0]
    # The mm focal on the sensor, and the 35 mm-equivalent by the diagonal, give the GT focal in pixels.
    np.testing.assert_allclose(fx, STREET.lens * STREET.width / STREET.sensor_width, rtol=1e-6)
    assert abs(focal_35mm(STREET) - 26) < 0.1
    centres = gt_centres(rec)
    for name in info["cameras"]:
        photo = Image.open(small_street / "images" / f"{name}.jpg")
        assert photo.format == "JPEG" and photo.size == (STREET.width, STREET.height)
        exif = photo.getexif()
        details = exif.get_ifd(0x8769)
        assert exif[0x0112] == 1
        assert float(details[0x920A]) == pytest.approx(STREET.lens)
        assert details[0xA405] == info["exif"]["focal_35mm"] == 26
        diagonal_px = np.hypot(STREET.width, STREET.height)
        assert details[0xA405] / np.hypot(36, 24) * diagonal_px == pytest.approx(fx, rel=0.01)
        enu = gps_to_enu(exif_gps(exif), info["gps_origin"])
        np.testing.assert_allclose(enu, centres[f"{name}.jpg"], atol=0.01)  # the EXIF rounds to ~3 mm

    # A walk north at eye height, looking roughly forward (+Y).
    track = np.array([centres[f"{n}.jpg"] for n in info["cameras"]])
    assert np.all(np.diff(track[:, 1]) > 0.5) and np.all(np.abs(track[:, 2] - 1.6) < 0.15)
    assert info["track_length"] == pytest.approx(np.linalg.norm(np.diff(track, axis=0), axis=1).sum(), rel=1e-6)
    for image in rec.images.values():
        forward = image.cam_from_world().rotation.matrix()[2]  # the camera's +Z in the world
        assert forward[1] > 0.9, f"{image.name} should look down the street"


def test_portrait_photos_are_stored_turned_with_an_orientation_tag_that_shows_them_upright(small_portrait):
    from PIL import Image, ImageOps

    info = json.loads((small_portrait / "scene.json").read_text())
    rec = read_gt(small_portrait)
    (camera,) = rec.cameras.values()
    assert (camera.width, camera.height) == (PORTRAIT.width, PORTRAIT.height)  # as displayed
    tags = [info["orientations"][f"{n}.jpg"] for n in info["cameras"]]
    assert tags == [6, 8, 6, 8]
    for name, tag in zip(info["cameras"], tags):
        photo = Image.open(small_portrait / "images" / f"{name}.jpg")
        assert photo.size == (PORTRAIT.height, PORTRAIT.width), "stored as the sensor saw it: landscape"
        assert photo.getexif()[0x0112] == tag
        shown = np.asarray(ImageOps.exif_transpose(photo).convert("L"), np.float32)
        assert shown.shape == (camera.height, camera.width)
        # Upright: the plain grey sky (0.5 linear, 188 in sRGB) along the top, the ground along the bottom.
        sky = np.abs(shown - 188) < 8
        assert sky[:4].mean() > sky[-4:].mean() + 0.3, f"{name} (tag {tag}) is not shown upright"
        mask = np.asarray(Image.open(small_portrait / "masks" / f"{name}.png"))
        assert mask.shape == shown.shape


def test_hemisphere_cameras_reach_from_low_to_overhead(tmp_path):
    scene = ensure_scene(tmp_path / "scene", HEMISPHERE)
    rec = read_gt(scene)
    centres = np.array(list(gt_centres(rec).values()))
    elevation = np.degrees(np.arcsin(centres[:, 2] / np.linalg.norm(centres, axis=1)))
    assert elevation.max() > 85 and elevation.min() < 15
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), HEMISPHERE.distance, rtol=1e-6)


def test_a_scene_from_before_the_new_fields_still_matches_its_params(tmp_path):
    (tmp_path / "scene.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, "params": {
        "views": 24, "width": 640, "height": 480, "samples": 16, "seed": 0, "lens": 50.0, "distance": 4.5}}))
    assert _scene_matches(tmp_path, SceneParams())
    assert not _scene_matches(tmp_path, SceneParams(portrait=True, width=480, height=640))
