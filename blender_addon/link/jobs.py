"""The running job, seen from Blender: one backend client, one job at a time.

`tick()` is the bpy.app.timers callback. It drains the client's event queue
(never blocking) and copies the news into the scene's status properties. Each
stage's result is imported as soon as the backend says the stage is done
(`stage_done`): a reader thread (results.JobImport) reads and converts the
files, and a timer call creates one part's datablocks (bpy is not thread-safe).
A cancel or a later stage's failure keeps what has arrived. The pipes belong to
the client's threads.
"""
from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from pathlib import Path

import bpy

from ..ui import preferences
from ..shared import media, protocol
from ..shared.layout import Layout
from .client import BackendClient, BackendStartError
from ..shared.protocol import ErrorCode
from ..ui.properties import stamp, toggled
from ..shared import estimate as est
from ..importers.results import LABELS, import_hint

TICK_SECONDS = 0.1
BUILD_TICK_SECONDS = 0.02  # after a call that created datablocks: let Blender draw, then build the next part
IDLE_TICK_SECONDS = 0.5
MAX_WARNINGS = 200
# Errors that mean the backend cannot serve at all (not one job's failure).
_BACKEND_FATAL = (ErrorCode.PROTOCOL_MISMATCH, ErrorCode.MISSING_DEPENDENCIES, ErrorCode.BACKEND_EXITED)
# Photo folder names that say nothing about the subject: the job is named after the folders above them too.
GENERIC_PHOTO_FOLDERS = {"images", "image", "imgs", "img", "photos", "photo", "pictures", "pics", "jpg", "jpeg",
                         "png", "tif", "tiff", "raw", "dng", "input", "inputs", "frames", "rgb", "color", "data",
                         "dslr_images", "source", "src", "originals", "dcim", "100canon", "100media"}
# What a workspace of ours holds before its job.json is written (a run that stopped at once),
# and what operating systems leave in any folder.
_EARLY_WORKSPACE_FILES = {".lock", "logs", ".write-test", ".DS_Store", "Thumbs.db", "desktop.ini", ".localized"}


class UserError(Exception):
    """Something the user can fix; shown as the operator's error report."""


