"""`python -m backend serve`: the process the Blender add-on talks to.

Requests arrive as frames on stdin and events leave as frames on stdout
(blender_addon/shared/protocol.py); logs go to stderr. The main thread only reads
requests; a job runs in its own thread, its heavy steps in the worker
process, so a cancel is acted on at once. The server exits when its parent
dies (PR_SET_PDEATHSIG, plus a watchdog), taking its worker with it.

Nothing a peer sends is trusted: frames are bounded in bytes and decoded
objects (protocol.FrameReader), an oversized frame is answered at once and
the input resynchronised on protocol.SYNC, and every request is checked field
by field before anything is started or allocated. Bad input is answered with
bad_request, bad_options, malformed_frame or frame_too_large naming what is
wrong, never with internal: internal means a bug here.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import threading
import time
import traceback

from blender_addon.shared import protocol
from blender_addon.shared.protocol import ErrorCode
from backend.errors import Cancelled, ReconstructError

MAX_PENDING_RENDERS = 8
"""Render requests queued at once (each waits in its own thread); more are answered busy."""


class Server:
    def __init__(self, out, max_frame_bytes: int):
        self._out = out
        self._lock = threading.Lock()
        self.max_frame_bytes = max_frame_bytes
        self._job_thread: threading.Thread | None = None
        self._job_id = None
        self._cancel = threading.Event()
        self._device: dict | None = None
        self._stage_devices: dict | None = None
        self._device_ready = threading.Event()
        self._render_lock = threading.Lock()
        self._renders = threading.BoundedSemaphore(MAX_PENDING_RENDERS)
        threading.Thread(target=self._probe_device, daemon=True, name="device-probe").start()

    def _probe_device(self) -> None:
        from backend.job.device import describe_device, stage_devices

        try:
            self._device = describe_device()
            # "auto": the handshake comes before any job's device setting.
            self._stage_devices = {stage: where.to_dict() for stage, where in stage_devices("auto").items()}
        finally:
            self._device_ready.set()

    def send(self, type_: str, **fields) -> None:
        frame = protocol.pack(protocol.message(type_, **fields))
        if len(frame) - 4 > protocol.DEFAULT_MAX_FRAME_BYTES:
            # The add-on would drop it: say so instead (a bug here, not bad input).
            print(f"refusing to send a {type_} event of {len(frame) - 4} bytes", file=sys.stderr)
            frame = protocol.pack(protocol.message(
                protocol.ERROR, job=fields.get("job"), id=fields.get("id"), code=ErrorCode.INTERNAL,
                message=f"The backend's {type_} event ({len(frame) - 4} bytes) is over the protocol's limit of "
                        f"{protocol.DEFAULT_MAX_FRAME_BYTES} bytes.", hint="Please report this with the backend log.",
                details={}))
        with self._lock:
            try:
                self._out.write(frame)
            except OSError:
                os._exit(0)  # nobody is listening any more

    def error(self, code: str, message: str, hint: str = "", details: dict | None = None, job=None) -> None:
        self.send(protocol.ERROR, job=job, code=code, message=message, hint=hint, details=details or {})

    # Request handlers -----------------------------------------------------
    def handshake(self, msg: dict) -> None:
        from backend.job.device import missing_packages, package_versions

        theirs = msg.get("protocol")
        if theirs != protocol.PROTOCOL_VERSION:
            self.error(ErrorCode.PROTOCOL_MISMATCH,
                       f"The add-on speaks protocol {theirs!r}, this backend speaks protocol {protocol.PROTOCOL_VERSION}.",
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
                  device=self._device or {"type": "cpu", "name": "CPU"}, stage_devices=self._stage_devices or {},
                  packages=package_versions(),
                  pid=os.getpid(), max_request_bytes=self.max_frame_bytes)

    def run(self, msg: dict) -> None:
        """Checks the whole request (options included) here, on the reading
        thread, so a bad one is refused before a thread, a worker or the
        workspace is touched."""
        job = msg.get("job")
        if not _is_id(job):
            self.error(ErrorCode.BAD_REQUEST, f"A run request's 'job' must be a string or an integer, not "
                                              f"{_kind(job)}.", "Name each job with a short string.")
            return
        try:
            checked = _check_run(msg)
        except ReconstructError as exc:
            self.send(protocol.ERROR, job=job, **exc.as_fields())
            return
        if self._job_id is not None:
            self.error(ErrorCode.BUSY, f"Job {self._job_id} is still running.",
                       "Wait for it to finish or cancel it first.", job=job)
            return
        self._cancel = threading.Event()
        self._job_id = job if job is not None else ""
        self._job_thread = threading.Thread(target=self._run_job, args=(job, checked, self._cancel),
                                            name=f"job-{job}")
        self._job_thread.start()

    def _run_job(self, job, checked: dict, cancel: threading.Event) -> None:
        from backend.job.pipeline import run_job

        events = _ProtocolEvents(self, job, checked["workspace"])
        try:
            result = run_job(checked["photos"], checked["workspace"], checked["options"], events, cancel,
                             checked["stages"], start_over=checked["new"], masks=checked["masks"])
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
        job = msg.get("job")
        if not _is_id(job):
            self.error(ErrorCode.BAD_REQUEST, f"A cancel request's 'job' must be a string or an integer, not "
                                              f"{_kind(job)}.")
            return
        if self._job_id is not None and job in (None, self._job_id):
            self._cancel.set()

    def render_splats(self, msg: dict) -> None:
        rid = msg.get("id")
        if not _is_id(rid):
            self.send(protocol.ERROR, id=None, code=ErrorCode.BAD_REQUEST,
                      message=f"A render request's 'id' must be a string or an integer, not {_kind(rid)}.",
                      hint="", details={})
            return
        try:
            checked = _check_render(msg)
        except ReconstructError as exc:
            self.send(protocol.ERROR, id=rid, **exc.as_fields())
            return
        if not self._renders.acquire(blocking=False):
            self.send(protocol.ERROR, id=rid, code=ErrorCode.BUSY,
                      message=f"{MAX_PENDING_RENDERS} renders are already waiting.",
                      hint="Wait for their replies before asking for more.", details={})
            return
        # Off the reading thread, so a cancel or another request is not held up by a render.
        threading.Thread(target=self._render_splats, args=(rid, checked), daemon=True, name="render").start()

    def _render_splats(self, rid, checked: dict) -> None:
        from blender_addon.shared.ply_io import PlyError

        try:
            self.send(protocol.RENDER, id=rid, **self._render(checked))
        except ReconstructError as exc:
            self.send(protocol.ERROR, id=rid, **exc.as_fields())
        except PlyError as exc:
            self.send(protocol.ERROR, id=rid, code=ErrorCode.FILE_ERROR,
                      message=f"The splats file of {checked['workspace']} cannot be read: {exc}.",
                      hint="Reconstruct the splats again (Gaussian Splats stage, forced).", details={})
        except OSError as exc:
            self.send(protocol.ERROR, id=rid, code=ErrorCode.FILE_ERROR,
                      message=f"Reading the splats of {checked['workspace']} failed: "
                              f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}.",
                      hint="Check that the workspace is readable, or reconstruct the splats again.", details={})
        except MemoryError:
            self.send(protocol.ERROR, id=rid, code=ErrorCode.RENDER_FAILED,
                      message=f"Not enough memory to render {checked['width']}x{checked['height']} pixels.",
                      hint="Render previews at a lower Resolution %.", details={})
        except Exception as exc:
            # The request was checked: this is the renderer failing (a device
            # error, a splats file it cannot use). Reported as such, not as a bad
            # request, and not as internal: the backend goes on serving.
            traceback.print_exc()
            self.send(protocol.ERROR, id=rid, code=ErrorCode.RENDER_FAILED,
                      message=f"Rendering the splats of {checked['workspace']} failed: {type(exc).__name__}: {exc}",
                      hint="The backend log has the details; reconstructing the splats again may help.", details={})
        finally:
            self._renders.release()

    def _render(self, c: dict) -> dict:
        import json

        import numpy as np

        from backend.splats.render import render_camera
        from backend.job.workspace import Workspace

        ws = Workspace(c["workspace"])
        if not ws.splats_ply.is_file():
            raise ReconstructError(ErrorCode.NO_RESULT, f"The workspace {ws.root} has no splats yet.",
                                   "Reconstruct with the Gaussian Splats stage turned on first.")
        started = time.perf_counter()
        with self._render_lock:
            rgba = render_camera(ws.splats_ply, c["R"], c["t"], c["fx"], c["fy"], c["cx"], c["cy"],
                                 c["width"], c["height"])
        try:
            info = json.loads(ws.splats_info.read_text()) if ws.splats_info.is_file() else {}
            background = [float(v) for v in info.get("background", [0.0, 0.0, 0.0])][:3]
        except (ValueError, TypeError, AttributeError):  # a damaged splats.json: the training's default
            background = [0.0, 0.0, 0.0]
        return dict(image=(rgba * 255 + 0.5).astype(np.uint8), background=background,
                    seconds=round(time.perf_counter() - started, 3))

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
            self.error(ErrorCode.BAD_REQUEST, f"Unknown request type {kind[:100]!r}.",
                       f"Requests: {protocol.HANDSHAKE}, {protocol.RUN}, {protocol.CANCEL}, "
                       f"{protocol.RENDER_SPLATS}, {protocol.SHUTDOWN}.")
        else:
            handler(msg)
        return True


# Request checks: each names the field and what it may be -----------------
def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {_short(value)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_id(value) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _folder(msg: dict, key: str, what: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ReconstructError(ErrorCode.BAD_REQUEST,
                               f"A {what} request needs '{key}', a folder path (a non-empty string); got {_kind(value)}.")
    return value


def _check_run(msg: dict) -> dict:
    """A run request's fields, checked; ReconstructError naming the first bad one."""
    from backend.options import JobOptions
    from blender_addon.shared.stages import NAMES as STAGES

    photos = _folder(msg, "photos", "run")
    workspace = _folder(msg, "workspace", "run")
    options = msg.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ReconstructError(ErrorCode.BAD_OPTIONS,
                               f"'options' must be a map of option names to values, not {_kind(options)}.",
                               'Send e.g. options: {"quality": "fast", "sfm": {"max_image_size": 1600}}.')
    stages = msg.get("stages")
    if stages is None or stages == []:
        stages = STAGES  # all of them
    elif not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        raise ReconstructError(ErrorCode.BAD_OPTIONS,
                               f"'stages' must be a list of stage names, not {_kind(stages)}.",
                               f"Stages: {', '.join(STAGES)} (e.g. stages: [\"mesh\"]).")
    else:
        unknown = [s for s in dict.fromkeys(stages) if s not in STAGES]
        if unknown:
            raise ReconstructError(ErrorCode.BAD_OPTIONS,
                                   f"'stages' names unknown stage(s): {', '.join(map(_short, unknown))}.",
                                   f"Stages: {', '.join(STAGES)}.")
        stages = tuple(stages)
    start_over = msg.get("new", False)
    if not isinstance(start_over, bool):
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"'new' must be true or false, not {_kind(start_over)}.",
                               "Send new: true only to start the workspace over for other photos.")
    try:
        job_options = JobOptions.from_dict(options)
    except ReconstructError:
        raise
    except Exception as exc:  # the options' own checks missed a wrong type: still the options' fault
        traceback.print_exc()
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"The options could not be read: {type(exc).__name__}: {exc}.",
                               "Check each option's type against the README.") from None
    masks = msg.get("masks") or None
    if masks is not None:
        masks = _folder(msg, "masks", "run")
    return {"photos": photos, "workspace": workspace, "options": job_options, "stages": stages,
            "new": start_over, "masks": masks}


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite_rows(value, rows: int, cols: int | None, limit: float) -> list | None:
    """`value` as `rows` lists of `cols` finite numbers of at most `limit` in size
    (cols None: a flat list of `rows` numbers), from lists or a numpy array; None if it is not."""
    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist() if value.dtype.kind in "iuf" else None

    def all_numbers(row, n) -> bool:
        return (isinstance(row, list) and len(row) == n
                and all(_number(v) and math.isfinite(v) and abs(v) <= limit for v in row))

    if cols is None:
        return value if all_numbers(value, rows) else None
    if isinstance(value, list) and len(value) == rows and all(all_numbers(row, cols) for row in value):
        return value
    return None


