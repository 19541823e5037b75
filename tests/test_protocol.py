"""The add-on's view of the backend: a real `python -m backend serve`
subprocess driven over length-prefixed msgpack frames."""
from __future__ import annotations

import io
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from blender_addon.shared import protocol
from conftest import REPO, read_json
from protocol_helpers import Backend
from test_resume import _gone


@pytest.fixture
def backend(tmp_path):
    b = Backend(tmp_path, "--max-frame-bytes", str(1 << 20))
    yield b
    b.close()


def test_handshake_reports_versions_and_device(backend):
    reply = backend.handshake()
    assert reply["type"] == protocol.HANDSHAKE
    assert reply["protocol"] == protocol.PROTOCOL_VERSION
    assert reply["backend_version"] == protocol.__version__
    assert reply["device"]["type"] in ("cpu", "cuda") and reply["device"]["name"]
    assert reply["packages"]["pycolmap"] and reply["packages"]["numpy"]


def test_wrong_protocol_version_says_what_to_do(backend):
    backend.send(protocol.HANDSHAKE, protocol=999)
    reply = backend.next()
    assert reply["type"] == protocol.ERROR and reply["code"] == protocol.ErrorCode.PROTOCOL_MISMATCH
    assert "protocol 999" in reply["message"] and "Set up backend" in reply["hint"]
    assert backend.handshake()["type"] == protocol.HANDSHAKE  # still serving


def test_full_job_streams_progress_in_stage_order(backend, temple, tmp_path):
    assert backend.handshake()["type"] == protocol.HANDSHAKE
    backend.send(protocol.RUN, job="j1", photos=str(temple / "images"), workspace=str(tmp_path / "ws"),
                 options={"quality": "fast", "splats": {"steps": 40, "max_image_size": 64}})
    result, events = backend.until(protocol.RESULT, protocol.ERROR)
    assert result["type"] == protocol.RESULT, result
    assert result["job"] == "j1"
    progress = [e for e in events if e["type"] == protocol.PROGRESS]
    order = list(dict.fromkeys(e["stage"] for e in progress))
    assert order == ["features", "matching", "mapping", "undistort", "mvs", "fusion", "mesh", "texture", "splats"]
    for stage in order:
        fractions = [e["fraction"] for e in progress if e["stage"] == stage]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0
        assert fractions == sorted(fractions), f"{stage} progress went backwards: {fractions}"
    # a stage's events never interleave with the next stage's
    assert [e["stage"] for e in progress] == sorted((e["stage"] for e in progress), key=order.index)
    assert any(e["type"] == protocol.WARNING and e["code"] == "unregistered" for e in events) \
        or result["summary"]["registered_images"] == 16
    assert result["summary"]["registered_images"] >= 13
    assert Path(result["artifacts"]["mapping"], "images.bin").exists()
    assert read_json(Path(result["artifacts"]["summary"]))["total_images"] == 16


def test_cancel_during_mapping_returns_within_5s_and_resumes(backend, fountain_run, fountain, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(fountain_run, ws)
    backend.handshake()
    options = {"sfm": {"max_image_size": 1000, "undistort_max_size": 1000}}
    backend.send(protocol.RUN, job="m", photos=str(fountain / "images"), workspace=str(ws),
                 options={**options, "force": "mapping"}, stages=["undistort"])
    first, _ = backend.until(protocol.PROGRESS)
    while not (first["type"] == protocol.PROGRESS and first["stage"] == "mapping" and first["fraction"] > 0):
        first = backend.next()
        assert first["type"] in (protocol.PROGRESS, protocol.STAGE_DONE), first
    backend.cancel_within("m", seconds=5.0)
    job = read_json(ws / "job.json")
    assert job["stages"]["mapping"]["state"] == "cancelled"
    assert job["stages"]["matching"]["state"] == "done"
    # the next run resumes: only mapping and what follows it run again
    backend.send(protocol.RUN, job="m2", photos=str(fountain / "images"), workspace=str(ws), options=options,
                 stages=["undistort"])
    result, _ = backend.until(protocol.RESULT, protocol.ERROR)
    assert result["type"] == protocol.RESULT, result
    assert result["ran"] == ["mapping", "undistort"]
    assert result["summary"]["registered_images"] == 11


def test_malformed_frame_is_reported_and_server_keeps_running(backend):
    body = b"\xc1\xc1 not msgpack"
    backend.send_raw(struct.pack(">I", len(body)) + body)
    reply = backend.next()
    assert reply["type"] == protocol.ERROR and reply["code"] == protocol.ErrorCode.MALFORMED_FRAME
    backend.send_raw(struct.pack(">I", 3) + msgpack.packb([1, 2]))
    reply = backend.next()
    assert reply["code"] == protocol.ErrorCode.MALFORMED_FRAME  # valid msgpack, but not a request
    assert backend.handshake()["type"] == protocol.HANDSHAKE


def test_oversized_frame_is_refused_and_server_keeps_running(backend):
    size = 3 << 20  # the server was started with a 1 MiB limit
    backend.send_raw(struct.pack(">I", size) + b"\0" * size)
    reply = backend.next()
    assert reply["type"] == protocol.ERROR and reply["code"] == protocol.ErrorCode.FRAME_TOO_LARGE
    assert str(size) in reply["message"] and "SYNC" in reply["hint"]
    backend.send_raw(protocol.SYNC)  # what a peer does on frame_too_large: the server reads frames again
    assert backend.handshake()["type"] == protocol.HANDSHAKE


def test_oversized_frame_is_never_allocated():
    """The reader discards an oversized body in small reads: it never asks
    for (or holds) the claimed size."""
    class Stream(io.RawIOBase):
        def __init__(self, claimed: int):
            self.header, self.left, self.largest = struct.pack(">I", claimed), claimed, 0

        def read(self, n=-1):
            if self.header:
                out, self.header = self.header[:n], self.header[n:]
                return out
            self.largest = max(self.largest, n)
            n = min(n, self.left)
            self.left -= n
            return b"\0" * n

    stream = Stream((1 << 32) - 1)  # a 4 GiB claim
    with pytest.raises(protocol.FrameError) as err:
        protocol.read_frame(stream, max_bytes=1 << 20)
    assert err.value.code == protocol.ErrorCode.FRAME_TOO_LARGE
    assert stream.largest <= 64 * 1024


def test_bad_requests_get_errors_not_crashes(backend, tmp_path):
    backend.send("bogus")
    assert backend.next()["code"] == protocol.ErrorCode.BAD_REQUEST
    backend.send(protocol.RUN, job="x", photos=str(tmp_path / "missing"), workspace=str(tmp_path / "ws"))
    reply, _ = backend.until(protocol.ERROR)
    assert reply["job"] == "x" and reply["code"] == protocol.ErrorCode.PHOTOS_NOT_FOUND
    assert "does not exist" in reply["message"] and reply["hint"]
    backend.send(protocol.RUN, job="y", photos=str(tmp_path), workspace=str(tmp_path / "ws"),
                 options={"quality": "ultra"})
    reply, _ = backend.until(protocol.ERROR)
    assert reply["code"] == protocol.ErrorCode.BAD_OPTIONS and "fast, balanced, high" in reply["hint"]
    assert backend.handshake()["type"] == protocol.HANDSHAKE


def test_server_exits_when_its_parent_dies(tmp_path):
    # A stand-in for Blender: starts the backend, reports its pid, then is killed.
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'backend', 'serve'], stdin=subprocess.PIPE,"
         " stdout=subprocess.PIPE)\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    time.sleep(1.0)
    assert not _gone(server_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while not _gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(server_pid), "the backend outlived its parent"
