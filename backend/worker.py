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

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from blender_addon import protocol
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


def _call(fn: str, args: dict, send) -> dict:
    from backend.options import DenseOptions, SfmOptions

    def progress(fraction: float, text: str) -> None:
        send(protocol.message("progress", fraction=float(fraction), message=text))

    def warn(code: str, text: str) -> None:
        send(protocol.message(protocol.WARNING, code=code, message=text))

    if fn in ("mvs", "fusion", "mesh"):
        return _dense(fn, args, DenseOptions(**args["opts"]), progress)
    if fn == "splats":
        from backend.options import SplatOptions
        from backend.splat_train import train_splats

        return train_splats(Path(args["undistorted"]), Path(args["out_dir"]), SplatOptions(**args["opts"]), progress,
                            warn)
    from backend import sfm

    opts = SfmOptions(**args["opts"])

    if fn == "features":
        return sfm.extract_features(Path(args["database"]), Path(args["image_dir"]), args["names"], opts,
                                    args["first_octave"], args["camera_mode"])
    if fn == "matching":
        return sfm.match(Path(args["database"]), args["matcher"], opts)
    if fn == "mapping":
        return sfm.map_sparse(Path(args["database"]), Path(args["image_dir"]), Path(args["out_dir"]), opts,
                              args["num_images"], progress)
    if fn == "undistort":
        return sfm.undistort(Path(args["model_dir"]), Path(args["image_dir"]), Path(args["out_dir"]), opts)
    raise ReconstructError(ErrorCode.BAD_REQUEST, f"the worker has no step named {fn!r}")


def _dense(fn: str, args: dict, opts, progress) -> dict:
    if fn == "mvs":
        from backend.mvs import run_mvs

        return run_mvs(Path(args["undistorted"]), Path(args["out_dir"]), opts, progress)
    if fn == "fusion":
        from backend.fusion import fuse

        return fuse(Path(args["undistorted"]), Path(args["stereo"]), Path(args["out_ply"]), opts, progress)
    from backend.meshing import mesh_points
    from backend.roi import Box

    return mesh_points(Path(args["fused"]), Path(args["out_dir"]), opts, Box.from_dict(args["roi"]), progress)


def main() -> int:
    die_with_parent()
    # Frames go to the original stdout; anything a library prints goes to stderr (the log).
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def send(msg: dict) -> None:
        with lock:
            out.write(protocol.pack(msg))

    stdin = sys.stdin.buffer
    while True:
        request = protocol.read_frame(stdin)
        if request is None or request["type"] == protocol.SHUTDOWN:
            return 0
        try:
            result = _call(request["fn"], request["args"], send)
            send(protocol.message("done", result=result))
        except ReconstructError as exc:
            send(protocol.message(protocol.ERROR, **exc.as_fields()))
        except OSError as exc:
            traceback.print_exc()
            send(protocol.message(protocol.ERROR, **file_error(exc, f"the {request['fn']} step").as_fields()))
        except Exception as exc:
            traceback.print_exc()
            send(protocol.message(protocol.ERROR, code=ErrorCode.STAGE_FAILED,
                                  message=f"The {request['fn']} step failed: {exc}",
                                  hint="Rerun to retry the step (finished steps are kept); the log has details.",
                                  details={"traceback": traceback.format_exc()}))


if __name__ == "__main__":
    sys.exit(main())
