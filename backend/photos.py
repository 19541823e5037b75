"""Find and check the input photos. Photos are only ever read, never written.

Every image is decoded once (JPEGs at 1/8 scale, which still walks the whole
compressed stream) so truncated or corrupt files are caught here, named in a
warning, and left out, instead of failing deep inside feature extraction.
Results are cached by (name, size, mtime) so an unchanged folder is not
decoded again on the next run.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from backend.errors import ErrorCode, ReconstructError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
MIN_PHOTOS = 2
_GPS_IFD = 0x8825
_EXIF_IFD = 0x8769
_MAKE, _MODEL, _FOCAL, _FOCAL_35MM = 0x010F, 0x0110, 0x920A, 0xA405


@dataclass(frozen=True)
class Photo:
    name: str  # relative to the photo folder, as COLMAP names images
    size: int
    mtime_ns: int
    width: int
    height: int
    has_gps: bool = False
    camera: str = ""
    """EXIF make, model and focal length: photos that agree (or all lack it) came from one camera."""


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass
class PhotoSet:
    folder: Path
    photos: list[Photo]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.photos]

    def fingerprint(self) -> list:
        """What the first stage depends on: the folder and each file's identity."""
        return [str(self.folder), [(p.name, p.size, p.mtime_ns) for p in self.photos]]


def _check_image(path: Path) -> tuple[int, int, bool, str]:
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        exif = im.getexif()
        has_gps = bool(exif.get(_GPS_IFD))
        details = exif.get_ifd(_EXIF_IFD)
        camera = "|".join(str(v) for v in (exif.get(_MAKE, ""), exif.get(_MODEL, ""),
                                           details.get(_FOCAL, ""), details.get(_FOCAL_35MM, "")))
        if im.format == "JPEG":
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        im.load()
    return width, height, has_gps, camera.strip("|")


def scan_photos(folder: str | os.PathLike, cache: dict | None = None) -> PhotoSet:
    """List the usable photos in `folder` (not recursive, sorted by name).

    `cache` maps name -> a previous Photo as a dict; entries whose size and
    mtime still match are trusted without decoding the file again.
    """
    folder = Path(folder).expanduser().resolve()
    if not folder.exists():
        raise ReconstructError(ErrorCode.PHOTOS_NOT_FOUND, f"The photo folder {folder} does not exist.",
                               "Choose the folder that holds your photos.")
    if not folder.is_dir():
        raise ReconstructError(ErrorCode.PHOTOS_NOT_FOUND, f"{folder} is a file, not a folder of photos.",
                               "Choose the folder that holds your photos, not one photo.")
    cache = cache or {}
    entries = sorted((e for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")), key=lambda e: e.name)
    if not entries:
        raise ReconstructError(ErrorCode.NO_PHOTOS, f"The photo folder {folder} is empty.",
                               "Copy your photos (JPEG, PNG or TIFF) into it, or choose another folder.")
    photos: list[Photo] = []
    skipped: list[Skipped] = []
    for entry in entries:
        name = entry.name
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(Skipped(name, "not an image file"))
            continue
        stat = entry.stat()
        cached = cache.get(name)
        if (cached and cached["size"] == stat.st_size and cached["mtime_ns"] == stat.st_mtime_ns
                and cached.keys() == _PHOTO_FIELDS):
            photos.append(Photo(**cached))
            continue
        try:
            width, height, has_gps, camera = _check_image(Path(entry.path))
        except Exception as exc:
            skipped.append(Skipped(name, f"unreadable or corrupt image ({exc})"))
            continue
        photos.append(Photo(name, stat.st_size, stat.st_mtime_ns, width, height, has_gps, camera))
    if not photos:
        bad_images = [s.name for s in skipped if s.reason != "not an image file"]
        if bad_images:
            raise ReconstructError(
                ErrorCode.NO_PHOTOS,
                f"None of the {len(bad_images)} images in {folder} could be read: {_names(bad_images)}.",
                "The files may be truncated or corrupt; copy them again from the camera.",
                {"skipped": [asdict(s) for s in skipped]})
        raise ReconstructError(
            ErrorCode.NO_PHOTOS,
            f"No photos found in {folder}: its {len(skipped)} files are not images ({_names([s.name for s in skipped])}).",
            "Photos must be JPEG, PNG, TIFF or BMP files directly inside the folder.",
            {"skipped": [asdict(s) for s in skipped]})
    if len(photos) < MIN_PHOTOS:
        raise ReconstructError(
            ErrorCode.TOO_FEW_PHOTOS,
            f"Only one usable photo ({photos[0].name}) in {folder}: 3D reconstruction needs several photos.",
            "Take at least 3 overlapping photos of the subject from different positions (20 or more works best).",
            {"skipped": [asdict(s) for s in skipped]})
    return PhotoSet(folder, photos, skipped)


_PHOTO_FIELDS = {f.name for f in fields(Photo)}


def one_camera(photos: PhotoSet) -> bool:
    """Whether every photo looks like it came from the same camera and zoom."""
    return len({(p.width, p.height, p.camera) for p in photos.photos}) == 1


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


_FRAME_NAME = re.compile(r"^(.*?)(\d+)$")


def looks_like_video_frames(names: list[str]) -> bool:
    """True when names are one prefix + a running number with few gaps,
    the way video frame extractors (ffmpeg, Blender) name their output."""
    prefixes, numbers = set(), []
    for name in names:
        match = _FRAME_NAME.match(Path(name).stem)
        if not match:
            return False
        prefixes.add(match.group(1))
        numbers.append(int(match.group(2)))
    if len(prefixes) != 1 or len(numbers) < 2:
        return False
    numbers.sort()
    steps = [b - a for a, b in zip(numbers, numbers[1:])]
    return max(steps) <= 3 * max(1, min(steps))
