"""Gaussian splats in the 3D viewport: the job's splat objects drawn as
screen-space Gaussians (splat_shader.py) by a POST_VIEW draw handler, so they
show in Solid and Material Preview, follow their object's transform and
visibility, and are hidden by meshes in front of them (the scene's depth).

The splats are read once from their object's attributes (or handed over by the
importer) into numpy, uploaded as textures the first time they are drawn, and
sorted back to front on a worker thread whenever the view moves: the viewport
keeps drawing the last order meanwhile, so orbiting a few million splats never
waits for a sort. The object's "Density" (the share of splats shown) draws a
fixed random subset, the level of detail for large captures.

Colours: the shader writes the photos' own values (what the backend's render
shows); the viewport shows them as they are.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import bpy
import numpy as np

from . import splat_shader

SHOW_PROP = "reconstruct_show_splats"  # per-object toggle (the sidebar's), on by default
_CACHE: dict[int, "DrawnSplats"] = {}  # by mesh pointer
_UNDRAWABLE: set[int] = set()  # meshes too large for this GPU's textures (said once on the console)
_HANDLER = None
_SHADER = None
_BATCH = None


@dataclass
class SplatArrays:
    """One object's splats for drawing, in its local coordinates."""

    means: np.ndarray  # [N, 3]
    opacity: np.ndarray  # [N] 0..1
    scale: np.ndarray  # [N, 3] standard deviations
    rotation: np.ndarray  # [N, 4] (w, x, y, z)
    sh: list[np.ndarray]  # [N] each: the SH properties in splat_ply.sh_property_names's order

    def __len__(self) -> int:
        return len(self.opacity)


@dataclass
class DrawnSplats:
    """A splat object's arrays, textures and current back-to-front order."""

    arrays: SplatArrays
    shuffle: np.ndarray  # a fixed random order: the first `density` share of it is drawn
    textures: dict = field(default_factory=dict)
    order_key: tuple | None = None  # the view (rounded) and count the order texture was sorted for
    pending: tuple | None = None  # (key, thread, result list) of a sort under way
    drawn: int = 0


