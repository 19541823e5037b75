"""The wire protocol between the Blender add-on and the backend process.

Defined once and used by both sides (the backend imports this module; the
add-on ships it). Pure standard library + msgpack: no bpy, no numpy at import.

Frames
------
A frame is a 4-byte big-endian length followed by a msgpack map with a
"type" key. Numpy arrays travel as {"__ndarray__": True, dtype, shape, data}
(a plain numeric dtype: bool, int, uint, float, complex; data exactly
shape's product times the item size). Nothing else is special: no ext
types, no serialised Python objects.

Limits (checked before anything is allocated)
----------------------------------------------
- Bytes: requests (add-on -> backend) are small (run options, render
  requests): the backend accepts up to its --max-frame-bytes (reported as
  `max_request_bytes` in its handshake reply; DEFAULT_MAX_REQUEST_BYTES, 1 MiB,
  is what a client assumes before the handshake). Events (backend -> add-on)
  may be up to DEFAULT_MAX_FRAME_BYTES (64 MiB: a splat render).
- Memory: a frame decodes to at most `max_items` containers and container
  elements (DEFAULT_MAX_REQUEST_ITEMS for requests, DEFAULT_MAX_ITEMS for
  events); an array counts as NDARRAY_ITEMS. A frame of a million empty maps
  or arrays is refused (malformed_frame) after a bounded amount of work, not
  decoded into gigabytes of Python objects.
A frame that breaks a limit, or is not msgpack, or not a map with a "type"
string, is answered with an `error` event (malformed_frame or
frame_too_large); the reader goes on with the next frame.

Oversized frames and resynchronisation (SYNC)
---------------------------------------------
A frame whose header claims more than the limit:
- Backend (reading requests from a peer it does not trust): replies AT ONCE
  with an `error` event, code frame_too_large, does not trust the claimed
  length (a 4 GiB claim from a corrupt or hostile writer would otherwise
  swallow every later frame), and discards its input, streaming, in bounded
  memory, until it has read the SYNC marker; then it reads frames again.
  Everything between the oversized header and SYNC is lost, so a peer that
  receives frame_too_large must write SYNC (BackendClient does so
  automatically) and may then send requests again.
- Add-on (reading events from its own backend, which writes honest lengths):
  reads and discards the claimed number of bytes in small chunks and reports
  an `error` event; the stream stays in sync without a marker.
SYNC's first 4 bytes, read as a length, are over any limit (limits must stay
below SYNC_LENGTH), so it can never start a real frame. A SYNC read where a
frame could start is a no-op: a peer may send it at any time, and a second
SYNC sent after a second frame_too_large never causes a third. Its first
bytes are not 0xffffffff on purpose: that is the natural value of a corrupt
length (-1), which must be answered at once, whereas a header equal to
SYNC's first 4 bytes is only answered once the next byte shows it is not a
SYNC.
"""
from __future__ import annotations

import re
import struct
from typing import Any, BinaryIO

import msgpack

