"""The wire protocol between the Blender add-on and the backend process.

Defined once and used by both sides (the backend imports this module; the
add-on ships it). Pure standard library + msgpack: no bpy, no numpy at import.

A frame is a 4-byte big-endian length followed by a msgpack map with a
"type" key. Numpy arrays travel as {"__ndarray__": True, dtype, shape, data}.
Frame lengths are checked against a limit before anything is allocated; an
oversized body is read and discarded in small chunks so the stream stays in
sync and the peer keeps running.
"""
from __future__ import annotations

import struct
from typing import Any, BinaryIO

import msgpack

__version__ = "0.1.0"  # the product's version: add-on manifest and backend
PROTOCOL_VERSION = 2  # 2: splat renders
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024

_HEADER = struct.Struct(">I")
_DISCARD_CHUNK = 64 * 1024

# Requests (add-on -> backend).
HANDSHAKE = "handshake"
RUN = "run"
"""{job, photos, workspace (absolute folder paths), options, stages (a list of stage
names), new (bool: the workspace was made for other photos; remove our own outputs
there and start over)}; answered by events with the same job."""
CANCEL = "cancel"
SHUTDOWN = "shutdown"
RENDER_SPLATS = "render_splats"
"""Render a workspace's splats from a camera: {id, workspace, camera: {matrix_world
(4x4, Blender's camera object), width, height, fx, fy, cx, cy (pixels)}}; answered
by a RENDER event (or an ERROR) with the same id. Independent of any running job."""

# Events (backend -> add-on). HANDSHAKE is also the reply to a handshake.
PROGRESS = "progress"
LOG = "log"
WARNING = "warning"
RESULT = "result"
STAGE_DONE = "stage_done"
"""{job, stage, workspace, artifacts: {name: absolute path}}: one stage's output
is in place (finished now or reused), so the add-on can import it before the
job ends: a cancel or a later stage's failure keeps what already arrived."""
ERROR = "error"
CANCELLED = "cancelled"
RENDER = "render"
"""{id, image: uint8 [height, width, 4] RGBA array (top row first; colour
premultiplied by alpha, alpha = splat coverage), background: [r, g, b] the
training's background colour, seconds}."""


class ErrorCode:
    """Error codes a client may branch on; the message is for people."""

    PHOTOS_NOT_FOUND = "photos_not_found"
    NO_PHOTOS = "no_photos"
    TOO_FEW_PHOTOS = "too_few_photos"
    WORKSPACE_UNWRITABLE = "workspace_unwritable"
    WORKSPACE_BUSY = "workspace_busy"
    WORKSPACE_NOT_OURS = "workspace_not_ours"
    """The folder holds files that no workspace of ours made: refused, nothing touched."""
    WORKSPACE_OTHER_PHOTOS = "workspace_other_photos"
    """The workspace was made for another photo folder; a run with new=true starts it over."""
    FILE_ERROR = "file_error"
    """A file could not be read or written (no space, no permission, a loop): the message names it."""
    DUPLICATE_PHOTOS = "duplicate_photos"
    COULD_NOT_RECONSTRUCT = "could_not_reconstruct"
    STAGE_FAILED = "stage_failed"
    BAD_OPTIONS = "bad_options"
    BAD_REQUEST = "bad_request"
    MALFORMED_FRAME = "malformed_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    MISSING_DEPENDENCIES = "missing_dependencies"
    BACKEND_EXITED = "backend_exited"
    BUSY = "busy"
    NO_RESULT = "no_result"
    INTERNAL = "internal"


class FrameError(Exception):
    """A frame that could not be read; the stream is still in sync."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _default(obj: Any) -> Any:
    # Numpy is only touched when an array is actually sent.
    if type(obj).__module__ == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            return {"__ndarray__": True, "dtype": arr.dtype.str,
                    "shape": list(arr.shape), "data": arr.tobytes()}
        if isinstance(obj, np.generic):
            return obj.item()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot send {type(obj).__name__} over the protocol")


def _object_hook(obj: dict) -> Any:
    if obj.get("__ndarray__") is True:
        import numpy as np

        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def pack(message: dict) -> bytes:
    """One frame: length prefix + msgpack body."""
    body = msgpack.packb(message, use_bin_type=True, default=_default)
    return _HEADER.pack(len(body)) + body


def unpack_body(body: bytes) -> dict:
    try:
        message = msgpack.unpackb(body, raw=False, object_hook=_object_hook,
                                  strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(ErrorCode.MALFORMED_FRAME, f"frame is not valid msgpack: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError(ErrorCode.MALFORMED_FRAME, "frame is not a map with a 'type' string")
    return message


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    chunks, remaining = [], n
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict | None:
    """Read one message; None at end of stream. Raises FrameError for a bad
    frame after consuming it, so the caller can report it and read on."""
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > max_bytes:
        remaining = length
        while remaining:
            chunk = stream.read(min(remaining, _DISCARD_CHUNK))
            if not chunk:
                return None
            remaining -= len(chunk)
        raise FrameError(ErrorCode.FRAME_TOO_LARGE,
                         f"frame of {length} bytes is over the limit of {max_bytes} bytes")
    body = _read_exact(stream, length)
    if body is None:
        return None
    return unpack_body(body)


def message(type_: str, **fields: Any) -> dict:
    """A message map; `job` names the job an event belongs to."""
    return {"type": type_, **fields}
