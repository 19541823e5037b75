"""Find and check the input photos. Photos are only ever read, never written
(photos stored on their side are turned in copies: backend/job/upright.py).

Every image is decoded once (JPEGs at 1/8 scale, which still walks the whole
compressed stream) so truncated or corrupt files are caught here, named in a
warning, and left out, instead of failing deep inside feature extraction.
The same pass keeps a 16x16 grey thumbnail and a hash of the file's bytes, so
a folder of copies of one photo is refused here, in a second, instead of
after minutes of matching. Results are cached by (name, size, mtime) so an
unchanged folder is not decoded again on the next run.

Nothing a folder holds ends in a traceback: links that point to themselves,
files that cannot be read or vanish, formats we cannot read yet (HEIC, WebP,
AVIF, camera RAW) and photos that sit in subfolders are each named, with why
and what to do.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from backend.errors import ErrorCode, ReconstructError
from backend.job.upright import TURNED_BY_PILLOW, orientation_of, swaps_sides, turn

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
MIN_PHOTOS = 2
_GPS_IFD = 0x8825
_EXIF_IFD = 0x8769
_MAKE, _MODEL, _FOCAL, _FOCAL_35MM = 0x010F, 0x0110, 0x920A, 0xA405

THUMB_SIZE = 16
NEAR_DUPLICATE = 3.0
"""Two photos are near-identical when their 16x16 grey thumbnails, each
brought to zero mean and one contrast unit (48 grey levels per standard
deviation, so exposure and contrast do not count), differ by at most this
much on average (`thumb_distance`). Measured on the five photo sets in
shared/data: two photos taken from different spots differ by 7.85 or more
(Sceaux 100_7105 vs 100_7106, a step that moves the facade by about 5% of
the frame; the temple's ring neighbours by 10 or more, the Strecha sets by 13
or more), while a copy of a photo differs by at most 0.74 re-encoded down to
JPEG quality 20, 1.84 with noise of 15 grey levels, 1.65 converted to PNG,
1.13 brightened by 5%, 1.17 shifted by 2 pixels. (Copies shifted by 8 pixels
or halved in size reach 4.5 and count as different photos.) The one real pair
under it, templeSR0001 and templeSR0011 (0.42), is one view taken twice: the
ring's ground truth puts both at the same pose."""

_UNSUPPORTED = {
    # extension or Pillow format -> (name, what to do)
    "HEIC": ("HEIC", "convert them to JPEG (on an iPhone: Settings > Camera > Formats > Most Compatible "
                     "takes JPEG photos; or export the photos as JPEG)"),
    "HEIF": ("HEIF", "convert them to JPEG (on an iPhone: Settings > Camera > Formats > Most Compatible "
                     "takes JPEG photos; or export the photos as JPEG)"),
    "AVIF": ("AVIF", "convert them to JPEG or PNG"),
    "WEBP": ("WebP", "convert them to JPEG or PNG"),
    "JXL": ("JPEG XL", "convert them to JPEG or PNG"),
    "RAW": ("camera RAW", "export them as JPEG or TIFF from your raw photo editor (or use the camera's own JPEGs)"),
}
_UNSUPPORTED_EXTENSIONS = {
    ".heic": "HEIC", ".heics": "HEIC", ".heif": "HEIF", ".hif": "HEIF", ".avif": "AVIF", ".webp": "WEBP",
    ".jxl": "JXL",
    **{ext: "RAW" for ext in (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf",
                              ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".mrw", ".raw")},
}
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC",
                b"hevx": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


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
    thumb: str = ""
    """A THUMB_SIZE x THUMB_SIZE grey thumbnail, row by row, as hex: what near-identical photos are found by."""
    digest: str = ""
    """SHA-256 of the file's bytes: what exact copies are found by."""
    orientation: int = 1
    """EXIF Orientation (1-8): how the stored pixels are turned for display. width, height and
    thumb are the displayed photo's; the stages read an upright copy (backend/job/upright.py)."""


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass
class Notice:
    """Something about the photos worth a warning that skips no file (near-identical photos)."""
    code: str
    message: str
    details: dict = field(default_factory=dict)