__version__ = "0.1.0"  # the product's version: add-on manifest and backend
PROTOCOL_VERSION = 4  # 2: splat renders; 3: SYNC after frame_too_large, max_request_bytes in the handshake;
# 4: render_splats carries a COLMAP camera (R, t, K) instead of Blender's matrix_world
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Events (backend -> add-on): a full-size splat render is the largest."""
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
"""Requests (add-on -> backend): options and render requests are a few kB."""
DEFAULT_MAX_ITEMS = 1_000_000
"""Containers plus their elements decoded from one event frame."""
DEFAULT_MAX_REQUEST_ITEMS = 10_000
"""Containers plus their elements decoded from one request frame (a run's
options are about a hundred)."""
NDARRAY_ITEMS = 16
"""What one decoded array counts against max_items (its numpy object)."""

SYNC = b"\xffRECONSTRUCT-SYNC\xff"
"""Written by a peer that received frame_too_large: the backend discards
everything up to and including it (see the module docstring)."""

_HEADER = struct.Struct(">I")
SYNC_LENGTH = _HEADER.unpack(SYNC[:4])[0]
"""SYNC's first 4 bytes as a frame length (about 4.28e9): above every limit."""
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
"""Render a workspace's splats from a camera: {id, workspace, camera: {R, t, width,
height, fx, fy, cx, cy}}, the camera in COLMAP's convention (as the splats were
trained): R (3x3) and t (3) the world-to-camera pose, x_cam = R @ x_world + t,
the camera looking down +Z with +Y down; width x height pixels and the pinhole
K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels, pixel centres at +0.5. The
add-on converts its Blender camera (previews.camera_pixels, with camera_math);
the backend renders what it is given. Answered by a RENDER event (or an ERROR)
with the same id. Independent of any running job.
Checked before anything is allocated (bad_request naming the field otherwise):
workspace a non-empty absolute path, R 3 rows of 3 finite numbers forming a
rotation (R @ R.T within MAX_ROTATION_ERROR of the identity, determinant +1),
t 3 finite numbers (at most MAX_RENDER_COORDINATE in size), width and height
integers in [1, MAX_RENDER_SIDE] with width * height <= MAX_RENDER_PIXELS,
fx, fy > 0 and cx, cy finite, each at most MAX_RENDER_INTRINSIC in size."""
MAX_RENDER_SIDE = 8192
"""Longest side of a splat render: Blender's own preview resolutions stay well
below it, and float32 pixel coordinates are exact to it."""
MAX_RENDER_PIXELS = 16_000_000
"""The RENDER event's RGBA image (4 bytes a pixel, 64 MB here) must fit in one
event frame (DEFAULT_MAX_FRAME_BYTES, 67.1 MB: 4096 x 4096 would not). The
CPU renderer's buffers are about 70 bytes a pixel plus what the splats each
pixel sees add (measured: +1.1 GB at 16 MP and +0.5 GB at 4 MP with 100 splats,
+0.9 GB at 4 MP with 1000), so this is also about the most one render should
take; the 20000 x 20000 request that once took 5 GB and failed is 25 times it."""
MAX_RENDER_INTRINSIC = 1e7
"""Largest focal length or principal point offset (pixels) a render accepts:
beyond it float32 projection loses whole pixels."""
MAX_RENDER_COORDINATE = 1e9
"""Largest entry of a render camera's t: the renderer works in float32."""
MAX_ROTATION_ERROR = 1e-6
"""How far a render camera's R @ R.T may be from the identity (largest entry
of the difference): a rotation computed in float64 is off by about 1e-15."""

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

# Worker messages (job runner <-> stage worker) ------------------------------
# backend/job/worker_client.py (the job runner, in the server's process) and
# backend/job/worker.py (the stage worker, a child process) speak the same framing
# over the worker's stdin/stdout. Runner -> worker: CALL, one at a time (the
# worker exits on SHUTDOWN or at the end of its input; the runner kills it on
# cancel and when the job ends). Worker -> runner, while a stage runs:
# PROGRESS {fraction, message}, WARNING {code, message, details}, LOG
# {message} (passed on to the add-on with the job and stage added) and POLL;
# then DONE, or ERROR {code, message, hint, details}.
CALL = "call"
"""{ctx}: run one stage (backend.job.stage_context.StageContext as plain data)."""
DONE = "done"
"""{result}: the stage called has finished; `result` is what its function returned."""
POLL = "poll"
"""{database, table, total, what}: report this stage's progress by counting the
rows of `table` in the SQLite `database` (out of `total` `what`) until DONE:
pycolmap's extraction and matching have no progress callback."""


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
    BAD_VIDEO = "bad_video"
    BAD_MASKS = "bad_masks"
    """A mask folder that does not fit the photos (missing masks, wrong sizes, unreadable files): the message names them."""
    """A video that cannot be read, holds no frame that decodes, or is too short: the message says which."""
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
    RENDER_FAILED = "render_failed"
    """A valid render request that could not be rendered (out of memory, a device
    error): the message says why; the backend keeps serving."""
    INTERNAL = "internal"


class FrameError(Exception):
    """A frame that could not be read. The reader has dealt with the stream
    (consumed the frame, or for frame_too_large on a resynchronising reader,
    will discard up to SYNC), so the caller can report it and read on."""

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


_NDARRAY_KEYS = frozenset(("__ndarray__", "dtype", "shape", "data"))
# What numpy's dtype.str looks like for bool, (u)int, float and complex; the
# kind is checked again on the parsed dtype.
_NUMERIC_DTYPE = re.compile(r"[<>|=]?[biufc][0-9]{1,2}")
_MAX_NDIM = 32
_MAX_DIM = 1 << 40


