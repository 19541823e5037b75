"""The undistorted workspace as the dense stages see it: the views (intrinsics
at the depth maps' size, poses), the sparse points and who sees them, the
photos at that size, and COLMAP's dense-map files (depth_maps/, normal_maps/)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blender_addon.shared.layout import UNDISTORTED_IMAGES, UNDISTORTED_MODEL


@dataclass
class View:
    name: str
    K: np.ndarray  # [3, 3] at the size depth is computed at
    R: np.ndarray  # [3, 3] world -> camera
    t: np.ndarray  # [3]
    width: int
    height: int
    scale: float  # depth map size / undistorted image size

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


@dataclass
class Scene:
    folder: Path  # the undistorted workspace (images/, sparse/)
    views: list[View]
    points: np.ndarray  # [P, 3] sparse points
    visibility: list[np.ndarray]  # per view: indices of the sparse points it observes
    colors: np.ndarray  # [P, 3] uint8, the sparse points' colours


def load_scene(undistorted: Path, max_image_size: int) -> Scene:
    import pycolmap

    rec = pycolmap.Reconstruction(str(undistorted / UNDISTORTED_MODEL))
    point_ids = sorted(rec.points3D)
    index = {pid: i for i, pid in enumerate(point_ids)}
    points = np.array([rec.points3D[p].xyz for p in point_ids], np.float64).reshape(-1, 3)
    colors = np.array([rec.points3D[p].color for p in point_ids], np.uint8).reshape(-1, 3)
    views, visibility = [], []
    for image_id in sorted(rec.reg_image_ids(), key=lambda i: rec.images[i].name):
        image = rec.images[image_id]
        cam = rec.cameras[image.camera_id]
        scale = min(1.0, max_image_size / max(cam.width, cam.height))
        width, height = max(1, round(cam.width * scale)), max(1, round(cam.height * scale))
        sx, sy = width / cam.width, height / cam.height
        K = np.asarray(cam.calibration_matrix(), np.float64) * np.array([[sx], [sy], [1.0]])
        pose = image.cam_from_world()
        views.append(View(image.name, K, np.asarray(pose.rotation.matrix(), np.float64),
                          np.asarray(pose.translation, np.float64), width, height, sx))
        observed = [index[p.point3D_id] for p in image.points2D if p.has_point3D()]
        visibility.append(np.unique(np.asarray(observed, np.int64)))
    return Scene(undistorted, views, points, visibility, colors)


def write_colmap_array(path: Path, array: np.ndarray) -> None:
    """COLMAP's dense .bin: 'width&height&channels&' then float32, one channel after another."""
    a = np.asarray(array, np.float32)
    a = a[..., None] if a.ndim == 2 else a
    H, W, C = a.shape
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(f"{W}&{H}&{C}&".encode("ascii"))
        f.write(np.ascontiguousarray(a.transpose(2, 0, 1)).tobytes())
    os.replace(tmp, path)


def read_colmap_array(path: Path) -> np.ndarray:
    data = Path(path).read_bytes()
    fields, pos = [], 0
    for _ in range(3):
        end = data.index(b"&", pos)
        fields.append(int(data[pos:end]))
        pos = end + 1
    W, H, C = fields
    a = np.frombuffer(data, np.float32, W * H * C, pos).reshape(C, H, W).transpose(1, 2, 0)
    return a[..., 0] if C == 1 else a


def map_paths(stereo: Path, name: str) -> tuple[Path, Path]:
    return (stereo / "depth_maps" / f"{name}.photometric.bin", stereo / "normal_maps" / f"{name}.photometric.bin")


def load_grey(scene: Scene, view: View) -> np.ndarray:
    return np.asarray(load_rgb(scene, view), np.float32).mean(-1) / 255.0


def load_rgb(scene: Scene, view: View) -> np.ndarray:
    """[H, W, 3] uint8 at the view's (depth map) size."""
    from PIL import Image

    with Image.open(scene.folder / UNDISTORTED_IMAGES / view.name) as img:
        img = img.convert("RGB")
        if img.size != (view.width, view.height):
            img = img.resize((view.width, view.height), Image.LANCZOS)
        return np.asarray(img)


