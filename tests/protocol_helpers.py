"""Driving a real `python -m backend serve` subprocess over its pipes, as the
add-on does: shared by the protocol tests and the tests of the stages it runs."""
from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from blender_addon.shared import protocol
from blender_addon.shared.splat_ply import Splats, write_splats
from conftest import BACKEND_PYTHON, REPO


class Backend:
    def __init__(self, tmp_path: Path, *args: str):
        self.stderr = open(tmp_path / "serve.log", "wb")
        self.proc = subprocess.Popen([BACKEND_PYTHON, "-m", "backend", "serve", *args], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while (msg := protocol.read_frame(self.proc.stdout)) is not None:
            self.events.put(msg)

    def send_raw(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, type_: str, **fields) -> None:
        self.send_raw(protocol.pack(protocol.message(type_, **fields)))

    def next(self, timeout: float = 120) -> dict:
        return self.events.get(timeout=timeout)

    def until(self, *types: str, timeout: float = 300) -> tuple[dict, list[dict]]:
        """Events up to the first one of `types`; returns it and those before."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            msg = self.next(max(0.1, deadline - time.monotonic()))
            if msg["type"] in types:
                return msg, seen
            seen.append(msg)

    def cancel_within(self, job: str, seconds: float) -> None:
        """Cancel `job` and check that it ends as cancelled within `seconds`."""
        asked = time.monotonic()
        self.send(protocol.CANCEL, job=job)
        reply, _ = self.until(protocol.CANCELLED, protocol.RESULT, protocol.ERROR, timeout=30)
        elapsed = time.monotonic() - asked
        assert reply["type"] == protocol.CANCELLED, reply
        assert elapsed < seconds, f"cancel took {elapsed:.1f}s"

    def handshake(self) -> dict:
        self.send(protocol.HANDSHAKE, protocol=protocol.PROTOCOL_VERSION, client="tests")
        return self.until(protocol.HANDSHAKE, protocol.ERROR)[0]

    def peak_memory_bytes(self) -> int:
        """The server process's own peak resident memory (VmHWM; not its worker's)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.send(protocol.SHUTDOWN)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def write_grey_splats(ws: Path, n: int = 5) -> Path:
    """A workspace whose splats are `n` grey blobs around the origin (0.3 in
    size, nearly opaque): enough for a render request to have something to draw."""
    (ws / "splats").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_splats(ws / "splats" / "splats.ply", Splats(
        means=rng.uniform(-0.3, 0.3, (n, 3)), log_scales=np.full((n, 3), np.log(0.3)),
        quats=np.tile([1.0, 0, 0, 0], (n, 1)), opacity_logits=np.full(n, 3.0), sh_dc=np.zeros((n, 3)),
        sh_rest=np.zeros((n, 0, 3))))
    return ws
