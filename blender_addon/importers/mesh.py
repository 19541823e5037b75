"""Triangle meshes with vertex colors (and, once textured, UVs and the photos' atlas): numpy
arrays in, an ordinary editable Blender mesh out.

Vertices, loops and faces are bulk-filled with ``foreach_set``; the colors go into a color
attribute on the point domain, which is the mesh's active color, so Solid view shows them
with Viewport Shading > Color > Attribute. A shared material shows the same attribute unlit
in Material Preview, EEVEE and Cycles: photogrammetry colors already hold the scene's light.

A textured mesh (the texture stage's textured.obj) keeps the vertex colours and gets a UV map
and a material of its own, which shows the atlas unlit (the photos' colours, as the previews
need), or through a Principled BSDF for relighting, or the vertex colours: the sidebar's Mesh
Colours and Relightable switches (`apply_look`) set which, in every job's material at once.
"""

from dataclasses import dataclass

import bpy
import numpy as np

from .datablocks import node_material
from .points import COLOR_ATTRIBUTE, linear_rgba

MATERIAL = "Reconstruct Mesh"
UV_MAP = "Photos"
TEXTURE_TAG, _TEXTURE_VERSION = "reconstruct_texture_version", 1
# The texture material's switches, by node name (apply_look sets them).
IMAGE_NODE, SOURCE_NODE, LIGHT_NODE = "Photos", "Colour source", "Relight"

# The custom property that marks our node groups and materials (with their version,
# bumped when they change, so files with an older one get a new one); also how the
# previews tell our viewport aids.
TAG, _VERSION = "reconstruct_mesh_version", 2  # 2: no half-built v1 (Blender 4.x) is reused


@dataclass
class MeshData:
    """A triangle mesh ready for Blender: flat arrays that ``foreach_set`` takes as they are,
    edges included (``mesh.update()`` would otherwise work them out on the main thread: 0.14 s
    for 1M faces). Made by :func:`prepare_mesh` (numpy only, any thread)."""

    vertices: np.ndarray  # [V * 3] float32
    edges: np.ndarray  # [E * 2] int32 vertex pairs
    loops: np.ndarray  # [F * 3] int32 vertex index per corner
    corner_edges: np.ndarray  # [F * 3] int32 edge from each corner to the next
    loop_start: np.ndarray  # [F] int32
    rgba: np.ndarray | None  # [V * 4] float32 scene-linear, or None
    uv: np.ndarray | None = None  # [F * 3 * 2] float32 per corner, or None
    texture: str | None = None  # the atlas image's path

    @property
    def num_vertices(self) -> int:
        return len(self.vertices) // 3

    @property
    def num_faces(self) -> int:
        return len(self.loop_start)


