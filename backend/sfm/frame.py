"""The world frame a model is put into after registration: +Z up, the
subject's centre on the ground at the origin, metres.

Up comes from the cameras (people hold cameras level: each photo's horizontal
image axis is horizontal in the world, whichever of its four 90-degree rolls
the photo was taken at), refined by the dominant ground plane when the sparse
points have one. The origin is the subject's centre on the ground: where the
optical axes converge for object captures, else a robust centre of the
well-seen points. Metres come from EXIF GPS when the photos carry it, else
from a stated guess (camera height or camera-to-subject distance)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap


@dataclass
class WorldFrame:
    """world = scale * rotation @ colmap + translation."""
    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    info: dict = field(default_factory=dict)
    """How each part was found, in plain data (frame.json, summary.json): up,
    ground plane, origin, scale method and its assumption, GPS's ENU origin."""

    def sim3(self) -> "pycolmap.Sim3d":
        return pycolmap.Sim3d(float(self.scale), pycolmap.Rotation3d(np.asarray(self.rotation, float)),
                              np.asarray(self.translation, float))

    def matrix(self) -> np.ndarray:
        M = np.eye(4)
        M[:3, :3] = self.scale * np.asarray(self.rotation, float)
        M[:3, 3] = self.translation
        return M

    def as_dict(self) -> dict:
        return {"colmap_to_world": self.matrix().tolist(), "scale": float(self.scale), **self.info}


def identity(reason: str) -> WorldFrame:
    return WorldFrame(info={"method": "colmap", "reason": reason, "summary": f"COLMAP's frame ({reason})",
                            "warnings": []})


MIN_CAMERAS = 3
CAMERA_HEIGHT_M = 1.6  # a hand-held camera above the ground it stands on
OBJECT_DISTANCE_M = 1.0  # a typical camera-to-subject distance for an object walked around
SCENE_DISTANCE_M = 10.0  # a typical camera-to-scene distance otherwise
PLANE_MAX_TILT_DEG = 20.0  # a ground plane's normal is this close to the cameras' up
PLANE_REFINE_DEG = 15.0  # ... and replaces the cameras' up only when this close
GPS_MIN_SPREAD_M = 5.0  # phone GPS is good to a few metres: a smaller spread cannot give a scale


# -- cameras ---------------------------------------------------------------------

def _cameras(rec: "pycolmap.Reconstruction"):
    """Names, centres [N, 3] and camera axes in the world: rows x, y, z [N, 3] each."""
    names, centres, axes = [], [], []
    for image_id in sorted(rec.reg_image_ids()):
        image = rec.images[image_id]
        R = np.asarray(image.cam_from_world().rotation.matrix())  # rows: the camera axes in the world
        names.append(image.name)
        centres.append(np.asarray(image.projection_center()))
        axes.append(R)
    axes = np.asarray(axes)
    return names, np.asarray(centres), axes[:, 0], axes[:, 1], axes[:, 2]


def _rolls(x: np.ndarray, y: np.ndarray, u: np.ndarray):
    """Per camera, its image 'up' (one of -y, +y, +x, -x: the roll quantised to
    90 degrees) nearest `u`, and its horizontal axis (the other one)."""
    options = np.stack([-y, y, x, -x], 1)  # [N, 4, 3]
    k = np.argmax(options @ u, 1)
    up = options[np.arange(len(x)), k]
    horizontal = np.where((k < 2)[:, None], x, y)
    return up, horizontal, k


SPREAD_MIN = 0.03  # the horizontal axes' second eigenvalue per camera that makes them fix up alone (~10 deg of azimuth)


