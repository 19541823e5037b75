"""Gaussian splats: a splat_ply.Splats in, a Blender object that shows and renders them out.

The object is a mesh of loose vertices (one per splat, bulk-filled) with the splats'
attributes on the point domain: ``Color`` (scene-linear, from the degree-0 term),
``opacity`` (0..1), ``scale`` (the Gaussian's standard deviations), ``rotation``
(a quaternion) and the spherical harmonics as the file holds them, one float
attribute per property under the file's names (``f_dc_0..2``, ``f_rest_0..44`` for
degree 3), as other splat tools name them.

The viewport draws the splats as Gaussians (viewport/splat_draw.py). A shared
geometry nodes group is the editable, exportable representation: it instances a
small ellipsoid on each point, oriented and stretched by them, and keeps a random
``Density`` fraction of the splats (the viewport drawing keeps the same share). It
is off in the viewport (the Gaussians show there instead) and on in renders, where
a shared material shows the colour unlit, mixed with transparency by the opacity:
ellipsoids at ``Size`` standard deviations with uniform opacity, a display of the
splats, not the splatting renderer.
"""

from dataclasses import dataclass

import bpy
import numpy as np

from ..shared.splat_math import MAX_SH_DEGREE
from ..shared.splat_ply import Splats, sh_property_names
from ..viewport import splat_draw
from .datablocks import node_group, node_material
from .points import COLOR_ATTRIBUTE, _input_identifier, linear_rgba

NODE_GROUP = MODIFIER = MATERIAL = "Reconstruct Splats"
DENSITY, SIZE = "Density", "Size"
OPACITY, SCALE, ROTATION = "opacity", "scale", "rotation"
KIND_KEY = "reconstruct_splats"  # marks a splat object (the viewport draws these)
# The custom property that marks our node groups and materials (with their version,
# bumped when they change, so files with an older one get a new one); also how the
# previews tell our viewport aids.
TAG, _VERSION = "reconstruct_splats_version", 2  # 2: no half-built v1 (Blender 4.x) is reused


@dataclass
class SplatsData:
    """Splats ready for Blender: flat float32 arrays that ``foreach_set`` takes as they are.
    Made by :func:`prepare_splats` (numpy only, so any thread may make it)."""

    means: np.ndarray  # [N * 3]
    rgba: np.ndarray  # [N * 4] scene-linear
    opacity: np.ndarray  # [N]
    scale: np.ndarray  # [N * 3]
    rotation: np.ndarray  # [N * 4] unit (w, x, y, z)
    sh: list[np.ndarray]  # [N] each, contiguous: the SH properties in sh_property_names's order

    def __len__(self) -> int:
        return len(self.opacity)

    def for_drawing(self) -> splat_draw.SplatArrays:
        """The same splats as the viewport drawing holds them (views, no copies)."""
        n = len(self)
        return splat_draw.SplatArrays(self.means.reshape(n, 3), self.opacity, self.scale.reshape(n, 3),
                                      self.rotation.reshape(n, 4), self.sh)


def prepare_splats(splats: Splats) -> SplatsData:
    """The numpy half of :func:`import_splats`: conversions, no bpy."""
    f32 = lambda a: np.ascontiguousarray(a, np.float32).ravel()  # noqa: E731
    return SplatsData(f32(splats.means), linear_rgba(splats.colors()).ravel(), f32(splats.opacities()),
                      f32(splats.scales()), f32(splats.unit_quats()), [f32(c) for c in splats.sh_columns()])


def sh_attribute_names(mesh: bpy.types.Mesh) -> list[str]:
    """The mesh's spherical-harmonic attributes (the highest whole degree it holds), in
    sh_property_names's order."""
    for degree in range(MAX_SH_DEGREE, -1, -1):
        names = sh_property_names(degree)
        if all(name in mesh.attributes for name in names):
            return names
    return []


