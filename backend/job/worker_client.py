"""Parent side of the stage worker: start it, call a step, stream its
progress, and kill it at once on cancel."""
from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

from blender_addon.shared import protocol
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
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds backend/
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        # Own session: a kill reaches the worker and anything it started.
        proc = subprocess.Popen([sys.executable, "-m", "backend.job.worker"], stdin=subprocess.PIPE,
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

    def call(self, ctx: dict, *, events, cancel: threading.Event) -> dict:
        """Run one stage in the worker (`ctx`: a StageContext as plain data);
        returns its result dict. Its progress, warnings and logs go to
        `events` under the stage's name. Raises Cancelled (after killing the
        worker) when `cancel` is set."""
        stage = ctx["stage"]
        self.prestart()
        try:
            self._proc.stdin.write(protocol.pack(protocol.message(protocol.CALL, ctx=ctx)))
            self._proc.stdin.flush()
        except OSError:
            pass  # the reader reports the dead worker below
        poll = None
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
                    ErrorCode.STAGE_FAILED, f"The {stage} stage crashed (exit code {code}).",
                    f"See the log at {self.log_path}; rerun to retry the stage (finished stages are kept).",
                    {"log_tail": _tail(self.log_path)})
            kind = msg["type"]
            if kind == protocol.PROGRESS:
                events.progress(stage, msg["fraction"], msg["message"])
            elif kind == protocol.WARNING:
                events.warning(msg["code"], msg["message"], msg.get("details") or {})
            elif kind == protocol.LOG:
                events.log(msg["message"])
            elif kind == protocol.POLL:
                poll = poll_rows(Path(msg["database"]), msg["table"], msg["total"], stage, msg["what"], events)
            elif kind == protocol.DONE:
                return msg["result"]
            elif kind == protocol.ERROR:
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


def poll_rows(database: Path, table: str, total: int, stage: str, what: str, events):
    """Progress for pycolmap calls that have no callback: count the rows the
    worker has written so far (read-only, never blocking the writer)."""
    def poll() -> None:
        try:
            # closing(): sqlite3's own context manager leaves the connection
            # open, and an open reader blocks the worker's final checkpoint.
            # as_uri() percent-encodes the path: a '?' or '#' in a folder name
            # would otherwise end the path and stop the counts.
            with closing(sqlite3.connect(database.as_uri() + "?mode=ro", uri=True, timeout=0.05)) as db:
                done = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        except sqlite3.Error:
            return
        events.progress(stage, min(0.99, done / max(1, total)), f"{done} of {total} {what}")
    return poll


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
