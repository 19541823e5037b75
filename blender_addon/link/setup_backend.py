"""'Set up backend': create a virtual environment and install the backend
into it, in a thread, so Blender stays responsive. Each command's output is
kept; a failure names the command that failed."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SetupState:
    running: bool = False
    step: str = ""
    lines: list[str] = field(default_factory=list)
    error: str = ""
    failed_command: str = ""
    done: bool = False


state = SetupState()


ADDON_ROOT = Path(__file__).resolve().parent.parent


def backend_source() -> Path | None:
    """The backend's source: bundled in the extension zip (backend_src/), or the checkout."""
    for candidate in (ADDON_ROOT / "backend_src", ADDON_ROOT.parent):
        if (candidate / "pyproject.toml").exists() and (candidate / "backend").is_dir():
            return candidate
    return None


def staged_source(source: Path, staging: Path) -> Path:
    """What pip installs. A checkout is installed as it is. The zip ships the
    shared modules once, in the add-on's shared/ folder, and the backend
    beside them without a copy: they are put together in `staging`
    (backend/, and blender_addon/shared/ under a stub package) for pip."""
    if (source / "blender_addon" / "shared").is_dir():
        return source
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (staging / "blender_addon").mkdir()
    (staging / "blender_addon" / "__init__.py").write_text(
        '"""The Blender add-on\'s shared modules, installed for the backend (the add-on itself is not)."""\n')
    shutil.copytree(ADDON_ROOT / "shared", staging / "blender_addon" / "shared",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return staging


def venv_python(venv: Path) -> Path:
    """The Python of a virtual environment, on any platform."""
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def commands(base_python: str, venv: Path, source: Path) -> list[tuple[str, list[str]]]:
    python = str(venv_python(venv))
    return [("Creating the environment", [base_python, "-m", "venv", str(venv)]),
            ("Updating pip", [python, "-m", "pip", "install", "--upgrade", "pip"]),
            ("Installing the backend (pycolmap, torch, ...): this takes a few minutes",
             [python, "-m", "pip", "install", str(source)])]


def start(base_python: str, venv: Path) -> None:
    global state
    if state.running:
        return
    source = backend_source()
    state = SetupState(running=True)
    if source is None:
        state.running, state.error = False, "The backend's source is not bundled with this add-on."
        return
    try:
        source = staged_source(source, venv.parent / "backend-src")
    except OSError as exc:
        state.running = False
        state.error = f"Could not prepare the backend's source in {venv.parent}: {exc.strerror or exc}."
        return
    threading.Thread(target=_run, args=(state, commands(base_python, venv, source)), daemon=True,
                     name="reconstruct-setup").start()


def _run(s: SetupState, steps: list[tuple[str, list[str]]]) -> None:
    try:
        for step, cmd in steps:
            s.step = step
            s.lines.append("$ " + " ".join(cmd))
            try:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            except OSError as exc:
                s.error, s.failed_command = f"{step} failed: {exc.strerror or exc}", " ".join(cmd)
                return
            for line in proc.stdout:
                s.lines.append(line.rstrip())
                del s.lines[:-200]
            if proc.wait() != 0:
                s.error, s.failed_command = f"{step} failed (exit code {proc.returncode})", " ".join(cmd)
                return
        s.done = True
    finally:
        s.running = False


def draw_progress(layout) -> None:
    if not (state.running or state.error or state.done):
        return
    box = layout.box()
    if state.running:
        box.label(text=state.step + " ...", icon="TIME")
    elif state.error:
        box.label(text=state.error, icon="ERROR")
        box.label(text=f"Command: {state.failed_command}")
    else:
        box.label(text="Backend installed. Press 'Check Backend'.", icon="CHECKMARK")
    for line in state.lines[-6:]:
        box.label(text=line[:160])
