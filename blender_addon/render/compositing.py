"""F12 renders the splats: before each frame a render handler draws the
render-visible splat objects from the scene's camera (splat_raster.py, on
the CPU) into two images, and a "Reconstruct Splats" node in the scene's
compositor lays them over the render by depth (a Z Combine of the splats'
colour and mean depth against the render's Image and Depth passes).

So a mesh in front of splats hides them and splats in front of a mesh cover
it, with EEVEE, Cycles or any engine that writes a Depth pass. The limits of
compositing (written in the README too): the splats are one layer with one
depth per pixel, so a pixel whose splats straddle a mesh shows them all in
front or none; they cast no shadows and show in no reflection or refraction;
motion blur and depth of field do not apply to them; and they are drawn for
the frame's own camera and time only.

The node is added when a job's splats are imported (it keeps the user's own
compositor nodes, rewiring only the Render Layers' Image and Depth through
it); muting or deleting it turns the splats off in renders, as does hiding a
splat object from renders.
"""
from __future__ import annotations

import threading

import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import splat_raster

NODE = "Reconstruct Splats"  # the group node in the scene's compositor, and its node group
TAG, _VERSION = "reconstruct_splat_compositing", 1
COLOUR_IMAGE, DEPTH_IMAGE = "Reconstruct Splats colour", "Reconstruct Splats depth"
FAR = 1e10  # depth where no splat is: behind everything (Cycles' depth of the background)
_BLENDER_5 = bpy.app.version >= (5, 0, 0)


def compositor_tree(scene: bpy.types.Scene, create: bool = True):
    """The scene's compositor node tree (made with Render Layers -> output when there is none)."""
    if _BLENDER_5:
        tree = scene.compositing_node_group
        if tree is None and create:
            tree = bpy.data.node_groups.new("Compositing", "CompositorNodeTree")
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
            layers, out = tree.nodes.new("CompositorNodeRLayers"), tree.nodes.new("NodeGroupOutput")
            out.location = (400, 0)
            tree.links.new(layers.outputs["Image"], out.inputs[0])
            scene.compositing_node_group = tree
        return tree
    if not scene.use_nodes and create:
        scene.use_nodes = True  # Blender fills a new tree with Render Layers -> Composite
    return scene.node_tree if scene.use_nodes else None


def _image(name: str) -> bpy.types.Image:
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.new(name, 4, 4, alpha=True, float_buffer=True)
    return image


def splat_group() -> bpy.types.NodeTree:
    """The node group (Image, Depth) -> (Image, Depth) that lays the splat layer over a render."""
    from ..importers.datablocks import find_tagged

    group = find_tagged(bpy.data.node_groups, TAG, _VERSION)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(NODE, "CompositorNodeTree")
    group.description = "Lays Reconstruct's splats over the render by depth (drawn before each frame)"
    for in_out in ("INPUT", "OUTPUT"):
        group.interface.new_socket("Image", in_out=in_out, socket_type="NodeSocketColor")
        group.interface.new_socket("Depth", in_out=in_out, socket_type="NodeSocketFloat")
    nodes, links = group.nodes, group.links
    inputs, outputs = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    colour, depth = nodes.new("CompositorNodeImage"), nodes.new("CompositorNodeImage")
    colour.image, depth.image = _image(COLOUR_IMAGE), _image(DEPTH_IMAGE)
    combine = nodes.new("CompositorNodeZcombine")
    # Alpha: the splats mix over what lies behind them by their coverage. No anti-aliasing of
    # the depth edges: it blurs the splats' straight colours (large where their alpha is tiny)
    # into their neighbours, and the renders' own mesh edges are anti-aliased already.
    if _BLENDER_5:  # the options became inputs
        combine.inputs["Use Alpha"].default_value = True
        combine.inputs["Anti-Alias"].default_value = False
    else:
        combine.use_alpha, combine.use_antialias_z = True, False
    inputs.location, colour.location, depth.location = (-400, 0), (-400, 300), (-400, -300)
    outputs.location = (300, 0)
    links.new(colour.outputs["Image"], combine.inputs[0])  # the splats: straight colour and alpha
    links.new(depth.outputs["Image"], combine.inputs[1])
    links.new(inputs.outputs["Image"], combine.inputs[2])
    links.new(inputs.outputs["Depth"], combine.inputs[3])
    links.new(combine.outputs[0], outputs.inputs["Image"])
    links.new(combine.outputs[1], outputs.inputs["Depth"])
    group[TAG] = _VERSION
    return group


