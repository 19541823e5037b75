"""`python -m backend serve`: the process the Blender add-on talks to.

Requests arrive as frames on stdin and events leave as frames on stdout
(blender_addon/protocol.py); logs go to stderr. The main thread only reads
requests; a job runs in its own thread, its heavy steps in the worker
process, so a cancel is acted on at once. The server exits when its parent
dies (PR_SET_PDEATHSIG, plus a watchdog), taking its worker with it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

from blender_addon import protocol
from blender_addon.protocol import ErrorCode
from backend.errors import Cancelled, ReconstructError


class Server:
    def __init__(self, out, max_frame_bytes: int):
        self._out = out
        self._lock = threading.Lock()
        self.max_frame_bytes = max_frame_bytes
        self._job_thread: threading.Thread | None = None
        self._job_id = None
        self._cancel = threading.Event()
        self._device: dict | None = None
        self._device_ready = threading.Event()
        self._render_lock = threading.Lock()
        threading.Thread(target=self._probe_device, daemon=True, name="device-probe").start()

    def _probe_device(self) -> None:
        from backend.device import describe_device

        try:
            self._device = describe_device()
        finally:
            self._device_ready.set()

    def send(self, type_: str, **fields) -> None:
        frame = protocol.pack(protocol.message(type_, **fields))
        with self._lock:
            try:
                self._out.write(frame)
            except OSError:
                os._exit(0)  # nobody is listening any more

    def error(self, code: str, message: str, hint: str = "", details: dict | None = None, job=None) -> None:
        self.send(protocol.ERROR, job=job, code=code, message=message, hint=hint, details=details or {})

    # Request handlers -----------------------------------------------------
    def handshake(self, msg: dict) -> None:
        from backend.device import missing_packages, package_versions

        theirs = msg.get("protocol")
        if theirs != protocol.PROTOCOL_VERSION:
            self.error(ErrorCode.PROTOCOL_MISMATCH,
                       f"The add-on speaks protocol {theirs}, this backend speaks protocol {protocol.PROTOCOL_VERSION}.",
                       "Install the same version of the add-on and the backend: press 'Set up backend' in the "
                       "add-on's preferences to reinstall the backend.",
                       {"backend_version": protocol.__version__})
            return
        missing = missing_packages()
        if missing:
            self.error(ErrorCode.MISSING_DEPENDENCIES,
                       f"The backend environment ({sys.executable}) is missing: {', '.join(missing)}.",
                       "Press 'Set up backend' in the add-on's preferences, or point 'Backend Python' at an "
                       "environment where `pip install blender-reconstruct` was run.", {"missing": missing})
            return
        self._device_ready.wait(timeout=60)
        self.send(protocol.HANDSHAKE, protocol=protocol.PROTOCOL_VERSION, backend_version=protocol.__version__,
                  device=self._device or {"type": "cpu", "name": "CPU"}, packages=package_versions(),
                  pid=os.getpid())

    def run(self, msg: dict) -> None:
        job = msg.get("job")
        if self._job_id is not None:
            self.error(ErrorCode.BUSY, f"Job {self._job_id} is still running.",
                       "Wait for it to finish or cancel it first.", job=job)
            return
        for key in ("photos", "workspace"):
            if not isinstance(msg.get(key), str):
                self.error(ErrorCode.BAD_REQUEST, f"A run request needs '{key}' (a folder path).", job=job)
                return
        self._cancel = threading.Event()
        self._job_id = job if job is not None else ""
        self._job_thread = threading.Thread(target=self._run_job, args=(msg, self._cancel), name=f"job-{job}")
        self._job_thread.start()

    def _run_job(self, msg: dict, cancel: threading.Event) -> None:
        from backend.options import STAGES, JobOptions
        from backend.pipeline import run_job

        job = msg.get("job")
        events = _ProtocolEvents(self, job, str(msg["workspace"]))
        try:
            options = JobOptions.from_dict(msg.get("options") or {})
            stages = tuple(msg.get("stages") or STAGES)
            unknown = set(stages) - set(STAGES)
            if unknown:
                raise ReconstructError(ErrorCode.BAD_OPTIONS, f"Unknown stage(s): {', '.join(sorted(unknown))}.",
                                       f"Stages: {', '.join(STAGES)}.")
            start_over = msg.get("new", False)
            if not isinstance(start_over, bool):
                raise ReconstructError(ErrorCode.BAD_OPTIONS, f"new={start_over!r} must be true or false.",
                                       "Send new: true only to start the workspace over for other photos.")
            result = run_job(msg["photos"], msg["workspace"], options, events, cancel, stages,
                             start_over=start_over)
            final = (protocol.RESULT, dict(workspace=str(result.workspace), artifacts=result.artifacts,
                                           summary=result.summary, ran=result.ran))
        except Cancelled:
            final = (protocol.CANCELLED, dict(message="Cancelled: finished stages are kept; run again to resume."))
        except ReconstructError as exc:
            final = (protocol.ERROR, exc.as_fields())
        except Exception as exc:
            traceback.print_exc()
            final = (protocol.ERROR, dict(code=ErrorCode.INTERNAL, message=f"Internal error: {exc}",
                                          hint="Please report this with the backend log.",
                                          details={"traceback": traceback.format_exc()}))
        # The job is over (its workspace unlocked, its worker gone) before the
        # client hears so: a run sent in reply to this event is not 'busy'.
        self._job_id = None
        self.send(final[0], job=job, **final[1])

    def cancel(self, msg: dict) -> None:
        if self._job_id is not None and msg.get("job") in (None, self._job_id):
            self._cancel.set()

    def render_splats(self, msg: dict) -> None:
        # Off the reading thread, so a cancel or another request is not held up by a render.
        threading.Thread(target=self._render_splats, args=(msg,), daemon=True, name="render").start()

    def _render_splats(self, msg: dict) -> None:
        import json

        import numpy as np

        from backend.splat_render import render_camera
        from backend.workspace import Workspace
        from blender_addon.camera_math import blender_matrix_to_colmap

        rid = msg.get("id")
        try:
            ws = Workspace(str(msg["workspace"]))
            if not ws.splats_ply.is_file():
                raise ReconstructError(ErrorCode.NO_RESULT, f"The workspace {ws.root} has no splats yet.",
                                       "Reconstruct with the Gaussian Splats stage turned on first.")
            cam = msg["camera"]
            R, t = blender_matrix_to_colmap(np.asarray(cam["matrix_world"], np.float64))
            started = time.perf_counter()
            with self._render_lock:
                rgba = render_camera(ws.splats_ply, R, t, float(cam["fx"]), float(cam["fy"]), float(cam["cx"]),
                                     float(cam["cy"]), int(cam["width"]), int(cam["height"]))
            info = json.loads(ws.splats_info.read_text()) if ws.splats_info.is_file() else {}
            self.send(protocol.RENDER, id=rid, image=(rgba * 255 + 0.5).astype(np.uint8),
                      background=info.get("background", [0.0, 0.0, 0.0]),
                      seconds=round(time.perf_counter() - started, 3))
        except ReconstructError as exc:
            self.send(protocol.ERROR, id=rid, **exc.as_fields())
        except (KeyError, TypeError, ValueError) as exc:
            self.send(protocol.ERROR, id=rid, code=ErrorCode.BAD_REQUEST,
                      message=f"A render request needs workspace and camera {{matrix_world, width, height, fx, fy, "
                              f"cx, cy}}: {exc!r}", hint="", details={})
        except Exception as exc:
            traceback.print_exc()
            self.send(protocol.ERROR, id=rid, code=ErrorCode.INTERNAL, message=f"Rendering the splats failed: {exc}",
                      hint="Please report this with the backend log.", details={})

    def stop(self) -> None:
        self._cancel.set()
        if self._job_thread is not None:
            self._job_thread.join(timeout=10)

    def handle(self, msg: dict) -> bool:
        """Dispatch one request; False means shut down."""
        kind = msg["type"]
        if kind == protocol.SHUTDOWN:
            return False
        handler = {protocol.HANDSHAKE: self.handshake, protocol.RUN: self.run, protocol.CANCEL: self.cancel,
                   protocol.RENDER_SPLATS: self.render_splats}.get(kind)
        if handler is None:
            self.error(ErrorCode.BAD_REQUEST, f"Unknown request type {kind!r}.")
        else:
            handler(msg)
        return True


class _ProtocolEvents:
    def __init__(self, server: Server, job, workspace: str):
        self.server, self.job, self.workspace = server, job, workspace

    def progress(self, stage: str, fraction: float, message: str) -> None:
        self.server.send(protocol.PROGRESS, job=self.job, stage=stage, fraction=float(fraction), message=message)

    def warning(self, code: str, message: str, details: dict) -> None:
        self.server.send(protocol.WARNING, job=self.job, code=code, message=message, details=details)

    def log(self, message: str) -> None:
        self.server.send(protocol.LOG, job=self.job, message=message)

    def stage_done(self, stage: str, artifacts: dict[str, str]) -> None:
        self.server.send(protocol.STAGE_DONE, job=self.job, stage=stage, workspace=self.workspace,
                         artifacts=artifacts)


def serve(max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES) -> int:
    from backend.worker import die_with_parent

    die_with_parent()
    # Frames own the real stdout; a stray print from any library goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    server = Server(out, max_frame_bytes)
    stdin = sys.stdin.buffer
    try:
        while True:
            try:
                msg = protocol.read_frame(stdin, max_frame_bytes)
            except protocol.FrameError as exc:
                server.error(exc.code, str(exc), "The request was dropped; the backend is still running.")
                continue
            if msg is None or not server.handle(msg):
                break
    finally:
        server.stop()
    return 0