def prepare_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, rgb: np.ndarray | None) -> MeshData:
    """The numpy half of :func:`import_mesh`: checks and conversions, no bpy."""
    vertices = np.ascontiguousarray(vertices, np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(faces, np.int32).reshape(-1, 3)
    n = len(vertices)
    if len(faces) and (faces.min() < 0 or faces.max() >= n):
        raise ValueError(f"{name}: face indices out of range for {n} vertices")
    if rgb is not None and np.shape(rgb) != (n, 3):
        raise ValueError(f"{n} vertices but colors of shape {np.shape(rgb)}")
    # Each corner's edge runs to the next corner of its face; an edge is its sorted vertex pair.
    start, end = faces.ravel().astype(np.int64), faces[:, [1, 2, 0]].ravel().astype(np.int64)
    keys, corner_edges = _unique(np.minimum(start, end) * max(n, 1) + np.maximum(start, end))
    edges = np.stack([keys // max(n, 1), keys % max(n, 1)], axis=1).astype(np.int32)
    return MeshData(vertices.ravel(), edges.ravel(), faces.ravel(), corner_edges.astype(np.int32).ravel(),
                    np.arange(0, 3 * len(faces), 3, dtype=np.int32),
                    None if rgb is None else linear_rgba(rgb).ravel())


def prepare_textured_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, rgb: np.ndarray | None,
                          glb, atlas: str) -> MeshData:
    """The mesh stage's mesh (mesh.ply: vertices, faces, colours) with the texture
    stage's UVs (textured.glb, shared/glb_io.GlbMesh: the same faces in the same
    order, on the atlas's copies of the vertices), per corner, where Blender keeps
    them; so the mesh stays closed and editable. Raises ValueError when the two do
    not belong together."""
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    if glb.faces.shape != faces.shape:
        raise ValueError(f"{name}: the texture has {len(glb.faces)} faces, the mesh {len(faces)}")
    # glTF is +Y up (the texture stage wrote (x, z, -y)); the corners must be the mesh's own.
    corners = glb.positions[glb.faces.ravel()][:, [0, 2, 1]] * np.array([1, -1, 1], np.float32)
    if not np.allclose(corners, np.asarray(vertices, np.float32)[faces.ravel()], atol=1e-4, rtol=1e-5):
        raise ValueError(f"{name}: the texture was made for another mesh")
    data = prepare_mesh(name, vertices, faces, rgb)
    uv = glb.uv[glb.faces.ravel()].astype(np.float32)
    uv[:, 1] = 1.0 - uv[:, 1]  # glTF's v runs down the image, Blender's up
    data.uv = np.ascontiguousarray(uv.ravel())
    data.texture = atlas
    return data


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_inverse=True) in steps that let go of the GIL (np.unique's
    inverse holds it for 0.1 s at 3M keys, stalling Blender's main thread meanwhile)."""
    if not len(keys):
        return keys, np.zeros(0, np.int32)
    order = np.argsort(keys)
    ordered = keys[order]
    first = np.empty(len(keys), bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(len(keys), np.int32)
    inverse[order] = np.cumsum(first, dtype=np.int32) - 1
    return ordered[first], inverse


def import_mesh(
    name: str,
    vertices: np.ndarray,  # [V, 3] float
    faces: np.ndarray,  # [F, 3] int
    rgb: np.ndarray | None,  # [V, 3] uint8 sRGB (or float 0..1)
    collection: bpy.types.Collection,
) -> bpy.types.Object:
    return build_mesh(name, prepare_mesh(name, vertices, faces, rgb), collection)


def build_mesh(name: str, data: MeshData, collection: bpy.types.Collection) -> bpy.types.Object:
    """The bpy half of :func:`import_mesh` (main thread): datablocks from prepared arrays,
    written through the mesh's attributes, its own storage (1M faces: 0.08 s; through
    ``MeshVertex.co``, ``MeshLoop.vertex_index`` and ``MeshPolygon.use_smooth`` 1.3 s)."""
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(data.num_vertices)
    mesh.edges.add(len(data.edges) // 2)
    mesh.loops.add(len(data.loops))
    mesh.polygons.add(data.num_faces)
    attributes = mesh.attributes
    if data.num_vertices:
        attributes["position"].data.foreach_set("vector", data.vertices)
    if data.num_faces:
        attributes[".edge_verts"].data.foreach_set("value", data.edges)
        attributes[".corner_vert"].data.foreach_set("value", data.loops)
        attributes[".corner_edge"].data.foreach_set("value", data.corner_edges)
        mesh.polygons.foreach_set("loop_start", data.loop_start)
    sharp = attributes.get("sharp_face")  # none: every face is smooth shaded
    if sharp is not None:
        attributes.remove(sharp)
    if data.rgba is not None:
        attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        if data.num_vertices:
            attr.data.foreach_set("color", data.rgba)
        mesh.color_attributes.active_color = attr
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    if data.uv is not None:
        uv_layer = mesh.uv_layers.new(name=UV_MAP)
        uv_layer.data.foreach_set("uv", data.uv)
    mesh.update()
    mesh.materials.append(texture_material(f"{name} texture", data.texture) if data.texture else mesh_material())
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    return obj


def mesh_material() -> bpy.types.Material:
    """The shared material that shows the mesh's color attribute unlit."""
    return node_material(MATERIAL, TAG, _VERSION, _build_mesh_material)


def _build_mesh_material(tree: bpy.types.ShaderNodeTree) -> None:
    nodes, links = tree.nodes, tree.links
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = COLOR_ATTRIBUTE
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    for i, node in enumerate((color, emission, output)):
        node.location = (240 * i, 0)
    links.new(color.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])


def texture_material(name: str, image_path: str) -> bpy.types.Material:
    """A material of the job's own that shows its atlas: unlit (emission: the photos already
    hold the light) or, switched by `apply_look`, as a Principled BSDF's base colour; or the
    vertex colours instead of the atlas. The image is the workspace's file, loaded (not
    copied); saving the .blend with relative paths keeps it relative, File > External Data >
    Pack Resources puts it inside."""
    image = bpy.data.images.load(image_path, check_existing=True)
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender 4.x: no tree until asked for
        mat.use_nodes = True
    tree = mat.node_tree
    nodes, links = tree.nodes, tree.links
    nodes.clear()
    uv = nodes.new("ShaderNodeUVMap")
    uv.uv_map = UV_MAP
    tex = nodes.new("ShaderNodeTexImage")
    tex.name = tex.label = IMAGE_NODE
    tex.image = image
    tex.extension = "EXTEND"
    attr = nodes.new("ShaderNodeVertexColor")
    attr.layer_name = COLOR_ATTRIBUTE
    mix = nodes.new("ShaderNodeMix")
    mix.name = mix.label = SOURCE_NODE
    mix.data_type = "RGBA"
    emission = nodes.new("ShaderNodeEmission")
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    bsdf.inputs["Roughness"].default_value = 0.9
    light = nodes.new("ShaderNodeMixShader")
    light.name = light.label = LIGHT_NODE
    output = nodes.new("ShaderNodeOutputMaterial")
    a, b = (next(s for s in mix.inputs if s.name == n and s.type == "RGBA") for n in ("A", "B"))
    result = next(s for s in mix.outputs if s.type == "RGBA")
    links.new(uv.outputs["UV"], tex.inputs["Vector"])
    links.new(tex.outputs["Color"], a)
    links.new(attr.outputs["Color"], b)
    links.new(result, emission.inputs["Color"])
    links.new(result, bsdf.inputs["Base Color"])
    links.new(emission.outputs["Emission"], light.inputs[1])
    links.new(bsdf.outputs["BSDF"], light.inputs[2])
    links.new(light.outputs["Shader"], output.inputs["Surface"])
    for i, column in enumerate(((uv, attr), (tex,), (mix,), (emission, bsdf), (light,), (output,))):
        for j, node in enumerate(column):
            node.location = (260 * i, -300 * j)
    nodes.active = tex  # what Workbench's Texture colour shows
    mat[TEXTURE_TAG] = _TEXTURE_VERSION
    settings = getattr(bpy.context.scene, "reconstruct", None)
    if settings is not None:
        set_look(mat, settings.mesh_colors, settings.mesh_relight)
    return mat


def set_look(mat: bpy.types.Material, colors: str, relight: bool) -> None:
    """colors: "TEXTURE" (the atlas) or "VERTEX" (the vertex colours); relight: a
    Principled BSDF (lit by the scene) instead of emission (the photos' light)."""
    nodes = mat.node_tree.nodes
    factor = next(s for s in nodes[SOURCE_NODE].inputs if s.name == "Factor")
    factor.default_value = 1.0 if colors == "VERTEX" else 0.0
    nodes[LIGHT_NODE].inputs["Fac"].default_value = 1.0 if relight else 0.0


def apply_look(colors: str, relight: bool) -> int:
    """Set the look of every job's texture material in the file; returns how many."""
    mats = [m for m in bpy.data.materials if m.get(TEXTURE_TAG) and m.node_tree is not None and not m.library]
    for mat in mats:
        set_look(mat, colors, relight)
    return len(mats)


def is_textured(obj) -> bool:
    """Whether a mesh object shows one of our texture materials."""
    return any(slot.material is not None and slot.material.get(TEXTURE_TAG) for slot in obj.material_slots)


def show_vertex_colors_in_solid_view(screen: bpy.types.Screen | None) -> None:
    """Let the 3D views of ``screen`` that are in Solid mode color meshes by their attribute."""
    for area in (screen.areas if screen else ()):
        for space in area.spaces:
            if space.type == "VIEW_3D" and space.shading.type == "SOLID":
                space.shading.color_type = "VERTEX"
