"""Issue 13: the world frame after SfM (backend/sfm/frame.py): +Z up, the
subject's centre on the ground at the origin, metres.

Most tests build a scene whose truth is known (cameras, points, their
observations, GPS in EXIF) in a world with +Z up and metres, hide it in an
arbitrary similarity (the frame COLMAP might have picked), write it as a
COLMAP text model and load it with pycolmap: world_frame must undo the hidden
similarity (up, origin; scale only where GPS gives it). The real-data test
uses the session's fountain-P11 run (GT metric, up = -Z).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

from backend.sfm.frame import camera_up, read_gps, world_frame
from backend.tools.evaluate import umeyama, up_error_deg
from blender_addon.shared.layout import Layout

from conftest import read_json

W, H, F = 640, 480, 500.0


def look_at(centre, target, roll_deg=0.0, world_up=(0, 0, 1.0)):
    """World-to-camera rotation of a level camera at `centre` looking at
    `target`, then rolled about its optical axis (90: portrait, 180: upside down)."""
    z = np.asarray(target, float) - centre
    z /= np.linalg.norm(z)
    up = np.asarray(world_up, float)
    if abs(z @ up) > 0.999:  # straight down: any level heading
        up = np.array([0, 1.0, 0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # image y points down
    R = np.stack([x, y, z])
    a = math.radians(roll_deg)
    roll = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    return roll @ R


def random_similarity(seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    return float(rng.uniform(0.2, 5.0)), q, rng.normal(size=3) * 10


def write_model(folder: Path, cams, points, sim) -> pycolmap.Reconstruction:
    """cams: [(name, R_world_to_cam, centre)] in the true world; points [N, 3].
    Writes a COLMAP text model of them under `sim` (s, Q, t: colmap = s Q world + t)
    with every point's observations in the cameras that see it, and loads it."""
    s, Q, t = sim
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cameras.txt").write_text(f"1 PINHOLE {W} {H} {F} {F} {W / 2} {H / 2}\n")
    obs = {i: [] for i in range(len(points))}
    lines = []
    for k, (name, R, C) in enumerate(cams, start=1):
        Xc = (points - C) @ R.T
        u = F * Xc[:, 0] / np.maximum(Xc[:, 2], 1e-9) + W / 2
        v = F * Xc[:, 1] / np.maximum(Xc[:, 2], 1e-9) + H / 2
        seen = np.nonzero((Xc[:, 2] > 0.1) & (u >= 0) & (u < W) & (v >= 0) & (v < H))[0]
        Rc = R @ Q.T  # the same camera in the COLMAP frame: x_cam = R (world - C)
        Cc = s * Q @ C + t
        tc = -Rc @ Cc
        qw, qx, qy, qz = _quat(Rc)
        lines.append(f"{k} {qw} {qx} {qy} {qz} {tc[0]} {tc[1]} {tc[2]} 1 {name}")
        lines.append(" ".join(f"{u[i]} {v[i]} {i + 1}" for i in seen))
        for j, i in enumerate(seen):
            obs[i].append((k, j))
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    pts = []
    for i, p in enumerate(points):
        if len(obs[i]) >= 2:
            pc = s * Q @ p + t
            track = " ".join(f"{k} {j}" for k, j in obs[i])
            pts.append(f"{i + 1} {pc[0]} {pc[1]} {pc[2]} 128 128 128 0.5 {track}")
    (folder / "points3D.txt").write_text("\n".join(pts) + "\n")
    rec = pycolmap.Reconstruction()
    rec.read_text(str(folder))
    return rec


def _quat(R):
    return pycolmap.Rotation3d(R).quat[[3, 0, 1, 2]]  # pycolmap's (x, y, z, w) to COLMAP text's (w, x, y, z)


def ground_grid(half, step, z=0.0, rng=None):
    g = np.arange(-half, half + 1e-9, step)
    X, Y = np.meshgrid(g, g)
    p = np.stack([X.ravel(), Y.ravel(), np.full(X.size, z)], 1)
    return p + (rng.normal(scale=step * 0.2, size=p.shape) * [1, 1, 0] if rng is not None else 0)


def box_points(centre, size, n, rng):
    """Points on a box's sides and top (a subject standing on the ground)."""
    p = rng.uniform(-0.5, 0.5, size=(n, 3))
    face = rng.integers(0, 3, n)
    p[np.arange(n), face] = np.sign(p[np.arange(n), face]) * 0.5
    p[face == 2, 2] = 0.5  # no bottom face: it stands on the ground, unseen
    return np.asarray(centre) + p * size


def ring(n=16, radius=3.0, height=1.6, target=(0, 0, 0.5), rolls=None):
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        C = np.array([radius * math.cos(a), radius * math.sin(a), height])
        cams.append((f"r{i:03d}.jpg", look_at(C, target, rolls[i] if rolls else 0.0), C))
    return cams


