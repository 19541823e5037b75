"""The stage worker: a child process that runs the pycolmap-heavy steps.

Why a process: several pycolmap calls (global mapping, undistortion in
flight, ...) cannot be interrupted from Python. Running them here lets the
pipeline stop any stage within a fraction of a second by killing this
process; stages write into temporary folders, so nothing half-made survives.
One worker serves all stages of a job (pycolmap is imported once).

Frames on stdin/stdout use the same framing as the add-on protocol. The
worker dies with its parent (PR_SET_PDEATHSIG on Linux, a watchdog elsewhere).
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
import traceback
from typing import BinaryIO

from blender_addon.shared import protocol
from backend.errors import ErrorCode, ReconstructError, file_error


def die_with_parent() -> None:
    """Make this process exit when the process that started it dies."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def take_over_stdout() -> BinaryIO:
    """Give this process's frames the real stdout and send everything else
    printed to it (by us or any library, Python or C) to stderr, the log.
    Returns the stream the frames are written to."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _call(request: dict, send) -> dict:
    """Run the stage a call names: the function its declaration names, given a
    StageContext (blender_addon/shared/stages.py; no list of stages here)."""
    from backend.job.stage_context import StageContext
    from blender_addon.shared.stages import STAGE

    ctx = StageContext.from_plain(request["ctx"], send)
    module, function = STAGE[ctx.stage].run.split(":")
    return getattr(importlib.import_module(module), function)(ctx)


def main() -> int:
    die_with_parent()
    out = take_over_stdout()
    lock = threading.Lock()

    def send(msg: dict) -> None:
        with lock:
            out.write(protocol.pack(msg))

    stdin = sys.stdin.buffer
    while True:
        request = protocol.read_frame(stdin)
        if request is None or request["type"] == protocol.SHUTDOWN:
            return 0
        if request["type"] != protocol.CALL:
            send(protocol.message(protocol.ERROR, code=ErrorCode.INTERNAL,
                                  message=f"The stage worker got a {request['type'][:100]!r} message; it only "
                                          f"runs {protocol.CALL!r}.", hint="Please report this.", details={}))
            continue
        stage = request.get("ctx", {}).get("stage", "?")
        try:
            result = _call(request, send)
            send(protocol.message(protocol.DONE, result=result))
        except ReconstructError as exc:
            send(protocol.message(protocol.ERROR, **exc.as_fields()))
        except OSError as exc:
            traceback.print_exc()
            send(protocol.message(protocol.ERROR, **file_error(exc, f"the {stage} stage").as_fields()))
        except Exception as exc:
            traceback.print_exc()
            send(protocol.message(protocol.ERROR, code=ErrorCode.STAGE_FAILED,
                                  message=f"The {stage} stage failed: {exc}",
                                  hint="Rerun to retry the step (finished steps are kept); the log has details.",
                                  details={"traceback": traceback.format_exc()}))


if __name__ == "__main__":
    sys.exit(main())