def ensure_compositing(scene: bpy.types.Scene) -> bpy.types.Node | None:
    """Put the Reconstruct Splats node into `scene`'s compositor (once): the
    Render Layers' Image and Depth go through it to wherever they went."""
    tree = compositor_tree(scene)
    existing = tree.nodes.get(NODE)
    if existing is not None:
        return existing
    layers = next((n for n in tree.nodes if n.type == "R_LAYERS"), None)
    if layers is None:
        print(f"Reconstruct: the compositor of {scene.name!r} has no Render Layers node; "
              "splats will not show in its renders")
        return None
    view_layer = scene.view_layers.get(layers.layer) or scene.view_layers[0]
    view_layer.use_pass_z = True
    node = tree.nodes.new("CompositorNodeGroup")
    node.node_tree = splat_group()
    node.name = node.label = NODE
    node.location = (layers.location.x + 300, layers.location.y + 150)
    for socket in ("Image", "Depth"):
        for link in [link for link in tree.links if link.from_node == layers and link.from_socket.name == socket]:
            target = link.to_socket
            tree.links.remove(link)
            tree.links.new(node.outputs[socket], target)
        tree.links.new(layers.outputs[socket], node.inputs[socket])
    return node


# Drawing the layer before each frame ---------------------------------------------------

def render_splat_objects(scene: bpy.types.Scene, view_layer=None):
    """The scene's splat objects that renders include (their own and their collections'
    render toggles on, in the view layer)."""
    from ..importers import splats as imported

    view_layer = view_layer or scene.view_layers[0]
    in_layer = {o.as_pointer() for o in view_layer.objects}
    for obj in scene.objects:
        if obj.type == "MESH" and obj.get(imported.KIND_KEY) and not obj.hide_render \
                and obj.as_pointer() in in_layer and all(not c.hide_render for c in _collections_above(scene, obj)):
            yield obj


def _collections_above(scene, obj):
    parents = {}
    for parent in [scene.collection, *scene.collection.children_recursive]:
        for child in parent.children:
            parents[child.name] = parent
    for collection in obj.users_collection:
        while collection is not None and collection != scene.collection:
            yield collection
            collection = parents.get(collection.name)


def render_camera(scene: bpy.types.Scene, camera: bpy.types.Object) -> tuple[np.ndarray, splat_raster.Pinhole]:
    """(world -> camera [4, 4] in the look-down-+z convention, the pinhole) of
    `camera` at the scene's render size."""
    from ..shared.camera_math import blender_matrix_to_colmap, render_intrinsics

    fx, fy, cx, cy, width, height = render_intrinsics(scene.render, camera.data)
    R, t = blender_matrix_to_colmap(np.array(camera.matrix_world, np.float64))
    view = np.eye(4)
    view[:3, :3], view[:3, 3] = R, t
    return view, splat_raster.Pinhole(fx, fy, cx, cy, width, height)


def _frame(scene: bpy.types.Scene, depsgraph=None):
    """(world -> camera, pinhole, [(object, object -> camera)]) of the frame about to
    be rendered, from `depsgraph`'s evaluated objects where one is given."""
    evaluated = (lambda o: o.evaluated_get(depsgraph)) if depsgraph is not None else (lambda o: o)
    if scene.camera.type != "CAMERA":
        raise ValueError(f"the scene camera {scene.camera.name!r} is not a camera")
    camera = evaluated(scene.camera)
    if camera.data.type != "PERSP":
        raise ValueError(f"camera {scene.camera.name!r} is {camera.data.type.lower()}: "
                         "splats are drawn for perspective cameras only")
    world_to_camera, pinhole = render_camera(scene, camera)
    views = [(obj, (world_to_camera @ np.array(evaluated(obj).matrix_world, np.float64))[:3])
             for obj in render_splat_objects(scene, depsgraph.view_layer if depsgraph is not None else None)]
    return world_to_camera, pinhole, views


