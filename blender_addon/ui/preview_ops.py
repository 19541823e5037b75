"""The Render Previews operator, its timer, and the sidebar's list of scores.

One PreviewSession at a time; a 0.05 s timer calls its `tick()` (at most one
render per call), so Blender handles input between renders and Cancel is
seen before the next one. Splat renders come from the backend (the same
process the jobs use), asked for without waiting.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import bpy
import numpy as np

from ..link import jobs
from ..shared import protocol
from ..importers.cameras import make_active_camera
from ..importers.results import splats_file
from .previews import (PreviewSession, SplatSource, fit_render, job_cameras, job_collection, photo_of, resample,
                       show_in_image_editor, splat_rgba)

TICK_SECONDS = 0.05


class BackendSplats(SplatSource):
    """Splat renders from the backend's render_splats call. A camera over the
    backend's limit (protocol.MAX_RENDER_PIXELS, MAX_RENDER_SIDE: a 24 MP photo
    at 100%) is rendered scaled down to fit (previews.fit_render) and resized
    back to the camera's size (previews.resample)."""

    def __init__(self, runner: jobs.Runner, workspace: Path, max_pixels: int = protocol.MAX_RENDER_PIXELS):
        self.runner, self.workspace, self.max_pixels = runner, str(workspace), max_pixels
        self.ids: dict[str, str] = {}
        self.sizes: dict[str, tuple[int, int]] = {}  # name -> (width, height) the session asked for

    def request(self, name: str, camera: dict) -> None:
        self.ids[name] = uuid.uuid4().hex[:12]
        self.sizes[name] = (camera["width"], camera["height"])
        self.runner.client.send(protocol.RENDER_SPLATS, id=self.ids[name], workspace=self.workspace,
                                camera=fit_render(camera, self.max_pixels))

    def poll(self, name: str):
        self.runner.pump()
        if not self.runner.client.alive:
            raise RuntimeError("the backend stopped while rendering splats")
        msg = self.runner.render_replies.pop(self.ids[name], None)
        if msg is None:
            return None
        if msg["type"] == protocol.ERROR:
            raise RuntimeError(msg["message"])
        width, height = self.sizes.pop(name)
        image = msg["image"]
        if image.shape[:2] != (height, width):
            # Linear in the premultiplied colour and alpha: the same as resizing the composite.
            image = resample(image.astype(np.float32), width, height)
        return splat_rgba(image, msg["background"])


class PreviewRunner:
    def __init__(self):
        self.session: PreviewSession | None = None

    @property
    def running(self) -> bool:
        return self.session is not None and not self.session.done

    def start(self, context, cameras: list[bpy.types.Object] | None = None) -> PreviewSession:
        """Previews of `cameras` (default: the selected recovered cameras, else
        every camera of the active object's job, else of the last job)."""
        if self.running:
            raise jobs.UserError("Previews are already being rendered: cancel them or wait.")
        settings = context.scene.reconstruct
        collection = _job_collection(context, cameras)
        if collection is None:
            raise jobs.UserError("No reconstruction in this scene: reconstruct or import a workspace first.")
        workspace = Path(collection["reconstruct_workspace"])
        if cameras is None:
            chosen = [o for o in context.selected_objects if o in job_cameras(collection)]
            cameras = chosen or job_cameras(collection)
        missing = [c.name for c in cameras if photo_of(c) is None]
        if missing:
            raise jobs.UserError(f"These cameras have no photo to compare with: {', '.join(missing[:5])}.")
        splats = None
        if settings.preview_splats and splats_file(workspace).is_file():
            splats = BackendSplats(jobs.runner, workspace)
            jobs.runner.ensure_backend(context)
        self.session = PreviewSession(context.scene, cameras, workspace, engine=settings.preview_engine,
                                      splats=splats, percentage=settings.preview_percentage,
                                      samples=settings.preview_samples)
        settings.preview_state, settings.preview_message = "RUNNING", "Starting..."
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=TICK_SECONDS)
        return self.session

    def tick(self) -> float | None:
        session = self.session
        if session is None:
            return None
        scene = bpy.data.scenes.get(session.scene_name)
        try:
            session.tick()
        except Exception:
            pass  # the session has stopped itself with the error as its message
        if scene is not None:
            s = scene.reconstruct
            s.preview_state, s.preview_message, s.preview_progress = session.state, session.message, session.progress
            if session.done and session.state == "DONE":
                fill_scores(scene, session)
        jobs.redraw(("VIEW_3D",))  # where the sidebar's Previews panel shows the progress
        return None if session.done else TICK_SECONDS

    def cancel(self) -> None:
        if self.running:
            self.session.cancel()
            self.tick()


