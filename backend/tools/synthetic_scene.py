"""Ground-truth scenes rendered with Blender (Cycles on the CPU), for measuring the pipeline.

A textured object on a textured ground, photographed from two rings of cameras. Besides
the photos it writes what the pipeline is judged against: the true cameras as a COLMAP
text model (converted with ``blender_addon.shared.camera_math``, the project's one conversion),
the true meshes, object masks, and the .blend for re-rendering.

Harder captures (issue 13), in metres with +Z up like every scene: ``street_params()`` (a phone's
forward walk between facades, JPEGs with EXIF focal and GPS), ``lowtex_params()`` (a plain
object on a dark backdrop, a few hundred features per photo), ``portrait_params()`` (stored
landscape with EXIF Orientation 6/8; the ground truth is the photos as displayed) and
``hemisphere_params()`` (cameras up to overhead); for issue 17, ``low_orbit_params()`` (the
ground at grazing angles).

bpy is imported only inside the functions that render: processes that run pycolmap or
torch must not load it, so they call ``ensure_scene``, which generates in a subprocess:

    python -m backend.tools.synthetic_scene OUT_DIR [--views N] [--width W] [--height H] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blender_addon.shared.colmap_io import write_text_model
from blender_addon.shared.ply_io import write_ply

# Bump when the scene, its rendering or its outputs change: ensure_scene then regenerates.
GENERATOR_VERSION = 1

_REPO_ROOT = Path(__file__).resolve().parents[2]

# Texture atlas (one image, so every engine shows it through plain UVs): the ground takes
# the bottom 2048 x 2048 pixels, the object's six box-projection directions take tiles of
# 512 x 512 in the 2048 x 1024 strip above, so no patch of texture appears twice.
_TEXTURE_SIZE = (2048, 3072)  # width, height
_GROUND_V = 2 / 3  # ground spans v in [0, 2/3]
_TILE_COLUMNS, _TILE_ROWS = 4, 2

_GROUND_HALF_SIZE = 4.0  # ground is 8 x 8 units: ~256 texels per unit, like the object


@dataclass
class SceneParams:
    """What a synthetic scene is made of; ``scene.json`` records it and ``ensure_scene`` compares it."""

    views: int = 24
    """Number of cameras, split over two rings (25 and 50 degrees above the object's centre)."""
    width: int = 640
    """Image width in pixels."""
    height: int = 480
    """Image height in pixels."""
    samples: int = 16
    """Cycles samples per pixel. Denoising stays off: it would smear the texture that matching needs."""
    seed: int = 0
    """Seeds the texture and Cycles' sampling pattern."""
    lens: float = 50.0
    """Focal length in mm on Blender's default 36 mm sensor (fx = fy, principal point at the centre)."""
    distance: float = 4.5
    """Distance from each camera to the object's centre, in scene units (the object is ~1.6 wide)."""
    # Fields below were added after version 1; a scene.json without them holds their defaults.
    kind: str = "object"
    """"object" (the textured object), "street" (a forward walk between facades) or "lowtex"
    (a smooth, sparsely marked object on a dark backdrop, one ring)."""
    layout: str = "rings"
    """Object cameras: "rings" (two rings), "hemisphere" (a spiral up to nearly overhead), "low"
    (two rings at 8 and 16 degrees: the ground seen at grazing angles, as by a person crouching) or
    "orbit" (one full turn at 30 degrees, evenly spaced: the frames of a video walked around it)."""
    portrait: bool = False
    """Photos displayed as portrait (``width`` < ``height``), stored as landscape pixels with EXIF
    Orientation 6 or 8 (alternating); the ground truth describes them as displayed. Needs jpeg."""
    image_format: str = "png"
    """"png" (no metadata) or "jpeg" (quality 92 with EXIF make, model, focal and time)."""
    gps: bool = False
    """EXIF GPS from each true camera centre (jpeg only); the scene's metres are east, north, up."""
    sensor_width: float = 36.0
    """Sensor width in mm along the frame's long side (Blender's AUTO fit): sets the EXIF focal."""


def street_params(**overrides) -> SceneParams:
    """A phone user's forward walk down a street: 22 photos over 40 m (``distance`` is the track
    length for this kind), 26 mm-equivalent lens (4.8 mm on a 6.4 mm sensor: fx = 384 px), JPEG with
    EXIF focal and GPS. Forward motion with little parallax is what COLMAP's defaults fail on."""
    return SceneParams(**{**dict(kind="street", views=22, width=512, height=384, samples=8, lens=4.8,
                                 sensor_width=6.4, distance=40.0, image_format="jpeg", gps=True), **overrides})


def lowtex_params(**overrides) -> SceneParams:
    """A smooth object with sparse marks on a dark ground under a dark sky, 16 photos on one ring:
    a few hundred SIFT features per photo, like a real capture of a plain object."""
    return SceneParams(**{**dict(kind="lowtex", views=16, samples=8, image_format="jpeg"), **overrides})


def portrait_params(**overrides) -> SceneParams:
    """The object scene shot in portrait (480 x 640 as displayed), stored rotated with EXIF
    Orientation 6 and 8 alternating."""
    return SceneParams(**{**dict(width=480, height=640, samples=8, portrait=True, image_format="jpeg"),
                          **overrides})


def low_orbit_params(**overrides) -> SceneParams:
    """The object scene from two low rings (8 and 16 degrees): most of what the photos see is
    the textured ground at grazing angles, the surface fronto-parallel stereo loses (issue 17)."""
    return SceneParams(**{**dict(layout="low", samples=8, image_format="jpeg"), **overrides})


def hemisphere_params(**overrides) -> SceneParams:
    """The object scene with cameras spread over the hemisphere, up to straight overhead."""
    return SceneParams(**{**dict(layout="hemisphere", samples=8, image_format="jpeg"), **overrides})


# Where a scene's origin lies on the Earth (WGS84). Scene +X is east, +Y north, +Z up, in metres.
GPS_ORIGIN = {"lat": 47.3769, "lon": 8.5417, "alt": 408.0}
_WGS84_A, _WGS84_E2 = 6378137.0, 6.69437999014e-3


def _radii(lat0: float, alt0: float) -> tuple[float, float]:
    """Metres per radian of latitude (meridian radius) and of longitude (parallel radius) at the origin."""
    s = math.sin(math.radians(lat0))
    w = math.sqrt(1 - _WGS84_E2 * s * s)
    return _WGS84_A * (1 - _WGS84_E2) / w**3 + alt0, (_WGS84_A / w + alt0) * math.cos(math.radians(lat0))


def enu_to_gps(enu, origin: dict = GPS_ORIGIN) -> np.ndarray:
    """Scene points [..., 3] (east, north, up from the origin, metres) to [..., 3] (lat, lon, alt).

    A local tangent plane: latitude and longitude change by north and east over the WGS84
    radii of curvature at the origin; altitude adds up. Over a street (~100 m) it departs
    from exact ENU by well under a millimetre (the Earth's curvature drops 0.8 mm in 100 m).
    """
    enu = np.asarray(enu, np.float64)
    r_lat, r_lon = _radii(origin["lat"], origin["alt"])
    return np.stack([origin["lat"] + np.degrees(enu[..., 1] / r_lat), origin["lon"] + np.degrees(enu[..., 0] / r_lon),
                     origin["alt"] + enu[..., 2]], axis=-1)


def gps_to_enu(lla, origin: dict = GPS_ORIGIN) -> np.ndarray:
    """The inverse of ``enu_to_gps``."""
    lla = np.asarray(lla, np.float64)
    r_lat, r_lon = _radii(origin["lat"], origin["alt"])
    return np.stack([np.radians(lla[..., 1] - origin["lon"]) * r_lon, np.radians(lla[..., 0] - origin["lat"]) * r_lat,
                     lla[..., 2] - origin["alt"]], axis=-1)


def focal_35mm(params: SceneParams) -> float:
    """35 mm-equivalent focal (by the diagonal, as phones write it) of the scene's camera."""
    long_side, short_side = max(params.width, params.height), min(params.width, params.height)
    diagonal = params.sensor_width * math.hypot(1.0, short_side / long_side)
    return params.lens * math.hypot(36.0, 24.0) / diagonal


def generate_scene(out_dir: str | Path, params: SceneParams) -> dict:
    """Render a scene into ``out_dir`` and return what ``scene.json`` records.

    Imports bpy and resets its session. Writes into a sibling ``OUT_DIR.tmp-*`` folder and
    renames it into place at the end, so a killed run never leaves a half-written scene.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        info = _render_scene(tmp, params)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def ensure_scene(out_dir: str | Path, params: SceneParams) -> Path:
    """Return ``out_dir`` holding a scene made with ``params``, generating it only when needed.

    A scene is reused when its ``scene.json`` records the same params and generator version.
    Generation runs in a subprocess so that the caller never imports bpy.
    """
    out_dir = Path(out_dir).resolve()
    if _scene_matches(out_dir, params):
        return out_dir
    args = [sys.executable, "-m", "backend.tools.synthetic_scene", str(out_dir)]
    for field in dataclasses.fields(params):
        args += [f"--{field.name.replace('_', '-')}", str(getattr(params, field.name))]
    proc = subprocess.run(args, cwd=_REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not _scene_matches(out_dir, params):
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"synthetic scene generation failed (exit {proc.returncode}):\n{tail}")
    return out_dir


def _scene_matches(out_dir: Path, params: SceneParams) -> bool:
    try:
        info = json.loads((out_dir / "scene.json").read_text())
    except (OSError, ValueError):
        return False
    # Fields added since version 1 are absent from older scene.json files: those hold the defaults.
    stored = {**dataclasses.asdict(SceneParams()), **(info.get("params") or {})}
    return info.get("generator_version") == GENERATOR_VERSION and stored == dataclasses.asdict(params)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is swapped out first, then deleted."""
    old = None
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Rendering (bpy)


def _render_scene(out: Path, params: SceneParams) -> dict:
    import bpy

    from blender_addon.shared.camera_math import BlenderIntrinsics, blender_matrix_to_colmap, blender_to_intrinsics

    _check_params(params)
    started = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    rng = np.random.default_rng(params.seed)

    if params.kind == "street":
        subject_objs, ground = _build_street(scene, out, rng)
        poses = _street_poses(params, rng)
        _add_lighting(scene)
    else:
        if params.kind == "lowtex":
            _make_sparse_texture(out / "texture.png", params.seed)
        else:
            _make_texture(out / "texture.png", params.seed)
        image = bpy.data.images.load(str(out / "texture.png"))
        material = _textured_material(image)
        obj_mesh = _object_mesh()
        _box_project_uvs(obj_mesh)
        obj_mesh.materials.append(material)
        obj = bpy.data.objects.new("Object", obj_mesh)
        scene.collection.objects.link(obj)
        subject_objs = [obj]
        bbox_min = _vertices(obj_mesh).min(axis=0)  # world = local
        ground_mesh = _ground_mesh(z=float(bbox_min[2]))
        ground_mesh.materials.append(material)
        ground = bpy.data.objects.new("Ground", ground_mesh)
        scene.collection.objects.link(ground)
        poses = _camera_poses(params)
        _add_lighting(scene, sky=0.03 if params.kind == "lowtex" else 0.5)
    _configure_render(scene, params)

    cam_data = bpy.data.cameras.new("Camera")
    cam_data.lens = params.lens
    cam_data.sensor_width = params.sensor_width
    cameras = []
    for name, matrix in poses:
        cam = bpy.data.objects.new(name, cam_data)
        cam.matrix_world = _to_matrix(matrix)
        scene.collection.objects.link(cam)
        cameras.append(cam)
    scene.camera = cameras[0]

    bpy.context.view_layer.update()
    scene.render.filepath = "//images/"
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "scene.blend"), relative_remap=True)

    jpeg = params.image_format == "jpeg"
    ext = "jpg" if jpeg else "png"
    render_dir = out / "renders" if jpeg else out / "images"
    for cam in cameras:
        scene.camera = cam
        scene.render.filepath = str(render_dir / cam.name)
        bpy.ops.render.render(write_still=True)
    photos_done = time.perf_counter()

    if params.kind != "street":
        _render_masks(scene, ground, out / "masks", cameras)

    render = scene.render
    intrinsics = blender_to_intrinsics(
        BlenderIntrinsics(
            cam_data.lens, cam_data.sensor_width, cam_data.sensor_height, cam_data.sensor_fit,
            cam_data.shift_x, cam_data.shift_y, render.resolution_x, render.resolution_y,
            render.pixel_aspect_x, render.pixel_aspect_y,
        )  # fmt: skip
    )
    colmap_poses = [blender_matrix_to_colmap(cam.matrix_world) for cam in cameras]
    write_text_model(out / "gt_colmap", {1: ("PINHOLE", params.width, params.height, list(intrinsics))},
                     [(i, R, t, 1, f"{c.name}.{ext}")
                      for i, ((R, t), c) in enumerate(zip(colmap_poses, cameras), start=1)])

    parts = [_world_triangles(o) for o in subject_objs]
    obj_v, obj_f = _concat_meshes(parts)
    ground_v, ground_f = _world_triangles(ground)
    _write_ply(out / "gt_object.ply", obj_v, obj_f)
    _write_ply(out / "gt_scene.ply", np.concatenate([obj_v, ground_v]), np.concatenate([obj_f, ground_f + len(obj_v)]))
    bbox_min, bbox_max = obj_v.min(axis=0), obj_v.max(axis=0)
    ground_z = float(ground_v[:, 2].min())

    centres = np.array([np.array(c.matrix_world)[:3, 3] for c in cameras])
    info = {
        "generator_version": GENERATOR_VERSION,
        "params": dataclasses.asdict(params),
        "kind": params.kind,
        "units": "m",
        "up": [0.0, 0.0, 1.0],
        "object_bbox": {
            "min": bbox_min.tolist(),
            "max": bbox_max.tolist(),
            "diagonal": float(np.linalg.norm(bbox_max - bbox_min)),
        },
        "ground_z": ground_z,
        "cameras": [cam.name for cam in cameras],
        "images": [f"images/{cam.name}.{ext}" for cam in cameras],
        "masks": [f"masks/{cam.name}.png" for cam in cameras] if params.kind != "street" else [],
        "intrinsics": dict(zip(("fx", "fy", "cx", "cy"), map(float, intrinsics))),
        "camera_centres": centres.tolist(),
        "blender_version": bpy.app.version_string,
    }
    if params.kind == "street":
        # The track's centre on the ground; the scene size is the facades' bounding diagonal.
        info["subject_centre"] = [float((centres[:, 0].min() + centres[:, 0].max()) / 2),
                                  float((centres[:, 1].min() + centres[:, 1].max()) / 2), ground_z]
        info["track_length"] = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())
    else:
        centre = (bbox_min + bbox_max) / 2
        info["subject_centre"] = [float(centre[0]), float(centre[1]), ground_z]
    info["scene_size"] = info["object_bbox"]["diagonal"]
    if jpeg:
        info.update(_write_jpegs(out, render_dir, cameras, centres, params))
        shutil.rmtree(render_dir)
    info["seconds"] = {"photos": photos_done - started, "total": time.perf_counter() - started}
    (out / "scene.json").write_text(json.dumps(info, indent=2))
    return info