@dataclass
class PhotoSet:
    folder: Path
    photos: list[Photo]
    skipped: list[Skipped] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.photos]

    def fingerprint(self) -> list:
        """What the first stage depends on: the folder and each file's identity."""
        # A photo's orientation only where it turns (stored on its side): hashes of other sets stay as they were,
        # and workspaces made before photos were turned upright run their stages again.
        return [str(self.folder), [(p.name, p.size, p.mtime_ns, *([p.orientation] if p.orientation != 1 else []))
                                   for p in self.photos]]


class _Unsupported(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def _sniff(data: bytes) -> str | None:
    """The unsupported format a file's first bytes announce, whatever its name says."""
    if data[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(data[8:12])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "JXL"
    return None


def _check_image(data: bytes) -> tuple[int, int, bool, str, str, int]:
    """Decode a photo's bytes: (width, height, has_gps, camera, thumb, orientation), the size and
    thumbnail as displayed. Raises _Unsupported for a format we cannot use, anything else for a broken file."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = _sniff(data)
        if kind:
            raise _Unsupported(kind) from None
        raise
    with im:
        if im.format in _UNSUPPORTED:
            raise _Unsupported(im.format)
        width, height = im.size
        exif = im.getexif()
        has_gps = bool(exif.get(_GPS_IFD))
        details = exif.get_ifd(_EXIF_IFD)
        camera = "|".join(str(v) for v in (exif.get(_MAKE, ""), exif.get(_MODEL, ""),
                                           details.get(_FOCAL, ""), details.get(_FOCAL_35MM, "")))
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        orientation = orientation_of(exif)  # before load: Pillow's TIFF reader drops the tag as it turns
        im.load()
        thumb = _thumbnail(turn(im, orientation))
        if swaps_sides(orientation) and im.format not in TURNED_BY_PILLOW:
            width, height = height, width
    return width, height, has_gps, camera.strip("|"), thumb, orientation


def _thumbnail(im) -> str:
    import numpy as np
    from PIL import Image

    if im.mode in ("I", "F") or im.mode.startswith("I;"):  # 16-bit and float images: scale, do not clip
        a = np.asarray(im, dtype=np.float32)
        a = a * (255.0 / (65535.0 if a.max() > 255 else 255.0))
        grey = Image.fromarray(a, "F")
    else:
        grey = im.convert("L")
    small = np.asarray(grey.resize((THUMB_SIZE, THUMB_SIZE), Image.BOX), dtype=np.float32)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8).tobytes().hex()


def _os_reason(exc: OSError, path: str) -> str:
    """Why one file could not be read, and what to do, in a user's words."""
    if exc.errno == errno.ELOOP:
        return "a link that points to itself (a loop of symbolic links): delete it or point it at a photo"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no permission to read it: make it readable for you, or copy the photo again"
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "a file"
            return (f"a link to {target}, which does not exist (was a disk unplugged or the photo moved?): "
                    "reconnect it or copy the photo itself here")
        return "it disappeared while the folder was being read"
    if exc.errno == errno.EIO:
        return "the disk reported a read error: copy the photo again, or check the disk"
    if exc.errno == errno.ENAMETOOLONG:
        return "its path is too long: move the photos to a folder with a shorter path"
    return f"it could not be read ({exc.strerror or exc})"


def _unsupported_reason(kind: str, name: str) -> str:
    fmt, todo = _UNSUPPORTED[kind]
    named = Path(name).suffix.lower() in _UNSUPPORTED_EXTENSIONS
    what = f"{_a(fmt)} {fmt} photo" + ("" if named else f" (despite its {Path(name).suffix or 'missing'} extension)")
    return f"{what}: {fmt} photos are not supported yet; {todo}"


def _count_photos(path: str) -> int:
    """Photos directly inside a subfolder (names only, nothing decoded, no deeper)."""
    count = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                try:
                    count += entry.is_file()
                except OSError:
                    pass
    except OSError:
        return 0
    return count


def resolve_photo_folder(folder: str | os.PathLike, what: str = "photo folder") -> Path:
    """A folder (the photos', or the workspace) as an absolute path, or a user's message
    when it is a link loop (pathlib raises RuntimeError for one before Python 3.13)."""
    try:
        return Path(folder).expanduser().resolve()
    except (OSError, RuntimeError):
        raise ReconstructError(ErrorCode.PHOTOS_NOT_FOUND if what == "photo folder" else ErrorCode.BAD_OPTIONS,
                               f"The {what} {folder} is a link that points to itself (a loop of symbolic links).",
                               "Choose the folder that holds your photos (or fix the link)." if what == "photo folder"
                               else f"Choose another {what} (or fix the link).") from None


def scan_photos(folder: str | os.PathLike, cache: dict | None = None) -> PhotoSet:
    """List the usable photos in `folder` (not recursive, sorted by name).

    Files that cannot be used are left out and listed in `skipped` with the
    reason (a warning each); so are subfolders that hold photos ("name/"),
    and byte-identical copies (one of each is kept). Near-identical photos
    are kept, with a `notices` entry. Raises ReconstructError when no photo
    is usable (saying why: subfolders, formats, unreadable files), when there
    is only one, or when all of them show one view (DUPLICATE_PHOTOS).

    `cache` maps name -> a previous Photo as a dict; entries whose size and
    mtime still match (and that have every field) are trusted without
    reading the file again.
    """
    folder = resolve_photo_folder(folder)
    if not folder.exists():
        raise ReconstructError(ErrorCode.PHOTOS_NOT_FOUND, f"The photo folder {folder} does not exist.",
                               "Choose the folder that holds your photos.")
    if not folder.is_dir():
        raise ReconstructError(ErrorCode.PHOTOS_NOT_FOUND, f"{folder} is a file, not a folder of photos.",
                               "Choose the folder that holds your photos, not one photo.")
    cache = cache if isinstance(cache, dict) else {}
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        why = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else exc.strerror or str(exc)
        raise ReconstructError(ErrorCode.FILE_ERROR, f"Cannot read the photo folder {folder}: {why}.",
                               "Make the folder readable for you, or copy the photos into another folder.",
                               {"errno": exc.errno, "error": str(exc)}) from None
    photos: list[Photo] = []
    skipped: list[Skipped] = []
    kinds: dict[str, str] = {}  # skipped name -> "not_image" | "os" | "corrupt" | an _UNSUPPORTED key
    subfolders: dict[str, int] = {}  # subfolder name -> photos directly in it

    def skip(name: str, reason: str, kind: str) -> None:
        skipped.append(Skipped(name, reason))
        kinds[name] = kind

    for entry in entries:
        name = entry.name
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
            if not is_dir and not is_file and entry.is_symlink():
                entry.stat()  # a dangling link: raises FileNotFoundError, explained below
        except OSError as exc:
            skip(name, _os_reason(exc, entry.path), "os")
            continue
        if is_dir:
            try:
                inside = Path(entry.path).resolve()
            except (OSError, RuntimeError):
                continue
            if inside != folder and inside not in folder.parents:  # a link up the tree is not a subfolder
                subfolders[name] = _count_photos(entry.path)
            continue
        if not is_file:
            continue  # sockets, pipes, devices: nothing a user put there as a photo
        suffix = Path(name).suffix.lower()
        if suffix in _UNSUPPORTED_EXTENSIONS:
            kind = _UNSUPPORTED_EXTENSIONS[suffix]
            skip(name, _unsupported_reason(kind, name), kind)
            continue
        if suffix not in IMAGE_EXTENSIONS:
            skip(name, "not an image file", "not_image")
            continue
        try:
            stat = entry.stat()
        except OSError as exc:
            skip(name, _os_reason(exc, entry.path), "os")
            continue
        cached = cache.get(name)
        if (isinstance(cached, dict) and cached.keys() == _PHOTO_FIELDS and cached["size"] == stat.st_size
                and cached["mtime_ns"] == stat.st_mtime_ns and _valid_thumb(cached["thumb"])
                and cached["orientation"] in range(1, 9)):
            photos.append(Photo(**cached))
            continue
        try:
            data = Path(entry.path).read_bytes()
        except OSError as exc:
            skip(name, _os_reason(exc, entry.path), "os")
            continue
        try:
            width, height, has_gps, camera, thumb, orientation = _check_image(data)
        except _Unsupported as exc:
            skip(name, _unsupported_reason(exc.kind, name), exc.kind)
            continue
        except Exception as exc:
            skip(name, f"unreadable or corrupt image ({exc})", "corrupt")
            continue
        photos.append(Photo(name, stat.st_size, stat.st_mtime_ns, width, height, has_gps, camera, thumb,
                            hashlib.sha256(data).hexdigest(), orientation))
    with_photos = {name: n for name, n in subfolders.items() if n}
    if not photos:
        raise _no_photos(folder, skipped, kinds, subfolders, with_photos)
    for name, n in with_photos.items():
        skipped.append(Skipped(f"{name}/", f"a subfolder with {_count(n, 'photo')}: only photos directly in the "
                                           "folder are used; choose the subfolder to reconstruct it"))
    if len(photos) < MIN_PHOTOS:
        more = (f" Its subfolders hold more: {_subfolder_list(with_photos)}; choose one of them instead."
                if with_photos else "")
        raise ReconstructError(
            ErrorCode.TOO_FEW_PHOTOS,
            f"Only one usable photo ({photos[0].name}) in {folder}: 3D reconstruction needs several photos.{more}",
            "Take at least 3 overlapping photos of the subject from different positions (20 or more works best).",
            {"skipped": [asdict(s) for s in skipped]})
    photos, copies, notices = _duplicates(folder, photos, skipped)
    skipped.extend(copies)
    return PhotoSet(folder, photos, skipped, notices)


_PHOTO_FIELDS = {f.name for f in fields(Photo)}


def _valid_thumb(thumb) -> bool:
    return isinstance(thumb, str) and len(thumb) == 2 * THUMB_SIZE * THUMB_SIZE


def _a(word: str) -> str:
    return "an" if word[:1] in "AEIOU" else "a"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _subfolder_list(with_photos: dict[str, int]) -> str:
    return _names([f"{name} ({_count(n, 'photo')})" for name, n in with_photos.items()])


def _no_photos(folder: Path, skipped: list[Skipped], kinds: dict[str, str], subfolders: dict[str, int],
               with_photos: dict[str, int]) -> ReconstructError:
    """The error for a folder without one usable photo: the likeliest cause first."""
    details = {"skipped": [asdict(s) for s in skipped], "subfolders": subfolders}
    if with_photos:
        if len(with_photos) == 1:
            (name, n), = with_photos.items()
            return ReconstructError(
                ErrorCode.NO_PHOTOS,
                f"The photo folder {folder} has no photos directly in it, but its subfolder {name} holds "
                f"{_count(n, 'photo')}.",
                f"Choose the subfolder {folder / name} as the photo folder, or move its photos up into {folder}.",
                details)
        return ReconstructError(
            ErrorCode.NO_PHOTOS,
            f"The photo folder {folder} has no photos directly in it, but its subfolders do: "
            f"{_subfolder_list(with_photos)}.",
            "Choose one of these subfolders as the photo folder (each is reconstructed on its own), "
            f"or move the photos you want up into {folder}.", details)
    if not skipped:
        if subfolders:
            return ReconstructError(
                ErrorCode.NO_PHOTOS,
                f"The photo folder {folder} has no photos: it only holds "
                f"{'the subfolder' if len(subfolders) == 1 else 'the subfolders'} {_names(list(subfolders))}, "
                "with no photos in them either.",
                "Copy your photos (JPEG, PNG or TIFF) into it, or choose another folder.", details)
        return ReconstructError(ErrorCode.NO_PHOTOS, f"The photo folder {folder} is empty.",
                                "Copy your photos (JPEG, PNG or TIFF) into it, or choose another folder.", details)
    by_kind: dict[str, list[str]] = {}
    for s in skipped:
        by_kind.setdefault(kinds[s.name], []).append(s.name)
    unsupported = [k for k in by_kind if k in _UNSUPPORTED]
    if unsupported:
        parts, todo = [], []
        for k in unsupported:
            names, (fmt, what) = by_kind[k], _UNSUPPORTED[k]
            parts.append(f"{len(names)} {'is ' + _a(fmt) if len(names) == 1 else 'are'} {fmt} "
                         f"{'photo' if len(names) == 1 else 'photos'} ({_names(names)})")
            todo.append(f"{fmt} photos: {what}")
        formats = _join([_UNSUPPORTED[k][0] for k in unsupported])
        others = [s for s in skipped if kinds[s.name] not in unsupported]
        rest = f" Also skipped: {_names([f'{s.name} ({s.reason})' for s in others], 4)}." if others else ""
        hint = ("; ".join(todo) if len(todo) > 1 else todo[0].split(": ", 1)[1])
        return ReconstructError(
            ErrorCode.NO_PHOTOS,
            f"No usable photos in {folder}: {_join(parts)}, and {formats} photos are not supported yet.{rest}",
            hint[0].upper() + hint[1:] + "; then choose the folder of converted photos.", details)
    images = by_kind.get("corrupt", []) + [s.name for s in skipped
                                           if kinds[s.name] == "os" and Path(s.name).suffix.lower() in IMAGE_EXTENSIONS]
    images.sort()
    unreadable = {s.name: s.reason for s in skipped if kinds[s.name] == "os"}
    if images:
        if not any(name in unreadable for name in images):
            return ReconstructError(
                ErrorCode.NO_PHOTOS,
                f"None of the {len(images)} images in {folder} could be read: {_names(images)}.",
                "The files may be truncated or corrupt; copy them again from the camera.", details)
        listed = [f"{name} ({unreadable[name]})" if name in unreadable else f"{name} (truncated or corrupt)"
                  for name in images]
        return ReconstructError(
            ErrorCode.FILE_ERROR if all(name in unreadable for name in images) else ErrorCode.NO_PHOTOS,
            f"None of the {len(images)} images in {folder} could be read: {_names(listed, 4)}.",
            "Fix what each file's reason says, or copy the photos again from the camera.", details)
    not_images = by_kind.get("not_image", [])
    what = [f"its {len(not_images)} files are not images ({_names(not_images)})" if len(not_images) > 1 else
            f"its one file is not an image ({not_images[0]})"] if not_images else []
    if unreadable:
        what.append(f"{len(unreadable)} {'entry' if len(unreadable) == 1 else 'entries'} could not be read: "
                    + _names([f"{name} ({reason})" for name, reason in unreadable.items()], 4))
    return ReconstructError(
        ErrorCode.NO_PHOTOS,
        f"No photos found in {folder}: {'; '.join(what)}.",
        "Photos must be JPEG, PNG, TIFF or BMP files directly inside the folder.", details)


def thumb_distance(a: str, b: str) -> float:
    """How different two photos' thumbnails are (0: the same picture; NEAR_DUPLICATE and below: near-identical)."""
    t = _normalized([a, b])
    return float(abs(t[0] - t[1]).mean())


def _normalized(thumbs: list[str]):
    """Thumbnails as rows, each at zero mean and 48 grey levels per standard deviation (at least 4 levels
    counted as one, so the sensor noise of a flat, featureless photo is not blown up)."""
    import numpy as np

    t = np.frombuffer(bytes.fromhex("".join(thumbs)), dtype=np.uint8).reshape(len(thumbs), -1).astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    t *= 48.0 / np.maximum(t.std(axis=1, keepdims=True), 4.0)
    return t


def near_identical_groups(thumbs: list[str], threshold: float = NEAR_DUPLICATE) -> list[list[int]]:
    """Indices grouped by view: each photo joins the group of the nearest earlier group leader
    within `threshold`, or leads a new group. Comparing with the leader only (not with any
    member) keeps a slow walk or a video's small steps from chaining into one group."""
    import numpy as np

    t = _normalized(thumbs)
    # 4x4 block means: their mean difference is never more than the pixels' (triangle
    # inequality), so only leaders within the threshold on these 16 numbers are compared in full.
    coarse = t.reshape(len(t), 4, THUMB_SIZE // 4, 4, THUMB_SIZE // 4).mean(axis=(2, 4)).reshape(len(t), 16)
    leaders = np.empty(len(t), dtype=np.intp)
    groups: list[list[int]] = []
    for i, row in enumerate(t):
        k = len(groups)
        if k:
            near = np.flatnonzero(np.abs(coarse[leaders[:k]] - coarse[i]).mean(axis=1) <= threshold)
            if near.size:
                d = np.abs(t[leaders[near]] - row).mean(axis=1)
                j = int(d.argmin())
                if d[j] <= threshold:
                    groups[near[j]].append(i)
                    continue
        leaders[k] = i
        groups.append([i])
    return groups


def _duplicates(folder: Path, photos: list[Photo], skipped: list[Skipped]
                ) -> tuple[list[Photo], list[Skipped], list[Notice]]:
    """Exact copies are left out (one of each is kept); near-identical photos are kept with a warning;
    a folder that shows fewer than two different views is refused before any matching."""
    # Shortest names first: "IMG_1.jpg" is the original of "IMG_1 copy.jpg" and "IMG_1 (2).jpg".
    by_length = sorted(photos, key=lambda p: (len(p.name), p.name))
    first: dict[str, Photo] = {}
    copies_of: dict[str, list[str]] = {}
    for p in by_length:
        if p.digest in first:
            copies_of[first[p.digest].name].append(p.name)
        else:
            first[p.digest] = p
            copies_of[p.name] = []
    originals = [p for p in by_length if p.name in copies_of]
    groups = [[originals[i] for i in g] for g in near_identical_groups([p.thumb for p in originals])]
    groups = [[g[0], *sorted(g[1:], key=lambda p: p.name)] for g in groups]
    kept = [p for p in photos if p.name in copies_of]
    if len(groups) < MIN_PHOTOS:
        leader = groups[0][0].name
        others = [p.name for p in by_length if p.name != leader]
        exact = len(kept) == 1
        kind = ("exact copy" if exact else "copy or near-identical shot") if len(others) == 1 else (
            "exact copies" if exact else "copies or near-identical shots")
        raise ReconstructError(
            ErrorCode.DUPLICATE_PHOTOS,
            f"All {len(photos)} photos in {folder} show the same view: {leader} and {len(others)} {kind} "
            f"of it ({_names(others)}). 3D reconstruction needs photos taken from different positions.",
            "Take photos from different positions: walk around the subject and take one every few steps, "
            "each overlapping the last by about two thirds (20 or more photos works best).",
            {"groups": [[p.name for p in g] + [c for p in g for c in copies_of[p.name]] for g in groups],
             "skipped": [asdict(s) for s in skipped]})
    copies = sorted((Skipped(c, f"an exact copy of {orig} (the same bytes): left out, one of them is enough")
                     for orig, cs in copies_of.items() for c in cs), key=lambda s: s.name)
    notices = []
    if not looks_like_video_frames([p.name for p in kept]):  # neighbouring video frames are alike by nature
        for g in sorted(groups, key=lambda g: g[0].name):
            if len(g) > 1:
                names = [p.name for p in g[1:]]
                verb = "looks" if len(names) == 1 else "look"
                notices.append(Notice(
                    "near_duplicate_photos",
                    f"{_names(names)} {verb} nearly identical to {g[0].name}: photos taken from the same spot add "
                    "little to the 3D shape (they are kept)", {"names": [g[0].name, *names]}))
    return kept, copies, notices


def one_camera(photos: PhotoSet) -> bool:
    """Whether every photo looks like it came from the same camera and zoom (sizes as displayed:
    a portrait and a landscape shot of one camera are two cameras to COLMAP, which reads the upright copies)."""
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