def import_splats(name: str, splats: Splats, collection: bpy.types.Collection, density: float = 1.0,
                  size: float = 2.0) -> bpy.types.Object:
    return build_splats(name, prepare_splats(splats), collection, density=density, size=size)


def build_splats(name: str, data: SplatsData, collection: bpy.types.Collection, density: float = 1.0,
                 size: float = 2.0) -> bpy.types.Object:
    """The bpy half of :func:`import_splats` (main thread): datablocks from prepared arrays."""
    n = len(data)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    color = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
    attrs = {OPACITY: ("FLOAT", "value", data.opacity),
             SCALE: ("FLOAT_VECTOR", "vector", data.scale),
             ROTATION: ("QUATERNION", "value", data.rotation)}
    if n:
        mesh.attributes["position"].data.foreach_set("vector", data.means)
        color.data.foreach_set("color", data.rgba)
    degree = round(np.sqrt(len(data.sh) / 3)) - 1
    attrs.update({name: ("FLOAT", "value", column) for name, column in zip(sh_property_names(degree), data.sh)})
    for attr_name, (kind, prop, values) in attrs.items():
        attr = mesh.attributes.new(attr_name, kind, "POINT")
        if n:
            attr.data.foreach_set(prop, values)
    mesh.color_attributes.active_color = color
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    obj[KIND_KEY] = True
    obj[splat_draw.SHOW_PROP] = True
    collection.objects.link(obj)
    modifier = obj.modifiers.new(MODIFIER, "NODES")
    modifier.node_group = splats_node_group()
    # The viewport draws the Gaussians themselves and renders lay them in by the compositor
    # (render/compositing.py): the ellipsoids, the editable geometry, show when asked for.
    modifier.show_viewport = modifier.show_render = False
    set_display(obj, density=density, size=size)
    splat_draw.remember(obj, data.for_drawing())
    return obj


def _splat_modifier(obj: bpy.types.Object):
    modifier = obj.modifiers.get(MODIFIER)
    if modifier is None or modifier.node_group is None:
        raise ValueError(f"{obj.name!r} is not a splat object imported by Reconstruct")
    return modifier


def set_display(obj: bpy.types.Object, density: float | None = None, size: float | None = None,
                ellipsoids: bool | None = None) -> None:
    """The fraction of splats shown (0..1, in the viewport drawing and the
    ellipsoids), the ellipsoids' size in standard deviations, and whether the
    viewport shows the ellipsoids (the editable geometry) as well."""
    modifier = _splat_modifier(obj)
    for socket, value in ((DENSITY, density), (SIZE, size)):
        if value is not None:
            modifier[_input_identifier(modifier.node_group, socket)] = float(value)
    if ellipsoids is not None:
        modifier.show_viewport = modifier.show_render = ellipsoids
    obj.update_tag()


def density_identifier(modifier) -> str:
    return _input_identifier(modifier.node_group, DENSITY)


def display_density(obj: bpy.types.Object) -> float:
    modifier = _splat_modifier(obj)
    return float(modifier[density_identifier(modifier)])


def splats_node_group() -> bpy.types.GeometryNodeTree:
    return node_group(NODE_GROUP, TAG, _VERSION, _build_splats_group)


