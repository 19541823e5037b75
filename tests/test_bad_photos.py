"""Photo folders that are wrong in ways a user cannot see from Blender (issue 11):
links that point to themselves, files that cannot be read, formats we do not
read yet, photos in subfolders, and folders of copies of one photo. Each case
ends with a message that names the file, says what is wrong and what to do,
never a traceback; and nothing in the photo folder changes."""
from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.job import photos as photos_module
from backend.errors import ErrorCode, ReconstructError
from backend.job.photos import NEAR_DUPLICATE, scan_photos, thumb_distance
from conftest import copy_photos, dataset, read_json, run_backend, tree_digest

TEMPLE_NAMES = [f"templeSR{i:04d}.jpg" for i in range(1, 17)]


def _scan_error(folder, **kw) -> ReconstructError:
    with pytest.raises(ReconstructError) as info:
        scan_photos(folder, **kw)
    return info.value


def _reencoded(src: Path, quality: int = 75, noise: float = 0.0, seed: int = 0, fmt: str = "JPEG",
               brightness: float = 1.0) -> bytes:
    """The same photo as a different file: re-encoded, optionally with sensor-like noise."""
    a = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32) * brightness
    if noise:
        a = a + np.random.default_rng(seed).normal(0, noise, a.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _renamed(temple: Path, folder: Path, names: dict[str, str]) -> Path:
    """Temple photos under other names (names that do not look like video frames)."""
    folder.mkdir(parents=True, exist_ok=True)
    for new, old in names.items():
        shutil.copyfile(temple / "images" / old, folder / new)
    return folder


# 1. Links that point to themselves, and files that cannot be read ---------------------------------

def test_messy_folder_is_explained_file_by_file_and_left_untouched(tmp_path, temple):
    """A folder with self-referencing links, a HEIC and a WebP photo, an exact
    copy and a subfolder of photos: every one is a warning naming it, the good
    photos go on, a rerun (which reads the cache) says the same, and nothing
    in the folder changes."""
    photos = copy_photos(temple / "images", tmp_path / "photos", TEMPLE_NAMES[:4])
    os.symlink("loop", photos / "loop")
    os.symlink("b_link.jpg", photos / "a_link.jpg")
    os.symlink("a_link.jpg", photos / "b_link.jpg")
    (photos / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    Image.open(temple / "images" / TEMPLE_NAMES[5]).save(photos / "phone.webp")
    shutil.copyfile(photos / TEMPLE_NAMES[0], photos / "templeSR0001 copy.jpg")
    copy_photos(temple / "images", photos / "more", TEMPLE_NAMES[8:11])
    before = tree_digest(photos)
    ws = tmp_path / "ws"
    for attempt in range(2):
        proc = run_backend("run", photos, "--workspace", ws, "--stages", "features")
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        for name in ("loop", "a_link.jpg", "b_link.jpg"):
            assert f"warning: Skipped {name}: a link that points to itself" in proc.stderr, (attempt, proc.stderr)
        assert ("warning: Skipped IMG_0001.HEIC: a HEIC photo: HEIC photos are not supported yet; convert them to "
                "JPEG (on an iPhone: Settings > Camera > Formats > Most Compatible") in proc.stderr
        assert ("warning: Skipped phone.webp: a WebP photo: WebP photos are not supported yet; convert them to "
                "JPEG or PNG") in proc.stderr
        assert ("warning: Skipped templeSR0001 copy.jpg: an exact copy of templeSR0001.jpg (the same bytes): "
                "left out") in proc.stderr
        assert ("warning: Skipped more/: a subfolder with 3 photos: only photos directly in the folder are used; "
                "choose the subfolder to reconstruct it") in proc.stderr
        summary = read_json(ws / "summary.json")
        assert summary["total_images"] == 4
        assert {s["name"] for s in summary["skipped_files"]} == {
            "loop", "a_link.jpg", "b_link.jpg", "IMG_0001.HEIC", "phone.webp", "templeSR0001 copy.jpg", "more/"}
    assert tree_digest(photos) == before
    assert sorted(p.name for p in photos.iterdir()) == sorted(
        ["loop", "a_link.jpg", "b_link.jpg", "IMG_0001.HEIC", "phone.webp", "templeSR0001 copy.jpg", "more",
         *TEMPLE_NAMES[:4]])


def test_only_self_referencing_links(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    os.symlink("loop", photos / "loop")
    err = _scan_error(photos)
    assert err.code == ErrorCode.NO_PHOTOS
    assert err.message.startswith(f"No photos found in {photos}: 1 entry could not be read: loop (a link that points "
                                  "to itself")
    os.symlink("b.jpg", photos / "a.jpg")
    os.symlink("a.jpg", photos / "b.jpg")
    (photos / "loop").unlink()
    err = _scan_error(photos)
    assert err.code == ErrorCode.FILE_ERROR  # nothing but files the system refused to open
    assert "None of the 2 images" in err.message and "a.jpg (a link that points to itself" in err.message
    assert "b.jpg (a link that points to itself" in err.message
    assert [s["name"] for s in err.details["skipped"]] == ["a.jpg", "b.jpg"]


def test_photo_folder_that_is_a_link_loop(tmp_path):
    os.symlink("photos", tmp_path / "photos")
    err = _scan_error(tmp_path / "photos")
    assert err.code == ErrorCode.PHOTOS_NOT_FOUND
    assert "points to itself" in err.message and "Choose the folder that holds your photos" in err.hint


def test_unreadable_vanished_and_dangling_files_are_skipped_with_the_reason(tmp_path, temple, monkeypatch):
    """Permission denied (tests run as root, so the error is injected), a file
    deleted while the folder is read, a link to a file that is gone."""
    photos = copy_photos(temple / "images", tmp_path / "photos", TEMPLE_NAMES[:4])
    os.symlink(tmp_path / "unplugged" / "IMG_9.jpg", photos / "IMG_9.jpg")
    read_bytes = Path.read_bytes

    def failing(self):
        if self.name == TEMPLE_NAMES[1]:
            raise PermissionError(13, "Permission denied", str(self))
        if self.name == TEMPLE_NAMES[2]:
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", failing)
    found = scan_photos(photos)
    assert found.names == [TEMPLE_NAMES[0], TEMPLE_NAMES[3]]
    reasons = {s.name: s.reason for s in found.skipped}
    assert reasons[TEMPLE_NAMES[1]] == "no permission to read it: make it readable for you, or copy the photo again"
    assert reasons[TEMPLE_NAMES[2]] == "it disappeared while the folder was being read"
    assert reasons["IMG_9.jpg"].startswith(f"a link to {tmp_path / 'unplugged' / 'IMG_9.jpg'}, which does not exist")
    # With nothing readable left, the refusal lists each file with its reason.
    for name in (TEMPLE_NAMES[0], TEMPLE_NAMES[3]):
        (photos / name).unlink()
    err = _scan_error(photos)
    assert err.code == ErrorCode.FILE_ERROR
    assert f"{TEMPLE_NAMES[1]} (no permission to read it" in err.message
    assert f"{TEMPLE_NAMES[2]} (it disappeared" in err.message and "IMG_9.jpg (a link to" in err.message


def test_unreadable_folder(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    scandir = os.scandir

    def refusing(path="."):
        if Path(path) == tmp_path / "photos":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    err = _scan_error(tmp_path / "photos")
    assert err.code == ErrorCode.FILE_ERROR
    assert err.message == f"Cannot read the photo folder {tmp_path / 'photos'}: permission denied."


# 2. Formats we cannot read yet ---------------------------------------------------------------------

def test_only_heic_photos(tmp_path):
    """An iPhone's default: the refusal names the format and how to get JPEGs."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"IMG_{i:04d}.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(100))
    before = tree_digest(photos)
    proc = run_backend("run", photos, "--workspace", tmp_path / "ws")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"error: No usable photos in {photos}: 3 are HEIC photos (IMG_0000.HEIC, IMG_0001.HEIC, IMG_0002.HEIC), "
            "and HEIC photos are not supported yet.") in proc.stderr
    assert ("hint: Convert them to JPEG (on an iPhone: Settings > Camera > Formats > Most Compatible takes JPEG "
            "photos; or export the photos as JPEG); then choose the folder of converted photos.") in proc.stderr
    assert tree_digest(photos) == before


def test_only_webp_avif_and_raw(tmp_path, temple):
    photos = tmp_path / "photos"
    photos.mkdir()
    src = Image.open(temple / "images" / TEMPLE_NAMES[0])
    src.save(photos / "a.webp")
    src.save(photos / "b.avif")
    (photos / "c.CR2").write_bytes(b"II*\x00" + bytes(100))
    (photos / "notes.txt").write_text("not a photo")
    err = _scan_error(photos)
    assert err.code == ErrorCode.NO_PHOTOS
    assert err.message == (f"No usable photos in {photos}: 1 is a WebP photo (a.webp), 1 is an AVIF photo (b.avif) "
                           "and 1 is a camera RAW photo (c.CR2), and WebP, AVIF and camera RAW photos are not "
                           "supported yet. Also skipped: notes.txt (not an image file).")
    assert "WebP photos: convert them to JPEG or PNG" in err.hint
    assert "AVIF photos: convert them to JPEG or PNG" in err.hint
    assert "camera RAW photos: export them as JPEG or TIFF" in err.hint


def test_webp_or_heic_named_jpg_is_recognised(tmp_path, temple):
    """Some tools save WebP (or HEIC) under a .jpg name: the reason says what the file really is."""
    photos = copy_photos(temple / "images", tmp_path / "photos", TEMPLE_NAMES[:3])
    Image.open(temple / "images" / TEMPLE_NAMES[5]).save(photos / "download.jpg", "WEBP")
    (photos / "phone.jpg").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    reasons = {s.name: s.reason for s in scan_photos(photos).skipped}
    assert reasons["download.jpg"].startswith("a WebP photo (despite its .jpg extension): WebP photos are not "
                                              "supported yet; convert them to JPEG or PNG")
    assert reasons["phone.jpg"].startswith("a HEIC photo (despite its .jpg extension): HEIC photos are not supported")


# 3. Photos in subfolders ------------------------------------------------------------------------

def test_photos_only_in_subfolders(tmp_path, temple):
    photos = tmp_path / "photos"
    copy_photos(temple / "images", photos / "day 1", TEMPLE_NAMES[:3])
    copy_photos(temple / "images", photos / "day 2", TEMPLE_NAMES[3:5])
    (photos / "empty").mkdir()
    (photos / "readme.txt").write_text("two days of photos")
    before = tree_digest(photos)
    proc = run_backend("run", photos, "--workspace", tmp_path / "ws")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"error: The photo folder {photos} has no photos directly in it, but its subfolders do: "
            "day 1 (3 photos), day 2 (2 photos).") in proc.stderr
    assert "hint: Choose one of these subfolders as the photo folder" in proc.stderr
    assert tree_digest(photos) == before


def test_photos_in_one_subfolder(tmp_path, temple):
    photos = tmp_path / "photos"
    copy_photos(temple / "images", photos / "DCIM", TEMPLE_NAMES[:3])
    err = _scan_error(photos)
    assert err.code == ErrorCode.NO_PHOTOS
    assert err.message == f"The photo folder {photos} has no photos directly in it, but its subfolder DCIM holds 3 photos."
    assert err.hint == f"Choose the subfolder {photos / 'DCIM'} as the photo folder, or move its photos up into {photos}."


def test_subfolders_are_looked_into_one_level_only_and_links_up_are_not_followed(tmp_path, temple):
    photos = tmp_path / "photos"
    copy_photos(temple / "images", photos / "a" / "b", TEMPLE_NAMES[:3])  # two levels down: not counted
    os.symlink("..", photos / "up")  # a link to the parent: not a subfolder of photos
    os.symlink(photos, photos / "a" / "self")
    err = _scan_error(photos)
    assert err.message == (f"The photo folder {photos} has no photos: it only holds the subfolder a, with no photos "
                           "in them either.")
    (photos / "a").rename(photos / "x")
    shutil.rmtree(photos / "x")
    (photos / "up").unlink()
    err = _scan_error(photos)
    assert err.message == f"The photo folder {photos} is empty."


def test_loose_photos_are_used_and_subfolders_named(tmp_path, temple):
    photos = copy_photos(temple / "images", tmp_path / "photos", TEMPLE_NAMES[:3])
    copy_photos(temple / "images", photos / "rejects", TEMPLE_NAMES[3:4])
    found = scan_photos(photos)
    assert found.names == TEMPLE_NAMES[:3]
    assert [asdict(s) for s in found.skipped] == [{
        "name": "rejects/", "reason": "a subfolder with 1 photo: only photos directly in the folder are used; "
                                      "choose the subfolder to reconstruct it"}]


def test_one_loose_photo_and_a_subfolder(tmp_path, temple):
    photos = copy_photos(temple / "images", tmp_path / "photos", TEMPLE_NAMES[:1])
    copy_photos(temple / "images", photos / "rest", TEMPLE_NAMES[1:6])
    err = _scan_error(photos)
    assert err.code == ErrorCode.TOO_FEW_PHOTOS
    assert err.message.startswith(f"Only one usable photo ({TEMPLE_NAMES[0]}) in {photos}")
    assert "Its subfolders hold more: rest (5 photos); choose one of them instead." in err.message


# 4. Copies of one photo ---------------------------------------------------------------------------

def _temple_centres(temple: Path) -> dict[str, np.ndarray]:
    frames = json.loads((temple / "transforms.json").read_text())["frames"]
    return {Path(f["file_path"]).name: np.array(f["transform_matrix"])[:3, 3] for f in frames}


def test_near_identical_threshold_separates_views_from_copies(tmp_path, temple):
    """Why NEAR_DUPLICATE is 3.0: every two temple photos taken from different
    positions differ by far more (the smallest: about 9), while a copy of a photo
    re-encoded, noisy, converted to PNG or slightly brighter differs by far less.
    The one pair under the threshold, templeSR0001 and templeSR0011, is the same
    view twice: the ring's ground truth puts both at one pose."""
    found = scan_photos(temple / "images")
    thumbs = {p.name: p.thumb for p in found.photos}
    centres = _temple_centres(temple)
    distinct, same = [], []
    for a, b in itertools.combinations(TEMPLE_NAMES, 2):
        moved = float(np.linalg.norm(centres[a] - centres[b]))
        (distinct if moved > 0.01 else same).append((thumb_distance(thumbs[a], thumbs[b]), a, b))
    assert [(a, b) for _, a, b in same] == [("templeSR0001.jpg", "templeSR0011.jpg")]
    assert same[0][0] < NEAR_DUPLICATE
    assert min(distinct)[0] > 2.5 * NEAR_DUPLICATE, min(distinct)

    variants = {"q90": {"quality": 90}, "q30": {"quality": 30}, "noise4": {"noise": 4.0},
                "noise8": {"noise": 8.0}, "png": {"fmt": "PNG"}, "bright5%": {"brightness": 1.05}}
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in TEMPLE_NAMES[:4]:
        for kind, kw in variants.items():
            (copies / f"{kind}_{name}".replace(".jpg", ".png" if kind == "png" else ".jpg")).write_bytes(
                _reencoded(temple / "images" / name, **kw))
    worst = {}
    for p in scan_photos(copies).photos:
        kind, original = p.name.split("_", 1)
        d = thumb_distance(p.thumb, thumbs[Path(original).stem + ".jpg"])
        worst[kind] = max(worst.get(kind, 0.0), d)
    assert max(worst.values()) < NEAR_DUPLICATE / 1.5, worst


def test_near_identical_threshold_keeps_a_small_step_apart():
    """The closest two different views in the shared photo sets: Sceaux 100_7105 and
    100_7106, a step that moves the facade by about 5% of the frame."""
    folder = dataset("sceaux_castle") / "images"
    thumbs = {p.name: p.thumb for p in scan_photos(folder).photos}
    assert thumb_distance(thumbs["100_7105.jpg"], thumbs["100_7106.jpg"]) > 2.5 * NEAR_DUPLICATE
    assert scan_photos(folder).notices == []


def test_folder_of_copies_is_refused_before_matching(tmp_path, temple):
    """The issue's case: 300 copies of one photo (most byte-identical, some
    re-encoded with noise, named like a camera names them) are refused in
    seconds with a message that says they are copies, not after minutes of
    matching with 'Could not reconstruct'."""
    photos = tmp_path / "photos"
    photos.mkdir()
    src = temple / "images" / TEMPLE_NAMES[0]
    for i in range(1, 301):
        if i % 10 == 0:
            (photos / f"IMG_{i}.jpg").write_bytes(_reencoded(src, quality=85, noise=3.0, seed=i))
        else:
            shutil.copyfile(src, photos / f"IMG_{i}.jpg")
    before = tree_digest(photos)
    started = time.perf_counter()
    proc = run_backend("run", photos, "--workspace", tmp_path / "ws")
    seconds = time.perf_counter() - started
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"error: All 300 photos in {photos} show the same view: IMG_1.jpg and 299 copies or near-identical "
            "shots of it (IMG_2.jpg, IMG_3.jpg") in proc.stderr
    assert "3D reconstruction needs photos taken from different positions" in proc.stderr
    assert "hint: Take photos from different positions" in proc.stderr
    assert not (tmp_path / "ws" / "sparse" / "features.db").exists()
    assert seconds < 60, seconds  # the run took 391 s to fail
    assert tree_digest(photos) == before


def test_exact_copies_only(tmp_path, temple):
    photos = copy_photos(temple / "images", tmp_path / "photos", TEMPLE_NAMES[:1])
    shutil.copyfile(photos / TEMPLE_NAMES[0], photos / "same.jpg")
    err = _scan_error(photos)
    assert err.code == ErrorCode.DUPLICATE_PHOTOS
    assert err.message == (f"All 2 photos in {photos} show the same view: same.jpg and 1 exact copy of it "
                           f"({TEMPLE_NAMES[0]}). 3D reconstruction needs photos taken from different positions.")


def test_two_near_identical_photos_are_refused(tmp_path, temple):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_reencoded(temple / "images" / TEMPLE_NAMES[3], quality=90))
    (photos / "b.jpg").write_bytes(_reencoded(temple / "images" / TEMPLE_NAMES[3], quality=60, noise=4.0))
    err = _scan_error(photos)
    assert err.code == ErrorCode.DUPLICATE_PHOTOS
    assert "a.jpg and 1 copy or near-identical shot of it (b.jpg)" in err.message
    assert err.details["groups"] == [["a.jpg", "b.jpg"]]


def test_some_copies_among_distinct_views(tmp_path, temple):
    """Byte-identical copies are left out (one kept) with a warning each; near-identical
    photos that are different files are kept, with one warning naming them."""
    photos = _renamed(temple, tmp_path / "photos", {"front.jpg": TEMPLE_NAMES[1], "side.jpg": TEMPLE_NAMES[4],
                                                    "back.jpg": TEMPLE_NAMES[8], "front copy.jpg": TEMPLE_NAMES[1]})
    (photos / "front again.jpg").write_bytes(_reencoded(photos / "front.jpg", quality=80, noise=3.0))
    found = scan_photos(photos)
    assert found.names == ["back.jpg", "front again.jpg", "front.jpg", "side.jpg"]
    assert [asdict(s) for s in found.skipped] == [
        {"name": "front copy.jpg", "reason": "an exact copy of front.jpg (the same bytes): left out, one of them is enough"}]
    assert [(n.code, n.details["names"]) for n in found.notices] == [
        ("near_duplicate_photos", ["front.jpg", "front again.jpg"])]
    assert found.notices[0].message == ("front again.jpg looks nearly identical to front.jpg: photos taken "
                                        "from the same spot add little to the 3D shape (they are kept)")


def test_video_frames_may_repeat(tmp_path, temple):
    """Frames of a video are near-identical to their neighbours by nature: no warning,
    nothing dropped but byte-identical frames, as long as the video shows more than one view."""
    photos = tmp_path / "frames"
    photos.mkdir()
    for i in range(1, 9):
        (photos / f"frame_{i:04d}.jpg").write_bytes(
            _reencoded(temple / "images" / TEMPLE_NAMES[(i - 1) // 4], quality=90, noise=2.0, seed=i))
    found = scan_photos(photos)
    assert len(found.photos) == 8 and found.skipped == [] and found.notices == []
    # A "video" in which the camera never moved is still refused.
    for i in range(5, 9):
        (photos / f"frame_{i:04d}.jpg").write_bytes(_reencoded(temple / "images" / TEMPLE_NAMES[0], noise=2.0, seed=i))
    assert _scan_error(photos).code == ErrorCode.DUPLICATE_PHOTOS


def test_distinct_sixteen_bit_photos_are_not_copies(tmp_path, temple):
    """16-bit PNGs keep their contrast in the thumbnail (not clipped to white, which would make them all alike)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in TEMPLE_NAMES[:3]:
        grey = np.asarray(Image.open(temple / "images" / name).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(photos / name.replace(".jpg", ".png"))
    found = scan_photos(photos)
    assert len(found.photos) == 3 and found.notices == []
    assert Image.open(photos / "templeSR0001.png").mode.startswith("I")


# 5. The cache ------------------------------------------------------------------------------------

def test_cache_from_before_fingerprints_is_decoded_again_once(tmp_path, temple, monkeypatch):
    photos = copy_photos(temple / "images", tmp_path / "photos", TEMPLE_NAMES[:3])
    decoded = []
    check = photos_module._check_image
    monkeypatch.setattr(photos_module, "_check_image", lambda data: decoded.append(1) or check(data))
    first = scan_photos(photos)
    assert len(decoded) == 3
    cache = {p.name: asdict(p) for p in first.photos}
    assert scan_photos(photos, cache).photos == first.photos and len(decoded) == 3  # unchanged: not decoded
    old = {name: {k: v for k, v in entry.items() if k not in ("thumb", "digest")} for name, entry in cache.items()}
    old[TEMPLE_NAMES[0]] = dict(cache[TEMPLE_NAMES[0]], thumb=None)  # damaged
    again = scan_photos(photos, json.loads(json.dumps(old)))
    assert again.photos == first.photos and len(decoded) == 6