def check(rec, frame, cams, centre, size, max_up_deg=1.0):
    """Fit the framed model's cameras onto the truth; assert up and centre; return (up_deg, centre_rel, scale)."""
    rec.transform(frame.sim3())
    est = {rec.images[i].name: np.asarray(rec.images[i].projection_center()) for i in rec.reg_image_ids()}
    names = [c[0] for c in cams]
    sim = umeyama(np.stack([est[n] for n in names]), np.stack([c[2] for c in cams]))
    up_deg = up_error_deg(sim)
    centre_rel = float(np.linalg.norm(sim.apply(np.zeros((1, 3)))[0] - centre) / size)
    print(f"up {up_deg:.3f} deg, centre {centre_rel:.4f} of the size, scale {sim.scale:.4f}; {frame.info['summary']}")
    assert up_deg < max_up_deg, frame.info
    assert centre_rel < 0.05, frame.info
    json.dumps(frame.as_dict())  # plain data for frame.json / summary.json
    return up_deg, centre_rel, sim.scale


@pytest.fixture
def object_scene():
    rng = np.random.default_rng(1)
    points = np.concatenate([box_points((0, 0, 0.5), 1.0, 800, rng), ground_grid(4.0, 0.25, rng=rng)])
    return points, np.array([0, 0, 0.0]), 8.0


@pytest.mark.parametrize("kind", ["landscape", "portrait", "some upside down"])
def test_ring_object(tmp_path, object_scene, kind):
    points, centre, size = object_scene
    rolls = {"landscape": [0] * 16, "portrait": [90 if i % 2 else -90 for i in range(16)],
             "some upside down": [180 if i % 5 == 0 else 0 for i in range(16)]}[kind]
    cams = ring(rolls=rolls)
    rec = write_model(tmp_path / "m", cams, points, random_similarity(2))
    frame = world_frame(rec, tmp_path, [c[0] for c in cams])
    assert frame.info["ground_plane"]["found"] and frame.info["origin"]["method"].startswith("optical axes")
    _, _, scale = check(rec, frame, cams, centre, size)
    # No GPS: the scale is the camera-height guess (exact here: the cameras are 1.6 m up) and says so.
    assert frame.info["scale"]["method"] == "camera height" and abs(scale - 1) < 0.02
    assert any("guess" in w for w in frame.info["warnings"])


def test_hemisphere_from_above_without_ground(tmp_path):
    """Cameras over a hemisphere (one straight overhead) around an object with no
    ground seen: up from the cameras alone, the origin under the axes' meeting point."""
    rng = np.random.default_rng(3)
    points = box_points((0, 0, 0.5), 1.0, 1500, rng)
    cams = []
    for i, (el, n) in enumerate([(20, 8), (45, 8), (70, 7), (90, 1)]):
        for j in range(n):
            a, e = 2 * math.pi * j / n + i, math.radians(el)
            C = 3.0 * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)]) + [0, 0, 0.5]
            cams.append((f"h{i}{j}.jpg", look_at(C, (0, 0, 0.5)), C))
    rec = write_model(tmp_path / "m", cams, points, random_similarity(4))
    frame = world_frame(rec, tmp_path, [c[0] for c in cams])
    assert not frame.info["ground_plane"]["found"]
    check(rec, frame, cams, np.zeros(3), 6.0)


def test_camera_up_ignores_pitch():
    """Facade captures aim up by 10-20 deg: the level x axes, not the pitched
    image-ups, give up (the mean image-up would be ~15 deg off)."""
    rng = np.random.default_rng(5)
    R = np.stack([look_at(np.array([math.sin(a) * 8, -math.cos(a) * 8, 1.6]),
                          (0, 0, 1.6 + 8 * math.tan(math.radians(p))))
                  for a, p in zip(np.radians(rng.uniform(-30, 30, 10)), rng.uniform(10, 20, 10))])
    u, info = camera_up(R[:, 0], R[:, 1], R[:, 2])
    assert math.degrees(math.acos(u @ [0, 0, 1.0])) < 0.5 and info["rolls"]["upright"] == 10


def write_gps_jpeg(path: Path, lat, lon, alt):
    img = Image.new("RGB", (32, 24), (90, 90, 90))
    exif = Image.Exif()
    dms = lambda d: (int(d), int(d * 60) % 60, round((d * 3600) % 60, 4))  # noqa: E731
    exif[0x8825] = {1: "N" if lat >= 0 else "S", 2: dms(abs(lat)), 3: "E" if lon >= 0 else "W", 4: dms(abs(lon)),
                    5: 0, 6: float(alt)}
    img.save(path, exif=exif)