def _check_render(msg: dict) -> dict:
    """A render request's fields, checked before anything is allocated."""
    import numpy as np

    def bad(message: str) -> ReconstructError:
        return ReconstructError(ErrorCode.BAD_REQUEST, message,
                                "A render request is {id, workspace, camera: {R (3x3), t (3): COLMAP's "
                                "world-to-camera pose; width, height, fx, fy, cx, cy (pixels)}}.")

    workspace = _folder(msg, "workspace", "render")
    if not os.path.isabs(os.path.expanduser(workspace)):
        raise bad(f"A render request's 'workspace' must be an absolute path (relative to what the backend runs "
                  f"in, it would mean another folder); got {_short(workspace)}.")
    cam = msg.get("camera")
    if not isinstance(cam, dict):
        raise bad(f"A render request needs 'camera', a map; got {_kind(cam)}.")
    rows = _finite_rows(cam.get("R"), 3, 3, 1.0 + protocol.MAX_ROTATION_ERROR)
    if rows is None:
        raise bad(f"camera 'R' must be 3 rows of 3 finite numbers (a rotation, each at most 1 in size); "
                  f"got {_kind(cam.get('R'))}.")
    R = np.asarray(rows, np.float64)
    error = float(np.abs(R @ R.T - np.eye(3)).max())
    if error > protocol.MAX_ROTATION_ERROR:
        raise bad(f"camera 'R' is not a rotation: R @ R.T differs from the identity by {error:.3g} (the limit is "
                  f"{protocol.MAX_ROTATION_ERROR:g}).")
    if np.linalg.det(R) < 0:
        raise bad("camera 'R' is a reflection (its determinant is -1), not a rotation: the camera is mirrored.")
    limit = protocol.MAX_RENDER_COORDINATE
    t = _finite_rows(cam.get("t"), 3, None, limit)
    if t is None:
        raise bad(f"camera 't' must be 3 finite numbers (at most {limit:g} in size); got {_kind(cam.get('t'))}.")
    t = np.asarray(t, np.float64)
    side = protocol.MAX_RENDER_SIDE
    for key in ("width", "height"):
        value = cam.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= side):
            raise bad(f"camera '{key}' must be an integer from 1 to {side} (pixels); got {_kind(value)}.")
    width, height = cam["width"], cam["height"]
    if width * height > protocol.MAX_RENDER_PIXELS:
        raise ReconstructError(
            ErrorCode.BAD_REQUEST,
            f"camera 'width' x 'height' is {width}x{height} = {width * height} pixels, over the limit of "
            f"{protocol.MAX_RENDER_PIXELS} ({protocol.MAX_RENDER_PIXELS / 1e6:g} MP).",
            "Render previews at a lower Resolution %.")
    limit = protocol.MAX_RENDER_INTRINSIC
    values = {}
    for key, positive in (("fx", True), ("fy", True), ("cx", False), ("cy", False)):
        value = cam.get(key)
        ok = _number(value) and math.isfinite(value) and abs(value) <= limit and (value > 0 or not positive)
        if not ok:
            allowed = f"a number in (0, {limit:g}]" if positive else f"a number in [-{limit:g}, {limit:g}]"
            raise bad(f"camera '{key}' must be {allowed} (pixels); got {_kind(value)}.")
        values[key] = float(value)
    return {"workspace": workspace, "R": R, "t": t, "width": width, "height": height, **values}


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


def serve(max_frame_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES) -> int:
    """Serve requests of at most `max_frame_bytes` each (the add-on's are a few kB)."""
    from backend.job.worker import die_with_parent, take_over_stdout

    die_with_parent()
    server = Server(take_over_stdout(), max_frame_bytes)
    reader = protocol.FrameReader(sys.stdin.buffer, max_frame_bytes, max_items=protocol.DEFAULT_MAX_REQUEST_ITEMS,
                                  resync=True)
    try:
        while True:
            hunting = reader.hunting
            try:
                msg = reader.read()
            except protocol.FrameError as exc:
                if exc.code == ErrorCode.FRAME_TOO_LARGE:
                    hint = ("The request was dropped and everything up to the next SYNC marker will be: send "
                            "protocol.SYNC, then requests again. The backend is still running.")
                else:
                    hint = "The request was dropped; the backend is still running."
                server.error(exc.code, str(exc), hint, {"max_request_bytes": max_frame_bytes})
                continue
            finally:
                if hunting and not reader.hunting:
                    print(f"resynchronised on SYNC after discarding {reader.discarded} bytes", file=sys.stderr)
            if msg is None or not server.handle(msg):
                break
    finally:
        server.stop()
    return 0
