"""Issue 18: masks beside the photos (COLMAP's convention: photo.jpg -> photo.jpg.png, black =
ignore). A user who masks out a turntable or a passer-by gets no features there and no dense
points from those pixels; a mask folder that does not fit the photos is refused before anything
is written, with a message naming the photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CACHE, blob_photo, copy_photos, dataset, read_json, run_backend, tree_digest


def _photos(folder: Path, n: int = 3, size=(480, 360)) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        blob_photo(i, size).save(folder / f"p{i}.jpg", quality=92)
    return folder


def _mask(path: Path, size, keep=None) -> None:
    """White (keep) everywhere, or where `keep(x, y)` is true."""
    w, h = size
    if keep is None:
        a = np.full((h, w), 255, np.uint8)
    else:
        ys, xs = np.mgrid[0:h, 0:w]
        a = np.where(keep(xs, ys), 255, 0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _refused(tmp_path: Path, photos: Path, masks: Path, *words: str) -> str:
    before = tree_digest(photos), tree_digest(masks) if masks.is_dir() else None
    ws = tmp_path / "ws"
    proc = run_backend("run", photos, "--workspace", ws, "--masks", masks, "--stages", "features")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert (tree_digest(photos), tree_digest(masks) if masks.is_dir() else None) == before
    assert not (ws / "sparse").exists(), "a stage ran with masks that do not fit"
    return proc.stderr


def test_masks_missing_for_some_photos_are_named(tmp_path):
    photos = _photos(tmp_path / "photos")
    _mask(tmp_path / "masks" / "p0.jpg.png", (480, 360))
    _refused(tmp_path, photos, tmp_path / "masks", "No mask for 2 of 3 photos", "p1.jpg", "p2.jpg", "photo.jpg.png")


def test_masks_of_the_wrong_size_are_named(tmp_path):
    photos = _photos(tmp_path / "photos")
    for i in range(3):
        _mask(tmp_path / "masks" / f"p{i}.jpg.png", (480, 360) if i != 1 else (240, 180))
    _refused(tmp_path, photos, tmp_path / "masks", "p1.jpg.png is 240x180, its photo 480x360")


def test_a_mask_folder_that_does_not_exist_is_refused(tmp_path):
    photos = _photos(tmp_path / "photos")
    _refused(tmp_path, photos, tmp_path / "no-such-masks", "mask folder", "does not exist")


def test_no_features_where_the_masks_are_black(tmp_path):
    """The temple's photos with their left half masked: every keypoint lies in the right half."""
    import pycolmap

    photos = copy_photos(dataset("middlebury_temple_sparse_ring") / "images", tmp_path / "photos",
                         names=[f"templeSR{i:04d}.jpg" for i in range(1, 5)])
    masks = tmp_path / "masks"
    for p in photos.iterdir():
        with Image.open(p) as im:
            size = im.size
        _mask(masks / f"{p.name}.png", size, keep=lambda x, y: x >= size[0] // 2)
    ws = tmp_path / "ws"
    run_backend("run", photos, "--workspace", ws, "--masks", masks, "--stages", "features", check=True)
    with pycolmap.Database.open(str(ws / "sparse" / "features.db")) as db:
        for image in db.read_all_images():
            keypoints = db.read_keypoints(image.image_id)
            assert len(keypoints) > 100
            assert keypoints[:, 0].min() >= size[0] // 2 - 1, f"a feature in {image.name}'s masked half"


@pytest.fixture(scope="module")
def masked_object(tmp_path_factory):
    """The synthetic scene (the demo's), 12 of its views, with masks that black out the object
    (its silhouettes, grown by 3 px): what a user does to keep a turntable's surroundings and
    drop what stands on it. The same views are reconstructed with and without the masks."""
    from PIL import ImageFilter

    from backend.tools.synthetic_scene import SceneParams, ensure_scene

    scene = ensure_scene(CACHE / "synthetic-scene", SceneParams())
    info = read_json(scene / "scene.json")
    root = tmp_path_factory.mktemp("masked")
    names = [Path(p).name for p in info["images"]][::2]
    photos = copy_photos(scene / "images", root / "photos", names=names)
    (root / "masks").mkdir()
    for name in names:
        silhouette = Image.open(scene / "masks" / f"{Path(name).stem}.png").convert("L")
        grown = silhouette.filter(ImageFilter.MaxFilter(7))
        Image.fromarray(255 - np.asarray(grown)).save(root / "masks" / f"{name}.png")
    runs = {}
    for label, extra in (("masked", ["--masks", root / "masks"]), ("unmasked", [])):
        ws = root / label
        run_backend("run", photos, "--workspace", ws, "--quality", "fast", "--dense-max-size", "320",
                    "--stages", "fusion", *extra, check=True, timeout=900)
        runs[label] = ws
    return scene, runs


def _points_on_object(scene: Path, ws: Path) -> tuple[int, int]:
    """Dense points within 2% of the object's size of its surface and above the ground, after
    aligning the reconstruction to the rendered cameras; and all dense points."""
    from plyfile import PlyData
    from scipy.spatial import cKDTree

    from backend.tools.evaluate import align_to_ground_truth, sample_surface

    sim = align_to_ground_truth(ws / "sparse" / "model", scene / "gt_colmap")
    vertex = PlyData.read(str(ws / "dense" / "fused.ply"))["vertex"]
    points = sim.apply(np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64))
    info = read_json(scene / "scene.json")
    mesh = PlyData.read(str(scene / "gt_object.ply"))
    vertices = np.stack([mesh["vertex"][k] for k in "xyz"], axis=1).astype(np.float64)
    faces = np.stack(mesh["face"]["vertex_indices"]).astype(np.int64)
    size = info["object_bbox"]["diagonal"]
    surface = cKDTree(sample_surface(vertices, faces, 0.002 * size))
    above = points[points[:, 2] > info["ground_z"] + 0.03 * size]
    distance = surface.query(above)[0] if len(above) else np.zeros(0)
    return int((distance < 0.02 * size).sum()), len(points)


def test_no_dense_point_comes_from_masked_pixels(masked_object):
    scene, runs = masked_object
    on_masked, total_masked = _points_on_object(scene, runs["masked"])
    on_unmasked, total_unmasked = _points_on_object(scene, runs["unmasked"])
    print(f"points on the object: {on_unmasked} of {total_unmasked} without masks, "
          f"{on_masked} of {total_masked} with them")
    assert on_unmasked > 1000, "without masks the object is reconstructed"
    assert on_masked <= 0.002 * on_unmasked, f"{on_masked} dense points on the masked object"
    assert total_masked > 0.2 * total_unmasked, "the ground around it is still reconstructed"
    assert (runs["masked"] / "undistorted" / "masks").is_dir()