preview_runner = PreviewRunner()


def _tick() -> float | None:
    return preview_runner.tick()




def _job_collection(context, cameras):
    """The job to preview: that of the given cameras, the active or selected
    objects, the sidebar's last job, or else the scene's newest job."""
    for obj in (cameras or []) + [context.active_object] + list(context.selected_objects):
        if obj is not None and (collection := job_collection(obj)) is not None:
            return collection
    jobs_here = [c for c in context.scene.collection.children_recursive if "reconstruct_workspace" in c]
    last = context.scene.reconstruct.collection
    return next((c for c in jobs_here if c.name == last), jobs_here[-1] if jobs_here else None)


def fill_scores(scene, session: PreviewSession) -> None:
    """The sidebar's list: the session's cameras, worst first."""
    settings = scene.reconstruct
    settings.preview_scores.clear()
    for result in sorted(session.results, key=lambda r: r.sort_key()):
        item = settings.preview_scores.add()
        item.camera = result.camera
        for source, prefix in (("mesh", ""), ("splats", "splat_")):
            score = result.scores.get(source)
            setattr(item, f"has_{source}", score is not None and score["psnr"] is not None)
            if score is not None and score["psnr"] is not None:
                setattr(item, f"{prefix}psnr", score["psnr"])
                setattr(item, f"{prefix}ssim", score["ssim"])
    settings.preview_contact_sheet = str(session.out / "contact_sheet.png")


def on_score_selected(settings, context) -> None:
    """Clicking a camera in the list: it becomes the active camera (with its
    photo's resolution), and its photo shows in the Image Editor."""
    if not 0 <= settings.preview_index < len(settings.preview_scores):
        return
    obj = bpy.data.objects.get(settings.preview_scores[settings.preview_index].camera)
    if obj is None or obj.type != "CAMERA":
        return
    make_active_camera(context.scene, obj)
    photo = photo_of(obj)
    if photo is not None:
        show_in_image_editor(photo)


class RECONSTRUCT_OT_render_previews(bpy.types.Operator):
    bl_idname = "reconstruct.render_previews"
    bl_label = "Render Previews"
    bl_description = ("Render the scene (and the splats) from each recovered camera, or the selected ones, "
                      "beside its photo; scores go on the cameras and into previews/metrics.json, worst first")

    @classmethod
    def poll(cls, context):
        return not preview_runner.running

    def execute(self, context):
        try:
            preview_runner.start(context)
        except (jobs.UserError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class RECONSTRUCT_OT_cancel_previews(bpy.types.Operator):
    bl_idname = "reconstruct.cancel_previews"
    bl_label = "Cancel Previews"
    bl_description = "Stop rendering previews; the scene's render settings are restored"

    @classmethod
    def poll(cls, context):
        return preview_runner.running

    def execute(self, context):
        preview_runner.cancel()
        return {"FINISHED"}


class RECONSTRUCT_UL_previews(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=item.camera, icon="CAMERA_DATA")
        if item.has_mesh:
            row.label(text=f"{item.psnr:.1f} dB")
        if item.has_splats:
            row.label(text=f"splats {item.splat_psnr:.1f} dB")


class VIEW3D_PT_reconstruct_previews(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Reconstruct"
    bl_label = "Previews"
    bl_parent_id = "VIEW3D_PT_reconstruct"

    def draw(self, context):
        s = context.scene.reconstruct
        col = self.layout.column()
        col.enabled = not preview_runner.running
        col.prop(s, "preview_engine")
        col.prop(s, "preview_percentage")
        if s.preview_engine != "WORKBENCH":
            col.prop(s, "preview_samples")
        col.prop(s, "preview_splats")
        row = self.layout.row(align=True)
        row.operator("reconstruct.render_previews", icon="RENDER_STILL")
        row.operator("reconstruct.cancel_previews", icon="CANCEL", text="")
        if s.preview_state == "RUNNING":
            self.layout.progress(factor=s.preview_progress, type="BAR", text=s.preview_message[:80])
        elif s.preview_message:
            self.layout.label(text=s.preview_message[:100])
        if s.preview_scores:
            self.layout.template_list("RECONSTRUCT_UL_previews", "", s, "preview_scores", s, "preview_index",
                                      rows=5)


def unregister() -> None:
    preview_runner.cancel()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)


classes = (RECONSTRUCT_OT_render_previews, RECONSTRUCT_OT_cancel_previews, RECONSTRUCT_UL_previews,
           VIEW3D_PT_reconstruct_previews)