def _ndarray(obj: dict) -> Any:
    """A decoded array map, checked: anything off is malformed_frame."""
    if obj.keys() != _NDARRAY_KEYS:
        raise FrameError(ErrorCode.MALFORMED_FRAME,
                         f"array map needs exactly the keys {sorted(_NDARRAY_KEYS)}, got {sorted(map(str, obj))}")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype, str) or not _NUMERIC_DTYPE.fullmatch(dtype):
        raise FrameError(ErrorCode.MALFORMED_FRAME,
                         f"array dtype {dtype!r} is not a plain numeric dtype (bool, int, uint, float, complex)")
    import numpy as np

    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise FrameError(ErrorCode.MALFORMED_FRAME, f"array dtype {dtype!r} is not a numpy dtype") from None
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise FrameError(ErrorCode.MALFORMED_FRAME, f"array dtype {dtype!r} is not a plain numeric dtype")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
            or not all(type(n) is int and 0 <= n <= _MAX_DIM for n in shape)):
        raise FrameError(ErrorCode.MALFORMED_FRAME,
                         f"array shape must be a list of at most {_MAX_NDIM} sizes (non-negative integers)")
    if not isinstance(data, bytes):
        raise FrameError(ErrorCode.MALFORMED_FRAME, "array data must be bytes (msgpack bin)")
    count = 1
    for n in shape:
        count *= n
    if count * dt.itemsize != len(data):
        raise FrameError(ErrorCode.MALFORMED_FRAME,
                         f"array of shape {shape} and dtype {dtype} needs {count * dt.itemsize} bytes, "
                         f"its data has {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


class _Budget:
    """msgpack hooks that count what a frame decodes to and stop at `limit`:
    each container counts one plus its length, an array NDARRAY_ITEMS more.
    msgpack's max_*_len bound one container before its hook runs."""

    def __init__(self, limit: int):
        self.left = limit
        self.limit = limit

    def _spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise FrameError(ErrorCode.MALFORMED_FRAME,
                             f"frame holds more than {self.limit} values (maps, lists, arrays and their elements)")

    def list_hook(self, obj: list) -> list:
        self._spend(1 + len(obj))
        return obj

    def object_hook(self, obj: dict) -> Any:
        self._spend(1 + len(obj))
        if "__ndarray__" in obj and obj["__ndarray__"] is True:
            self._spend(NDARRAY_ITEMS)
            return _ndarray(obj)
        return obj


def pack(message: dict) -> bytes:
    """One frame: length prefix + msgpack body."""
    body = msgpack.packb(message, use_bin_type=True, default=_default)
    return _HEADER.pack(len(body)) + body


def unpack_body(body: bytes, max_items: int = DEFAULT_MAX_ITEMS) -> dict:
    """A frame's body as a message; FrameError(malformed_frame) for anything
    that is not a map with a "type" string within the limits."""
    budget = _Budget(max_items)
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False, list_hook=budget.list_hook,
                                  object_hook=budget.object_hook, max_array_len=max_items,
                                  max_map_len=max_items, max_ext_len=0)
    except FrameError:
        raise
    except ValueError as exc:
        if "exceeds max_" not in str(exc):
            raise FrameError(ErrorCode.MALFORMED_FRAME, f"frame is not valid msgpack: {exc}") from None
        raise FrameError(ErrorCode.MALFORMED_FRAME,
                         f"frame holds a container of more than {max_items} values ({exc})") from None
    except Exception as exc:  # msgpack raises several unrelated types (and MemoryError is one)
        raise FrameError(ErrorCode.MALFORMED_FRAME, f"frame is not valid msgpack: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError(ErrorCode.MALFORMED_FRAME, "frame is not a map with a 'type' string")
    return message


class FrameReader:
    """Reads frames from a byte stream (see the module docstring).

    resync=False (the add-on reading its backend's events): an oversized
    frame is read and discarded in small chunks, then reported.
    resync=True (the backend reading requests): an oversized header is
    reported at once, without reading on; the next read() first discards
    input, streaming, until SYNC. Either way a SYNC where a frame could start
    is skipped silently. Memory: the frame being read plus one chunk."""

    def __init__(self, stream: BinaryIO, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, *,
                 max_items: int = DEFAULT_MAX_ITEMS, resync: bool = False):
        if not 0 <= max_bytes < SYNC_LENGTH:
            raise ValueError(f"max_bytes must be below {SYNC_LENGTH} (the SYNC marker's length)")
        self.stream = stream
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.resync = resync
        self.hunting = False
        """True between a frame_too_large and the SYNC that ends it."""
        self.discarded = 0
        """Bytes thrown away while looking for the last SYNC."""
        self._buffer = bytearray()  # read ahead while hunting; the stream's next bytes
        # read1: what is there (at least one byte), without waiting for a full
        # chunk: a peer that sends SYNC and a short request and then waits for
        # the reply must get it.
        self._read_some = getattr(stream, "read1", None) or stream.read

    def _take(self, n: int) -> bytes | None:
        """Exactly n bytes (from what was read ahead first); None at end of stream."""
        if len(self._buffer) >= n:
            out = bytes(self._buffer[:n])
            del self._buffer[:n]
            return out
        chunks = [bytes(self._buffer)]
        remaining = n - len(self._buffer)
        self._buffer.clear()
        while remaining:
            chunk = self.stream.read(remaining)
            if not chunk:
                return None
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _rest_of_sync(self) -> bool | None:
        """After a header equal to SYNC's start: True if the rest of SYNC
        follows (consumed), False at the first byte that differs (the bytes
        read are put back), None at end of stream. Reads byte by byte, so a
        header that is not a SYNC is answered as soon as its next byte arrives."""
        seen = bytearray()
        for expected in SYNC[_HEADER.size:]:
            byte = self._take(1)
            if byte is None:
                return None
            seen += byte
            if byte[0] != expected:
                self._buffer[:0] = seen
                return False
        return True

    def _hunt(self) -> bool:
        """Discard input up to and including SYNC; False at end of stream."""
        keep = len(SYNC) - 1  # a SYNC may straddle two reads
        while True:
            at = self._buffer.find(SYNC)
            if at >= 0:
                self.discarded += at
                del self._buffer[:at + len(SYNC)]
                self.hunting = False
                return True
            if len(self._buffer) > keep:
                self.discarded += len(self._buffer) - keep
                del self._buffer[:len(self._buffer) - keep]
            chunk = self._read_some(_DISCARD_CHUNK)
            if not chunk:
                return False
            self._buffer += chunk

    def _discard(self, n: int) -> bool:
        while n:
            chunk = self._take(min(n, _DISCARD_CHUNK))
            if chunk is None:
                return False
            n -= len(chunk)
        return True

    def read(self) -> dict | None:
        """The next message; None at end of stream. Raises FrameError for a
        bad frame (see the class docstring for what happens to the stream)."""
        while True:
            if self.hunting:
                self.discarded = 0
                if not self._hunt():
                    return None
            header = self._take(_HEADER.size)
            if header is None:
                return None
            (length,) = _HEADER.unpack(header)
            if length <= self.max_bytes:
                body = self._take(length)
                if body is None:
                    return None
                return unpack_body(body, self.max_items)
            if length == SYNC_LENGTH:
                is_sync = self._rest_of_sync()
                if is_sync is None:
                    return None
                if is_sync:
                    continue
            error = FrameError(ErrorCode.FRAME_TOO_LARGE,
                               f"frame of {length} bytes is over the limit of {self.max_bytes} bytes")
            if self.resync:
                self.hunting = True
            elif not self._discard(length):
                return None
            raise error


def read_frame(stream: BinaryIO, max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
               max_items: int = DEFAULT_MAX_ITEMS) -> dict | None:
    """Read one message from a stream whose writer sends honest lengths (the
    add-on's view of its backend); None at end of stream. Raises FrameError
    for a bad frame after consuming it, so the caller can report it and read
    on. Stateless: a non-resynchronising FrameReader never reads ahead."""
    return FrameReader(stream, max_bytes, max_items=max_items).read()


def message(type_: str, **fields: Any) -> dict:
    """A message map; `job` names the job an event belongs to."""
    return {"type": type_, **fields}