def _texture(values: np.ndarray, texels: int):
    """An RGBA32F texture of TEXTURE_WIDTH columns holding `values` (texels * 4
    floats, zero-padded to whole rows)."""
    import gpu

    width = splat_shader.TEXTURE_WIDTH
    rows = max(1, -(-texels // width))
    limit = gpu.capabilities.max_texture_size_get()
    if rows > limit:
        raise ValueError(f"{texels:,} texels of splat data do not fit this GPU's {limit}-row textures")
    flat = np.zeros(rows * width * 4, np.float32)
    flat[:values.size] = values.ravel()
    return gpu.types.GPUTexture((width, rows), format="RGBA32F", data=gpu.types.Buffer("FLOAT", flat.size, flat))


def _order_texture(order: np.ndarray):
    """Draw position -> splat index, as floats (exact below 2^24 splats), packed 4 per texel."""
    return _texture(order.astype(np.float32), -(-len(order) // 4)), len(order)


def _upload(drawn: DrawnSplats) -> None:
    a = drawn.arrays
    n, k = len(a), len(a.sh) // 3
    stride = splat_shader.sh_texels(k)
    sh = np.zeros((n, stride * 4), np.float32)  # per splat: coefficient after coefficient, RGB each
    for c in range(3):
        sh[:, c] = a.sh[c]
        for j in range(1, k):
            sh[:, 3 * j + c] = a.sh[3 + c * (k - 1) + j - 1]
    drawn.textures = {
        "mean_opacity": _texture(np.concatenate([a.means, a.opacity[:, None]], 1), n),
        "rotation": _texture(a.rotation, n),
        "scale": _texture(np.concatenate([a.scale, np.zeros((n, 1), np.float32)], 1), n),
        "sh": _texture(sh, n * stride),
        "sh_count": k, "sh_stride": stride,
    }


def depth_order(means: np.ndarray, subset: np.ndarray, modelview: np.ndarray) -> np.ndarray:
    """The splats of `subset` far to near in the view `modelview` (4x4, object to view)."""
    z = means[subset] @ modelview[2, :3] + modelview[2, 3]  # view space looks down -z: most negative is farthest
    return subset[np.argsort(z, kind="stable")]


def _shown(drawn: DrawnSplats, density: float) -> np.ndarray:
    count = int(round(len(drawn.arrays) * min(max(density, 0.0), 1.0)))
    return drawn.shuffle[:count]


def _view_key(modelview: np.ndarray, count: int) -> tuple:
    return (count, *np.round(modelview[:3].ravel(), 4))


def draw_splats(drawn: DrawnSplats, model_view, projection, viewport: tuple[int, int], density: float = 1.0,
                wait: bool = False) -> bool:
    """Draw `drawn` into the bound framebuffer with the current depth buffer
    (4x4 matrices: object -> view and view -> clip; viewport in pixels).
    A new view starts a sort on a thread and draws the last order meanwhile
    (`wait`: sort here first, for off-screen renders). Returns whether the
    order drawn is the view's own."""
    import gpu

    global _SHADER, _BATCH
    if _SHADER is None:
        from gpu_extras.batch import batch_for_shader

        _SHADER = splat_shader.create_shader()
        _BATCH = batch_for_shader(_SHADER, "TRIS", {"corner": [(-1, -1), (1, -1), (1, 1), (-1, -1), (1, 1), (-1, 1)]})
    if not drawn.textures:
        _upload(drawn)
    modelview = np.array(model_view, np.float64)
    subset = _shown(drawn, density)
    key = _view_key(modelview, len(subset))
    if key != drawn.order_key:
        if wait:
            drawn.pending = None
            _install_order(drawn, key, depth_order(drawn.arrays.means, subset, modelview))
        elif drawn.pending is not None and not drawn.pending[1].is_alive():
            _install_order(drawn, drawn.pending[0], drawn.pending[2][0])
            drawn.pending = None
        if key != drawn.order_key and drawn.pending is None:
            drawn.pending = _start_sort(drawn, key, subset, modelview)
    if "order" not in drawn.textures:
        return False
    t = drawn.textures
    camera = np.linalg.inv(modelview)[:3, 3]
    shader = _SHADER
    shader.bind()
    shader.uniform_float("modelview", model_view)
    shader.uniform_float("projection", projection)
    block = splat_shader.view_block(camera, t["sh_count"], viewport[0], viewport[1], t["sh_stride"])
    view = gpu.types.GPUUniformBuf(gpu.types.Buffer("FLOAT", len(block), block))
    shader.uniform_block("view", view)
    for name in ("order", "mean_opacity", "rotation", "scale", "sh"):
        shader.uniform_sampler(name, t[name][0] if name == "order" else t[name])
    gpu.state.blend_set("ALPHA")
    gpu.state.depth_test_set("LESS_EQUAL")
    gpu.state.depth_mask_set(False)
    _BATCH.draw_instanced(shader, instance_start=0, instance_count=t["order"][1])
    gpu.state.blend_set("NONE")
    gpu.state.depth_test_set("NONE")
    drawn.drawn = t["order"][1]
    return key == drawn.order_key


def _install_order(drawn: DrawnSplats, key: tuple, order: np.ndarray) -> None:
    drawn.textures["order"] = _order_texture(order)
    drawn.order_key = key


def _start_sort(drawn: DrawnSplats, key: tuple, subset: np.ndarray, modelview: np.ndarray) -> tuple:
    result: list = []
    means = drawn.arrays.means
    # numpy's argsort releases the GIL, so Blender's UI keeps running while it sorts.
    thread = threading.Thread(target=lambda: result.append(depth_order(means, subset, modelview)), daemon=True)
    thread.start()
    bpy.app.timers.register(lambda: _redraw_when_done(thread), first_interval=0.02)
    return key, thread, result


def _redraw_when_done(thread: threading.Thread) -> float | None:
    if thread.is_alive():
        return 0.02
    for window in getattr(bpy.context.window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
    return None


# Reading the splats of an object -------------------------------------------------------

def arrays_of(mesh: bpy.types.Mesh) -> SplatArrays:
    """The splats an imported splat object holds (see importers/splats.py)."""
    from ..importers import splats as imported

    n = len(mesh.vertices)

    def get(name, width):
        attr = mesh.attributes[name]
        out = np.empty(n * width, np.float32)
        attr.data.foreach_get("vector" if attr.data_type == "FLOAT_VECTOR" else "value", out)
        return out.reshape(n, width) if width > 1 else out

    means = np.empty(n * 3, np.float32)
    mesh.attributes["position"].data.foreach_get("vector", means)
    return SplatArrays(means.reshape(n, 3), get(imported.OPACITY, 1), get(imported.SCALE, 3),
                       get(imported.ROTATION, 4), [get(name, 1) for name in imported.sh_attribute_names(mesh)])


def remember(obj: bpy.types.Object, arrays: SplatArrays) -> DrawnSplats:
    """Keep `arrays` as what `obj` draws (the importer has them already: no read back)."""
    shuffle = np.random.default_rng(0).permutation(len(arrays)).astype(np.int64)
    drawn = DrawnSplats(arrays, shuffle)
    # Forget meshes that are gone (a rerun replaces the job's splats): their arrays and textures
    # are large, and a freed mesh's pointer may be reused.
    alive = {mesh.as_pointer() for mesh in bpy.data.meshes}
    for pointer in [p for p in _CACHE if p not in alive]:
        del _CACHE[pointer]
    _CACHE[obj.data.as_pointer()] = drawn
    return drawn


def drawn_splats(obj: bpy.types.Object) -> DrawnSplats:
    drawn = _CACHE.get(obj.data.as_pointer())
    if drawn is None or len(drawn.arrays) != len(obj.data.vertices):
        drawn = remember(obj, arrays_of(obj.data))
    return drawn


def splat_objects(scene: bpy.types.Scene, view_layer=None):
    """The scene's visible splat objects whose viewport drawing is on."""
    from ..importers import splats as imported

    for obj in scene.objects:
        if obj.type == "MESH" and obj.get(imported.KIND_KEY) and obj.get(SHOW_PROP, True) \
                and obj.visible_get(view_layer=view_layer):
            yield obj


def draw_object(obj: bpy.types.Object, view_matrix, projection, viewport, wait: bool = False) -> bool:
    from ..importers.splats import display_density

    model_view = view_matrix @ obj.matrix_world
    return draw_splats(drawn_splats(obj), model_view, projection, viewport, display_density(obj), wait=wait)


def _draw_callback() -> None:
    import gpu

    context = bpy.context
    region, rv3d = context.region, context.region_data
    if region is None or rv3d is None:
        return
    for obj in splat_objects(context.scene, context.view_layer):
        if obj.data.as_pointer() in _UNDRAWABLE:
            continue
        try:
            draw_object(obj, rv3d.view_matrix, rv3d.window_matrix, (region.width, region.height))
        except ValueError as error:  # too many splats for this GPU: say so once, draw the rest
            # (a draw callback may not write to the object, so the refusal is kept here)
            _UNDRAWABLE.add(obj.data.as_pointer())
            print(f"Reconstruct: {obj.name} is not drawn in the viewport: {error}. "
                  "Its ellipsoids (sidebar > Splats) still show it.")
    gpu.state.blend_set("NONE")


def register() -> None:
    global _HANDLER
    if _HANDLER is None and not bpy.app.background:
        _HANDLER = bpy.types.SpaceView3D.draw_handler_add(_draw_callback, (), "WINDOW", "POST_VIEW")


def unregister() -> None:
    global _HANDLER, _SHADER, _BATCH
    if _HANDLER is not None:
        bpy.types.SpaceView3D.draw_handler_remove(_HANDLER, "WINDOW")
    _HANDLER = _SHADER = _BATCH = None
    _CACHE.clear()
    _UNDRAWABLE.clear()


def render_offscreen(objects, view_matrix, projection, width: int, height: int) -> np.ndarray:
    """[H, W, 4] float RGBA (premultiplied, over transparent black; top row
    first) of `objects`' splats drawn off-screen as the viewport draws them,
    each sorted for this view first."""
    import gpu

    offscreen = gpu.types.GPUOffScreen(width, height, format="RGBA32F")
    try:
        with offscreen.bind():
            framebuffer = gpu.state.active_framebuffer_get()
            framebuffer.clear(color=(0.0, 0.0, 0.0, 0.0), depth=1.0)
            gpu.state.viewport_set(0, 0, width, height)
            for obj in objects:
                draw_object(obj, view_matrix, projection, (width, height), wait=True)
            pixels = framebuffer.read_color(0, 0, width, height, 4, 0, "FLOAT")
            pixels.dimensions = width * height * 4
            rgba = np.array(pixels, np.float32).reshape(height, width, 4)
    finally:
        offscreen.free()
    return rgba[::-1].copy()
