"""Photos stored on their side (EXIF Orientation 2-8) are used as displayed
(issue 13): features, cameras, undistorted images and the Blender camera
backgrounds are all upright, from turned copies in the workspace; the
user's photos are never changed."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from backend.job.photos import one_camera, scan_photos
from backend.job.upright import MANIFEST, stage_photo_folder
from backend.tools.evaluate import compare_poses
from blender_addon.shared.layout import Layout
from conftest import dataset, read_json, run_backend, tree_digest

_MAKE, _MODEL, _EXIF_IFD, _FOCAL, _FOCAL_35MM, _ORIENTATION = 0x010F, 0x0110, 0x8769, 0x920A, 0xA405, 0x0112


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[_MAKE], exif[_MODEL], exif[_ORIENTATION] = "Maker", "Model 1", orientation
    exif.get_ifd(_EXIF_IFD).update({_FOCAL: 5.85, _FOCAL_35MM: 35})
    return exif


def _photo(seed: int, size=(48, 32)) -> Image.Image:
    """Blobs on noise: every photo its own view, not symmetric under any flip or turn."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    a[: size[1] // 3, : size[0] // 4] = (255, 0, 0)  # a red block in one corner
    return Image.fromarray(a)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=np.int16)  # luma: chroma is subsampled


def test_upright_copies_are_the_photos_as_displayed_and_the_photos_stay_untouched(tmp_path):
    photos_dir, upright = tmp_path / "photos", Layout(tmp_path / "ws").upright_photos
    photos_dir.mkdir()
    for o in range(1, 9):  # lossless PNGs: the copies must be exactly what a viewer shows
        _photo(o).save(photos_dir / f"p{o}.png", exif=_exif(o).tobytes())
    for o in (6, 8):  # Pillow turns TIFFs itself as it reads them: not twice
        _photo(10 + o).save(photos_dir / f"t{o}.tif", exif=_exif(o))
    smooth = _photo(9, (16, 10)).resize((64, 40), Image.BICUBIC)  # JPEG-friendly: noise would be smeared
    smooth.save(photos_dir / "j6.jpg", exif=_exif(6).tobytes(), quality=90)
    before = tree_digest(photos_dir)
    photos = scan_photos(photos_dir)
    by_name = {p.name: p for p in photos.photos}
    # sizes as displayed: orientations 5-8 stand the photo on its side
    assert [(by_name[f"p{o}.png"].width, by_name[f"p{o}.png"].height) for o in range(1, 9)] == \
        [(48, 32)] * 4 + [(32, 48)] * 4
    assert (by_name["j6.jpg"].width, by_name["j6.jpg"].height, by_name["j6.jpg"].orientation) == (40, 64, 6)
    assert not one_camera(photos)  # portrait and landscape shots are two cameras to COLMAP

    log: list[str] = []
    assert stage_photo_folder(photos, upright, log=log.append) == upright
    assert sorted(os.listdir(upright)) == sorted([*photos.names, MANIFEST])
    assert [(by_name[n].width, by_name[n].height, by_name[n].orientation) for n in ("t6.tif", "t8.tif")] == \
        [(32, 48, 6), (32, 48, 8)]
    for name in [f"p{o}.png" for o in range(2, 9)] + ["t6.tif", "t8.tif"]:
        with Image.open(photos_dir / name) as original, Image.open(upright / name) as copy:
            assert copy.getexif()[_ORIENTATION] == 1
            assert np.array_equal(np.asarray(copy.convert("RGB")),
                                  np.asarray(ImageOps.exif_transpose(original).convert("RGB"))), name
    # the one photo already upright is the user's file itself (a hard link), not a copy
    assert os.path.samefile(upright / "p1.png", photos_dir / "p1.png")
    with Image.open(upright / "j6.jpg") as copy:  # a JPEG is encoded again: close, not exact
        exif = copy.getexif()
        assert copy.size == (40, 64) and exif[_ORIENTATION] == 1
        assert (exif[_MAKE], exif[_MODEL]) == ("Maker", "Model 1")  # COLMAP's focal prior reads these...
        assert exif.get_ifd(_EXIF_IFD)[_FOCAL] == 5.85 and exif.get_ifd(_EXIF_IFD)[_FOCAL_35MM] == 35  # ...and these
    assert np.abs(_pixels(upright / "j6.jpg") - _pixels(photos_dir / "j6.jpg")).mean() < 1.5
    assert tree_digest(photos_dir) == before and log

    # unchanged photos: nothing is written again
    made = {name: os.stat(upright / name).st_mtime_ns for name in photos.names}
    log.clear()
    stage_photo_folder(scan_photos(photos_dir), upright, log=log.append)
    assert {name: os.stat(upright / name).st_mtime_ns for name in photos.names} == made and not log
    # the same photo gives the same bytes: stages downstream see no change
    copies = tree_digest(upright)
    for name in photos.names:
        (upright / name).unlink()
    stage_photo_folder(scan_photos(photos_dir), upright)
    assert tree_digest(upright) == copies

    # a photo replaced by another: its copy follows; a photo removed: its copy goes
    _photo(20).save(photos_dir / "p6.png", exif=_exif(6).tobytes())
    (photos_dir / "p3.png").unlink()
    stage_photo_folder(scan_photos(photos_dir), upright)
    with Image.open(photos_dir / "p6.png") as original, Image.open(upright / "p6.png") as copy:
        assert np.array_equal(np.asarray(copy), np.asarray(ImageOps.exif_transpose(original)))
    assert not (upright / "p3.png").exists()

    # no photo left on its side: the stages read the photos where they are, no copies kept
    for name in os.listdir(photos_dir):
        if name != "p1.png":
            (photos_dir / name).unlink()
    _photo(30).save(photos_dir / "q.png")
    assert stage_photo_folder(scan_photos(photos_dir), upright) == photos_dir
    assert not upright.exists()


