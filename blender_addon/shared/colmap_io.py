"""Read COLMAP sparse models (binary or text) into plain dataclasses and numpy arrays.

Pure Python + numpy, no bpy and no pycolmap: the add-on runs inside Blender's Python.
Only what Blender needs is kept: cameras, registered image poses, and the points'
xyz, color, error and track length (2D observations and tracks are skipped over).
pycolmap 4.x also writes rigs and frames; images.* already carries each registered
image's own pose, so those files are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# COLMAP camera model id -> (name, number of params); src/colmap/sensor/models.h.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4),
    13: ("DIVISION", 5),
    14: ("SIMPLE_FISHEYE", 3),
    15: ("FISHEYE", 4),
    16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
_MODEL_PARAMS = {name: n for name, n in CAMERA_MODELS.values()}

# Models whose params start with a single focal "f, cx, cy"; the others with "fx, fy, cx, cy".
_SINGLE_FOCAL = {
    "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE",
    "SIMPLE_DIVISION", "SIMPLE_FISHEYE",
}  # fmt: skip
# Perspective models that become an exact pinhole when their distortion params are all zero.
_PERSPECTIVE = {
    "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV", "FOV",
    "SIMPLE_DIVISION", "DIVISION",
}  # fmt: skip

MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class Camera:
    id: int
    model: str  # COLMAP model name, e.g. "SIMPLE_RADIAL"
    width: int
    height: int
    params: np.ndarray  # [num_params] float64, in COLMAP's order for the model

    def pinhole(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)``: the model's pinhole part; any distortion is left out."""
        if self.model == "EQUIRECTANGULAR":
            raise ValueError(f"camera {self.id}: an EQUIRECTANGULAR camera has no pinhole part")
        p = [float(v) for v in self.params]
        if self.model in _SINGLE_FOCAL:
            return p[0], p[0], p[1], p[2]
        return p[0], p[1], p[2], p[3]

    @property
    def is_pinhole(self) -> bool:
        """True when :meth:`pinhole` describes the camera exactly (no distortion to lose)."""
        n = 3 if self.model in _SINGLE_FOCAL else 4
        return self.model in _PERSPECTIVE and not np.any(self.params[n:])


@dataclass
class Image:
    id: int
    name: str  # path relative to the image folder, as COLMAP stores it
    camera_id: int
    R: np.ndarray  # [3, 3] world-to-camera rotation
    t: np.ndarray  # [3]; x_cam = R @ x_world + t

    @property
    def center(self) -> np.ndarray:  # [3] camera centre in world coordinates
        return -self.R.T @ self.t


@dataclass
class Model:
    cameras: dict[int, Camera]
    images: dict[int, Image]  # registered images only, as COLMAP writes them
    xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [N, 3] float64
    rgb: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))  # [N, 3] uint8
    error: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [N] float64, mean reprojection error, px
    track_length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [N] int64


def quaternion_to_matrix(qvec) -> np.ndarray:
    """[3, 3] rotation from COLMAP's quaternion ``(w, x, y, z)`` (normalised first);
    [N, 3, 3] from [N, 4] (the splats' rotations, the same convention)."""
    q = np.asarray(qvec, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        -1,
    ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R) -> np.ndarray:
    """COLMAP's quaternion ``(w, x, y, z)``, w >= 0, of a rotation matrix
    (Bar-Itzhack: the top eigenvector of a symmetric 4x4, robust near 180 degrees)."""
    R = np.asarray(R, np.float64)
    K = np.array(
        [
            [R[0, 0] - R[1, 1] - R[2, 2], R[1, 0] + R[0, 1], R[2, 0] + R[0, 2], R[2, 1] - R[1, 2]],
            [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], R[2, 1] + R[1, 2], R[0, 2] - R[2, 0]],
            [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], R[1, 0] - R[0, 1]],
            [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
        ]
    ) / 3.0
    values, vectors = np.linalg.eigh(K)
    x, y, z, w = vectors[:, np.argmax(values)]
    return np.array([w, x, y, z]) * (1 if w >= 0 else -1)


