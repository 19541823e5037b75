"""Colored point clouds: numpy arrays in, a Blender object that shows colored points out.

The object is a mesh of loose vertices (bulk-filled with ``foreach_set``) with a color
attribute on the point domain. A shared geometry nodes group turns the vertices into
real points with a radius (the modifier's "Point Size") and gives them a material that
shows the color attribute unlit, as photogrammetry colors already contain the lighting.
Points stay in COLMAP's world coordinates, which are Blender's world coordinates too
(only camera frames differ; see camera_math).

Solid mode cannot show per-point colors: Blender 5.0's workbench draws point clouds in
their material's viewport color only (its "Attribute" color type works for meshes), so
the colors show in Material Preview, Rendered, and Cycles/EEVEE renders.
"""

from dataclasses import dataclass

import bpy
import numpy as np

from .datablocks import node_group, node_material

COLOR_ATTRIBUTE = "Color"
NODE_GROUP = "Reconstruct Points"
MATERIAL = "Reconstruct Points"
MODIFIER = "Reconstruct Points"
POINT_SIZE = "Point Size"
# Bumped when the node group or material changes, so files with an older one get a new one.
TAG, _VERSION = "reconstruct_points_version", 2  # 2: no half-built v1 (Blender 4.x) is reused
_SLICE = 1 << 18  # rows per numpy call when converting large arrays


@dataclass
class PointsData:
    """A cloud ready for Blender: flat float32 arrays that ``foreach_set`` takes as they are.
    Made by :func:`prepare_points` (numpy only, so any thread may make it)."""

    xyz: np.ndarray  # [N * 3] float32
    rgba: np.ndarray | None  # [N * 4] float32 scene-linear, or None (no colors)

    def __len__(self) -> int:
        return len(self.xyz) // 3


def prepare_points(xyz: np.ndarray, rgb: np.ndarray | None) -> PointsData:
    """The numpy half of :func:`import_points`: checks and conversions, no bpy."""
    xyz = np.ascontiguousarray(xyz, dtype=np.float32).reshape(-1, 3)
    n = len(xyz)
    if rgb is not None and np.shape(rgb) != (n, 3):
        raise ValueError(f"{n} points but colors of shape {np.shape(rgb)}; expected ({n}, 3)")
    return PointsData(xyz.ravel(), None if rgb is None else linear_rgba(rgb).ravel())


def import_points(
    name: str,
    xyz: np.ndarray,  # [N, 3] float
    rgb: np.ndarray | None,  # [N, 3] uint8 (0..255) or float (0..1), sRGB as photos store it
    collection: bpy.types.Collection,
    point_size: float = 0.01,
) -> bpy.types.Object:
    """A point cloud object named ``name`` linked into ``collection``; ``point_size`` is the radius."""
    return build_points(name, prepare_points(xyz, rgb), collection, point_size)


def build_points(name: str, data: PointsData, collection: bpy.types.Collection,
                 point_size: float = 0.01) -> bpy.types.Object:
    """The bpy half of :func:`import_points` (main thread): datablocks from prepared arrays."""
    n = len(data)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    if n:  # an empty mesh has no "position" attribute yet
        mesh.attributes["position"].data.foreach_set("vector", data.xyz)

    attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    if n and data.rgba is not None:
        attr.data.foreach_set("color", data.rgba)
    mesh.color_attributes.active_color = attr
    mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    mesh.update()

    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    modifier = obj.modifiers.new(MODIFIER, "NODES")
    modifier.node_group = points_node_group()
    set_point_size(obj, point_size)
    return obj


def set_point_size(obj: bpy.types.Object, size: float) -> None:
    """Set the radius of the points drawn for a cloud made by :func:`import_points`."""
    modifier = obj.modifiers.get(MODIFIER)
    if modifier is None or modifier.node_group is None:
        raise ValueError(f"{obj.name!r} is not a point cloud imported by Reconstruct")
    modifier[_input_identifier(modifier.node_group, POINT_SIZE)] = float(size)
    obj.update_tag()


def get_point_size(obj: bpy.types.Object) -> float:
    modifier = obj.modifiers[MODIFIER]
    return float(modifier[_input_identifier(modifier.node_group, POINT_SIZE)])


def linear_rgba(rgb: np.ndarray) -> np.ndarray:
    """[N, 4] float32 scene-linear RGBA (alpha 1) from sRGB colors, as Blender's color attributes store them.
    Converted in slices, so a thread doing this for millions of points lets the main thread run between
    them (numpy holds the GIL through a fancy-indexing call)."""
    rgb = np.asarray(rgb).reshape(-1, 3)
    rgba = np.ones((len(rgb), 4), np.float32)
    for start in range(0, len(rgb), _SLICE):
        part = rgb[start:start + _SLICE]
        if rgb.dtype == np.uint8:
            rgba[start:start + _SLICE, :3] = _SRGB_TO_LINEAR_U8[part]  # a table lookup: 256 values
        else:
            rgba[start:start + _SLICE, :3] = srgb_to_linear(np.clip(part.astype(np.float32), 0.0, 1.0))
    return rgba


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


_SRGB_TO_LINEAR_U8 = srgb_to_linear(np.arange(256, dtype=np.float64) / 255.0)


def points_node_group() -> bpy.types.GeometryNodeTree:
    """The shared "Reconstruct Points" geometry nodes group, created on first use."""
    return node_group(NODE_GROUP, TAG, _VERSION, _build_points_group)


def _build_points_group(group: bpy.types.GeometryNodeTree) -> None:
    group.description = "Shows a Reconstruct point cloud as colored points"
    interface = group.interface
    interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    size = interface.new_socket(POINT_SIZE, in_out="INPUT", socket_type="NodeSocketFloat")
    size.subtype = "DISTANCE"
    size.default_value = 0.01
    size.min_value = 0.0
    size.description = "Radius of each point"
    interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes, links = group.nodes, group.links
    group_in = nodes.new("NodeGroupInput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    to_points.mode = "VERTICES"
    set_material = nodes.new("GeometryNodeSetMaterial")
    set_material.inputs["Material"].default_value = points_material()
    group_out = nodes.new("NodeGroupOutput")
    for i, node in enumerate((group_in, to_points, set_material, group_out)):
        node.location = (220 * i, 0)
    links.new(group_in.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(group_in.outputs[POINT_SIZE], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], set_material.inputs["Geometry"])
    links.new(set_material.outputs["Geometry"], group_out.inputs["Geometry"])


def points_material() -> bpy.types.Material:
    """The shared material that shows the points' color attribute as emitted (unlit) color."""
    return node_material(MATERIAL, TAG, _VERSION, _build_points_material)


def _build_points_material(tree: bpy.types.ShaderNodeTree) -> None:
    nodes = tree.nodes
    attribute = nodes.new("ShaderNodeAttribute")
    attribute.attribute_type = "GEOMETRY"
    attribute.attribute_name = COLOR_ATTRIBUTE
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Strength"].default_value = 1.0
    output = nodes.new("ShaderNodeOutputMaterial")
    for i, node in enumerate((attribute, emission, output)):
        node.location = (240 * i, 0)
    tree.links.new(attribute.outputs["Color"], emission.inputs["Color"])
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])


def _input_identifier(group: bpy.types.NodeTree, name: str) -> str:
    for item in group.interface.items_tree:
        if item.item_type == "SOCKET" and item.in_out == "INPUT" and item.name == name:
            return item.identifier
    raise ValueError(f"node group {group.name!r} has no input {name!r}")