def _check_params(params: SceneParams) -> None:
    if params.kind not in ("object", "street", "lowtex"):
        raise ValueError(f"unknown scene kind {params.kind!r}")
    if params.layout not in ("rings", "hemisphere", "low", "orbit") or (params.layout != "rings" and params.kind != "object"):
        raise ValueError(f"layout {params.layout!r} is not available for kind {params.kind!r}")
    if params.image_format not in ("png", "jpeg"):
        raise ValueError(f"unknown image format {params.image_format!r}")
    if (params.portrait or params.gps) and params.image_format != "jpeg":
        raise ValueError("portrait and gps need image_format 'jpeg' (they live in EXIF)")
    if params.portrait and params.width >= params.height:
        raise ValueError("a portrait scene's width (as displayed) must be less than its height")


def _concat_meshes(parts):
    vs, fs, n = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + n)
        n += len(v)
    return np.concatenate(vs), np.concatenate(fs)


def _make_texture(path: Path, seed: int) -> None:
    """Multi-scale colour noise plus sharp random blobs: corners at every scale for SIFT,
    no repetition for matching, strong luminance contrast for photo-consistency."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = _TEXTURE_SIZE
    img = np.zeros((height, width, 3), np.float32)
    # Coarse octaves weigh less: large dark or bright areas would leave regions without contrast.
    for cells, weight in ((3, 0.3), (6, 0.4), (12, 0.6), (24, 0.8), (48, 1), (96, 1), (192, 1), (384, 1)):
        grey = rng.random((cells * height // width, cells, 1))
        colour = rng.random((cells * height // width, cells, 3))
        small = (255 * (0.6 * grey + 0.4 * colour)).astype(np.uint8)
        img += weight * np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    img -= img.mean(axis=(0, 1))
    img /= 3 * img.std()
    pil = Image.fromarray((np.clip(0.45 + img, 0, 1) * 255).astype(np.uint8))

    draw = ImageDraw.Draw(pil)
    for _ in range(6000):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = np.exp(rng.uniform(np.log(2.5), np.log(28), size=2))
        fill = tuple(int(c) for c in rng.integers(10, 230, size=3))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, optimize=False, compress_level=1)


def _textured_material(image):
    """Lambertian (view-independent) shading of the texture, so photo-consistency holds."""
    import bpy

    mat = bpy.data.materials.new("Textured")
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Linear"
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(tex.outputs["Color"], diffuse.inputs["Color"])
    links.new(diffuse.outputs["BSDF"], out.inputs["Surface"])
    nodes.active = tex  # Workbench's texture colour mode shows the active image node
    return mat


def _object_mesh():
    """Subdivided Suzanne on a dented box, with a column and a ball: concave and convex,
    smooth and sharp. Unioned (exact boolean) into one closed surface, centred at the origin."""
    import bmesh
    import bpy
    from mathutils import Matrix

    scene = bpy.context.scene

    def part(name, build, subsurf=0):
        bm = bmesh.new()
        build(bm)
        me = bpy.data.meshes.new(name)
        bm.to_mesh(me)
        bm.free()
        ob = bpy.data.objects.new(name, me)
        scene.collection.objects.link(ob)
        if subsurf:
            mod = ob.modifiers.new("Subdivision", "SUBSURF")
            mod.levels = mod.render_levels = subsurf
        return ob

    def at(x, y, z, sx=1.0, sy=1.0, sz=1.0):
        return Matrix.Translation((x, y, z)) @ Matrix.Diagonal((sx, sy, sz, 1.0))

    base = part("Box", lambda bm: bmesh.ops.create_cube(bm, size=1.0, matrix=at(0, 0, -0.35, 1.1, 0.9, 0.5)))
    others = [
        ("UNION", part("Suzanne", lambda bm: _closed_suzanne(bm, at(0, -0.05, 0.25, 0.45, 0.45, 0.45)), subsurf=2)),
        ("UNION", part("Column", lambda bm: bmesh.ops.create_cone(
            bm, cap_ends=True, segments=48, radius1=0.2, radius2=0.2, depth=0.8, matrix=at(0.62, 0.3, -0.18)))),
        ("UNION", part("Ball", lambda bm: bmesh.ops.create_uvsphere(
            bm, u_segments=48, v_segments=24, radius=0.28, matrix=at(-0.5, 0.3, -0.05)))),
        ("DIFFERENCE", part("Dent", lambda bm: bmesh.ops.create_uvsphere(
            bm, u_segments=32, v_segments=16, radius=0.2, matrix=at(-0.3, -0.52, -0.38)))),
    ]  # fmt: skip
    for operation, other in others:
        mod = base.modifiers.new(other.name, "BOOLEAN")
        mod.operation, mod.object, mod.solver = operation, other, "EXACT"
    mesh = bpy.data.meshes.new_from_object(base.evaluated_get(bpy.context.evaluated_depsgraph_get()))
    mesh.name = "Object"
    for ob in [base] + [o for _, o in others]:
        me = ob.data
        bpy.data.objects.remove(ob)
        bpy.data.meshes.remove(me)

    # The boolean leaves a few zero-area slivers where surfaces graze; keep the one solid.
    bm = bmesh.new()
    bm.from_mesh(mesh)
    islands = _islands(bm)
    bmesh.ops.delete(bm, geom=[v for island in islands[:-1] for v in island], context="VERTS")
    lo = np.array([min(v.co[i] for v in bm.verts) for i in range(3)])
    hi = np.array([max(v.co[i] for v in bm.verts) for i in range(3)])
    bmesh.ops.translate(bm, verts=bm.verts[:], vec=-(lo + hi) / 2)
    bm.to_mesh(mesh)
    bm.free()
    mesh.shade_smooth()  # flat shading would paint Suzanne's facets into the photos
    return mesh


def _closed_suzanne(bm, matrix) -> None:
    """Suzanne without her separate eyes and with the eye sockets capped, so booleans see a solid."""
    import bmesh

    bmesh.ops.create_monkey(bm, matrix=matrix)
    bmesh.ops.delete(bm, geom=[v for island in _islands(bm)[:-1] for v in island], context="VERTS")
    caps = bmesh.ops.holes_fill(bm, edges=[e for e in bm.edges if e.is_boundary], sides=0)["faces"]
    # A fan, not a triangulation: a diagonal of the cap could repeat an existing edge.
    bmesh.ops.poke(bm, faces=caps)


def _islands(bm) -> list[list]:
    """Connected vertex islands of a BMesh, smallest first."""
    seen, islands = set(), []
    for start in bm.verts:
        if start in seen:
            continue
        seen.add(start)
        stack, island = [start], []
        while stack:
            v = stack.pop()
            island.append(v)
            for e in v.link_edges:
                other = e.other_vert(v)
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        islands.append(island)
    return sorted(islands, key=len)


def _box_project_uvs(mesh) -> None:
    """UVs by projecting each face along its dominant normal axis into that direction's own
    atlas tile; isotropic, so texel density is the same on every side."""
    n_poly = len(mesh.polygons)
    normals = np.empty(n_poly * 3)
    mesh.polygons.foreach_get("normal", normals)
    normals = normals.reshape(-1, 3)
    loop_total = np.empty(n_poly, np.int64)
    mesh.polygons.foreach_get("loop_total", loop_total)
    loop_vertex = np.empty(len(mesh.loops), np.int64)
    mesh.loops.foreach_get("vertex_index", loop_vertex)
    # Polygons' loops are stored consecutively in polygon order.
    loop_normal = np.repeat(normals, loop_total, axis=0)
    co = _vertices(mesh)[loop_vertex]

    axis = np.abs(loop_normal).argmax(axis=1)
    negative = loop_normal[np.arange(len(axis)), axis] < 0
    tile = 2 * axis + negative
    # In-plane coordinates for each axis (the two others), scaled from the object's extent to [0, 1].
    a = np.choose(axis, [co[:, 1], co[:, 0], co[:, 0]])
    b = np.choose(axis, [co[:, 2], co[:, 2], co[:, 1]])
    lo, extent = co.min(), np.ptp(co)  # one scale for all axes keeps texels square
    margin = 0.01  # keeps linear filtering from reaching the next tile
    a = margin + (1 - 2 * margin) * (a - lo) / extent
    b = margin + (1 - 2 * margin) * (b - lo) / extent
    u = (tile % _TILE_COLUMNS + a) / _TILE_COLUMNS
    v = _GROUND_V + (tile // _TILE_COLUMNS + b) / _TILE_ROWS * (1 - _GROUND_V)
    layer = mesh.uv_layers.new(name="UVMap")
    layer.data.foreach_set("uv", np.stack([u, v], axis=1).astype(np.float32).ravel())


def _ground_mesh(z: float):
    import bpy

    s = _GROUND_HALF_SIZE
    mesh = bpy.data.meshes.new("Ground")
    mesh.from_pydata([(-s, -s, z), (s, -s, z), (s, s, z), (-s, s, z)], [], [(0, 1, 2, 3)])
    layer = mesh.uv_layers.new(name="UVMap")
    layer.data.foreach_set("uv", [0, 0, 1, 0, 1, _GROUND_V, 0, _GROUND_V])
    return mesh


def _add_lighting(scene, sky: float = 0.5) -> None:
    """A high sun plus a uniform sky (bright by default: every surface lit, shadows soft and never black)."""
    import bpy

    world = bpy.data.worlds.new("Sky")
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (sky, sky, sky, 1.0)
    scene.world = world

    sun = bpy.data.lights.new("Sun", "SUN")
    sun.energy = 1.0
    sun_obj = bpy.data.objects.new("Sun", sun)
    sun_obj.rotation_euler = (math.radians(30), 0.0, math.radians(40))
    scene.collection.objects.link(sun_obj)


def _configure_render(scene, params: SceneParams) -> None:
    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y = params.width, params.height
    render.resolution_percentage = 100
    render.use_persistent_data = True  # keep BVH and textures between the views
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGB"
    render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"  # texture colours as they are, no filmic curve

    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = params.samples
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = False
    cycles.seed = params.seed
    # Direct light only: bounced light would double the render time and add noise,
    # and a Lambertian scene is photo-consistent without it.
    cycles.max_bounces = 0


def _render_masks(scene, ground, mask_dir: Path, cameras) -> None:
    """Object silhouettes (255 inside): alpha of a quick render without the ground."""
    import bpy
    from PIL import Image

    ground.hide_render = True
    scene.render.film_transparent = True
    scene.render.image_settings.color_mode = "RGBA"
    scene.cycles.samples = 4
    scene.view_layers[0].material_override = bpy.data.materials.new("Mask")
    for cam in cameras:
        scene.camera = cam
        scene.render.filepath = str(mask_dir / cam.name)
        bpy.ops.render.render(write_still=True)
        path = mask_dir / f"{cam.name}.png"
        alpha = np.asarray(Image.open(path))[:, :, 3]
        Image.fromarray(np.where(alpha >= 128, 255, 0).astype(np.uint8)).save(path)


def _camera_poses(params: SceneParams) -> list[tuple[str, np.ndarray]]:
    """Blender camera-to-world matrices around the origin, looking at it: two rings (object),
    one ring at 30 degrees (lowtex), two low rings (layout "low") or a spiral over the hemisphere
    (layout "hemisphere")."""
    if params.layout == "hemisphere":
        return _hemisphere_poses(params)
    if params.kind == "lowtex" or params.layout == "orbit":
        rings = [(30.0, params.views, 0.0)]
    elif params.layout == "low":
        low = math.ceil(params.views / 2)
        rings = [(8.0, low, 0.0), (16.0, params.views - low, 0.5)]
    else:
        low = math.ceil(params.views / 2)
        rings = [(25.0, low, 0.0), (50.0, params.views - low, 0.5)]
    poses = []
    for elevation, count, offset in rings:
        for k in range(count):
            azimuth = 2 * math.pi * (k + offset) / count - math.pi / 2
            el = math.radians(elevation)
            centre = params.distance * np.array(
                [math.cos(el) * math.cos(azimuth), math.cos(el) * math.sin(azimuth), math.sin(el)]
            )
            poses.append((f"view_{len(poses):03d}", _look_at(centre, np.zeros(3))))
    return poses


def _hemisphere_poses(params: SceneParams) -> list[tuple[str, np.ndarray]]:
    """A golden-angle spiral, equal area per camera, from 10 degrees of elevation up to overhead;
    the first camera looks straight down."""
    poses = []
    lo = math.sin(math.radians(10.0))
    golden = math.pi * (3 - math.sqrt(5))
    for k in range(params.views):
        z = 1.0 - (1.0 - lo) * k / max(params.views - 1, 1)
        el, azimuth = math.asin(z), golden * k - math.pi / 2
        centre = params.distance * np.array(
            [math.cos(el) * math.cos(azimuth), math.cos(el) * math.sin(azimuth), math.sin(el)]
        )
        poses.append((f"view_{k:03d}", _look_at(centre, np.zeros(3))))
    return poses


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Blender camera matrix at ``eye`` looking at ``target`` (local -Z forward, +Y up, world +Z up)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-9:  # looking straight down or up: the image's top points north
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = right, up, -forward, eye
    return M


# ---------------------------------------------------------------------------------------
# Photos as a phone stores them: JPEG with EXIF (no bpy)

_MAKE, _MODEL = "Reconstruct", "Synthetic Phone"


def _write_jpegs(out: Path, render_dir: Path, cameras, centres: np.ndarray, params: SceneParams) -> dict:
    """Rendered PNGs to JPEGs (quality 92) with EXIF; portrait photos are stored turned to
    landscape with the Orientation tag that turns them back. Returns what scene.json records."""
    from datetime import datetime, timedelta

    from PIL import Image, ImageFilter

    (out / "images").mkdir(parents=True, exist_ok=True)
    f35 = focal_35mm(params)
    lla = enu_to_gps(centres)
    start = datetime(2026, 5, 16, 10, 0, 0)
    photos = []
    exposure_rng = np.random.default_rng(params.seed + 1)
    for i, cam in enumerate(cameras):
        img = Image.open(render_dir / f"{cam.name}.png").convert("RGB")
        if params.kind == "street":  # a phone's auto exposure and white balance drift between shots
            gain = np.exp(exposure_rng.normal(0, 0.12)) * np.exp(exposure_rng.normal(0, 0.03, size=3))
            img = Image.fromarray(np.clip(np.asarray(img, np.float32) * gain, 0, 255).round().astype(np.uint8))
            img = img.filter(ImageFilter.GaussianBlur(exposure_rng.uniform(0.3, 1.2)))  # hand shake
        tag = 1
        if params.portrait:
            # exif_transpose turns tag 6 by ROTATE_270 and tag 8 by ROTATE_90: store the inverse.
            tag = 6 if i % 2 == 0 else 8
            img = img.transpose(Image.Transpose.ROTATE_90 if tag == 6 else Image.Transpose.ROTATE_270)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0112] = _MAKE, _MODEL, tag
        details = exif.get_ifd(0x8769)
        details[0x920A] = float(params.lens)  # FocalLength, mm
        details[0xA405] = int(round(f35))  # FocalLengthIn35mmFilm
        details[0x9003] = (start + timedelta(seconds=2 * i)).strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
        details[0xA002], details[0xA003] = img.size  # PixelX/YDimension, as stored
        record = {"name": f"{cam.name}.jpg", "orientation": tag, "stored_size": list(img.size)}
        if params.gps:
            lat, lon, alt = (float(v) for v in lla[i])
            gps = exif.get_ifd(0x8825)
            gps[0x0000] = b"\x02\x03\x00\x00"
            gps[0x0001], gps[0x0002] = "N" if lat >= 0 else "S", _dms(lat)
            gps[0x0003], gps[0x0004] = "E" if lon >= 0 else "W", _dms(lon)
            gps[0x0005], gps[0x0006] = b"\x00" if alt >= 0 else b"\x01", abs(alt)
            record["gps"] = [lat, lon, alt]
        img.save(out / "images" / f"{cam.name}.jpg", quality=92, exif=exif)
        photos.append(record)
    info = {
        "exif": {"make": _MAKE, "model": _MODEL, "focal_mm": float(params.lens), "focal_35mm": int(round(f35)),
                 "focal_35mm_exact": f35, "sensor_width_mm": float(params.sensor_width)},
        "orientations": {p["name"]: p["orientation"] for p in photos},
        "photos": photos,
    }
    if params.gps:
        info["gps_origin"] = dict(GPS_ORIGIN)
        info["gps_conversion"] = ("local tangent plane at gps_origin (WGS84): lat = lat0 + north / M, "
                                  "lon = lon0 + east / (N cos lat0), alt = alt0 + up; M, N the meridian and "
                                  "prime-vertical radii at lat0 plus alt0; scene x east, y north, z up (m)")
    return info


def _dms(degrees: float) -> tuple[float, float, float]:
    """EXIF degrees, minutes, seconds of |degrees| (seconds to 1e-4", about 3 mm)."""
    value = abs(degrees)
    d = math.floor(value)
    m = math.floor((value - d) * 60)
    sec = round(((value - d) * 60 - m) * 60, 4)
    return float(d), float(m), sec


def _make_sparse_texture(path: Path, seed: int) -> None:
    """The lowtex atlas: a near-black, barely varying ground and a pale object with gentle
    shading plus a few hundred small marks, so SIFT finds only a few hundred features."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = _TEXTURE_SIZE
    img = np.empty((height, width, 3), np.float32)
    ground_rows = int(round(height * _GROUND_V))  # image rows run top down: the ground is the bottom
    img[height - ground_rows :] = 0.05
    img[: height - ground_rows] = np.array([0.72, 0.70, 0.66])
    for cells, weight in ((3, 0.05), (6, 0.03)):
        small = rng.random((cells * height // width, cells, 1))
        smooth = np.asarray(Image.fromarray((255 * small[:, :, 0]).astype(np.uint8)).resize((width, height),
                                                                                           Image.BICUBIC), np.float32)
        img += weight * (smooth[:, :, None] / 255 - 0.5)
    img[height - ground_rows :] = 0.05 + 0.1 * (img[height - ground_rows :] - 0.05)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(_LOWTEX_MARKS):  # irregular polygons: each mark's descriptor differs, unlike dots
        x, y = rng.uniform(0, width), rng.uniform(0, height - ground_rows)
        k = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=k))
        radii = np.exp(rng.uniform(np.log(4), np.log(14), size=k))
        fill = tuple(int(c) for c in rng.integers(10, 110, size=3))
        draw.polygon([(x + r * np.cos(t), y + r * np.sin(t)) for r, t in zip(radii, angles)], fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, optimize=False, compress_level=1)


_LOWTEX_MARKS = 500  # over the object's 8 atlas tiles: ~300 SIFT features per photo

# ---------------------------------------------------------------------------------------
# The street (bpy): ground along +Y (north), facades either side, a closing facade far ahead

_STREET_HALF_WIDTH = 8.0  # facade to the street's centre line, m
_SIDEWALK = 3.0  # the walk keeps to the left sidewalk, 2.5 m from the facades
_FACADE_TEXEL = 0.025  # m per texel on facades
_GROUND_TEXEL = 0.04
_GROUND_EXTENT = ((-16.0, 16.0), (-20.0, 90.0))  # x, y in m


def _build_street(scene, out: Path, rng):
    """Buildings (boxes, each with its own generated facade texture) and the ground; returns
    (buildings, ground) as Blender objects."""
    import bpy

    tex_dir = out / "textures"
    tex_dir.mkdir(parents=True, exist_ok=True)
    boxes = []  # (lo, hi, facade axis)
    for side in (-1, 1):
        y = -15.0
        while y < 70.0:
            if rng.random() < 0.2:
                y += rng.uniform(1.0, 2.5)  # an alley
            length, height = rng.uniform(6, 14), rng.uniform(7, 16)
            x_face = side * (_STREET_HALF_WIDTH + rng.uniform(0.0, 0.8))
            x_back = x_face + side * 8.0
            boxes.append(((min(x_face, x_back), y, 0.0), (max(x_face, x_back), y + length, height), 1))
            y += length
    boxes.append(((-16.0, 78.0, 0.0), (16.0, 86.0, 14.0), 0))  # closes the view far down the street

    buildings = []
    for k, (lo, hi, axis) in enumerate(boxes):
        span, height = hi[axis] - lo[axis], hi[2]
        tex_path = tex_dir / f"building_{k:02d}.png"
        _facade_texture(rng, span, height).save(tex_path, optimize=False, compress_level=1)
        mesh = _box_mesh(f"Building{k:02d}", lo, hi, axis)
        mesh.materials.append(_textured_material(bpy.data.images.load(str(tex_path))))
        ob = bpy.data.objects.new(f"Building{k:02d}", mesh)
        scene.collection.objects.link(ob)
        buildings.append(ob)

    tex_path = tex_dir / "ground.png"
    _street_ground_texture(rng).save(tex_path, optimize=False, compress_level=1)
    (x0, x1), (y0, y1) = _GROUND_EXTENT
    mesh = bpy.data.meshes.new("Ground")
    mesh.from_pydata([(x0, y0, 0.0), (x1, y0, 0.0), (x1, y1, 0.0), (x0, y1, 0.0)], [], [(0, 1, 2, 3)])
    mesh.uv_layers.new(name="UVMap").data.foreach_set("uv", [0, 0, 1, 0, 1, 1, 0, 1])
    mesh.materials.append(_textured_material(bpy.data.images.load(str(tex_path))))
    ground = bpy.data.objects.new("Ground", mesh)
    scene.collection.objects.link(ground)
    return buildings, ground


def _box_mesh(name: str, lo, hi, axis: int):
    """A box with a quad per side (own vertices, so UVs are per face): faces whose normal is
    horizontal and across ``axis`` carry the facade (u along ``axis`` over its span, v up over
    the height); the box's ends and lid take a strip of it at the same texel size."""
    import bpy

    (x0, y0, z0), (x1, y1, z1) = lo, hi
    quads = [  # counter-clockwise seen from outside
        [(x0, y0, z0), (x0, y0, z1), (x0, y1, z1), (x0, y1, z0)],  # -x
        [(x1, y0, z0), (x1, y1, z0), (x1, y1, z1), (x1, y0, z1)],  # +x
        [(x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1)],  # -y
        [(x0, y1, z0), (x0, y1, z1), (x1, y1, z1), (x1, y1, z0)],  # +y
        [(x0, y0, z1), (x1, y0, z1), (x1, y1, z1), (x0, y1, z1)],  # +z
    ]
    span, height = hi[axis] - lo[axis], z1 - z0
    uvs = []
    for q in quads:
        for x, y, z in q:
            along = (x, y)[axis] - lo[axis] if q is not quads[4] else x - x0
            other = (y, x)[axis] - lo[1 - axis]
            spans_axis = len({(v[0], v[1])[axis] for v in q}) > 1
            u = (along if spans_axis else other) / span
            v = (z - z0) / height if q is not quads[4] else (y - y0) / span
            uvs += [u, v]
    verts = [v for q in quads for v in q]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], [tuple(range(4 * i, 4 * i + 4)) for i in range(len(quads))])
    mesh.uv_layers.new(name="UVMap").data.foreach_set("uv", uvs)
    return mesh


