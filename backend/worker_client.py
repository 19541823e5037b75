"""Parent side of the stage worker: start it, call a step, stream its
progress, and kill it at once on cancel."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from blender_addon import protocol
from backend.errors import Cancelled, ErrorCode, ReconstructError

_WAIT_SECONDS = 0.1  # how quickly a cancel is noticed
_POLL_SECONDS = 0.5  # how often a progress poll runs


class Worker:
    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()

    def _start(self) -> subprocess.Popen:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        # Own session: a kill reaches the worker and anything it started.
        proc = subprocess.Popen([sys.executable, "-m", "backend.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        log.close()
        self._events = queue.Queue()
        threading.Thread(target=self._read, args=(proc, self._events), daemon=True, name="worker-reader").start()
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen, events: queue.Queue) -> None:
        try:
            while (msg := protocol.read_frame(proc.stdout)) is not None:
                events.put(msg)
        except Exception:
            pass
        events.put(None)

    def prestart(self) -> None:
        """Start the worker now (pycolmap imports while the caller does other work)."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = self._start()

    def call(self, fn: str, args: dict, *, progress: Callable[[float, str], None],
             cancel: threading.Event, poll: Callable[[], None] | None = None,
             warning: Callable[[str, str], None] | None = None) -> dict:
        """Run one step in the worker; returns its result dict. Raises
        Cancelled (after killing the worker) when `cancel` is set."""
        self.prestart()
        try:
            self._proc.stdin.write(protocol.pack({"type": "call", "fn": fn, "args": args}))
            self._proc.stdin.flush()
        except OSError:
            pass  # the reader reports the dead worker below
        last_poll = time.monotonic()
        while True:
            if cancel.is_set():
                self.kill()
                raise Cancelled()
            try:
                msg = self._events.get(timeout=_WAIT_SECONDS)
            except queue.Empty:
                if poll and time.monotonic() - last_poll > _POLL_SECONDS:
                    poll()
                    last_poll = time.monotonic()
                continue
            if msg is None:
                code = self._proc.wait()
                self._proc = None
                raise ReconstructError(
                    ErrorCode.STAGE_FAILED, f"The {fn} step crashed (exit code {code}).",
                    f"See the log at {self.log_path}; rerun to retry the step (finished steps are kept).",
                    {"log_tail": _tail(self.log_path)})
            if msg["type"] == "progress":
                progress(msg["fraction"], msg["message"])
            elif msg["type"] == protocol.WARNING and warning is not None:
                warning(msg["code"], msg["message"])
            elif msg["type"] == "done":
                return msg["result"]
            elif msg["type"] == protocol.ERROR:
                raise ReconstructError(msg["code"], msg["message"], msg.get("hint", ""), msg.get("details"))

    def kill(self) -> None:
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        # Every stage's output is committed before this, so nothing is lost by
        # not waiting for the interpreter (and pycolmap) to tear down.
        self.kill()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
