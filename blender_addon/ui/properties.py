"""Per-scene settings and job status shown in the sidebar."""
from __future__ import annotations

import time

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from ..shared.presets import QUALITY_PRESETS, describe

QUALITY_ITEMS = [(name, name.title(), describe(name)) for name in QUALITY_PRESETS]
STATE_ITEMS = [(s, s.title(), "") for s in ("IDLE", "STARTING", "RUNNING", "IMPORTING", "DONE", "CANCELLED", "ERROR")]


class ReconstructMessage(bpy.types.PropertyGroup):
    code: StringProperty()
    text: StringProperty()


class ReconstructPreviewScore(bpy.types.PropertyGroup):
    camera: StringProperty()
    has_mesh: BoolProperty()
    psnr: FloatProperty()
    ssim: FloatProperty()
    has_splats: BoolProperty()
    splat_psnr: FloatProperty()
    splat_ssim: FloatProperty()


def _mesh_look(settings, context):
    from ..importers.mesh import apply_look

    apply_look(settings.mesh_colors, settings.mesh_relight)


def _score_selected(settings, context):
    from .preview_ops import on_score_selected

    on_score_selected(settings, context)


class ReconstructSettings(bpy.types.PropertyGroup):
    photos_dir: StringProperty(name="Photos or Video", subtype="FILE_PATH",
                               description="Folder of photos of one subject, or a video walked around it "
                                           "(.mp4, .mov, ...: its sharp frames are chosen); read only, never "
                                           "modified")
    video_frames: IntProperty(name="Frames", default=0, min=0, max=5000,
                              description="For a video: how many sharp frames to keep, spread by how much the "
                                          "view changes (0: automatic, 4 per second of video, 100 to 300)")
    masks_dir: StringProperty(name="Masks", subtype="DIR_PATH",
                              description="Optional folder of masks: one PNG per photo named after it with .png "
                                          "added (photo.jpg.png), black where the photo is to be ignored "
                                          "(a turntable, a shadow, a passer-by)")
    job_name: StringProperty(name="Job Name", description="Name of the collection and workspace folder "
                             "(default: the photo folder's name, with its parent's for folders named "
                             "images, photos, ...). A workspace made for other photos is never reused: "
                             "the job gets '<name>-2' instead, unless Start Over is ticked")
    start_over: BoolProperty(name="Start Over", default=False,
                             description="Reuse the workspace '<Job Name>' even if it was made for other "
                                         "photos: its results are removed and made again for these photos "
                                         "(for the next run only)")
    quality: EnumProperty(name="Quality", items=QUALITY_ITEMS, default="balanced")
    roi_object: PointerProperty(name="Region", type=bpy.types.Object,
                                description="Only reconstruct inside this object's bounding box (any object: "
                                            "a cube scaled around the subject, an empty, ...). Each job's "
                                            "cameras bring the automatic region as '<job> region' (the "
                                            "subject for object captures; the cameras' surroundings and the "
                                            "ground for scenes): move or scale it before the dense stages run")
    texture_size: EnumProperty(name="Texture", default="QUALITY", items=[
        ("QUALITY", "From Quality", "Fast 2k, Balanced 4k, High 8k"),
        ("2048", "2k", "A 2048 px texture atlas"), ("4096", "4k", "A 4096 px texture atlas"),
        ("8192", "8k", "An 8192 px texture atlas")],
        description="Size of the textured mesh's atlas image")
    mesh_colors: EnumProperty(name="Mesh Colours", default="TEXTURE", update=_mesh_look, items=[
        ("TEXTURE", "Photo Texture", "The photos' detail from the texture atlas"),
        ("VERTEX", "Vertex Colours", "One colour per vertex, from the dense points")],
        description="What textured job meshes show")
    mesh_relight: BoolProperty(name="Relightable", default=False, update=_mesh_look,
                               description="Shade textured meshes with a Principled BSDF, lit by the scene's "
                                           "lights, instead of the photos' own light (unlit)")
    point_size: FloatProperty(name="Point Size", default=0.01, min=0.0001, soft_max=0.2, precision=4,
                              description="Radius of the imported points")

    # Previews.
    preview_engine: EnumProperty(name="Engine", default="WORKBENCH", items=[
        ("WORKBENCH", "Workbench", "Fast: colours unlit, as the mesh's vertex colours are"),
        ("EEVEE", "EEVEE", "Materials and lights, real time"),
        ("CYCLES", "Cycles", "Materials and lights, path traced: slowest, closest to a photo")])
    preview_percentage: IntProperty(name="Resolution %", default=50, min=5, max=100, subtype="PERCENTAGE",
                                    description="Preview size relative to each photo's")
    preview_samples: IntProperty(name="Samples", default=16, min=1, max=4096,
                                 description="Render samples for EEVEE and Cycles previews")
    preview_splats: BoolProperty(name="Splats", default=True,
                                 description="Also render the job's splats (by the backend) from each camera")
    preview_state: StringProperty()
    preview_message: StringProperty()
    preview_progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    preview_scores: CollectionProperty(type=ReconstructPreviewScore)
    preview_index: IntProperty(update=_score_selected)
    preview_contact_sheet: StringProperty(subtype="FILE_PATH")

    # Status, written by the job timer.
    state: EnumProperty(items=STATE_ITEMS, default="IDLE")
    stage: StringProperty()
    progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty()
    # time.time() as text: a FloatProperty is 32-bit and resolves only 128 s
    # of today's epoch seconds. "" = not yet. See stamp() and elapsed().
    started: StringProperty()
    finished: StringProperty()
    error: StringProperty()
    hint: StringProperty()
    warnings: CollectionProperty(type=ReconstructMessage)
    warnings_index: IntProperty()
    workspace: StringProperty(subtype="DIR_PATH")
    collection: StringProperty()


classes = (ReconstructMessage, ReconstructPreviewScore, ReconstructSettings)


def add_stage_toggles() -> None:
    """A switch per stage that declares one (blender_addon/shared/stages.py):
    Settings.stage_<toggle>. Called before the classes are registered."""
    from ..shared import stages

    annotations = ReconstructSettings.__annotations__
    for name in [n for n in annotations if n.startswith("stage_")]:
        del annotations[name]
    for stage in stages.STAGES:
        if stage.toggle:
            annotations[toggle_property(stage)] = BoolProperty(
                name=stage.label, default=True, description=stage.description[:1].upper() + stage.description[1:])


def toggle_property(stage) -> str:
    return f"stage_{stage.toggle}"


def toggled(settings) -> list:
    """The declared stages whose switch is on."""
    from ..shared import stages

    return [s for s in stages.STAGES if s.toggle and getattr(settings, toggle_property(s), False)]


def stamp(seconds: float | None = None) -> str:
    """A time for Settings.started / .finished, at full precision."""
    return repr(time.time() if seconds is None else float(seconds))


def elapsed(settings, now: float | None = None) -> float:
    """Seconds from the job's start to its end (or to now while it runs)."""
    try:
        started = float(settings.started) if settings.started else None
        end = float(settings.finished) if settings.finished else (time.time() if now is None else now)
    except ValueError:  # a file saved by an older version held a number there
        return 0.0
    return max(0.0, end - started) if started is not None else 0.0


def register() -> None:
    bpy.types.Scene.reconstruct = PointerProperty(type=ReconstructSettings)


def unregister() -> None:
    del bpy.types.Scene.reconstruct