def test_forward_walk_with_gps(tmp_path):
    """A phone walked 40 m along a street heading 30 deg east of north, aimed 5
    deg down, photos carrying GPS (noisy by ~1 m, one wild fix): up within
    1 deg, the origin on the street's middle, metres within 3%, +Y north."""
    rng = np.random.default_rng(6)
    heading = math.radians(30)  # from north towards east
    d = np.array([math.sin(heading), math.cos(heading), 0])
    side = np.array([d[1], -d[0], 0])
    cams = []
    for i in range(20):
        C = d * (2.0 * i - 19) + rng.normal(scale=0.05, size=3) * [1, 1, 0] + [0, 0, 1.6]
        target = C + d * 10 + [0, 0, -10 * math.tan(math.radians(5))]
        cams.append((f"w{i:03d}.jpg", look_at(C, target), C))
    t = np.linspace(-40, 40, 60)
    facades = [d * a + side * s * 6 + [0, 0, h] for a in t for s in (-1, 1) for h in np.linspace(0.2, 8, 10)]
    ground = [d * a + side * b for a in t for b in np.linspace(-5, 5, 8)]
    points = np.asarray(facades + ground) + rng.normal(scale=0.02, size=(len(facades) + len(ground), 3))
    images = tmp_path / "images"
    images.mkdir()
    lat0, lon0, alt0 = 47.3769, 8.5417, 408.0
    M, N = 6367000.0, 6389000.0  # rough radii near lat0: noise of this order is below GPS's own
    for k, (name, _, C) in enumerate(cams):
        e, n = C[:2] + rng.normal(scale=1.0, size=2) + ([25, -30] if k == 7 else 0)
        write_gps_jpeg(images / name, lat0 + math.degrees(n / M),
                       lon0 + math.degrees(e / (N * math.cos(math.radians(lat0)))), alt0 + C[2])
    assert read_gps(images / cams[0][0])[0] == pytest.approx(lat0 + math.degrees(cams[0][2][1] / M), abs=1e-4)
    rec = write_model(tmp_path / "m", cams, points, random_similarity(7))
    frame = world_frame(rec, images, [c[0] for c in cams])
    assert frame.info["scale"]["method"] == "GPS", frame.info
    assert frame.info["scale"]["inliers"] == 19  # the wild fix left out
    assert frame.info["scale"]["enu_origin"]["lat"] == pytest.approx(lat0, abs=1e-3)
    _, _, scale = check(rec, frame, cams, np.zeros(3), 40.0)
    assert abs(scale - 1) < 0.03
    # Heading: the world's +Y is north, so the walk's direction in the world is d.
    rec_c = _centres(rec)
    walk = rec_c[cams[-1][0]] - rec_c[cams[0][0]]
    assert math.degrees(math.acos(walk[:2] @ d[:2] / np.linalg.norm(walk[:2]))) < 3


def test_too_few_cameras_is_identity(tmp_path, object_scene):
    cams = ring(n=16)[:2]
    rec = write_model(tmp_path / "m", cams, object_scene[0], random_similarity(8))
    frame = world_frame(rec, tmp_path, [c[0] for c in cams])
    assert frame.info["method"] == "colmap" and "cameras" in frame.info["reason"]
    assert np.allclose(frame.matrix(), np.eye(4))


def _centres(rec):
    return {rec.images[i].name: np.asarray(rec.images[i].projection_center()) for i in rec.reg_image_ids()}


def test_fountain_upright_and_scale_guess(fountain, fountain_run):
    """fountain-P11 (GT metric, gravity along -Z) as mapped by the backend at
    1000 px: +Z within 2 deg of the GT's up. No GPS: the camera-height guess
    (1.6 m above the lowest points near the subject) is about 13% off here
    (the fountain's cameras stand ~1.4 m above the lowest points seen); 30%
    is a guess's loose bound, stated as a warning to the user."""
    layout = Layout(fountain_run)
    info = read_json(layout.frame_file)
    assert "summary" in info and info["scale"]["method"] == "camera height", info
    rec = pycolmap.Reconstruction(str(layout.model))
    gt = pycolmap.Reconstruction(str(fountain / "gt_colmap"))
    est, truth = _centres(rec), _centres(gt)
    names = sorted(set(est) & set(truth))
    sim = umeyama(np.stack([est[n] for n in names]), np.stack([truth[n] for n in names]))
    up_deg = up_error_deg(sim, (0, 0, -1.0))
    print(f"fountain: up {up_deg:.2f} deg off, heuristic scale off by {abs(sim.scale - 1):.1%}")
    assert up_deg < 2.0
    assert abs(sim.scale - 1) < 0.3
