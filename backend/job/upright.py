"""Photos turned the way they are displayed, for the stages to read.

A camera held sideways stores its pixels landscape and says "turn me" in the
EXIF Orientation tag (2-8). pycolmap ignores that tag (tested with 4.x: a
copy tagged 6 gets the same landscape camera as the untagged one), so its
features, cameras and undistorted images, and the Blender camera backgrounds
made from them, would all lie on their side. The user's files are never
changed: when any photo needs turning, the workspace's `photos/` folder
(Layout.upright_photos) holds every photo under its own name, so one folder
resolves each name for pycolmap:

- a photo that needs turning: a copy with its pixels turned and Orientation
  set to 1; every other EXIF byte is kept (the focal length and camera model
  COLMAP takes its focal prior from, GPS for the world frame, maker notes);
- every other photo: a hard link to the original (no disk used, no rights
  needed, unlike a symbolic link on Windows), or a copy where links cannot be
  made (the workspace on another disk, FAT drives).

Copies are written beside their final name and renamed into place when
whole, are the same bytes for the same photo (nothing in the encoding
depends on time), and are made again only when their photo changed:
`.upright.json` records the digest of the photo each was made from. With no
photo to turn there is no such folder and the stages read the photos where
they are.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Callable

ORIENTATION_TAG = 0x0112
MANIFEST = ".upright.json"
VERSION = 1
"""Bumped when the way copies are made changes, so old copies are made again."""

# What each EXIF orientation asks for, as Pillow's transposes (the table of ImageOps.exif_transpose).
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}
# TIFF tags that describe how the pixels are stored (size, strips, tiles, compression), not the photo.
_TIFF_LAYOUT = (254, 255, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338,
                339, 340, 341, 530, 531, 532)
JPEG_QUALITY = 95
"""A turned JPEG is decoded and encoded again (Pillow has no lossless rotation); at 95 that
costs about as much detail as the camera's own compression did."""


def orientation_of(exif) -> int:
    """The EXIF Orientation of a Pillow Exif mapping: 1 (as stored) unless the tag is a valid 2-8."""
    value = exif.get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def swaps_sides(orientation: int) -> bool:
    """Whether the displayed photo is the stored one on its side (width and height trade places)."""
    return orientation in (5, 6, 7, 8)


TURNED_BY_PILLOW = {"TIFF"}
"""Formats Pillow itself opens at their displayed size and turns as they load (dropping the tag)."""


def turn(im, orientation: int):
    """A loaded Pillow image as displayed."""
    from PIL import Image

    if im.format in TURNED_BY_PILLOW or orientation not in _TRANSPOSE:
        return im
    return im.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))


def _exif_upright(raw: bytes) -> bytes:
    """EXIF bytes (with or without the JPEG 'Exif\\0\\0' header) with Orientation set to 1 in
    place: every other byte, offsets and maker notes included, stays as the camera wrote it."""
    tiff = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        raise ValueError("not TIFF-structured EXIF")
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    out = bytearray(tiff)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == ORIENTATION_TAG:
            if kind != 3 or n != 1:  # SHORT, one value, as the standard has it
                raise ValueError("unusual Orientation entry")
            struct.pack_into(order + "H", out, entry + 8, 1)
    return b"Exif\x00\x00" + bytes(out)


