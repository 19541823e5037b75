"""Ground-truth scenes rendered with Blender (Cycles on the CPU), for measuring the pipeline.

A textured object on a textured ground, photographed from two rings of cameras. Besides
the photos it writes what the pipeline is judged against: the true cameras as a COLMAP
text model (converted with ``blender_addon.shared.camera_math``, the project's one conversion),
the true meshes, object masks, and the .blend for re-rendering.

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
    return info.get("generator_version") == GENERATOR_VERSION and info.get("params") == dataclasses.asdict(params)


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

    started = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    _make_texture(out / "texture.png", params.seed)
    image = bpy.data.images.load(str(out / "texture.png"))
    material = _textured_material(image)

    obj_mesh = _object_mesh()
    _box_project_uvs(obj_mesh)
    obj_mesh.materials.append(material)
    obj = bpy.data.objects.new("Object", obj_mesh)
    scene.collection.objects.link(obj)
    bbox_min, bbox_max = _vertices(obj_mesh).min(axis=0), _vertices(obj_mesh).max(axis=0)  # world = local

    ground_mesh = _ground_mesh(z=float(bbox_min[2]))
    ground_mesh.materials.append(material)
    ground = bpy.data.objects.new("Ground", ground_mesh)
    scene.collection.objects.link(ground)

    _add_lighting(scene)
    _configure_render(scene, params)

    cam_data = bpy.data.cameras.new("Camera")
    cam_data.lens = params.lens
    cameras = []
    for name, matrix in _camera_poses(params):
        cam = bpy.data.objects.new(name, cam_data)
        cam.matrix_world = _to_matrix(matrix)
        scene.collection.objects.link(cam)
        cameras.append(cam)
    scene.camera = cameras[0]

    bpy.context.view_layer.update()
    scene.render.filepath = "//images/"
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "scene.blend"), relative_remap=True)

    for cam in cameras:
        scene.camera = cam
        scene.render.filepath = str(out / "images" / cam.name)
        bpy.ops.render.render(write_still=True)
    photos_done = time.perf_counter()

    _render_masks(scene, ground, out / "masks", cameras)

    render = scene.render
    intrinsics = blender_to_intrinsics(
        BlenderIntrinsics(
            cam_data.lens, cam_data.sensor_width, cam_data.sensor_height, cam_data.sensor_fit,
            cam_data.shift_x, cam_data.shift_y, render.resolution_x, render.resolution_y,
            render.pixel_aspect_x, render.pixel_aspect_y,
        )  # fmt: skip
    )
    poses = [blender_matrix_to_colmap(cam.matrix_world) for cam in cameras]
    write_text_model(out / "gt_colmap", {1: ("PINHOLE", params.width, params.height, list(intrinsics))},
                     [(i, R, t, 1, f"{c.name}.png") for i, ((R, t), c) in enumerate(zip(poses, cameras), start=1)])

    obj_v, obj_f = _world_triangles(obj)
    ground_v, ground_f = _world_triangles(ground)
    _write_ply(out / "gt_object.ply", obj_v, obj_f)
    _write_ply(out / "gt_scene.ply", np.concatenate([obj_v, ground_v]), np.concatenate([obj_f, ground_f + len(obj_v)]))

    info = {
        "generator_version": GENERATOR_VERSION,
        "params": dataclasses.asdict(params),
        "object_bbox": {
            "min": bbox_min.tolist(),
            "max": bbox_max.tolist(),
            "diagonal": float(np.linalg.norm(bbox_max - bbox_min)),
        },
        "ground_z": float(bbox_min[2]),
        "cameras": [cam.name for cam in cameras],
        "images": [f"images/{cam.name}.png" for cam in cameras],
        "masks": [f"masks/{cam.name}.png" for cam in cameras],
        "intrinsics": dict(zip(("fx", "fy", "cx", "cy"), map(float, intrinsics))),
        "blender_version": bpy.app.version_string,
        "seconds": {"photos": photos_done - started, "total": time.perf_counter() - started},
    }
    (out / "scene.json").write_text(json.dumps(info, indent=2))
    return info


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


def _add_lighting(scene) -> None:
    """A high sun plus a bright uniform sky: every surface lit, shadows soft and never black."""
    import bpy

    world = bpy.data.worlds.new("Sky")
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.5, 0.5, 0.5, 1.0)
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
    """Blender camera-to-world matrices on two rings around the origin, looking at it."""
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


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Blender camera matrix at ``eye`` looking at ``target`` (local -Z forward, +Y up, world +Z up)."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = right, up, -forward, eye
    return M


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.tools.synthetic_scene", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    defaults = SceneParams()
    for field in dataclasses.fields(SceneParams):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
        )
    args = parser.parse_args(argv)
    params = SceneParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SceneParams)})
    info = generate_scene(args.out_dir, params)
    print(f"wrote {args.out_dir}: {len(info['cameras'])} views in {info['seconds']['total']:.1f} s")


if __name__ == "__main__":
    main()
