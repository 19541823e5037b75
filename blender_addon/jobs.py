"""The running job, seen from Blender: one backend client, one job at a time.

`tick()` is the bpy.app.timers callback. It drains the client's event queue
(never blocking), copies the news into the scene's status properties, and
imports the result once the backend has finished. All bpy work happens here,
on the main thread; the pipes belong to the client's threads.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import bpy

from . import preferences, protocol
from .client import BackendClient, BackendStartError
from .protocol import ErrorCode

TICK_SECONDS = 0.1
IDLE_TICK_SECONDS = 0.5
MAX_WARNINGS = 200
# Errors that mean the backend cannot serve at all (not one job's failure).
_BACKEND_FATAL = (ErrorCode.PROTOCOL_MISMATCH, ErrorCode.MISSING_DEPENDENCIES, ErrorCode.BACKEND_EXITED)


class UserError(Exception):
    """Something the user can fix; shown as the operator's error report."""


class Runner:
    def __init__(self):
        self.client: BackendClient | None = None
        self.job_id: str | None = None
        self.scene_name: str | None = None
        self.pending_run: dict | None = None  # sent once the handshake succeeds
        self.result: dict | None = None
        self.tick_durations: list[float] = []  # seconds per timer call, for tests and diagnostics
        self.render_replies: dict = {}  # request id -> RENDER (or ERROR) event, for the previews

    @property
    def running(self) -> bool:
        return self.job_id is not None

    # Backend --------------------------------------------------------------
    def ensure_backend(self, context) -> BackendClient:
        python = preferences.backend_python(context)
        if self.client is not None and self.client.alive and self.client.python == python:
            return self.client
        if self.client is not None:
            self.client.stop()
        self.client = BackendClient(python)
        try:
            self.client.start()
        except BackendStartError as exc:
            self.client = None
            preferences.set_status(exc.message, False)
            raise UserError(f"{exc.message} {exc.hint}") from None
        preferences.set_status("Starting the backend...", None)
        _schedule()
        return self.client

    def stop_backend(self) -> None:
        if self.client is not None:
            self.client.stop()
            self.client = None

    # Jobs ------------------------------------------------------------------
    def start(self, context) -> str:
        settings = context.scene.reconstruct
        if self.running:
            raise UserError("A reconstruction is already running: cancel it or wait for it to finish.")
        photos = bpy.path.abspath(settings.photos_dir) if settings.photos_dir else ""
        if not photos:
            raise UserError("Choose the folder of photos first.")
        if not Path(photos).is_dir():
            raise UserError(f"The photo folder {photos} does not exist.")
        name = settings.job_name or Path(photos.rstrip("/\\")).name or "reconstruction"
        workspace = preferences.workspace_root(context) / bpy.path.clean_name(name)
        prefs = preferences.get(context)
        dense = dense_options(settings, prefs.device)  # a bad region is refused before anything starts
        client = self.ensure_backend(context)
        self.job_id = uuid.uuid4().hex[:12]
        self.scene_name = context.scene.name
        self.result = None
        self.tick_durations = []
        request = {"job": self.job_id, "photos": photos, "workspace": str(workspace),
                   "options": {"quality": settings.quality, "sfm": {"device": prefs.device},
                               "dense": dense, "splats": {"device": dense["device"]}},
                   "stages": requested_stages(settings)}
        if client.handshake is not None:
            client.send(protocol.RUN, **request)
        else:
            self.pending_run = request
        settings.warnings.clear()
        _set(settings, state="STARTING", stage="", progress=0.0, message="Starting the backend...",
             started=time.time(), finished=0.0, error="", hint="", workspace=str(workspace), collection="")
        settings.job_name = settings.job_name or name
        _schedule()
        return self.job_id

    def parts(self) -> tuple[str, ...]:
        """What to import from the finished workspace: what the user asked for."""
        settings = self._settings()
        chosen = {"dense": settings.stage_dense, "mesh": settings.stage_mesh, "splats": settings.stage_splats}
        return ("cameras", "sparse", *(part for part, on in chosen.items() if on))

    def cancel(self) -> None:
        if self.client is not None and self.job_id is not None:
            self.client.send(protocol.CANCEL, job=self.job_id)

    def _settings(self):
        scene = bpy.data.scenes.get(self.scene_name or "")
        return scene.reconstruct if scene is not None else None

    def _finish(self, state: str, **fields) -> None:
        settings = self._settings()
        if settings is not None:
            _set(settings, state=state, finished=time.time(), **fields)
        self.job_id = self.pending_run = None

    def pump(self) -> None:
        """Handle whatever the backend has sent (never blocks)."""
        if self.client is not None:
            for msg in self.client.poll():
                self.handle(msg)

    def handle(self, msg: dict) -> None:
        kind = msg["type"]
        if msg.get("id") is not None and kind in (protocol.RENDER, protocol.ERROR):
            self.render_replies[msg["id"]] = msg  # a reply to a render request, not about the job
            return
        settings = self._settings()
        if kind == protocol.HANDSHAKE:
            if msg.get("protocol") != protocol.PROTOCOL_VERSION:
                self._handshake_failed(
                    f"The backend speaks protocol {msg.get('protocol')}, this add-on protocol "
                    f"{protocol.PROTOCOL_VERSION}.", "Press 'Set up backend' in the preferences to install the "
                    "matching backend.")
                return
            device = msg.get("device", {})
            preferences.set_status(f"Backend {msg.get('backend_version')} ready on {device.get('type', '?')}: "
                                   f"{device.get('name', '')}", True)
            if self.pending_run is not None:
                self.client.send(protocol.RUN, **self.pending_run)
                self.pending_run = None
            return
        if msg.get("job") not in (None, self.job_id) or settings is None:
            return
        if kind == protocol.PROGRESS:
            _set(settings, state="RUNNING", stage=msg["stage"], progress=msg["fraction"], message=msg["message"])
        elif kind == protocol.WARNING and len(settings.warnings) < MAX_WARNINGS:
            item = settings.warnings.add()
            item.code, item.text = msg.get("code", ""), msg["message"]
        elif kind == protocol.RESULT:
            self.result = msg
            _set(settings, state="IMPORTING", message="Importing the result...")
        elif kind == protocol.CANCELLED:
            self._finish("CANCELLED", message=msg.get("message", "Cancelled"))
        elif kind == protocol.ERROR:
            fatal = msg.get("code") in _BACKEND_FATAL
            if fatal:
                preferences.set_status(msg["message"], False)
            if self.job_id is not None and (fatal or msg.get("job") == self.job_id):
                self._finish("ERROR", error=msg["message"], hint=msg.get("hint", ""), message="Failed")

    def _handshake_failed(self, message: str, hint: str) -> None:
        preferences.set_status(message, False)
        if self.job_id is not None:
            self._finish("ERROR", error=message, hint=hint, message="Failed")

    def import_result(self) -> None:
        from .results import import_workspace

        settings = self._settings()
        result, self.result = self.result, None
        try:
            collection = import_workspace(Path(result["workspace"]), settings.job_name or "reconstruction",
                                          bpy.data.scenes[self.scene_name], point_size=settings.point_size,
                                          parts=self.parts())
        except Exception as exc:  # an import that fails must not leave the panel spinning
            self._finish("ERROR", error=f"The result could not be imported: {exc}",
                         hint=f"The workspace is intact: File > Import > COLMAP Model can read {result['workspace']}.")
            return
        summary = result.get("summary", {})
        dense = summary.get("dense") or {}
        extra = "".join(f", {dense[key]} {what}" for key, what in (("dense_points", "dense points"),
                                                                   ("mesh_faces", "mesh faces"))
                        if dense.get(key) is not None)
        splats = summary.get("splats") or {}
        if splats.get("num_splats") is not None:
            extra += f", {splats['num_splats']} splats"
            if splats.get("psnr") is not None:
                extra += f" (held-out PSNR {splats['psnr']:.1f} dB)"
        self._finish("DONE", progress=1.0, collection=collection.name,
                     message=f"{summary.get('registered_images', '?')}/{summary.get('total_images', '?')} photos "
                             f"registered, {summary.get('num_points', 0)} points{extra}")

    def tick(self) -> float | None:
        started = time.perf_counter()
        importing = self.result is not None
        try:
            if importing:
                self.import_result()
                return TICK_SECONDS
            if self.client is None:
                return None
            self.pump()
            if not self.client.alive and self.client.events.empty() and self.job_id is None:
                return None
            _redraw()
            return TICK_SECONDS if (self.running or self.result is not None) else IDLE_TICK_SECONDS
        finally:
            # Importing the finished result is main-thread bpy work by nature;
            # the ticks that only follow a running job are what must stay short.
            if self.running and not importing:
                self.tick_durations.append(time.perf_counter() - started)


runner = Runner()


def requested_stages(settings) -> list[str]:
    """What the backend is asked for (it runs these and the stages they need)."""
    chosen = {"fusion": settings.stage_dense, "mesh": settings.stage_mesh, "splats": settings.stage_splats}
    return ["undistort", *(stage for stage, on in chosen.items() if on)]


def dense_options(settings, device: str) -> dict:
    options = {"device": {"gpu": "cuda"}.get(device, device)}
    if settings.roi_object is not None:
        from .roi import object_box

        try:
            options["roi"] = object_box(settings.roi_object)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return options


def _tick() -> float | None:
    return runner.tick()


def _schedule() -> None:
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_SECONDS)


def _set(settings, **fields) -> None:
    for key, value in fields.items():
        setattr(settings, key, value)


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else ()):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def unregister() -> None:
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    runner.stop_backend()
