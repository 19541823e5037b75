"""The datablocks the importers share (materials, node groups), made the same way
on every Blender the add-on supports (4.2 LTS to 5.x), and undone whole when an
import fails.

- Before 5.0 a new material has no node tree until `use_nodes` is switched on
  (5.0 always has one and deprecates the switch), so `node_material` asks for
  one only where it is missing.
- A shared datablock is tagged (found again by tag, not by name) only once it is
  complete: a build that fails half-way leaves nothing a later import would reuse.
- `undo_on_failure` removes every datablock created inside it when it raises, so
  a failed import leaves the scene and the file as they were."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import bpy

# The kinds of datablock an import creates (objects, their data, what they use).
_CREATED_KINDS = ("objects", "meshes", "cameras", "materials", "node_groups", "images", "collections")


def find_tagged(datablocks, key: str, version: int):
    """Our shared datablock (node group, material) of this version, if the file has one.
    By tag, not by name: a user's datablock may have the name, ours may have been renamed."""
    return next((d for d in datablocks if d.get(key) == version and not d.library), None)


def node_material(name: str, key: str, version: int, build: Callable[[bpy.types.ShaderNodeTree], None],
                  setup: Callable[[bpy.types.Material], None] | None = None) -> bpy.types.Material:
    """The shared material tagged `key` = `version`, built on first use: `setup(mat)` sets
    its options, `build(tree)` fills its (emptied) node tree."""
    mat = find_tagged(bpy.data.materials, key, version)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(name)
    try:
        if mat.node_tree is None:  # Blender 4.x: no tree until asked for
            mat.use_nodes = True
        if setup is not None:
            setup(mat)
        mat.node_tree.nodes.clear()
        build(mat.node_tree)
    except Exception:
        bpy.data.materials.remove(mat)
        raise
    mat[key] = version
    return mat


def node_group(name: str, key: str, version: int,
               build: Callable[[bpy.types.GeometryNodeTree], None]) -> bpy.types.GeometryNodeTree:
    """The shared geometry-nodes modifier group tagged `key` = `version`, built on first use."""
    group = find_tagged(bpy.data.node_groups, key, version)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(name, "GeometryNodeTree")
    try:
        group.is_modifier = True
        build(group)
    except Exception:
        bpy.data.node_groups.remove(group)
        raise
    group[key] = version
    return group


def _existing() -> dict[str, set[int]]:
    return {kind: {d.as_pointer() for d in getattr(bpy.data, kind)} for kind in _CREATED_KINDS}


@contextmanager
def undo_on_failure():
    """Remove every datablock created inside the block if it raises (then re-raise)."""
    before = _existing()
    try:
        yield
    except BaseException:
        created = [d for kind in _CREATED_KINDS for d in getattr(bpy.data, kind)
                   if d.as_pointer() not in before[kind]]
        if created:
            bpy.data.batch_remove(created)
        raise
