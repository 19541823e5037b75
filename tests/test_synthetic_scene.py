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
