"""The automatic region dense stereo takes (undistorted/region.json) as a box
object in the job's collection, so the user sees what will be reconstructed and
can move, rotate or scale it before the dense stages run.

The box is an empty drawn as a cube (its local bounds are -1..1; location,
rotation and scale carry the region's centre, axes and half sizes), parented to
the job's origin like every part, and never rendered. It becomes the sidebar's Region when that
is empty. While the box stays as it came, the job asks the backend for its
automatic region (so the depth maps are not recomputed for the same box in
float32); once the user changes it, its bounds are sent (link/roi.py)."""
from __future__ import annotations

import json

import bpy
import numpy as np

AUTO_KEY = "reconstruct_region"  # on the box: the automatic region it was made from (JSON)


def prepare_region(region: dict) -> dict:
    """Check the region file's box (no bpy)."""
    box = {k: np.asarray(region[k], np.float64).tolist() for k in ("center", "rotation", "half_size")}
    if np.asarray(box["rotation"]).shape != (3, 3) or len(box["center"]) != 3 or len(box["half_size"]) != 3:
        raise ValueError("the region file does not hold a box")
    return {**box, "kind": str(region.get("kind", "")), "reason": str(region.get("reason", ""))}


def build_region(name: str, region: dict, collection) -> bpy.types.Object:
    """An empty drawn as a cube (Add > Empty > Cube, as an artist would make a region): its
    bounds are -1..1 scaled by the region's half sizes (link/roi.object_box reads them back)."""
    from mathutils import Matrix

    obj = bpy.data.objects.new(name, None)
    obj.empty_display_type = "CUBE"
    obj.empty_display_size = 1.0
    collection.objects.link(obj)
    M = np.eye(4)
    M[:3, :3] = np.asarray(region["rotation"]) * np.asarray(region["half_size"])[None, :]
    M[:3, 3] = region["center"]
    obj.matrix_basis = Matrix(M.tolist())
    obj.hide_render = True
    obj[AUTO_KEY] = json.dumps({k: region[k] for k in ("center", "rotation", "half_size")})
    obj["reconstruct_region_kind"] = region.get("kind", "")
    return obj


def untouched(obj, box: dict) -> bool:
    """Whether `box` (link/roi.object_box of the region object, in the workspace's frame)
    is still the automatic region the object was made from."""
    stored = obj.get(AUTO_KEY)
    if not stored:
        return False
    auto = json.loads(stored)
    scale = max(1e-9, float(np.max(auto["half_size"])))
    return all(np.allclose(np.asarray(box[k]), np.asarray(auto[k]), atol=1e-4 * (scale if k != "rotation" else 1))
               for k in ("center", "rotation", "half_size"))