def _noise(rng, shape: tuple[int, int], cells: float, channels: int = 1) -> np.ndarray:
    """Smooth noise in [0, 1] with about ``cells`` features across the longer side."""
    from PIL import Image

    h, w = shape
    ch, cw = max(2, int(round(cells * h / max(h, w)))), max(2, int(round(cells * w / max(h, w))))
    out = np.empty((h, w, channels), np.float32)
    for c in range(channels):
        small = (255 * rng.random((ch, cw))).astype(np.uint8)
        out[:, :, c] = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32) / 255
    return out


def _facade_texture(rng, span: float, height: float):
    """Faintly mottled plaster with sparse stains, a regular grid of windows of one design per
    building (a few curtained differently), and varied shop fronts, doors and signs on the
    ground floor: like a real street, the upper floors repeat and only the plaster, the stains
    and the street level tell one window from the next."""
    from PIL import Image, ImageDraw

    W, H = int(math.ceil(span / _FACADE_TEXEL)), int(math.ceil(height / _FACADE_TEXEL))
    px = 1 / _FACADE_TEXEL
    base = rng.uniform(0.35, 0.85, size=3).astype(np.float32)
    img = np.broadcast_to(base, (H, W, 3)).copy()
    for size_m, weight in ((3.0, 0.08), (0.8, 0.04), (0.25, 0.03), (0.08, 0.02)):
        img += weight * (_noise(rng, (H, W), max(span, height) / size_m, 1) - 0.5)
    img += 0.02 * (_noise(rng, (H, W), max(span, height) / 0.5, 3) - 0.5)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)

    def colour(lo, hi):
        return tuple(int(c) for c in rng.integers(lo, hi, size=3))

    def rect(x0, z0, x1, z1, fill, outline=None, width=1):  # metres, z up -> pixels, rows down
        draw.rectangle((x0 * px, H - z1 * px, x1 * px, H - z0 * px), fill=fill, outline=outline, width=width)

    for _ in range(int(span * height * 0.4)):  # stains, specks
        x, z = rng.uniform(0, span), rng.uniform(0, height)
        rx, rz = np.exp(rng.uniform(np.log(0.03), np.log(0.25), size=2))
        draw.ellipse(((x - rx) * px, H - (z + rz) * px, (x + rx) * px, H - (z - rz) * px), fill=colour(20, 235))

    ground_floor = rng.uniform(3.5, 4.5)
    pitch, win_w, win_h = rng.uniform(2.2, 3.4), rng.uniform(0.9, 1.5), rng.uniform(1.3, 1.9)
    frame = colour(170, 255) if rng.random() < 0.6 else colour(10, 80)
    glass, sky, reflection, glare = colour(15, 90), colour(60, 160), rng.uniform(0.2, 0.8), rng.uniform(0.3, 1.0)
    sills, floor_height = rng.random() < 0.4, rng.uniform(2.8, 3.3)
    x_start = rng.uniform(0.3, pitch)
    z = ground_floor + 0.8
    while z + win_h < height - 0.6:
        x = x_start
        while x + win_w < span - 0.3:
            rect(x - 0.08, z - 0.08, x + win_w + 0.08, z + win_h + 0.08, frame)
            rect(x, z, x + win_w, z + win_h, glass)
            rect(x, z + win_h * reflection, x + win_w * glare, z + win_h, sky)  # the sky reflected
            if rng.random() < 0.15:  # a curtain
                side = rng.random() < 0.5
                cw = win_w * rng.uniform(0.2, 0.5)
                rect(x if side else x + win_w - cw, z, x + cw if side else x + win_w, z + win_h, colour(120, 250))
            rect(x + win_w / 2 - 0.03, z, x + win_w / 2 + 0.03, z + win_h, frame)  # mullion
            if sills:  # a sill box with plants
                rect(x, z - 0.3, x + win_w, z - 0.08, colour(30, 200))
                for _ in range(8):
                    fx, fz = x + rng.uniform(0, win_w), z - rng.uniform(0.08, 0.2)
                    r = rng.uniform(0.04, 0.1)
                    draw.ellipse(((fx - r) * px, H - (fz + r) * px, (fx + r) * px, H - (fz - r) * px),
                                 fill=colour(20, 255))
            x += pitch
        z += floor_height

    x = rng.uniform(0.2, 1.5)  # ground floor: doors and shop windows, some under a sign
    while x < span - 1.2:
        if rng.random() < 0.35:
            w = rng.uniform(1.0, 1.4)
            rect(x, 0.0, x + w, 2.2, colour(30, 140), outline=colour(0, 60), width=3)
            rect(x + w * 0.75, 1.0, x + w * 0.82, 1.1, colour(180, 255))  # handle
        else:
            w = min(rng.uniform(2.0, 4.5), span - x - 0.2)
            rect(x, 0.4, x + w, 2.8, colour(20, 110), outline=colour(100, 255), width=4)
            for _ in range(int(w * 6)):  # goods behind the glass
                gx, gz = x + rng.uniform(0.1, w - 0.1), rng.uniform(0.5, 2.4)
                rect(gx, gz, gx + rng.uniform(0.05, 0.3), gz + rng.uniform(0.05, 0.4), colour(40, 255))
            if rng.random() < 0.7:
                rect(x, 3.0, x + w, 3.5, colour(0, 255))
                lx = x + 0.15
                while lx < x + w - 0.25:  # letters
                    rect(lx, 3.1, lx + rng.uniform(0.08, 0.2), 3.4, colour(0, 255))
                    lx += rng.uniform(0.2, 0.32)
        x += w + rng.uniform(0.4, 1.5)
    return pil