def write_text_model(folder: Path, cameras: dict, images: list, xyz=None, rgb=None) -> Path:
    """A COLMAP text model: ``cameras`` {id: (model, width, height, params)},
    ``images`` [(id, R, t, camera_id, name)] world-to-camera, optional points
    ``xyz`` [N, 3] with ``rgb`` [N, 3] (each seen once, by the first image)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{cid} {m} {w} {h} " + " ".join(repr(float(p)) for p in params) for cid, (m, w, h, params) in cameras.items()]
    (folder / "cameras.txt").write_text("# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n" + "\n".join(lines) + "\n")
    lines = []
    for image_id, R, t, cid, name in images:
        q = matrix_to_quaternion(R)
        lines += [f"{image_id} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {cid} {name}", ""]
    header = "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
    (folder / "images.txt").write_text(header + "\n".join(lines) + "\n")
    lines = []
    if xyz is not None:
        for i, (p, c) in enumerate(zip(xyz, rgb), start=1):
            lines.append(f"{i} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r} {c[0]} {c[1]} {c[2]} 0.5 1 0 2 0")
    (folder / "points3D.txt").write_text("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]\n" + "\n".join(lines) + "\n")
    return folder


def model_format(folder: Path) -> str | None:
    """"bin" or "txt" for the model files in ``folder``; None when there are none."""
    folder = Path(folder)
    for ext in ("bin", "txt"):
        if any((folder / f"{name}.{ext}").is_file() for name in MODEL_FILES):
            return ext
    return None


def read_model(folder: Path) -> Model:
    """Read a COLMAP model folder: binary files when any ``.bin`` is there, else text.

    Raises ValueError naming the folder or file that is missing or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    ext = model_format(folder)
    if ext is None:
        raise ValueError(
            f"no COLMAP model in {folder}: expected cameras, images and points3D as .bin or .txt files"
        )
    paths = {name: folder / f"{name}.{ext}" for name in MODEL_FILES}
    for path in paths.values():
        if not path.is_file():
            raise ValueError(f"COLMAP model in {folder} is incomplete: {path.name} is missing")
    readers = _BINARY if ext == "bin" else _TEXT
    parts = {}
    for name, path in paths.items():
        try:
            parts[name] = readers[name](path)
        except ValueError as e:
            raise ValueError(f"{path} is malformed: {e}") from None
        except (struct.error, IndexError, KeyError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is malformed ({type(e).__name__}: {e})") from None
    xyz, rgb, error, track_length = parts["points3D"]
    return Model(parts["cameras"], parts["images"], xyz, rgb, error, track_length)


# --- binary ---------------------------------------------------------------------------------

_U64 = struct.Struct("<Q")
_CAMERA_HEAD = struct.Struct("<IiQQ")  # camera_id, model_id, width, height
_IMAGE_HEAD = struct.Struct("<I7dI")  # image_id, qw qx qy qz, tx ty tz, camera_id
_POINT_HEAD = 51  # point3D_id u64, xyz 3 x f64, rgb 3 x u8, error f64, track_length u64
_TRACK_LENGTH_AT = 43


def _count(buf: bytes, record_size: int) -> int:
    if len(buf) < 8:
        raise ValueError(f"file is {len(buf)} bytes, shorter than its 8-byte count")
    n = _U64.unpack_from(buf, 0)[0]
    if 8 + n * record_size > len(buf):
        raise ValueError(f"says it holds {n} records but is only {len(buf)} bytes")
    return n


def _read_cameras_bin(path: Path) -> dict[int, Camera]:
    buf = path.read_bytes()
    n = _count(buf, _CAMERA_HEAD.size)
    cameras, pos = {}, 8
    for _ in range(n):
        cam_id, model_id, width, height = _CAMERA_HEAD.unpack_from(buf, pos)
        pos += _CAMERA_HEAD.size
        if model_id not in CAMERA_MODELS:
            raise ValueError(f"camera {cam_id} has unknown model id {model_id}")
        model, num_params = CAMERA_MODELS[model_id]
        params = np.frombuffer(buf, "<f8", num_params, pos).astype(np.float64)
        pos += 8 * num_params
        cameras[cam_id] = Camera(cam_id, model, int(width), int(height), params)
    _check_end(buf, pos)
    return cameras


def _read_images_bin(path: Path) -> dict[int, Image]:
    buf = path.read_bytes()
    n = _count(buf, _IMAGE_HEAD.size + 9)
    images, pos = {}, 8
    for _ in range(n):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = _IMAGE_HEAD.unpack_from(buf, pos)
        pos += _IMAGE_HEAD.size
        end = buf.index(b"\0", pos)
        name = buf[pos:end].decode("utf-8")
        pos = end + 1
        num_points2d = _U64.unpack_from(buf, pos)[0]
        pos += 8 + 24 * num_points2d  # x, y f64 and point3D_id u64 per observation
        R = quaternion_to_matrix((qw, qx, qy, qz))
        images[image_id] = Image(image_id, name, camera_id, R, np.array([tx, ty, tz]))
    _check_end(buf, pos)
    return images


def _read_points3d_bin(path: Path):
    buf = path.read_bytes()
    n = _count(buf, _POINT_HEAD)
    # Records have variable length (8 bytes per track element), so one pass finds where each
    # starts; everything else is gathered from those offsets with numpy.
    starts = np.empty(n, np.int64)
    unpack, pos = _U64.unpack_from, 8
    for i in range(n):
        starts[i] = pos
        pos += _POINT_HEAD + 8 * unpack(buf, pos + _TRACK_LENGTH_AT)[0]
    _check_end(buf, pos)
    xyz = np.stack([_gather(buf, starts + 8 + 8 * k, np.dtype("<f8")) for k in range(3)], axis=1)
    data = np.frombuffer(buf, np.uint8)
    rgb = np.stack([data[starts + 32 + k] for k in range(3)], axis=1)
    error = _gather(buf, starts + 35, np.dtype("<f8"))
    track_length = _gather(buf, starts + _TRACK_LENGTH_AT, np.dtype("<u8")).astype(np.int64)
    return xyz.astype(np.float64), rgb, error.astype(np.float64), track_length


def _gather(buf: bytes, positions: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values of ``dtype`` at arbitrary byte ``positions`` of ``buf``, without a per-item loop.

    One zero-copy view of the buffer per byte alignment serves all positions with that alignment.
    """
    size = dtype.itemsize
    out = np.empty(len(positions), dtype)
    alignment = positions % size
    for k in np.unique(alignment):
        sel = alignment == k
        view = np.frombuffer(buf, dtype, (len(buf) - k) // size, k)
        out[sel] = view[(positions[sel] - k) // size]
    return out


def _check_end(buf: bytes, pos: int) -> None:
    if pos != len(buf):
        raise ValueError(f"records end at byte {pos} but the file is {len(buf)} bytes")


# --- text -----------------------------------------------------------------------------------


def _data_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]


def _read_cameras_txt(path: Path) -> dict[int, Camera]:
    cameras = {}
    for line in _data_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 4:
            raise ValueError(f"camera line {line!r} has fewer than 4 fields")
        cam_id, model = int(tokens[0]), tokens[1]
        if model not in _MODEL_PARAMS:
            raise ValueError(f"camera {cam_id} has unknown model {model!r}")
        params = np.array([float(v) for v in tokens[4:]])
        if len(params) != _MODEL_PARAMS[model]:
            raise ValueError(f"camera {cam_id} ({model}) has {len(params)} params, expected {_MODEL_PARAMS[model]}")
        cameras[cam_id] = Camera(cam_id, model, int(tokens[2]), int(tokens[3]), params)
    return cameras


def _read_images_txt(path: Path) -> dict[int, Image]:
    # Two lines per image; the second (its 2D points) may be empty, so blank lines only
    # separate records where a header is expected.
    images = {}
    lines = iter(_data_lines(path))
    for line in lines:
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 10:
            raise ValueError(f"image line {line!r} has fewer than 10 fields")
        image_id = int(tokens[0])
        qvec = [float(v) for v in tokens[1:5]]
        t = np.array([float(v) for v in tokens[5:8]])
        name = line.split(maxsplit=9)[9].strip()
        images[image_id] = Image(image_id, name, int(tokens[8]), quaternion_to_matrix(qvec), t)
        next(lines, None)  # the image's 2D points
    return images


def _read_points3d_txt(path: Path):
    heads, lengths = [], []
    for line in _data_lines(path):
        tokens = line.split(maxsplit=8)
        if not tokens:
            continue
        if len(tokens) < 8:
            raise ValueError(f"point line {line!r} has fewer than 8 fields")
        heads.append(tokens[:8])
        lengths.append(len(tokens[8].split()) // 2 if len(tokens) == 9 else 0)
    if not heads:
        return np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64)
    table = np.array(heads, dtype=np.float64)  # id, x, y, z, r, g, b, error
    rgb = table[:, 4:7]
    if np.any((rgb < 0) | (rgb > 255) | (rgb != np.round(rgb))):
        raise ValueError("point colors must be integers 0..255")
    return table[:, 1:4].copy(), rgb.astype(np.uint8), table[:, 7].copy(), np.array(lengths, np.int64)


_BINARY = {"cameras": _read_cameras_bin, "images": _read_images_bin, "points3D": _read_points3d_bin}
_TEXT = {"cameras": _read_cameras_txt, "images": _read_images_txt, "points3D": _read_points3d_txt}
