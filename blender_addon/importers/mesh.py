"""Triangle meshes with vertex colors: numpy arrays in, an ordinary editable Blender mesh out.

Vertices, loops and faces are bulk-filled with ``foreach_set``; the colors go into a color
attribute on the point domain, which is the mesh's active color, so Solid view shows them
with Viewport Shading > Color > Attribute. A shared material shows the same attribute unlit
in Material Preview, EEVEE and Cycles: photogrammetry colors already hold the scene's light.
"""

import bpy
import numpy as np

from .points import COLOR_ATTRIBUTE, find_tagged, linear_rgba

MATERIAL = "Reconstruct Mesh"
_VERSION_KEY, _VERSION = "reconstruct_mesh_version", 1


def import_mesh(
    name: str,
    vertices: np.ndarray,  # [V, 3] float
    faces: np.ndarray,  # [F, 3] int
    rgb: np.ndarray | None,  # [V, 3] uint8 sRGB (or float 0..1)
    collection: bpy.types.Collection,
) -> bpy.types.Object:
    vertices = np.ascontiguousarray(vertices, np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(faces, np.int32).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"{name}: face indices out of range for {len(vertices)} vertices")
    if rgb is not None and np.shape(rgb) != (len(vertices), 3):
        raise ValueError(f"{len(vertices)} vertices but colors of shape {np.shape(rgb)}")
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.loops.add(3 * len(faces))
    mesh.polygons.add(len(faces))
    if len(vertices):
        mesh.vertices.foreach_set("co", vertices.ravel())
    if len(faces):
        mesh.loops.foreach_set("vertex_index", faces.ravel())
        mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * len(faces), 3, dtype=np.int32))
        mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), bool))
    if rgb is not None:
        attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        if len(vertices):
            attr.data.foreach_set("color", linear_rgba(rgb).ravel())
        mesh.color_attributes.active_color = attr
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    mesh.update()
    mesh.materials.append(mesh_material())
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    return obj


def mesh_material() -> bpy.types.Material:
    """The shared material that shows the mesh's color attribute unlit."""
    mat = find_tagged(bpy.data.materials, _VERSION_KEY, _VERSION)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL)
    mat[_VERSION_KEY] = _VERSION
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = COLOR_ATTRIBUTE
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    for i, node in enumerate((color, emission, output)):
        node.location = (240 * i, 0)
    links.new(color.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return mat


def show_vertex_colors_in_solid_view(screen: bpy.types.Screen | None) -> None:
    """Let the 3D views of ``screen`` that are in Solid mode color meshes by their attribute."""
    for area in (screen.areas if screen else ()):
        for space in area.spaces:
            if space.type == "VIEW_3D" and space.shading.type == "SOLID":
                space.shading.color_type = "VERTEX"