def _street_ground_texture(rng):
    """Asphalt with faint grain, lighter sidewalks along the facades, a dashed centre line and
    sparse stains: little texture underfoot, as on a real street."""
    from PIL import Image, ImageDraw

    (x0, x1), (y0, y1) = _GROUND_EXTENT
    W, H = int(round((x1 - x0) / _GROUND_TEXEL)), int(round((y1 - y0) / _GROUND_TEXEL))
    px = 1 / _GROUND_TEXEL
    xs = x0 + (np.arange(W) + 0.5) * _GROUND_TEXEL
    sidewalk = (np.abs(xs) > _STREET_HALF_WIDTH - _SIDEWALK)[None, :, None]
    img = np.where(sidewalk, np.float32(0.52), np.float32(0.30)) * np.ones((H, W, 3), np.float32)
    img += 0.04 * (_noise(rng, (H, W), (y1 - y0) / 2.0) - 0.5)
    img += 0.05 * (rng.random((H, W, 1), dtype=np.float32) - 0.5)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)

    def to_px(x, y):
        return (x - x0) * px, H - (y - y0) * px  # rows run down, v (north) runs up

    y = y0 + rng.uniform(0, 3)
    while y < y1:  # centre line dashes, slightly irregular
        a, b = to_px(-0.06, y + 3.0), to_px(0.06, y)
        draw.rectangle((a[0], a[1], b[0], b[1]), fill=(200, 200, 190))
        y += rng.uniform(5.5, 6.5)
    for _ in range(int((x1 - x0) * (y1 - y0) * 0.3)):  # stains, patches, gum
        cx, cy = to_px(rng.uniform(x0, x1), rng.uniform(y0, y1))
        r = np.exp(rng.uniform(np.log(0.03), np.log(0.3))) * px
        g = int(rng.integers(40, 170))
        draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r), fill=(g, g, int(g * 0.95)))
    return pil