def _build_splats_group(group: bpy.types.GeometryNodeTree) -> None:
    group.description = "Shows Reconstruct splats as oriented, colored ellipsoids"
    interface = group.interface
    interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    density = interface.new_socket(DENSITY, in_out="INPUT", socket_type="NodeSocketFloat")
    density.subtype, density.default_value, density.min_value, density.max_value = "FACTOR", 1.0, 0.0, 1.0
    density.description = "Fraction of the splats shown (lower it for large captures)"
    size = interface.new_socket(SIZE, in_out="INPUT", socket_type="NodeSocketFloat")
    size.default_value, size.min_value = 2.0, 0.0
    size.description = "Ellipsoid radius in standard deviations of each Gaussian"
    interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes, links = group.nodes, group.links
    group_in = nodes.new("NodeGroupInput")
    random = nodes.new("FunctionNodeRandomValue")
    random.data_type = "FLOAT"
    above = nodes.new("FunctionNodeCompare")
    above.data_type, above.operation = "FLOAT", "GREATER_THAN"
    thin = nodes.new("GeometryNodeDeleteGeometry")
    thin.domain = "POINT"
    ellipsoid = nodes.new("GeometryNodeMeshIcoSphere")
    ellipsoid.inputs["Radius"].default_value = 1.0
    ellipsoid.inputs["Subdivisions"].default_value = 1
    rotation = nodes.new("GeometryNodeInputNamedAttribute")
    rotation.data_type, rotation.inputs["Name"].default_value = "QUATERNION", ROTATION
    scale = nodes.new("GeometryNodeInputNamedAttribute")
    scale.data_type, scale.inputs["Name"].default_value = "FLOAT_VECTOR", SCALE
    sized = nodes.new("ShaderNodeVectorMath")
    sized.operation = "SCALE"
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    material = nodes.new("GeometryNodeSetMaterial")
    material.inputs["Material"].default_value = splats_material()
    group_out = nodes.new("NodeGroupOutput")
    for i, node in enumerate((group_in, random, above, thin, ellipsoid, rotation, scale, sized, instance, material,
                              group_out)):
        node.location = (200 * i, 0)

    links.new(random.outputs[1], above.inputs[0])  # the float output of Random Value
    links.new(group_in.outputs[DENSITY], above.inputs[1])
    links.new(group_in.outputs["Geometry"], thin.inputs["Geometry"])
    links.new(above.outputs["Result"], thin.inputs["Selection"])
    links.new(scale.outputs["Attribute"], sized.inputs[0])
    links.new(group_in.outputs[SIZE], sized.inputs["Scale"])
    links.new(thin.outputs["Geometry"], instance.inputs["Points"])
    links.new(ellipsoid.outputs["Mesh"], instance.inputs["Instance"])
    links.new(rotation.outputs["Attribute"], instance.inputs["Rotation"])
    links.new(sized.outputs["Vector"], instance.inputs["Scale"])
    links.new(instance.outputs["Instances"], material.inputs["Geometry"])
    links.new(material.outputs["Geometry"], group_out.inputs["Geometry"])


def splats_material() -> bpy.types.Material:
    """Unlit splat colour, mixed with transparency by the splat's opacity."""
    return node_material(MATERIAL, TAG, _VERSION, _build_splats_material, _blended)


def _blended(mat: bpy.types.Material) -> None:
    mat.surface_render_method = "BLENDED"  # EEVEE (4.2+): real transparency, not dithering


def _build_splats_material(tree: bpy.types.ShaderNodeTree) -> None:
    nodes, links = tree.nodes, tree.links
    color = nodes.new("ShaderNodeAttribute")
    color.attribute_type, color.attribute_name = "INSTANCER", COLOR_ATTRIBUTE
    opacity = nodes.new("ShaderNodeAttribute")
    opacity.attribute_type, opacity.attribute_name = "INSTANCER", OPACITY
    emission = nodes.new("ShaderNodeEmission")
    transparent = nodes.new("ShaderNodeBsdfTransparent")
    mix = nodes.new("ShaderNodeMixShader")
    output = nodes.new("ShaderNodeOutputMaterial")
    for i, node in enumerate((color, opacity, emission, transparent, mix, output)):
        node.location = (200 * i, 0)
    links.new(color.outputs["Color"], emission.inputs["Color"])
    links.new(opacity.outputs["Fac"], mix.inputs["Fac"])
    links.new(transparent.outputs["BSDF"], mix.inputs[1])
    links.new(emission.outputs["Emission"], mix.inputs[2])
    links.new(mix.outputs["Shader"], output.inputs["Surface"])
