"""Per-scene settings and job status shown in the sidebar."""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

QUALITY_ITEMS = [
    ("fast", "Fast", "Features at 1024 px, 4k per photo; depth at 800 px; 100k-face mesh; splats: 3k steps "
     "at 800 px: quick previews"),
    ("balanced", "Balanced", "Features at 2000 px, 8k per photo; depth at 1600 px; 300k-face mesh; splats: 7k "
     "steps at 1600 px"),
    ("high", "High", "Features at 3200 px, 16k per photo; depth at 3200 px; 1M-face mesh; splats: 30k steps at "
     "3200 px: slow, most accurate"),
]
STATE_ITEMS = [(s, s.title(), "") for s in ("IDLE", "STARTING", "RUNNING", "IMPORTING", "DONE", "CANCELLED", "ERROR")]


class ReconstructMessage(bpy.types.PropertyGroup):
    code: StringProperty()
    text: StringProperty()


class ReconstructSettings(bpy.types.PropertyGroup):
    photos_dir: StringProperty(name="Photos", subtype="DIR_PATH",
                               description="Folder of photos of one subject (read only, never modified)")
    job_name: StringProperty(name="Job Name", description="Name of the collection and workspace folder "
                             "(default: the photo folder's name)")
    quality: EnumProperty(name="Quality", items=QUALITY_ITEMS, default="balanced")
    stage_cameras: BoolProperty(name="Cameras & Sparse Points", default=True,
                                description="Structure-from-Motion: calibrated cameras and a sparse point cloud")
    stage_dense: BoolProperty(name="Dense Points", default=True,
                              description="Multi-view stereo: a depth map per photo, fused into a dense colored "
                                          "point cloud")
    stage_mesh: BoolProperty(name="Mesh", default=True,
                             description="An editable mesh with vertex colors, meshed from the dense points")
    roi_object: PointerProperty(name="Region", type=bpy.types.Object,
                                description="Only reconstruct inside this object's bounding box (any object: "
                                            "a cube scaled around the subject, an empty, ...). Empty: "
                                            "the bounds of the sparse points")
    stage_splats: BoolProperty(name="Gaussian Splats", default=True,
                               description="3D Gaussian splats trained on the photos: photoreal, view-dependent "
                                           "color. Fast on a CUDA GPU; on the CPU expect minutes to hours")
    point_size: FloatProperty(name="Point Size", default=0.01, min=0.0001, soft_max=0.2, precision=4,
                              description="Radius of the imported points")

    # Status, written by the job timer.
    state: EnumProperty(items=STATE_ITEMS, default="IDLE")
    stage: StringProperty()
    progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty()
    started: FloatProperty()
    finished: FloatProperty()
    error: StringProperty()
    hint: StringProperty()
    warnings: CollectionProperty(type=ReconstructMessage)
    warnings_index: IntProperty()
    workspace: StringProperty(subtype="DIR_PATH")
    collection: StringProperty()


classes = (ReconstructMessage, ReconstructSettings)


def register() -> None:
    bpy.types.Scene.reconstruct = PointerProperty(type=ReconstructSettings)


def unregister() -> None:
    del bpy.types.Scene.reconstruct