def _street_poses(params: SceneParams, rng) -> list[tuple[str, np.ndarray]]:
    """A walk north along the street at eye height (1.6 m): uneven steps, a weaving path off the
    centre, the phone turned a little left and right, tilted slightly down, hardly rolled."""
    n = params.views
    phase = rng.uniform(0, 2 * math.pi, size=2)
    poses = []
    for k in range(n):
        y = params.distance * k / max(n - 1, 1) + rng.normal(0, 0.12)
        x = -(_STREET_HALF_WIDTH - 2.5) + 0.2 * math.sin(0.9 * k + phase[0]) + rng.normal(0, 0.06)
        z = 1.6 + rng.normal(0, 0.03)
        yaw = math.radians(2.0 * math.sin(0.55 * k + phase[1]) + rng.normal(0, 1.0))  # + turns left (west)
        pitch = math.radians(-3.0 + rng.normal(0, 1.0))
        roll = math.radians(rng.normal(0, 1.0))
        eye = np.array([x, y, z])
        forward = np.array([-math.sin(yaw) * math.cos(pitch), math.cos(yaw) * math.cos(pitch), math.sin(pitch)])
        M = _look_at(eye, eye + forward)
        c, s = math.cos(roll), math.sin(roll)
        M[:3, :3] = M[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])  # about the view axis
        poses.append((f"street_{k:03d}", M))
    return poses