def draw_splat_layer(scene: bpy.types.Scene, depsgraph=None, drawn: tuple | None = None) -> tuple | None:
    """Draw the splat layer of `scene`'s next frame into the node's images, unless
    the frame is `drawn` (what an earlier call returned: the camera, the size and
    the splat objects' places). Nothing when the scene has no active Reconstruct
    Splats node or no camera."""
    from ..importers.points import srgb_to_linear
    from ..viewport.splat_draw import drawn_splats

    tree = compositor_tree(scene, create=False)
    node = tree.nodes.get(NODE) if tree is not None else None
    if node is None or node.mute or scene.camera is None:
        return None
    world_to_camera, pinhole, views = _frame(scene, depsgraph)
    key = (pinhole, np.round(world_to_camera, 9).tobytes(),
           tuple((obj.name, len(obj.data.vertices), np.round(view, 9).tobytes()) for obj, view in views))
    if key == drawn:
        return key
    layer = splat_raster.render([splat_raster.project(drawn_splats(obj).arrays, view, pinhole)
                                 for obj, view in views], pinhole)
    # The compositor works in scene-linear light; the splats hold the photos' (sRGB) values. Their
    # premultiplied colour is converted, so over black the render shows exactly the splats' values,
    # and handed to Z Combine as straight colour (it mixes by the alpha).
    alpha = layer.alpha[..., None]
    linear = srgb_to_linear(np.clip(layer.rgb, 0.0, 1.0))
    straight = np.divide(linear, alpha, out=np.zeros_like(linear), where=alpha > 0)
    _fill(_image(COLOUR_IMAGE), np.concatenate([straight, alpha], -1))
    depth = np.where(np.isfinite(layer.depth), layer.depth, FAR)[..., None]
    _fill(_image(DEPTH_IMAGE), np.concatenate([np.repeat(depth, 3, -1), np.ones_like(depth)], -1))
    return key


def _fill(image: bpy.types.Image, rgba: np.ndarray) -> None:
    height, width = rgba.shape[:2]
    if tuple(image.size) != (width, height):
        # A new image of the frame's size takes the old one's place (the compositor keeps
        # reading a generated image's first buffer after Image.scale).
        name, fresh = image.name, bpy.data.images.new(image.name + " new", width, height, alpha=True,
                                                       float_buffer=True)
        image.user_remap(fresh)
        bpy.data.images.remove(image)
        fresh.name = name
        image = fresh
    image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1], np.float32).ravel())  # Blender: bottom row first
    image.update()
    image.update_tag()  # the compositor caches images until their datablock is tagged


# When to draw. render_pre runs before the render pipeline has evaluated the frame, so the
# scene's objects may still stand where the last frame (or the last edit) left them; the
# pipeline's own frame_change_post comes after it, with the frame's evaluated depsgraph, and
# before the engine and the compositor run. So a frame is drawn in render_pre and drawn again
# in the render's frame_change_post when the camera or a splat object has moved since; once a
# render job has shown it has those calls (an animation's frames), render_pre leaves it to them.
_JOBS: dict[str, dict] = {}  # scene name -> the render under way: thread, its calls seen, what is drawn


def _draw(scene, depsgraph=None, drawn=None):
    try:
        return draw_splat_layer(scene, depsgraph, drawn)
    except (ValueError, MemoryError) as error:  # a render handler can only say so on the console
        print(f"Reconstruct: the splats are left out of this render: {error}")
        return drawn


@persistent
def _render_init(scene, *_args) -> None:
    _JOBS[scene.name] = {"thread": threading.get_ident(), "frame_calls": False, "drawn": None}


@persistent
def _render_pre(scene, *_args) -> None:
    job = _JOBS.setdefault(scene.name, {"thread": threading.get_ident(), "frame_calls": False, "drawn": None})
    if not job["frame_calls"]:
        job["drawn"] = _draw(scene)


@persistent
def _frame_change_post(scene, depsgraph=None) -> None:
    job = _JOBS.get(scene.name)
    # Only the render's own call: the UI's (a user scrubbing the timeline meanwhile) is on another thread.
    if job is None or depsgraph is None or job["thread"] != threading.get_ident():
        return
    job["frame_calls"] = True
    job["drawn"] = _draw(scene, depsgraph, job["drawn"])


@persistent
def _render_end(scene, *_args) -> None:
    _JOBS.pop(scene.name, None)


_HANDLERS = (("render_init", _render_init), ("render_pre", _render_pre), ("frame_change_post", _frame_change_post),
             ("render_complete", _render_end), ("render_cancel", _render_end))


def register() -> None:
    for name, handler in _HANDLERS:
        if handler not in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).append(handler)


def unregister() -> None:
    for name, handler in _HANDLERS:
        if handler in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).remove(handler)
    _JOBS.clear()
