"""A broken or hostile peer on the backend's pipe.

The add-on and `python -m backend serve` talk in length-prefixed msgpack
frames (blender_addon/shared/protocol.py). Here a peer sends what no add-on should:
a header claiming 4 GiB, frames of millions of empty values, arrays that lie
about their size, a 20000 x 20000 splat render, run requests with options of
the wrong type. Each time the peer reads an `error` event that names what
was wrong (never code `internal`), and the backend answers the next valid
request. One server serves the whole file, so its peak memory, measured at
the end, covers every attack (it must stay under 1 GB).
"""
from __future__ import annotations

import math
import os
import struct
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
from PIL import Image

from blender_addon.shared import protocol
from blender_addon.link.client import BackendClient
from blender_addon.shared.protocol import ErrorCode
from conftest import REPO
from protocol_helpers import Backend, write_grey_splats

SERVER_MAX_FRAME = 64 << 20  # generous: the decoding budget, not the byte limit, refuses the 8 MiB frames below
STAGE_OUTPUTS = ("job.json", "sparse", "undistorted", "dense", "mesh", "texture", "splats")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    b = Backend(tmp_path_factory.mktemp("serve"), "--max-frame-bytes", str(SERVER_MAX_FRAME))
    assert b.handshake()["type"] == protocol.HANDSHAKE
    yield b
    b.close()


@pytest.fixture
def backend(server):
    """The file's server with nothing left unread from an earlier test."""
    while not server.events.empty():
        server.events.get_nowait()
    return server


def answers_next_request(backend: Backend) -> None:
    """The server is in step again: a handshake gets its reply, and nothing
    else (no reply to anything it should have discarded) comes before it."""
    backend.send(protocol.HANDSHAKE, protocol=protocol.PROTOCOL_VERSION, client="tests")
    reply, before = backend.until(protocol.HANDSHAKE, protocol.ERROR, timeout=30)
    assert reply["type"] == protocol.HANDSHAKE, reply
    assert before == [], before


def error_reply(backend: Backend, timeout: float = 30) -> dict:
    reply = backend.next(timeout)
    assert reply["type"] == protocol.ERROR, reply
    assert reply["code"] != ErrorCode.INTERNAL, reply
    return reply


# Frames the server must not trust ------------------------------------------
def test_a_4gib_header_is_answered_at_once_and_sync_resynchronises(backend):
    """A peer writes a header claiming 4 GiB and a little of its body. It reads
    frame_too_large within a second, not after 4 GiB. What it writes before
    SYNC is discarded, even a complete request; after SYNC (sent in two
    pieces) the server reads frames again and answers a handshake."""
    asked = time.monotonic()
    backend.send_raw(struct.pack(">I", 0xFFFFFFFF) + os.urandom(1000))
    reply = error_reply(backend, timeout=5)
    waited = time.monotonic() - asked
    assert reply["code"] == ErrorCode.FRAME_TOO_LARGE and str(0xFFFFFFFF) in reply["message"], reply
    assert "SYNC" in reply["hint"]
    assert waited < 2.0, f"the error took {waited:.1f}s"
    # Still inside the untrusted frame: a valid request here is discarded, unanswered.
    backend.send_raw(b"\0" * 100_000 + protocol.pack(protocol.message(protocol.HANDSHAKE, protocol=0)))
    backend.send_raw(os.urandom(3000) + protocol.SYNC[:7])
    time.sleep(0.2)
    backend.send_raw(protocol.SYNC[7:])
    answers_next_request(backend)
    time.sleep(0.3)
    assert backend.events.empty(), backend.events.get_nowait()


def test_sync_while_in_step_changes_nothing(backend):
    """A peer that sends SYNC when nothing was refused (twice, as a client
    does that saw two frame_too_large errors) gets no reply to it and its next
    request is answered as usual."""
    backend.send_raw(protocol.SYNC + protocol.SYNC)
    answers_next_request(backend)


def test_a_header_that_starts_like_sync_is_refused_at_its_next_byte(backend):
    """A header equal to SYNC's first 4 bytes might be a SYNC: the server
    decides at the first byte that differs, then treats it as any oversized
    frame (refused, resynchronised)."""
    backend.send_raw(protocol.SYNC[:4] + b"not a sync")
    assert error_reply(backend, timeout=5)["code"] == ErrorCode.FRAME_TOO_LARGE
    backend.send_raw(protocol.SYNC)
    answers_next_request(backend)


def _empty_array() -> dict:
    return {"__ndarray__": True, "dtype": "<f4", "shape": [0], "data": b""}