def _to_matrix(M: np.ndarray):
    from mathutils import Matrix

    return Matrix(M.tolist())


def _vertices(mesh) -> np.ndarray:  # [V, 3]
    co = np.empty(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def _world_triangles(obj) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [V, 3] in world coordinates and triangles [F, 3] of an object's mesh."""
    mesh = obj.data
    mesh.calc_loop_triangles()
    tris = np.empty(len(mesh.loop_triangles) * 3, np.int64)
    mesh.loop_triangles.foreach_get("vertices", tris)
    M = np.array(obj.matrix_world)
    return _vertices(mesh) @ M[:3, :3].T + M[:3, 3], tris.reshape(-1, 3)


def _write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    v = np.asarray(vertices, np.float32)
    write_ply(path, {"x": v[:, 0], "y": v[:, 1], "z": v[:, 2]}, faces)


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.tools.synthetic_scene", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    defaults = SceneParams()
    for field in dataclasses.fields(SceneParams):
        kind = type(getattr(defaults, field.name))
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=_parse_bool if kind is bool else kind,  # bool("False") would be True
            default=getattr(defaults, field.name),
        )
    args = parser.parse_args(argv)
    params = SceneParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SceneParams)})
    info = generate_scene(args.out_dir, params)
    print(f"wrote {args.out_dir}: {len(info['cameras'])} views in {info['seconds']['total']:.1f} s")


if __name__ == "__main__":
    main()