class StageClock:
    """The running job's stages as the add-on sees them: when each started
    (its first progress event), how long the finished ones took, and the
    estimate made before the run, updated from the actual speed."""

    def __init__(self, before: list | None):
        self.before = before
        self.stage: str | None = None
        self.fraction = 0.0
        self.stage_began = 0.0
        self.done: dict[str, float] = {}

    def progress(self, stage: str, fraction: float, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if stage != self.stage:
            if self.stage is not None:
                self.done[self.stage] = now - self.stage_began
            self.stage, self.stage_began = stage, now
        self.fraction = fraction

    def current(self, now: float | None = None) -> tuple[list, float] | None:
        """(the estimates now, seconds left), or None without an estimate."""
        if not self.before:
            return None
        if self.stage is None:
            return self.before, sum(e.seconds for e in self.before)
        elapsed = (time.perf_counter() if now is None else now) - self.stage_began
        done = {k: v for k, v in self.done.items() if k != self.stage}
        now_estimates = est.update(self.before, self.stage, self.fraction, elapsed, done)
        return now_estimates, est.remaining(now_estimates, self.stage, elapsed, done)


class Runner:
    def __init__(self):
        self.client: BackendClient | None = None
        self.job_id: str | None = None
        self.scene_name: str | None = None
        self.pending_run: dict | None = None  # sent once the handshake succeeds
        self.result: dict | None = None
        self.importer = None  # results.JobImport of the running job
        self.ending: tuple[str, dict] | None = None  # the job's end, applied once its imports are built
        self.job_parts: tuple[str, ...] = ()
        self.tick_durations: list[float] = []  # seconds per timer call, for tests and diagnostics
        # The same calls' own CPU time: the wall time also counts waiting for the
        # GIL (the result reader's numpy calls) and for the OS (the backend's
        # processes share the cores).
        self.tick_cpu: list[float] = []
        # Timer calls that created datablocks: {part, count, seconds (the call), read_seconds (reader thread)}.
        self.import_ticks: list[dict] = []
        self.render_replies: dict = {}  # request id -> RENDER (or ERROR) event, for the previews
        self.clock = StageClock(None)  # the running job's stage times and its estimate

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
        from ..importers.results import JobImport

        settings = context.scene.reconstruct
        if self.running:
            raise UserError("A reconstruction is already running: cancel it or wait for it to finish.")
        photos = bpy.path.abspath(settings.photos_dir) if settings.photos_dir else ""
        if not photos:
            raise UserError("Choose the folder of photos (or a video) first.")
        if Path(photos).is_file():
            if not media.is_video(photos):
                raise UserError(f"{Path(photos).name} is a file, not a folder of photos or a video: choose the "
                                "folder that holds the photos, or a video file (.mp4, .mov, ...).")
        elif not Path(photos).is_dir():
            raise UserError(f"The photo folder or video {photos} does not exist.")
        photos_path = Path(photos).resolve()
        name = bpy.path.clean_name(settings.job_name) if settings.job_name else job_name_for(photos_path)
        root = preferences.workspace_root(context)
        start_over = bool(settings.start_over)
        # Start Over: this very workspace, for these photos, whatever it was made for.
        workspace = root / name if start_over else workspace_for(root, name, photos_path)
        prefs = preferences.get(context)
        dense = dense_options(settings, prefs.device, workspace)  # a bad region is refused before anything starts
        client = self.ensure_backend(context)
        self.job_id = uuid.uuid4().hex[:12]
        self.scene_name = context.scene.name
        self.result = self.ending = None
        self.tick_durations = []
        self.tick_cpu = []
        self.import_ticks = []
        self.job_parts = self.parts()
        self.importer = JobImport(self.scene_name, workspace, workspace.name, self.job_parts,
                                  point_size=settings.point_size)
        request = {"job": self.job_id, "photos": str(photos_path), "workspace": str(workspace),
                   "options": {"quality": settings.quality, "video": {"target_frames": settings.video_frames},
                               "sfm": {"device": prefs.device},
                               "dense": dense, "splats": {"device": dense["device"]},
                               "texture": texture_options(settings)},
                   "stages": requested_stages(settings), "new": start_over,
                   "masks": bpy.path.abspath(settings.masks_dir) if settings.masks_dir and not media.is_video(photos)
                   else None}
        if client.handshake is not None:
            client.send(protocol.RUN, **request)
        else:
            self.pending_run = request
        settings.warnings.clear()
        self.clock = StageClock(estimates.for_settings(settings, wait=True))
        _set(settings, state="STARTING", stage="", progress=0.0, message="Starting the backend...",
             started=stamp(), finished="", error="", hint="", workspace=str(workspace), collection="",
             start_over=False)  # a one-off: the next run reuses what this one makes
        _schedule()
        return self.job_id

    def parts(self) -> tuple[str, ...]:
        """What to import from the workspace: what the user asked for."""
        settings = self._settings()
        return ("cameras", "sparse", "region", *(stage.part for stage in toggled(settings) if stage.part))

    def cancel(self) -> None:
        if self.client is not None and self.job_id is not None and self.ending is None:
            self.client.send(protocol.CANCEL, job=self.job_id)

    def _settings(self):
        scene = bpy.data.scenes.get(self.scene_name or "")
        return scene.reconstruct if scene is not None else None

    def _end(self, state: str, **fields) -> None:
        """The job is over on the backend's side; it ends here once what arrived is imported."""
        if self.ending is None:
            self.ending = (state, fields)
            self.pending_run = None
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.ending is None or (self.importer is not None and not self.importer.idle):
            return
        state, fields = self.ending
        importer, self.importer = self.importer, None
        kept, collection = "", ""
        if importer is not None:
            importer.close()
            kept, collection = importer.kept(), importer.collection_name
            if importer.failed and state == "DONE":
                state = "ERROR"
                what = ", ".join(f"the {LABELS[f.part]} ({f.message})" for f in importer.failed)
                fields = dict(error=f"Could not import {what}.", hint=import_hint(importer.workspace, importer.failed),
                              message=f"Imported {kept} into '{collection}'" if kept else "Nothing was imported")
        where = f" in '{collection}'" if collection else ""
        if state == "CANCELLED":
            fields["message"] = (f"Cancelled; kept {kept}{where}." if kept else "Cancelled; nothing was imported.") + \
                " Finished stages stay in the workspace: run again to resume."
        elif state == "ERROR" and "message" not in fields:
            fields["message"] = f"Failed; kept {kept}{where}." if kept else "Failed; nothing was imported."
        settings = self._settings()
        if settings is not None:
            _set(settings, state=state, finished=stamp(), collection=collection, **fields)
        self.job_id = self.pending_run = self.ending = self.result = None

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
        if kind == protocol.ERROR and msg.get("code") in _BACKEND_FATAL:
            preferences.set_status(msg["message"], False)
        if self.ending is not None:
            return  # the job is over; what arrived is being imported
        if kind == protocol.PROGRESS:
            self.clock.progress(msg["stage"], msg["fraction"])
            _set(settings, state="RUNNING", stage=msg["stage"], progress=msg["fraction"], message=msg["message"])
        elif kind == protocol.WARNING and len(settings.warnings) < MAX_WARNINGS:
            item = settings.warnings.add()
            item.code, item.text = msg.get("code", ""), msg["message"]
        elif kind == protocol.STAGE_DONE:
            if self.importer is not None and msg.get("job") == self.job_id:
                self.importer.stage_done(msg.get("stage", ""), msg.get("artifacts") or {})
        elif kind == protocol.RESULT:
            self.result = msg
            if self.importer is not None:
                self.importer.submit_missing()  # parts no stage_done brought
            _set(settings, state="IMPORTING", message="Importing the result...")
            self._end("DONE", progress=1.0, message=_summary_message(msg.get("summary", {})))
        elif kind == protocol.CANCELLED:
            self._end("CANCELLED")
        elif kind == protocol.ERROR:
            fatal = msg.get("code") in _BACKEND_FATAL
            if self.job_id is not None and (fatal or msg.get("job") == self.job_id):
                self._end("ERROR", error=msg["message"], hint=_error_hint(msg))

    def _handshake_failed(self, message: str, hint: str) -> None:
        preferences.set_status(message, False)
        if self.job_id is not None:
            self._end("ERROR", error=message, hint=hint)

    def tick(self) -> float | None:
        started, cpu = time.perf_counter(), time.thread_time()
        built = None
        try:
            if self.importer is not None and self.importer.ready():
                # Creating datablocks is main-thread bpy work by nature: one part per call.
                built = self.importer.build_next()
                self._maybe_finish()
                redraw()
                return BUILD_TICK_SECONDS
            if self.client is not None:
                self.pump()
            self._maybe_finish()
            if not self.running and (self.client is None or (not self.client.alive and self.client.events.empty())):
                return None
            redraw()
            return TICK_SECONDS if self.running else IDLE_TICK_SECONDS
        finally:
            # Every other call while a job runs, the reader thread busy or not, must stay short.
            elapsed = time.perf_counter() - started
            if built is not None and built.built:
                self.import_ticks.append({"part": built.part, "count": built.count, "seconds": elapsed,
                                          "read_seconds": built.read_seconds})
            elif self.running or built is not None:
                self.tick_durations.append(elapsed)
                self.tick_cpu.append(time.thread_time() - cpu)


runner = Runner()


class PhotoEstimates:
    """The sidebar's estimate before a run. The photos' sizes come from their
    headers, read in a thread (a large folder on a network drive must not stall
    draw()), cached by folder and its modification time; the estimate itself
    is arithmetic on them, cheap enough for draw()."""

    def __init__(self):
        self._sizes: dict[tuple, list] = {}
        self._reading: set[tuple] = set()
        self.speed = 1.0  # estimate.measure_speed(), measured with each folder's read

    def sizes(self, folder: str, wait: bool = False) -> list | None:
        try:
            key = (folder, os.stat(folder).st_mtime_ns)
        except OSError:
            return None
        if key in self._sizes:
            return self._sizes[key]
        if wait:
            self._sizes[key] = est.photo_sizes(folder)
            return self._sizes[key]
        if key not in self._reading:
            import threading

            self._reading.add(key)
            threading.Thread(target=self._read, args=(key,), daemon=True, name="photo-sizes").start()
            if not bpy.app.timers.is_registered(_redraw_when_read):
                bpy.app.timers.register(_redraw_when_read, first_interval=0.1)
        return None

    def _read(self, key: tuple) -> None:
        sizes = est.photo_sizes(key[0])
        self.speed = est.measure_speed()  # the probe releases the GIL: the UI keeps running
        self._sizes[key] = sizes  # one dict store: atomic under the GIL
        self._reading.discard(key)

    @property
    def reading(self) -> bool:
        return bool(self._reading)

    def for_settings(self, settings, wait: bool = False) -> list | None:
        """Per-stage estimates for the sidebar's settings, or None (no photos
        yet, or their sizes still being read)."""
        folder = bpy.path.abspath(settings.photos_dir) if settings.photos_dir else ""
        if media.is_video(folder):
            return None  # the frames are chosen by the backend's first stage
        sizes = self.sizes(folder, wait) if folder else None
        if not sizes:
            return None
        devices = stage_devices_known()
        cpu = [g for g in ("dense", "splats") if devices.get(g, "cpu") == "cpu"]
        options = est.preset_options(settings.quality, cpu)
        return est.estimate(sizes, options, devices, stages=est.stages_run(requested_stages(settings)),
                            speed=self.speed)


def stage_devices_known() -> dict[str, str]:
    """Where each option group will run ("cpu" or "cuda"), as the backend's
    handshake said (backend.job.device.stage_devices); the CPU for a group
    it has not said, or when no backend is running yet, or when the
    preferences ask for the CPU."""
    try:
        prefs_device = preferences.get(bpy.context).device
    except (AttributeError, KeyError):
        prefs_device = "auto"
    if prefs_device == "cpu":
        return {"sfm": "cpu", "dense": "cpu", "splats": "cpu"}
    handshake = runner.client.handshake if runner.client is not None else None
    said = (handshake or {}).get("stage_devices") or {}
    return {group: (said.get(stage) or {}).get("device", "cpu")
            for group, stage in (("sfm", "features"), ("dense", "dense"), ("splats", "splats"))}


def _redraw_when_read() -> float | None:
    if estimates.reading:
        return 0.1
    redraw(("VIEW_3D",))
    return None


estimates = PhotoEstimates()


def job_name_for(photos: Path) -> str:
    """A job's default name: its photo folder's, with the folders above it while those say
    nothing about the subject (…/sceaux_castle/images -> 'sceaux_castle_images')."""
    folder = Path(photos)
    if media.is_video(folder) and not folder.is_dir():
        return bpy.path.clean_name(folder.stem) or "reconstruction"
    names = [folder.name]
    while names[0].lower() in GENERIC_PHOTO_FOLDERS and folder.parent.name and len(names) < 3:
        folder = folder.parent
        names.insert(0, folder.name)
    return bpy.path.clean_name("_".join(n for n in names if n)) or "reconstruction"


def workspace_for(root: Path, name: str, photos: Path) -> Path:
    """`<root>/<name>`, unless that folder was made for other photos (its job.json says so) or
    holds files that are not a workspace's; then `<name>-2`, `-3`, ...: two photo folders never
    share a workspace."""
    for n in itertools.count(1):
        candidate = Path(root) / (name if n == 1 else f"{name}-{n}")
        if _workspace_fits(candidate, photos):
            return candidate
        if n >= 999:
            raise UserError(f"Too many workspaces named {name} in {root}: choose another Job Name.")
    raise AssertionError  # not reached


def workspace_photos_recorded(workspace: Path) -> str | None:
    """The photo folder a workspace's job.json records ('' when it cannot be read)."""
    try:
        return str(json.loads(Layout(workspace).job_file.read_text()).get("photos") or "")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return ""


def _workspace_fits(folder: Path, photos: Path) -> bool:
    if not folder.exists():
        return True
    recorded = workspace_photos_recorded(folder)
    if recorded is None:  # no job.json: empty, or a run of ours that stopped before writing it
        try:
            return folder.is_dir() and set(os.listdir(folder)) <= _EARLY_WORKSPACE_FILES
        except OSError:
            return False
    return bool(recorded) and os.path.realpath(recorded) == os.path.realpath(photos)


def _summary_message(summary: dict) -> str:
    dense = summary.get("dense") or {}
    extra = "".join(f", {dense[key]} {what}" for key, what in (("dense_points", "dense points"),
                                                               ("mesh_faces", "mesh faces"))
                    if dense.get(key) is not None)
    splats = summary.get("splats") or {}
    if splats.get("num_splats") is not None:
        extra += f", {splats['num_splats']} splats"
        if splats.get("psnr") is not None:
            extra += f" (held-out PSNR {splats['psnr']:.1f} dB)"
    return (f"{summary.get('registered_images', '?')}/{summary.get('total_images', '?')} photos "
            f"registered, {summary.get('num_points', 0)} points{extra}")


def _error_hint(msg: dict) -> str:
    if msg.get("code") == ErrorCode.WORKSPACE_OTHER_PHOTOS:
        return ("Tick 'Start Over' to reuse this workspace for these photos (its results are removed), "
                "or give the job another name.")
    return msg.get("hint", "")


def requested_stages(settings) -> list[str]:
    """What the backend is asked for (it runs these and the stages they need)."""
    return ["undistort", *(stage.name for stage in toggled(settings))]


def texture_options(settings) -> dict:
    """The atlas size the sidebar asks for (none: the quality preset's)."""
    return {} if settings.texture_size == "QUALITY" else {"size": int(settings.texture_size)}


def dense_options(settings, device: str, workspace: Path | None = None) -> dict:
    """The dense stages' options; the region, if any, in `workspace`'s frame (the
    backend's), whatever Set Scale / Set Ground did to the job in Blender."""
    options = {"device": device}
    if settings.roi_object is not None:
        from ..importers.frame import origin_for_workspace, to_workspace
        from .roi import object_box

        origin = origin_for_workspace(workspace) if workspace is not None else None
        try:
            box = object_box(settings.roi_object, to_workspace(origin))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        from ..importers.region import untouched

        if not untouched(settings.roi_object, box):  # a job's automatic region as it came: the backend's own
            options["roi"] = box
    return options


def _tick() -> float | None:
    return runner.tick()


def _schedule() -> None:
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_SECONDS)


def _set(settings, **fields) -> None:
    for key, value in fields.items():
        setattr(settings, key, value)


def redraw(area_types=("VIEW_3D", "PREFERENCES")) -> None:
    """Redraw the areas that show the add-on's state (the sidebar, the preferences)."""
    wm = bpy.context.window_manager
    for window in (wm.windows if wm else ()):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "PREFERENCES"):
                area.tag_redraw()


def unregister() -> None:
    for timer in (_tick, _redraw_when_read):
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    runner.stop_backend()