@pytest.mark.parametrize("value, each", [(_empty_array(), 39), ({}, 1), ([], 1)],
                         ids=["empty-arrays", "empty-maps", "empty-lists"])
@pytest.mark.parametrize("per_list", [None, 1000], ids=["one-list", "lists-of-1000"])
def test_an_8mib_frame_of_empty_values_is_refused_in_bounded_memory(backend, value, each, per_list):
    """A peer sends one 8 MiB request holding hundreds of thousands (or
    millions) of empty arrays, maps or lists, in one list or in many short
    ones: once 600 MB of Python objects. The server stops decoding at its
    budget of values, replies malformed_frame, and its peak memory grows by
    less than 200 MB."""
    count = (8 << 20) // each
    junk = [value] * count if per_list is None else [[value] * per_list] * (count // per_list)
    body = msgpack.packb({"type": protocol.HANDSHAKE, "protocol": protocol.PROTOCOL_VERSION, "junk": junk},
                         use_bin_type=True)
    assert 7 << 20 < len(body) < SERVER_MAX_FRAME
    before = backend.peak_memory_bytes()
    backend.send_raw(struct.pack(">I", len(body)) + body)
    reply = error_reply(backend)
    assert reply["code"] == ErrorCode.MALFORMED_FRAME and "values" in reply["message"], reply
    answers_next_request(backend)
    grew = backend.peak_memory_bytes() - before
    assert grew < 200 << 20, f"peak memory grew by {grew / 2**20:.0f} MiB"


@pytest.mark.parametrize("array, says", [
    ({"dtype": "|O", "shape": [1], "data": b"\0" * 8}, "dtype"),
    ({"dtype": "<U4", "shape": [1], "data": b"\0" * 16}, "dtype"),
    ({"dtype": "f4,i4", "shape": [1], "data": b"\0" * 8}, "dtype"),
    ({"dtype": "<f4", "shape": [1 << 30, 1 << 30], "data": b"\0" * 16}, "bytes"),
    ({"dtype": "<f4", "shape": [-4], "data": b"\0" * 16}, "shape"),
    ({"dtype": "<f4", "shape": "4", "data": b"\0" * 16}, "shape"),
    ({"dtype": "<f4", "shape": [4], "data": "text"}, "data"),
], ids=["object", "unicode", "structured", "size-lie", "negative", "shape-string", "data-string"])
def test_an_array_that_is_not_a_plain_numeric_array_is_refused(backend, array, says):
    """A request carries an array map with an object dtype, a shape its data
    does not fill, or parts of the wrong type: malformed_frame naming the part."""
    body = msgpack.packb({"type": protocol.RENDER_SPLATS, "id": 1, "camera": {"__ndarray__": True, **array}},
                         use_bin_type=True)
    backend.send_raw(struct.pack(">I", len(body)) + body)
    reply = error_reply(backend)
    assert reply["code"] == ErrorCode.MALFORMED_FRAME and says in reply["message"], reply
    answers_next_request(backend)


def test_frames_that_are_not_requests_get_errors(backend):
    """Unknown request types, frames that are lists, maps without a 'type'
    string, msgpack ext values: each gets its error, the server carries on."""
    backend.send("format-disk")
    reply = error_reply(backend)
    assert reply["code"] == ErrorCode.BAD_REQUEST and "format-disk" in reply["message"]
    for body in (msgpack.packb([1, 2]), msgpack.packb({"type": 5}), msgpack.packb({"no": "type"}),
                 msgpack.packb({"type": msgpack.ExtType(1, b"\0" * 8)})):
        backend.send_raw(struct.pack(">I", len(body)) + body)
        assert error_reply(backend)["code"] == ErrorCode.MALFORMED_FRAME
    answers_next_request(backend)


# Render requests -----------------------------------------------------------------
@pytest.fixture(scope="module")
def splat_ws(tmp_path_factory):
    """A workspace holding a few grey splats around the origin."""
    return write_grey_splats(tmp_path_factory.mktemp("splats") / "ws")


def _camera(**changes) -> dict:
    """A camera 3 units up the z axis looking down at the origin, 64x48 px, in
    the request's COLMAP convention (world-to-camera: +Z forward, +Y down)."""
    camera = {"R": [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]], "t": [0.0, 0.0, 3.0],
              "width": 64, "height": 48, "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 24.0}
    camera.update(changes)
    return camera


def test_a_20000x20000_render_is_refused_before_anything_is_allocated(backend, splat_ws):
    """A peer asks for the splats from a 20000 x 20000 px camera (once 5 GB,
    then an internal error): it reads bad_request naming width and the allowed
    range at once, the server's peak memory does not move, and a render of a
    sensible size that follows is answered with its image."""
    before = backend.peak_memory_bytes()
    backend.send(protocol.RENDER_SPLATS, id="huge", workspace=str(splat_ws), camera=_camera(width=20000, height=20000))
    reply = error_reply(backend)
    assert reply["id"] == "huge" and reply["code"] == ErrorCode.BAD_REQUEST, reply
    assert "'width'" in reply["message"] and "8192" in reply["message"], reply
    assert backend.peak_memory_bytes() - before < 20 << 20
    backend.send(protocol.RENDER_SPLATS, id="ok", workspace=str(splat_ws), camera=_camera())
    reply = backend.until(protocol.RENDER, protocol.ERROR, timeout=60)[0]
    assert reply["type"] == protocol.RENDER and reply["id"] == "ok", reply
    assert reply["image"].shape == (48, 64, 4) and reply["image"].dtype == np.uint8
    assert reply["image"][20:28, 28:36, 3].mean() > 100  # the splats cover the middle


MIRRORED = np.diag([1.0, 1.0, -1.0])  # orthonormal, but a reflection (determinant -1)
TILTED = np.array([[1.0, 0.001, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # sheared by 1e-3
NAN = float("nan")


@pytest.mark.parametrize("request_fields, says", [
    ({"camera": _camera(width=8192, height=8192)}, "16000000"),
    ({"camera": _camera(width=0)}, "'width'"),
    ({"camera": _camera(height=8193)}, "'height'"),
    ({"camera": _camera(width=64.5)}, "'width'"),
    ({"camera": _camera(width=True)}, "'width'"),
    ({"camera": _camera(height="48")}, "'height'"),
    ({"camera": _camera(fx=0.0)}, "'fx'"),
    ({"camera": _camera(fy=-60.0)}, "'fy'"),
    ({"camera": _camera(fx=NAN)}, "'fx'"),
    ({"camera": _camera(cx=math.inf)}, "'cx'"),
    ({"camera": _camera(cy="24")}, "'cy'"),
    ({"camera": _camera(cy=None)}, "'cy'"),
    ({"camera": _camera(R=np.eye(4).tolist())}, "'R'"),
    ({"camera": _camera(R=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}, "'R'"),
    ({"camera": _camera(R=[[NAN] * 3] * 3)}, "'R'"),
    ({"camera": _camera(R=np.zeros((3, 3)).tolist())}, "'R'"),
    ({"camera": _camera(R=(2 * np.eye(3)).tolist())}, "'R'"),
    ({"camera": _camera(R=TILTED.tolist())}, "'R'"),
    ({"camera": _camera(R=MIRRORED.tolist())}, "'R'"),
    ({"camera": _camera(R="identity")}, "'R'"),
    ({"camera": _camera(R=[[True, False, False], [False, True, False], [False, False, True]])}, "'R'"),
    ({"camera": _camera(R=None)}, "'R'"),
    ({"camera": _camera(t=[0.0, 0.0])}, "'t'"),
    ({"camera": _camera(t=[0.0, 0.0, NAN])}, "'t'"),
    ({"camera": _camera(t=[0.0, 0.0, 1e12])}, "'t'"),
    ({"camera": _camera(t="origin")}, "'t'"),
    ({"camera": _camera(t=None)}, "'t'"),
    ({"camera": _camera(matrix_world=np.eye(4).tolist(), R=None, t=None)}, "'R'"),  # protocol 3's camera
    ({"camera": [64, 48]}, "'camera'"),
    ({"camera": None}, "'camera'"),
    ({"workspace": ""}, "'workspace'"),
    ({"workspace": 5}, "'workspace'"),
    ({"workspace": "/tmp/a\0b"}, "'workspace'"),
    ({"workspace": "relative/ws"}, "'workspace'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_render_request_with_a_bad_field_names_it(backend, splat_ws, request_fields, says):
    """Each wrong field of a render request is answered with bad_request, the
    request's id, and a message naming the field (and the allowed range)."""
    fields = {"id": 41, "workspace": str(splat_ws), "camera": _camera(), **request_fields}
    backend.send(protocol.RENDER_SPLATS, **fields)
    reply = error_reply(backend)
    assert reply["code"] == ErrorCode.BAD_REQUEST and reply["id"] == 41, reply
    assert says in reply["message"], reply
    answers_next_request(backend)


def test_a_render_camera_may_be_sent_as_arrays_rounded_to_float32(backend, splat_ws):
    """R and t may travel as protocol arrays, and an R that went through
    float32 (off a rotation by about 1e-7) is still a rotation: rendered."""
    R = np.asarray(_camera()["R"], np.float32) @ np.asarray(
        [[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]], np.float32)
    assert np.abs(R.astype(np.float64) @ R.T.astype(np.float64) - np.eye(3)).max() > 0
    backend.send(protocol.RENDER_SPLATS, id="arrays", workspace=str(splat_ws),
                 camera=_camera(R=R, t=np.array([0.0, 0.0, 3.0], np.float32)))
    reply = backend.until(protocol.RENDER, protocol.ERROR, timeout=60)[0]
    assert reply["type"] == protocol.RENDER and reply["id"] == "arrays", reply
    assert reply["image"][20:28, 28:36, 3].mean() > 100


def test_a_render_id_that_is_not_a_string_or_integer_is_refused(backend, splat_ws):
    backend.send(protocol.RENDER_SPLATS, id={"a": 1}, workspace=str(splat_ws), camera=_camera())
    reply = error_reply(backend)
    assert reply["code"] == ErrorCode.BAD_REQUEST and "'id'" in reply["message"], reply
    answers_next_request(backend)


# Run requests --------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three small generated JPEGs: valid photos, so a refusal is the options'."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg", quality=90)
    return folder


@pytest.mark.parametrize("request_fields, field", [
    ({"options": [1, 2]}, "options"),
    ({"stages": "mesh"}, "stages"),
    ({"stages": 5}, "stages"),
    ({"stages": [1]}, "stages"),
    ({"stages": ["mesh", "thumbnails"]}, "thumbnails"),
    ({"new": "yes"}, "new"),
    ({"options": {"sfm": {"max_image_size": "big"}}}, "max_image_size"),
    ({"options": {"sfm": "x"}}, "sfm"),
    ({"options": {"sfm": {"single_camera": "no"}}}, "single_camera"),
    ({"options": {"splats": {"checkpoint_seconds": NAN}}}, "checkpoint_seconds"),
    ({"options": {"splats": {"checkpoint_seconds": -1}}}, "checkpoint_seconds"),
    ({"options": {"splats": {"checkpoint_seconds": "x"}}}, "checkpoint_seconds"),
    ({"options": {"sfm": {"max_image_size": 1e12}}}, "max_image_size"),
    ({"options": {"sfm": {"max_image_size": 400.5}}}, "max_image_size"),
], ids=["options-list", "stages-string", "stages-int", "stages-int-list", "stages-unknown", "new-string",
        "max_image_size-string", "sfm-string", "single_camera-string", "checkpoint-nan", "checkpoint-negative",
        "checkpoint-string", "max_image_size-1e12", "max_image_size-float"])
def test_a_run_with_a_wrongly_typed_field_is_refused_before_any_stage(backend, photos, tmp_path, request_fields,
                                                                      field):
    """A peer asks to reconstruct good photos with a field of the wrong type:
    it reads bad_options naming the field (never internal), nothing is
    written to the workspace, and the server answers the next request."""
    ws = tmp_path / "ws"
    backend.send(protocol.RUN, **{"job": "bad", "photos": str(photos), "workspace": str(ws), **request_fields})
    reply = error_reply(backend)
    assert reply["job"] == "bad" and reply["code"] == ErrorCode.BAD_OPTIONS, reply
    assert field in reply["message"], reply
    made = sorted(p.name for p in ws.iterdir()) if ws.exists() else []
    assert not set(made) & set(STAGE_OUTPUTS), made
    answers_next_request(backend)


@pytest.mark.parametrize("request_fields, field", [
    ({"photos": ""}, "photos"),
    ({"photos": 5}, "photos"),
    ({"photos": None}, "photos"),
    ({"workspace": ["a"]}, "workspace"),
    ({"workspace": "/tmp/ws\0x"}, "workspace"),
    ({"job": {"a": 1}}, "job"),
])
def test_a_run_without_usable_folders_is_a_bad_request(backend, photos, tmp_path, request_fields, field):
    """Folders that are not non-empty strings, or a job name that is a map,
    are bad_request naming the field."""
    fields = {"job": "bad", "photos": str(photos), "workspace": str(tmp_path / "ws"), **request_fields}
    backend.send(protocol.RUN, **fields)
    reply = error_reply(backend)
    assert reply["code"] == ErrorCode.BAD_REQUEST and f"'{field}'" in reply["message"], reply
    assert not (tmp_path / "ws").exists()
    answers_next_request(backend)


def test_the_same_photos_with_good_options_do_run(backend, photos, tmp_path):
    """The refusals above were the fields' fault: the same photos, good
    options and one stage run to a result."""
    backend.send(protocol.RUN, job="good", photos=str(photos), workspace=str(tmp_path / "ws"),
                 options={"quality": "fast", "sfm": {"max_image_size": 128}}, stages=["features"])
    reply, _ = backend.until(protocol.RESULT, protocol.ERROR, timeout=120)
    assert reply["type"] == protocol.RESULT and reply["job"] == "good", reply
    assert reply["ran"] == ["features"]


# The add-on's own client ---------------------------------------------------------
def test_the_client_never_sends_a_request_over_the_limit():
    """The add-on asks for something too big to send: the request is not
    written, and the add-on's next poll reads frame_too_large for that job."""
    client = BackendClient(sys.executable)
    assert client.send(protocol.RUN, job="j", photos="/p", workspace="/w", options={"x": "y" * (2 << 20)}) is False
    [event] = client.poll()
    assert event["type"] == protocol.ERROR and event["job"] == "j"
    assert event["code"] == ErrorCode.FRAME_TOO_LARGE and str(protocol.DEFAULT_MAX_REQUEST_BYTES) in event["message"]
    assert client._outbox.empty()


def test_the_client_answers_frame_too_large_with_sync():
    """Something garbles the add-on's pipe (here: a raw 4 GiB header pushed
    into its outbox). The backend refuses it; the client writes SYNC by
    itself, so the add-on's next request is answered. The client also learns
    the backend's request limit from its handshake."""
    client = BackendClient(sys.executable, cwd=str(REPO), extra_args=("--max-frame-bytes", str(1 << 20)))
    client.start()
    try:
        assert _poll_for(client, protocol.HANDSHAKE)["type"] == protocol.HANDSHAKE
        assert client.max_request_bytes == 1 << 20
        client._outbox.put(struct.pack(">I", 0xFFFFFFFF) + b"garbage")
        assert _poll_for(client, protocol.ERROR)["code"] == ErrorCode.FRAME_TOO_LARGE
        client.send(protocol.HANDSHAKE, protocol=protocol.PROTOCOL_VERSION, client="tests")
        assert _poll_for(client, protocol.HANDSHAKE, protocol.ERROR)["type"] == protocol.HANDSHAKE
    finally:
        client.stop()


def _poll_for(client: BackendClient, *types: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in client.poll():
            if event["type"] in types:
                return event
        time.sleep(0.02)
    raise AssertionError(f"no {types} event within {timeout}s")


# The reader on its own -------------------------------------------------------------
def test_the_reader_does_not_wait_for_a_full_chunk_after_sync():
    """Over a real pipe: after an oversized header, SYNC and a short request
    that the writer then waits on are enough for the reader to return it."""
    r, w = os.pipe()
    with os.fdopen(r, "rb") as stream, os.fdopen(w, "wb", buffering=0) as out:
        reader = protocol.FrameReader(stream, 1 << 20, resync=True)
        out.write(struct.pack(">I", 5 << 20) + b"\1" * 100)
        with pytest.raises(protocol.FrameError) as err:
            reader.read()
        assert err.value.code == ErrorCode.FRAME_TOO_LARGE and reader.hunting
        got = []
        thread = threading.Thread(target=lambda: got.append(reader.read()), daemon=True)
        thread.start()
        out.write(b"\2" * 70_000 + protocol.SYNC + protocol.pack(protocol.message("ping")))  # then waits
        thread.join(5)
        assert got == [{"type": "ping"}]
        assert reader.discarded == 70_100


def test_arrays_decode_when_they_are_plain_numeric_arrays():
    for arr in (np.arange(12, dtype=np.uint8).reshape(3, 4), np.zeros((0, 3), np.float32),
                np.array([True, False]), np.array([1 + 2j], np.complex64), np.float64(2.5) * np.ones((2, 2, 2))):
        got = protocol.unpack_body(protocol.pack({"type": "x", "a": arr})[4:])["a"]
        assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr)


# Last: everything above, in one server ---------------------------------------------
def test_the_servers_peak_memory_stayed_under_1gb(server):
    """After every attack in this file (when the file runs as a whole), the
    server process's own peak resident memory is under 1 GB."""
    answers_next_request(server)
    peak = server.peak_memory_bytes()
    print(f"\nbackend serve peak memory (VmHWM) over the bad-input tests: {peak / 2**20:.0f} MiB")
    assert peak < 1 << 30, f"{peak / 2**20:.0f} MiB"