def _on_its_side(src: Path, dst: Path) -> None:
    """`src` as a camera held sideways stores it: pixels turned a quarter left, Orientation 6
    (display turns them a quarter right), so what a viewer shows is `src`; its EXIF kept."""
    with Image.open(src) as im:
        exif = im.getexif()
        exif[_ORIENTATION] = 6
        im.transpose(Image.Transpose.ROTATE_90).save(dst, exif=exif.tobytes(), quality=95)


CHEAP = ("--max-image-size", "1000")


def test_sceaux_stored_on_its_side_registers_as_displayed_and_imports_upright(tmp_path, sceaux_run):
    sceaux, ws0 = dataset("sceaux_castle") / "images", sceaux_run
    names = sorted(os.listdir(sceaux))
    sideways = tmp_path / "sideways"
    sideways.mkdir()
    for name in names:
        _on_its_side(sceaux / name, sideways / name)
    assert Image.open(sideways / names[0]).size == (2128, 2832)  # stored portrait, displayed as the original
    before = tree_digest(sideways)
    ws = tmp_path / "ws"
    run_backend("run", sideways, "--workspace", ws, *CHEAP, "--stages", "undistort", "--undistort-max-size",
                "800", check=True)
    summary, original = read_json(ws / "summary.json"), read_json(ws0 / "summary.json")
    assert summary["registered_images"] == 11 and summary["unregistered"] == []
    # cameras as displayed (pycolmap alone would make them 2128x2832), with the EXIF focal prior kept
    assert {(c["width"], c["height"]) for c in summary["cameras"]} == {(2832, 2128)}
    assert len(summary["focal_from_exif"]) == 11 and all(c["focal_from_exif"] for c in summary["cameras"])
    errors = compare_poses(Layout(ws).model, Layout(ws0).model)
    assert errors.num_compared == 11
    # measured 0.02% of the scene radius and 0.007 degrees: the same SfM, to JPEG re-encoding noise
    assert errors.relative_median_centre_error <= 0.005 and errors.median_rotation_error_deg <= 0.2, errors
    assert abs(summary["mean_reprojection_error"] - original["mean_reprojection_error"]) < 0.1
    assert tree_digest(sideways) == before  # the user's photos: not a byte changed

    # a rerun with the same photos does nothing, copies included
    copies = {name: os.stat(Layout(ws).upright_photos / name).st_mtime_ns for name in names}
    proc = run_backend("run", sideways, "--workspace", ws, *CHEAP, "--stages", "undistort", "--undistort-max-size",
                       "800", check=True)
    assert "ran: nothing (all stages up to date)" in proc.stdout, proc.stdout
    assert {name: os.stat(Layout(ws).upright_photos / name).st_mtime_ns for name in names} == copies

    _backgrounds_are_upright(ws, sceaux, names)


def _grey(a: np.ndarray, size=(64, 48)) -> np.ndarray:
    g = np.asarray(Image.fromarray(a).convert("L").resize(size, Image.BOX), dtype=np.float32)
    return (g - g.mean()) / max(g.std(), 1.0)


def _backgrounds_are_upright(ws: Path, originals: Path, names: list[str]) -> None:
    """Each imported camera's background, in real Blender, looks like the original photo,
    and not like it turned or flipped."""
    bpy = pytest.importorskip("bpy")
    import addon_utils

    from blender_addon.importers.results import import_workspace

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("blender_addon", default_set=True)
    try:
        import_workspace(ws, "sceaux", bpy.context.scene)
        cameras = [o for o in bpy.data.objects if o.type == "CAMERA"]
        assert len(cameras) == len(names)
        for cam in cameras:
            (background,) = cam.data.background_images
            image = background.image
            width, height = image.size
            assert width > height, (cam.name, width, height)  # landscape, as displayed
            pixels = np.empty(width * height * 4, np.float32)
            image.pixels.foreach_get(pixels)
            shown = np.flipud(pixels.reshape(height, width, 4)[..., :3])  # Blender's rows run bottom-up
            shown = _grey(np.clip(shown * 255 + 0.5, 0, 255).astype(np.uint8))
            name = Path(image.filepath).name
            with Image.open(originals / name) as im:
                photo = np.asarray(im.convert("RGB"))
            # undistortion bends the edges a little; a photo turned or flipped is another picture
            # (measured: 0.07-0.10 standard deviations from the original, 0.8-1.4 from it turned half way)
            same = np.abs(shown - _grey(photo)).mean()
            flipped = np.abs(shown - _grey(photo[::-1, ::-1].copy())).mean()
            assert same < 0.25 and same < flipped / 4, (name, same, flipped)
    finally:
        addon_utils.disable("blender_addon", default_set=True)
        bpy.ops.wm.read_factory_settings(use_empty=True)
