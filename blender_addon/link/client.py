"""The add-on's side of the backend process. No bpy here.

Blender's main thread never touches the pipes: a writer thread sends the
queued requests, a reader thread turns frames into events on a queue, and a
third thread keeps the tail of the backend's stderr for error messages. The
UI drains the event queue from a timer with `poll()`, which never blocks.
`send()` never writes a frame over the backend's request limit (the limit
its handshake reports; protocol.DEFAULT_MAX_REQUEST_BYTES before that): such
a request is answered locally with a frame_too_large `error` event carrying
its job or id. Should the backend still report frame_too_large, the reader
writes protocol.SYNC so the backend resynchronises (see protocol.py).
Start the backend from Blender's main thread: on Linux the backend dies with
the thread that started it.
"""
from __future__ import annotations

import collections
import os
import queue
import re
import subprocess
import threading
from pathlib import Path

from ..shared import protocol
from ..shared.protocol import ErrorCode


class BackendClient:
    def __init__(self, python: str, cwd: str | None = None, extra_args: tuple[str, ...] = ()):
        self.python = python
        self.cwd = cwd
        self.extra_args = extra_args
        self.events: queue.Queue = queue.Queue()
        self._outbox: queue.Queue = queue.Queue()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=60)
        self._proc: subprocess.Popen | None = None
        self.handshake: dict | None = None
        self.max_request_bytes = protocol.DEFAULT_MAX_REQUEST_BYTES
        """The backend's request limit: its handshake says, the protocol's default until then."""
        self._exit_reported = False

    def start(self) -> None:
        """Start `python -m backend serve` and send the handshake."""
        if not self.python or not Path(self.python).exists():
            raise BackendStartError(
                f"No backend Python at '{self.python}'.",
                "Set 'Backend Python' in the add-on's preferences, or press 'Set up backend'.")
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)  # Blender's own Python settings must not leak into the backend's
        env.pop("PYTHONPATH", None)
        env["PYTHONUNBUFFERED"] = "1"
        try:
            self._proc = subprocess.Popen([self.python, "-m", "backend", "serve", *self.extra_args],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          cwd=self.cwd, env=env)
        except OSError as exc:
            raise BackendStartError(f"Could not start the backend ({self.python}): {exc.strerror or exc}.",
                                    "Check 'Backend Python' in the add-on's preferences.") from None
        for target, name in ((self._read, "reader"), (self._write, "writer"), (self._read_stderr, "stderr")):
            threading.Thread(target=target, args=(self._proc,), daemon=True, name=f"reconstruct-{name}").start()
        self.send(protocol.HANDSHAKE, protocol=protocol.PROTOCOL_VERSION, client="blender")

    # Threads ------------------------------------------------------------
    def _read(self, proc: subprocess.Popen) -> None:
        # Events from our own backend carry honest lengths: an oversized one is
        # read and discarded by count (no resynchronising needed this way).
        reader = protocol.FrameReader(proc.stdout, protocol.DEFAULT_MAX_FRAME_BYTES)
        while True:
            try:
                msg = reader.read()
            except protocol.FrameError as exc:
                self.events.put(protocol.message(protocol.ERROR, job=None, code=exc.code, message=str(exc),
                                                 hint="", details={}))
                continue
            except (OSError, ValueError):
                msg = None
            if msg is None:
                proc.wait()
                self.events.put({"type": "_exited"})
                return
            if msg["type"] == protocol.HANDSHAKE:
                limit = msg.get("max_request_bytes")
                if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                    self.max_request_bytes = limit
                self.handshake = msg
            elif msg["type"] == protocol.ERROR and msg.get("code") == ErrorCode.FRAME_TOO_LARGE:
                # The backend discards everything we write until it reads SYNC.
                self._outbox.put(protocol.SYNC)
            self.events.put(msg)

    def _write(self, proc: subprocess.Popen) -> None:
        while (frame := self._outbox.get()) is not None:
            try:
                proc.stdin.write(frame)
                proc.stdin.flush()
            except (OSError, ValueError):
                return

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for line in iter(proc.stderr.readline, b""):
            self._stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    # Main thread --------------------------------------------------------
    def send(self, type_: str, **fields) -> bool:
        """Queue a request; False (and a frame_too_large `error` event with the
        request's job or id, seen by the next poll) when it is over the
        backend's limit: it is not sent, the backend never sees it."""
        frame = protocol.pack(protocol.message(type_, **fields))
        size = len(frame) - 4
        if size > self.max_request_bytes:
            self.events.put(protocol.message(
                protocol.ERROR, job=fields.get("job"), id=fields.get("id"), code=ErrorCode.FRAME_TOO_LARGE,
                message=f"The {type_} request ({size} bytes) is over the backend's limit of "
                        f"{self.max_request_bytes} bytes; it was not sent.",
                hint="Send less at once (the backend reads files from the workspace itself).",
                details={"size": size, "limit": self.max_request_bytes, "local": True}))
            return False
        self._outbox.put(frame)
        return True

    def poll(self, limit: int = 500) -> list[dict]:
        """Events received since the last call (never blocks). A backend that
        died shows up once as an `error` event with code backend_exited."""
        out = []
        for _ in range(limit):
            try:
                msg = self.events.get_nowait()
            except queue.Empty:
                break
            if msg["type"] == "_exited":
                if not self._exit_reported:
                    self._exit_reported = True
                    out.append(self._exit_event())
                continue
            out.append(msg)
        return out

    def _exit_event(self) -> dict:
        code = self._proc.returncode if self._proc else None
        tail = "\n".join(self._stderr_tail)
        missing = re.findall(r"No module named '([\w.]+)'", tail)
        if missing:
            message = f"The backend at {self.python} cannot start: it is missing the package '{missing[-1].split('.')[0]}'."
            hint = "Press 'Set up backend' in the add-on's preferences to install the backend into its own environment."
            error_code = ErrorCode.MISSING_DEPENDENCIES
        else:
            message = f"The backend stopped unexpectedly (exit code {code})."
            hint = "Press Reconstruct again to resume: finished stages are kept. The details show its last output."
            error_code = ErrorCode.BACKEND_EXITED
        return protocol.message(protocol.ERROR, job=None, code=error_code, message=message, hint=hint,
                                details={"exit_code": code, "stderr_tail": tail})

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """Ask the backend to shut down; kill it if it does not go in time."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self.send(protocol.SHUTDOWN)
            self._outbox.put(None)
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        else:
            self._outbox.put(None)


class BackendStartError(Exception):
    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


def stage_device_lines(handshake: dict, short: bool = False) -> list[str]:
    """Per stage, where it will run and why, from the handshake's
    stage_devices ({stage: {device, reason, fallback}}): "splats: CUDA (GPU)"
    or "splats: CPU, because ...: what to do" (`short`: without what to do)."""
    lines = []
    for stage, where in (handshake.get("stage_devices") or {}).items():
        reason = str(where.get("reason", ""))
        if where.get("device") == "cuda":
            lines.append(f"{stage}: CUDA ({reason})")
        else:
            lines.append(f"{stage}: CPU, {reason.split(': ')[0] if short else reason}")
    return lines