def _up_from(v: np.ndarray, h: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
    """The direction the horizontal axes h are perpendicular to, with the
    image-ups v choosing only within what the horizontals leave open (a forward
    walk's parallel x axes): an image-up leans by the photo's pitch (people aim
    up at facades, down at objects), a horizontal axis is level whatever the
    pitch. `extra`: more directions known horizontal (a walk's path)."""
    Mh = (h[:, :, None] * h[:, None, :]).sum(0) + (extra if extra is not None else 0)
    w, V = np.linalg.eigh(Mh)  # ascending
    if w[1] >= SPREAD_MIN * len(h):
        u = V[:, 0]
    else:  # the horizontals fix one direction only: the best image-up perpendicular to it
        B = V[:, :2]
        Mv = B.T @ (v[:, :, None] * v[:, None, :]).sum(0) @ B
        u = B @ np.linalg.eigh(Mv)[1][:, -1]
    return u * (np.sign(u @ v.sum(0)) or 1.0)


def _refine_up(x, y, u, extra=None, iterations=10):
    """Alternate: quantise each camera's roll against u; u := _up_from the
    rolls. Cameras far from level (over 25 deg) are left out of the next step
    so one tilted photo cannot pull the rest."""
    keep = np.ones(len(x), bool)
    for _ in range(iterations):
        v, h, _ = _rolls(x, y, u)
        new = _up_from(v[keep], h[keep], extra)
        tilt = np.abs(h @ new)
        keep = tilt < math.sin(math.radians(25))
        if keep.sum() < max(2, len(x) // 2):
            keep = tilt <= np.median(tilt)
        if np.allclose(new, u, atol=1e-12):
            break
        u = new
    return u / np.linalg.norm(u)


def _score(x, y, u):
    """How many cameras u makes level (horizontal axis within ~3 deg of
    horizontal, softly), each counted only as far as its image-up rises
    (fully when pitched under 70 deg): a u along the optical axes makes a
    forward walk's cameras 'level' too, and must not win. Plus a little per
    photo upright in landscape: what a forward walk in one orientation cannot
    tell from the cameras (x or y up) goes to the usual one."""
    v, h, _ = _rolls(x, y, u)
    level = np.exp(-0.5 * ((h @ u) / math.sin(math.radians(3))) ** 2)
    rise = np.minimum(1.0, (v @ u) / math.sin(math.radians(20)))
    return float((level * np.maximum(rise, 0)).sum() + 0.05 * ((-y @ u) > math.cos(math.radians(45))).sum())


def walk_direction(centres: np.ndarray) -> np.ndarray | None:
    """The path's direction when the cameras lie along a line (a forward walk:
    the spread along it over 5 times that across), else None."""
    if len(centres) < 3:
        return None
    w, V = np.linalg.eigh(np.cov((centres - centres.mean(0)).T))
    return V[:, -1] if w[-1] > 25 * max(w[-2], 1e-30) else None


def camera_up(x: np.ndarray, y: np.ndarray, z: np.ndarray, centres: np.ndarray | None = None
              ) -> tuple[np.ndarray, dict]:
    """The world's up from the camera axes, robust to portrait and upside-down
    photos. Candidates (the classic landscape and portrait eigenvectors and each
    camera's own up at its four rolls) are refined and the best kept; its sign
    is the one that makes more photos upright than upside down (a tie, as with
    portrait photos rolled both ways, goes to cameras looking down rather than
    up)."""
    Mx, My = (x[:, :, None] * x[:, None, :]).sum(0), (y[:, :, None] * y[:, None, :]).sum(0)
    candidates = [np.linalg.eigh(My - Mx)[1][:, -1], np.linalg.eigh(Mx - My)[1][:, -1]]
    candidates += list(-y) + list(x)
    # A walk's path is level (streets are nearly so), which fixes the pitch that
    # parallel x axes leave open.
    walk = walk_direction(centres) if centres is not None else None
    extra = len(x) * np.outer(walk, walk) if walk is not None else None
    best, best_score = None, -1.0
    for c in candidates:
        u = _refine_up(x, y, c / np.linalg.norm(c), extra)
        s = _score(x, y, u)
        if s > best_score + 1e-9:
            best, best_score = u, s
    u = best
    _, _, k = _rolls(x, y, u)
    upright, flipped = int((k == 0).sum()), int((k == 1).sum())
    if upright < flipped or (upright == flipped and (z @ u).mean() > 0):
        u = -u
        _, _, k = _rolls(x, y, u)
    tilt = np.degrees(np.arcsin(np.clip(np.abs(_rolls(x, y, u)[1] @ u), 0, 1)))
    rolls = {"upright": int((k == 0).sum()), "upside_down": int((k == 1).sum()),
             "portrait": int((k >= 2).sum())}
    return u, {"rolls": rolls, "walk": walk is not None, "median_tilt_deg": float(np.median(tilt)),
               "max_tilt_deg": float(tilt.max())}


def _rotation_to_z(u: np.ndarray) -> np.ndarray:
    """A rotation taking u to +Z (keeping the heading of the camera x mean as
    well as it can is left to the caller)."""
    u = u / np.linalg.norm(u)
    a = np.array([1.0, 0, 0]) if abs(u[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(a, u)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    return np.stack([e1, e2, u])  # rows: world x, y, z in COLMAP's frame


def _yaw(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


# -- points and the ground -----------------------------------------------------------

def _points(rec: "pycolmap.Reconstruction", min_track: int = 3):
    xyz, tracks = [], []
    for p in rec.points3D.values():
        xyz.append(np.asarray(p.xyz))
        tracks.append(p.track.length())
    if not xyz:
        return np.zeros((0, 3)), np.zeros(0, int)
    xyz, tracks = np.asarray(xyz), np.asarray(tracks)
    good = tracks >= min_track
    if good.sum() < 50:  # small models: take every point rather than none
        good = tracks >= 2
    return xyz[good], tracks[good]


def ground_plane(points: np.ndarray, up: np.ndarray, centres: np.ndarray, scale_ref: float,
                 seed: int = 0, iterations: int = 500) -> dict | None:
    """RANSAC for the dominant plane whose normal is within PLANE_MAX_TILT_DEG of
    `up` and that lies below (nearly) all cameras. Its inliers must be at least
    10% of the points and 20 in number, so a patch of a few points is not taken
    for the ground. Returns normal (pointing up), offset d (n.p = d), inliers."""
    n_pts = len(points)
    if n_pts < 20:
        return None
    rng = np.random.default_rng(seed)
    tol = 0.01 * scale_ref
    cos_max = math.cos(math.radians(PLANE_MAX_TILT_DEG))
    best, best_count = None, 0
    for _ in range(iterations):
        a, b, c = points[rng.choice(n_pts, 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-12:
            continue
        n /= norm
        if n @ up < 0:
            n = -n
        if n @ up < cos_max:
            continue
        d = n @ a
        h = points @ n - d
        count = int((np.abs(h) < tol).sum())
        # The ground has (nearly) nothing under it; an object's top or a table has the rest of the scene.
        if count > best_count and (h < -3 * tol).mean() <= 0.1:
            best, best_count = (n, d), count
    if best is None or best_count < max(20, 0.1 * n_pts):
        return None
    n, d = best
    for _ in range(3):  # least squares on the inliers
        inl = np.abs(points @ n - d) < tol
        q = points[inl]
        mu = q.mean(0)
        n = np.linalg.svd(q - mu)[2][-1]
        n = n if n @ up > 0 else -n
        d = n @ mu
    inl = np.abs(points @ n - d) < tol
    heights = centres @ n - d
    if (heights > 0).mean() < 0.9:  # not a ground: cameras are below it (a ceiling) or inside it
        return None
    return {"normal": n, "offset": float(d), "inliers": int(inl.sum()), "fraction": float(inl.mean()),
            "camera_heights": heights}


# -- origin -----------------------------------------------------------------------

def convergence_point(centres: np.ndarray, z: np.ndarray) -> tuple[np.ndarray | None, dict]:
    """The point nearest all optical axes, if they converge on an object: it
    must be well conditioned (axes not parallel), in front of at least 80% of
    the cameras and its median distance to the axes under a quarter of its
    median depth."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centres, z):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    w = np.linalg.eigvalsh(A)
    if w[0] < 0.02 * len(centres):  # axes (nearly) parallel along some direction: a walk
        return None, {"reason": "optical axes do not converge (parallel)"}
    p = np.linalg.solve(A, b)
    depth = ((p - centres) * z).sum(1)
    off = np.linalg.norm(np.cross(p - centres, z), axis=1)
    ok = (depth > 0).mean() >= 0.8 and np.median(off) < 0.25 * np.median(np.abs(depth))
    info = {"in_front": float((depth > 0).mean()), "median_axis_distance_over_depth":
            float(np.median(off) / max(np.median(np.abs(depth)), 1e-12))}
    return (p if ok else None), info


# -- GPS ----------------------------------------------------------------------------

def _rational(v) -> float:
    try:
        return float(v)
    except TypeError:  # (num, den) tuples in old PIL
        return float(v[0]) / float(v[1])


def read_gps(path: Path) -> tuple[float, float, float | None] | None:
    """(lat, lon, alt or None) in degrees and metres from a photo's EXIF, or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            gps = im.getexif().get_ifd(0x8825)
    except Exception:  # unreadable or not an image: no GPS, not an error here
        return None
    if not gps or 2 not in gps or 4 not in gps:
        return None
    try:
        dms = lambda t: _rational(t[0]) + _rational(t[1]) / 60 + _rational(t[2]) / 3600  # noqa: E731
        lat, lon = dms(gps[2]), dms(gps[4])
        if str(gps.get(1, "N")).upper().startswith("S"):
            lat = -lat
        if str(gps.get(3, "E")).upper().startswith("W"):
            lon = -lon
        alt = _rational(gps[6]) if 6 in gps else None
        if alt is not None and gps.get(5) in (1, b"\x01"):
            alt = -alt
    except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError):
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return lat, lon, alt


_A, _F = 6378137.0, 1 / 298.257223563  # WGS84
_E2 = _F * (2 - _F)


def _radii(lat0: float, alt0: float) -> tuple[float, float]:
    """Meridian and prime-vertical radii at lat0, plus alt0 (the local tangent plane)."""
    s = math.sin(math.radians(lat0))
    N = _A / math.sqrt(1 - _E2 * s * s)
    M = _A * (1 - _E2) / (1 - _E2 * s * s) ** 1.5
    return M + alt0, N + alt0


def to_enu(lat, lon, alt, lat0, lon0, alt0) -> np.ndarray:
    M, N = _radii(lat0, alt0)
    return np.array([math.radians(lon - lon0) * N * math.cos(math.radians(lat0)),
                     math.radians(lat - lat0) * M, (alt if alt is not None else alt0) - alt0])


def from_enu(e, n, u, lat0, lon0, alt0) -> tuple[float, float, float]:
    M, N = _radii(lat0, alt0)
    return (lat0 + math.degrees(n / M), lon0 + math.degrees(e / (N * math.cos(math.radians(lat0)))), alt0 + u)


def fit_gps(horizontal: np.ndarray, enu: np.ndarray, seed: int = 0) -> dict | None:
    """Scale s and heading a with enu_xy ~ s * R(a) @ model_xy + t, robustly:
    RANSAC over pairs (a pair fixes all four numbers), then least squares on
    the inliers (within 3 m plus 5% of the spread, GPS's noise). Horizontal
    only: GPS altitude is much worse than its position."""
    m = len(horizontal)
    if m < 3:
        return None
    spread = float(np.sqrt(((enu - enu.mean(0)) ** 2).sum(1).mean()))
    if spread < GPS_MIN_SPREAD_M:
        return {"rejected": f"GPS positions spread {spread:.1f} m: under {GPS_MIN_SPREAD_M} m, too little for a scale"}
    P = horizontal[:, 0] + 1j * horizontal[:, 1]
    Q = enu[:, 0] + 1j * enu[:, 1]
    tol = 3.0 + 0.05 * spread
    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    if len(pairs) > 400:
        pairs = [tuple(rng.choice(m, 2, replace=False)) for _ in range(400)]
    best, best_inl = None, None
    for i, j in pairs:
        if abs(P[j] - P[i]) < 1e-12:
            continue
        k = (Q[j] - Q[i]) / (P[j] - P[i])  # complex: scale and rotation
        t = Q[i] - k * P[i]
        inl = np.abs(k * P + t - Q) < tol
        if best_inl is None or inl.sum() > best_inl.sum():
            best, best_inl = (k, t), inl
    if best is None or best_inl.sum() < 3:
        return {"rejected": "GPS positions do not fit the camera positions"}
    inl = best_inl
    for _ in range(3):  # complex least squares = a 2D similarity
        p, q = P[inl], Q[inl]
        pm, qm = p.mean(), q.mean()
        k = ((q - qm) * np.conj(p - pm)).sum() / (np.abs(p - pm) ** 2).sum()
        t = qm - k * pm
        inl = np.abs(k * P + t - Q) < tol
        if inl.sum() < 3:
            return {"rejected": "GPS positions do not fit the camera positions"}
    residual = np.abs(k * P[inl] + t - Q[inl])
    return {"scale": float(abs(k)), "heading": float(np.angle(k)), "translation": [float(t.real), float(t.imag)],
            "inliers": int(inl.sum()), "rms_m": float(np.sqrt((residual ** 2).mean())), "spread_m": spread}


# -- the frame ----------------------------------------------------------------------

def world_frame(rec: "pycolmap.Reconstruction", image_dir: Path, names: list[str]) -> WorldFrame:
    """The frame for `rec` (in COLMAP's frame), from its cameras, its points and
    the photos' EXIF GPS."""
    cam_names, centres, x, y, z = _cameras(rec)
    if len(cam_names) < MIN_CAMERAS:
        return identity(f"only {len(cam_names)} cameras registered; {MIN_CAMERAS} are needed for a frame")
    warnings: list[str] = []
    info: dict = {"method": "auto", "num_cameras": len(cam_names)}

    # Up: the cameras, then the ground plane when it agrees with them.
    u_cam, up_info = camera_up(x, y, z, centres)
    points, tracks = _points(rec)
    extent = float(np.median(np.linalg.norm(centres - np.median(centres, 0), axis=1))) or 1.0
    if len(points):
        depth_ref = float(np.median(np.linalg.norm(points - np.median(points, 0), axis=1)))
        extent = max(extent, depth_ref)
    plane = ground_plane(points, u_cam, centres, extent) if len(points) else None
    up = u_cam
    up_method = "cameras"
    if plane is not None:
        angle = float(np.degrees(np.arccos(np.clip(plane["normal"] @ u_cam, -1, 1))))
        info["ground_plane"] = {"found": True, "angle_to_camera_up_deg": angle, "inliers": plane["inliers"],
                                "fraction": plane["fraction"]}
        if angle <= PLANE_REFINE_DEG:
            up, up_method = plane["normal"], "ground plane"
        else:
            warnings.append(f"The ground plane is {angle:.0f} degrees from the cameras' up; kept the cameras' up.")
    else:
        info["ground_plane"] = {"found": False}
    info["up"] = {"method": up_method, "camera_up": u_cam.tolist(), "up": up.tolist(), **up_info}
    if up_info["median_tilt_deg"] > 10:
        warnings.append(f"The photos are tilted {up_info['median_tilt_deg']:.0f} degrees (median) from level: "
                        "up may be off.")
    R = _rotation_to_z(up)

    # Origin: the subject's centre, then its foot on the ground.
    conv, conv_info = convergence_point(centres, z)
    if conv is not None:
        centre, origin_method = conv, "optical axes converge (object capture)"
    else:
        if up_info["walk"] or not len(points):  # a walk's subject is the street walked: the path's middle
            centre, origin_method = np.median(centres, 0), "middle of the cameras' path (a walk)"
        else:
            seen = points[tracks >= np.median(tracks)] if len(points) >= 20 else points
            centre, origin_method = np.median(seen, 0), "median of the well-seen points"
    if plane is not None and up_method == "ground plane":
        ground_h = plane["offset"]  # n.p = d on the ground, n = up
        z_method = "ground plane"
    else:
        h = points @ up if len(points) else centres @ up - extent
        near = np.linalg.norm(np.cross(points - centre, up), axis=1) < extent if len(points) else None
        if near is not None and near.sum() >= 10:
            h = h[near]
        ground_h = float(np.percentile(h, 5))
        z_method = "5th percentile of the points' heights near the subject"
    centre_on_ground = centre - (centre @ up - ground_h) * up
    info["origin"] = {"method": origin_method, "z": z_method, "colmap": centre_on_ground.tolist(), **conv_info}

    # Scale (and heading) from GPS, else a guess.
    heading = 0.0
    gps_rows = []
    for name, c in zip(cam_names, centres):
        g = read_gps(Path(image_dir) / name)
        if g is not None:
            gps_rows.append((name, c, g))
    scale, scale_info = None, {}
    if len(gps_rows) >= 3:
        lat0, lon0 = float(np.mean([g[0] for _, _, g in gps_rows])), float(np.mean([g[1] for _, _, g in gps_rows]))
        alts = [g[2] for _, _, g in gps_rows if g[2] is not None]
        alt0 = float(np.mean(alts)) if alts else 0.0
        enu = np.array([to_enu(*g, lat0, lon0, alt0) for _, _, g in gps_rows])
        local = (np.array([c for _, c, _ in gps_rows]) - centre_on_ground) @ R.T
        fit = fit_gps(local[:, :2], enu[:, :2])
        if fit is not None and "scale" in fit:
            scale, heading = fit["scale"], fit["heading"]
            # The world origin (the subject on the ground) in ENU and as lat/lon/alt; the ground's altitude
            # is the GPS altitude minus the cameras' median height (GPS altitude itself is too noisy).
            cam_h = float(np.median(local[:, 2])) * scale
            e0, n0 = fit["translation"]
            origin_llh = from_enu(e0, n0, -cam_h, lat0, lon0, alt0)
            scale_info = {"method": "GPS", "photos": len(gps_rows), **fit,
                          "enu_origin": {"lat": lat0, "lon": lon0, "alt": alt0},
                          "world_origin_enu": [e0, n0, -cam_h],
                          "world_origin": {"lat": origin_llh[0], "lon": origin_llh[1],
                                           "alt": origin_llh[2] if alts else None},
                          "assumption": "+X east, +Y north; GPS altitude not used for the scale"}
            if fit["rms_m"] > 0.2 * fit["spread_m"]:
                warnings.append(f"GPS fits the cameras poorly (rms {fit['rms_m']:.1f} m): the scale may be off.")
        elif fit is not None:
            scale_info = {"gps_rejected": fit["rejected"], "gps_photos": len(gps_rows)}
    if scale is None:
        heights = (centres - centre_on_ground) @ up
        ground_seen = plane is not None and up_method == "ground plane"
        # The ground under the subject (the plane, else the lowest points near
        # it) is seen by most captures a person stands for: a camera height
        # is then a better guess than a distance, which varies from 0.3 m
        # (a small object) to 30 m (a building).
        if np.median(heights) > 0.02 * extent:
            scale = CAMERA_HEIGHT_M / float(np.median(heights))
            where = "the ground plane" if ground_seen else "the lowest points near the subject"
            method, assumption = "camera height", f"cameras held {CAMERA_HEIGHT_M} m above {where}"
        elif conv is not None:
            dist = float(np.median(np.linalg.norm(centres - conv, axis=1)))
            scale = OBJECT_DISTANCE_M / dist
            method, assumption = "camera distance", f"cameras {OBJECT_DISTANCE_M} m from the subject"
        else:
            dist = float(np.median(np.linalg.norm(points - centre, axis=1))) if len(points) else extent
            scale = SCENE_DISTANCE_M / max(dist, 1e-12)
            method, assumption = "scene distance", f"the points {SCENE_DISTANCE_M} m from their centre (median)"
        scale_info = {**scale_info, "method": method, "assumption": assumption}
        warnings.append(f"The scale is a guess ({assumption}); set the scale from a known distance.")
        # Keep the main camera direction along +Y (looking "north" into the scene) for a stable view.
        fwd = (z @ R.T)[:, :2].mean(0)
        if np.linalg.norm(fwd) > 1e-6 and conv is None:
            heading = math.pi / 2 - math.atan2(fwd[1], fwd[0])
    info["scale"] = scale_info

    rotation = _yaw(heading) @ R
    translation = -scale * rotation @ centre_on_ground
    up_txt = f"upright from {len(cam_names)} cameras" + (" and the ground plane" if up_method == "ground plane"
                                                        else "")
    origin_txt = "origin at the subject on the ground" if conv is not None else "origin at the scene's centre"
    scale_txt = f"scale from GPS ({len(gps_rows)} photos)" if scale_info.get("method") == "GPS" else \
        f"scale guessed ({scale_info['assumption']})"
    info["summary"] = f"{up_txt}; {origin_txt}; {scale_txt}"
    info["warnings"] = warnings
    return WorldFrame(float(scale), rotation, translation, _plain(info))


def _plain(v):
    """JSON-ready: numpy arrays and scalars to lists and floats."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
