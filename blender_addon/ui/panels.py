"""The 'Reconstruct' tab in the 3D view's sidebar."""
from __future__ import annotations

import bpy

from ..shared import media, stages
from ..shared.estimate import format_seconds
from ..shared.presets import describe_cpu
from ..link.jobs import estimates, runner, stage_devices_known
from . import frame_ops
from .properties import elapsed, toggle_property, toggled

_STATE_ICONS = {"IDLE": "BLANK1", "STARTING": "TIME", "RUNNING": "TIME", "IMPORTING": "IMPORT",
                "DONE": "CHECKMARK", "CANCELLED": "CANCEL", "ERROR": "ERROR"}


class RECONSTRUCT_UL_messages(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.label(text=item.text, icon="ERROR")


def draw_splat_display(layout, obj) -> None:
    """The active splat object's display: the Gaussians (the viewport's drawing),
    the ellipsoids (its editable geometry) and the share of splats shown."""
    from ..importers import splats
    from ..viewport.splat_draw import SHOW_PROP

    if obj is None or not obj.get(splats.KIND_KEY) or obj.modifiers.get(splats.MODIFIER) is None:
        return
    modifier = obj.modifiers[splats.MODIFIER]
    box = layout.box()
    box.label(text=f"Splats: {obj.name}")
    row = box.row(align=True)
    row.prop(obj, f'["{SHOW_PROP}"]', text="Gaussians", toggle=True)
    row.prop(modifier, "show_viewport", text="Ellipsoids", toggle=True)
    box.prop(modifier, f'["{splats.density_identifier(modifier)}"]', text="Density")


class VIEW3D_PT_reconstruct(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Reconstruct"
    bl_label = "Reconstruct"

    def draw(self, context):
        s = context.scene.reconstruct
        layout = self.layout
        col = layout.column()
        col.enabled = not runner.running
        col.prop(s, "photos_dir")
        if media.is_video(bpy.path.abspath(s.photos_dir)):
            col.prop(s, "video_frames")
        else:
            col.prop(s, "masks_dir")
        col.prop(s, "job_name")
        col.prop(s, "start_over")
        col.prop(s, "quality")
        box = col.box()
        box.label(text="Stages")
        box.label(text="Cameras & Sparse Points (always)", icon="CHECKBOX_HLT")
        for stage in stages.STAGES:
            if stage.toggle:
                box.prop(s, toggle_property(stage))
        row = col.row()
        row.active = any(stage.group == "dense" for stage in toggled(s))
        row.prop(s, "roi_object", icon="CUBE")
        row = col.row()
        row.active = any(stage.name == "texture" for stage in toggled(s))
        row.prop(s, "texture_size")
        col.prop(s, "point_size")
        look = layout.box()  # usable while a job runs: it only switches materials
        look.label(text="Textured Meshes")
        look.row().prop(s, "mesh_colors", expand=True)
        look.prop(s, "mesh_relight")
        draw_splat_display(layout, context.active_object)
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator("reconstruct.run", icon="PLAY")
        row.operator("reconstruct.cancel", icon="CANCEL")
        if not runner.running:
            self.draw_estimate(layout, s)
        self.draw_status(layout, s)
        frame_ops.draw(layout, context)  # Set Scale / Set Ground for the active object's job

    @staticmethod
    def draw_estimate(layout, s) -> None:
        """The time each stage will take with these photos and settings (the
        sizes are read in a thread: "reading the photos..." until then)."""
        if not s.photos_dir:
            return
        box = layout.box()
        if media.is_video(bpy.path.abspath(s.photos_dir)):
            box.label(text="Estimate: once the video's frames are chosen", icon="TIME")
            return
        per_stage = estimates.for_settings(s)
        if per_stage is None:
            box.label(text="Estimate: reading the photos..." if estimates.reading else "Estimate: no photos found",
                      icon="TIME")
            return
        devices = stage_devices_known()
        where = ", ".join(sorted({d.upper() for g, d in devices.items()}))
        box.label(text=f"Estimate: {format_seconds(sum(e.seconds for e in per_stage))} ({where})", icon="TIME")
        col = box.column(align=True)
        for e in per_stage:
            row = col.split(factor=0.6)
            row.label(text=stages.STAGE[e.stage].label)
            row.label(text=format_seconds(e.seconds))
        if any(devices.get(g, "cpu") == "cpu" for g in ("dense", "splats")):
            col.label(text="CPU defaults applied", icon="INFO")
            for part in describe_cpu(s.quality).removeprefix("On the CPU: ").split("; "):
                col.label(text=part)

    @staticmethod
    def draw_status(layout, s) -> None:
        if s.state == "IDLE":
            return
        box = layout.box()
        seconds = elapsed(s)
        box.label(text=f"{s.state.title()}  {int(seconds // 60)}:{int(seconds % 60):02d}", icon=_STATE_ICONS[s.state])
        if s.state in ("STARTING", "RUNNING", "IMPORTING"):
            box.progress(factor=s.progress, type="BAR", text=f"{s.stage or 'starting'}: {s.message}"[:80])
            now = runner.clock.current() if runner.running else None
            if now is not None:
                box.label(text=f"About {format_seconds(now[1])} left", icon="TIME")
        elif s.message:
            box.label(text=s.message)
        if s.error:
            box.label(text=s.error, icon="ERROR")
            if s.hint:
                box.label(text=s.hint, icon="INFO")
        if s.workspace:
            box.label(text=f"Workspace: {s.workspace}", icon="FILE_FOLDER")
        if s.collection:
            box.label(text=f"Collection: {s.collection}", icon="OUTLINER_COLLECTION")
        if s.warnings:
            box.label(text=f"Warnings ({len(s.warnings)})")
            box.template_list("RECONSTRUCT_UL_messages", "", s, "warnings", s, "warnings_index", rows=3)


classes = (RECONSTRUCT_UL_messages, VIEW3D_PT_reconstruct)
