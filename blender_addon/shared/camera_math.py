"""COLMAP <-> Blender camera conversion: the one place where axes and intrinsics change.

Pure numpy, no bpy, so the backend (which must not import bpy) and the add-on share it.

COLMAP: world-to-camera ``R, t``; the camera looks down +Z with +Y down and +X right;
pixel centres sit at +0.5, so an image spans [0, W] x [0, H].
Blender: a camera object's ``matrix_world`` is camera-to-world; the camera looks down -Z
with +Y up. The frame spans the same [0, W] x [0, H] pixels: Blender's normalized frame
coordinates (u, v) with (0, 0) at the bottom left map to pixel x = u * W, y = (1 - v) * H.

Intrinsics follow Blender's viewplane code (BKE_camera_params_compute_viewplane): a
sensor fit picks the axis the sensor size and shift are measured along (``viewfac``),
and a non-square pixel aspect carries fx != fy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# COLMAP's camera axes expressed in Blender's: flip Y (down -> up) and Z (forward -> back).
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])

SensorFit = Literal["HORIZONTAL", "VERTICAL", "AUTO"]


def colmap_to_blender_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world ``matrix_world`` for a Blender camera from COLMAP's world-to-camera pose.

    R: [3, 3] world-to-camera rotation; t: [3] translation (x_cam = R @ x_world + t).
    """
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    M = np.eye(4)
    M[:3, :3] = R.T @ _FLIP_YZ
    M[:3, 3] = -R.T @ t
    return M


def blender_matrix_to_colmap(matrix_world) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP world-to-camera ``(R [3, 3], t [3])`` from a Blender camera's ``matrix_world``.

    Accepts a numpy array or a ``mathutils.Matrix``. Object scale (which does not change
    what a camera sees) is removed by taking the rotation nearest to the 3x3 block.
    """
    M = np.asarray(matrix_world, dtype=np.float64).reshape(4, 4)
    U, _, Vt = np.linalg.svd(M[:3, :3])
    rot_c2w = U @ Vt
    if np.linalg.det(rot_c2w) < 0:
        raise ValueError("camera matrix is mirrored (negative scale); it is no rigid pose")
    R = (rot_c2w @ _FLIP_YZ).T
    t = -R @ M[:3, 3]
    return R, t


@dataclass
class BlenderIntrinsics:
    """What a Blender camera plus the scene's render settings need to reproduce a pinhole camera.

    lens, sensor_* and shift_* belong to the camera data; resolution and pixel aspect are
    scene render settings, so they belong to whichever camera is active.
    """

    lens: float  # focal length, mm
    sensor_width: float  # mm
    sensor_height: float  # mm
    sensor_fit: SensorFit
    shift_x: float  # in units of the fitted sensor side
    shift_y: float
    resolution_x: int
    resolution_y: int
    pixel_aspect_x: float = 1.0  # Blender wants both >= 1
    pixel_aspect_y: float = 1.0


def intrinsics_to_blender(
    width: int,
    height: int,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    sensor_width: float = 36.0,
) -> BlenderIntrinsics:
    """Blender camera settings that reproduce a COLMAP pinhole camera (W x H, fx, fy, cx, cy).

    The sensor height is chosen so that the sensor has the photo's aspect, which keeps
    Blender's camera frame display true to the photo.
    """
    if fx <= 0 or fy <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"invalid pinhole camera {width}x{height} fx={fx} fy={fy}")
    ycor = fx / fy
    if fy > fx:
        pixel_aspect_x, pixel_aspect_y = fy / fx, 1.0
    else:
        pixel_aspect_x, pixel_aspect_y = 1.0, fx / fy
    sensor_height = sensor_width * height / width
    if width >= height:
        sensor_fit: SensorFit = "HORIZONTAL"
        lens = fx * sensor_width / width
        viewfac = float(width)
    else:
        sensor_fit = "VERTICAL"
        lens = fy * sensor_height / height
        viewfac = ycor * height
    return BlenderIntrinsics(
        lens=lens,
        sensor_width=sensor_width,
        sensor_height=sensor_height,
        sensor_fit=sensor_fit,
        shift_x=-(cx - width / 2) / viewfac,
        shift_y=(cy - height / 2) * ycor / viewfac,
        resolution_x=int(width),
        resolution_y=int(height),
        pixel_aspect_x=pixel_aspect_x,
        pixel_aspect_y=pixel_aspect_y,
    )


def blender_to_intrinsics(b: BlenderIntrinsics) -> tuple[float, float, float, float]:
    """COLMAP pinhole ``(fx, fy, cx, cy)`` in pixels of the rendered frame for Blender camera settings.

    'AUTO' fit resolves as Blender does: along the wider side of the frame (pixel aspect
    included), with the sensor size always taken from ``sensor_width``.
    """
    W, H = b.resolution_x, b.resolution_y
    ycor = b.pixel_aspect_y / b.pixel_aspect_x
    if b.sensor_fit == "AUTO":
        horizontal = b.pixel_aspect_x * W >= b.pixel_aspect_y * H
        sensor = b.sensor_width
    elif b.sensor_fit == "HORIZONTAL":
        horizontal, sensor = True, b.sensor_width
    elif b.sensor_fit == "VERTICAL":
        horizontal, sensor = False, b.sensor_height
    else:
        raise ValueError(f"unknown sensor fit {b.sensor_fit!r}")
    viewfac = float(W) if horizontal else ycor * H
    fx = b.lens * viewfac / sensor
    fy = fx / ycor
    cx = W / 2 - b.shift_x * viewfac
    cy = H / 2 + b.shift_y * viewfac / ycor
    return fx, fy, cx, cy


def render_intrinsics(render, camera_data) -> tuple[float, float, float, float, int, int]:
    """``(fx, fy, cx, cy, width, height)`` of a Blender camera's datablock as the
    scene's render settings (``scene.render``, read by attribute: no bpy here)
    frame it, at the percentage-scaled resolution a render has."""
    width = int(render.resolution_x * render.resolution_percentage / 100)
    height = int(render.resolution_y * render.resolution_percentage / 100)
    d = camera_data
    fx, fy, cx, cy = blender_to_intrinsics(BlenderIntrinsics(
        d.lens, d.sensor_width, d.sensor_height, d.sensor_fit, d.shift_x, d.shift_y,
        width, height, render.pixel_aspect_x, render.pixel_aspect_y))
    return fx, fy, cx, cy, width, height