def write_upright(src: Path, dst: Path, orientation: int) -> None:
    """Write `src` turned as displayed to `dst` (its format, Orientation 1), atomically."""
    from PIL import Image

    tmp = dst.with_name(dst.name + ".tmp")
    # Never write into an existing tmp: a run killed while linking leaves it a hard link to the user's photo.
    tmp.unlink(missing_ok=True)
    with Image.open(src) as im:
        im.load()  # first: loading a TIFF turns it and reloads its tags
        fmt = "JPEG" if im.format == "MPO" else im.format
        options: dict = {}
        if im.info.get("icc_profile"):
            options["icc_profile"] = im.info["icc_profile"]
        raw = im.info.get("exif")
        if fmt == "TIFF" or not raw:  # TIFF keeps its tags in the image's own IFD
            exif = im.getexif()
            exif[ORIENTATION_TAG] = 1
            for tag in _TIFF_LAYOUT:  # the stored pixels' layout: the writer sets the copy's own
                exif.pop(tag, None)
            options["exif"] = exif
        else:
            try:
                options["exif"] = _exif_upright(raw)
            except (ValueError, struct.error):
                exif = im.getexif()
                exif[ORIENTATION_TAG] = 1
                options["exif"] = exif.tobytes()
        if fmt == "JPEG":
            options.update(quality=JPEG_QUALITY)
        turned = turn(im, orientation)
        if turned is im:  # already turned by Pillow (TIFF): a plain copy, so the writer sees no stored layout tags
            turned = im.copy()
        try:
            turned.save(tmp, format=fmt, **options)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dst)


def _link_or_copy(src: Path, dst: Path) -> str:
    """`dst` becomes `src`'s file: a hard link where the disk allows one, else a copy."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how = "link"
    except OSError:  # another disk (EXDEV), a file system without links, too many links
        shutil.copy2(src, tmp)
        how = "copy"
    os.replace(tmp, dst)
    return how


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def stage_photo_folder(photos, folder: Path, cancel: Callable[[], bool] = lambda: False,
                       log: Callable[[str], None] = lambda message: None) -> Path:
    """The folder the stages read `photos` (a PhotoSet) from: their own folder when none needs
    turning (and any `folder` left from earlier photos is removed), else `folder`, brought up
    to date. `cancel()` true stops between photos (the caller then stops the job)."""
    from backend.errors import file_error

    try:
        return _prepare(photos, folder, cancel, log)
    except OSError as exc:
        raise file_error(exc, "making upright copies of the photos stored on their side") from None


def _prepare(photos, folder: Path, cancel: Callable[[], bool], log: Callable[[str], None]) -> Path:
    turned = [p for p in photos.photos if p.orientation != 1]
    if not turned:
        if folder.is_dir():
            shutil.rmtree(folder)
        return photos.folder
    folder.mkdir(parents=True, exist_ok=True)
    manifest_file = folder / MANIFEST
    try:
        old = json.loads(manifest_file.read_text())
        old = old.get("photos", {}) if isinstance(old, dict) and old.get("version") == VERSION else {}
    except (OSError, ValueError):
        old = {}
    new: dict[str, dict] = {}
    made = linked = 0
    for p in photos.photos:
        if cancel():
            break
        src, dst = photos.folder / p.name, folder / p.name
        was = old.get(p.name) if isinstance(old.get(p.name), dict) else {}
        record = {"digest": p.digest, "orientation": p.orientation}
        if p.orientation != 1:
            fresh = ({k: was.get(k) for k in record} == record and dst.is_file()
                     and dst.stat().st_size == was.get("size"))
            if not fresh:
                write_upright(src, dst, p.orientation)
                made += 1
            record.update(how="turned", size=dst.stat().st_size)
        else:
            # A link is its photo (edits included); a copy is fresh while its photo's digest is.
            fresh = _same_file(src, dst) or (
                was.get("how") == "copy" and was.get("digest") == p.digest and dst.is_file()
                and dst.stat().st_size == p.size)
            record["how"] = ("link" if _same_file(src, dst) else "copy") if fresh else _link_or_copy(src, dst)
            linked += not fresh
        new[p.name] = record
    else:
        keep = set(new) | {MANIFEST}
        for entry in os.scandir(folder):  # photos gone from the set, and leftovers of a killed run
            if entry.name not in keep:
                Path(entry.path).unlink()
    tmp = manifest_file.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"version": VERSION, "photos": {**old, **new} if cancel() else new},
                              indent=1, sort_keys=True))
    os.replace(tmp, manifest_file)
    if made or linked:
        log(f"{len(turned)} photos are stored on their side (EXIF Orientation): {made} turned copies made and "
            f"{linked} other photos linked in {folder}, for the stages to read")
    return folder
