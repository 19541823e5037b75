"""'Set up backend': create a virtual environment and install into it what
install_plan chooses for this machine, in a thread, so Blender stays
responsive. Progress (which package, how much) is parsed from pip's or uv's
output; Cancel stops the running command. The environment records what it
was installed with (reconstruct-env.json); without a complete record it is
unfinished and the next Set Up Backend finishes it. Module-level imports are
stdlib only: the build test loads this file on its own (staged_source)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD = "reconstruct-env.json"
OFFLINE = ("Blender's online access is off, and Set Up Backend downloads the backend's packages (from a few "
           "hundred MB to 3 GB). Turn on Edit > Preferences > System > Network > Allow Online Access, then press "
           "Set Up Backend again.")


@dataclass
class SetupState:
    running: bool = False
    step: str = ""
    step_index: int = 0
    step_count: int = 0
    package: str = ""  # what pip or uv is fetching now
    size: str = ""  # its download size as they print it: "198.3 MB"
    done_bytes: int = 0
    total_bytes: int = 0  # 0: unknown (uv, or pip without a progress bar)
    lines: list[str] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    summary: str = ""
    error: str = ""
    failed_command: str = ""
    done: bool = False
    cancelled: bool = False
    proc: subprocess.Popen | None = None


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


def backend_requirements(source: Path) -> list[str]:
    """The backend's dependencies, from its pyproject (the one place they are written)."""
    import tomllib  # Python 3.11+, which every Blender from 4.2 ships

    return list(tomllib.loads((source / "pyproject.toml").read_text())["project"]["dependencies"])


# The environment's record ---------------------------------------------------------------------

def read_record(venv: Path) -> dict | None:
    try:
        return json.loads((venv / RECORD).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class EnvStatus:
    state: str  # "missing", "unfinished", "outdated" (made for another add-on version), "ready"
    text: str
    version: str = ""


def env_status(venv: Path, addon_version: str) -> EnvStatus:
    if not venv_python(venv).exists():
        return EnvStatus("missing", f"No backend environment yet ({venv})")
    record = read_record(venv)
    if not record or not record.get("complete"):
        return EnvStatus("unfinished", "The backend environment is unfinished: press Set Up Backend to finish it")
    version = str(record.get("backend_version", "?"))
    if version != addon_version:
        return EnvStatus("outdated", f"The backend environment is version {version}, the add-on {addon_version}: "
                                     "press Update Backend", version)
    return EnvStatus("ready", f"Backend environment {version}: {record.get('plan', {}).get('summary', '')}", version)


def _write_record(venv: Path, plan, torch_index: str | None) -> None:
    from ..shared.protocol import __version__

    record = {"backend_version": __version__, "complete": True, "python": "%d.%d" % sys.version_info[:2],
              "plan": asdict(plan), "torch_index_override": torch_index}
    (venv / RECORD).write_text(json.dumps(record, indent=1))


# Progress -------------------------------------------------------------------------------------

_COLLECTING = re.compile(r"^Collecting (\S+)")
# pip: "  Downloading torch-2.13.0-cp311-....whl (198.3 MB)"; uv: "Downloading torch (190.2MiB)"
_DOWNLOADING = re.compile(r"^\s*Downloading (\S+) \(([\d.]+\s?[kKMG]i?B)\)")
_RAW = re.compile(r"^Progress (\d+) of (\d+)")  # pip --progress-bar raw


def parse_progress(line: str, s: SetupState) -> bool:
    """Update `s` from one line of pip's or uv's output; False for a line not worth keeping in the log."""
    if m := _RAW.match(line):
        s.done_bytes, s.total_bytes = int(m[1]), int(m[2])
        return False
    if m := _DOWNLOADING.match(line):
        name = m[1].rsplit("/", 1)[-1]
        s.package = name.split("-")[0] if name.endswith((".whl", ".tar.gz", ".zip")) else name
        s.size, s.done_bytes, s.total_bytes = m[2], 0, 0
    elif m := _COLLECTING.match(line):
        s.package, s.size, s.done_bytes, s.total_bytes = re.split(r"[<>=!~\[;]", m[1])[0], "", 0, 0
    elif line.startswith(("Installing collected packages", "Prepared ", "Installed ")):
        s.package, s.size, s.done_bytes, s.total_bytes = "installing", "", 0, 0
    return True


# Running ----------------------------------------------------------------------------------------

def online_access() -> bool:
    """Blender 4.2+'s 'Allow Online Access' (True where there is no such setting)."""
    bpy = sys.modules.get("bpy")
    return bool(getattr(getattr(bpy, "app", None), "online_access", True))


def start(base_python: str, venv: Path, machine=None) -> None:
    """Set up `venv` for `machine` (default: this one) in a thread. A refusal (offline, an
    unsupported platform) sets state.error at once and downloads nothing."""
    from . import install_plan

    global state
    if state.running:
        return
    state = SetupState(running=True)
    quick = machine or install_plan.detect(gpu=False)  # the platform's refusals need no nvidia-smi
    refusal = install_plan.plan(quick).refusal or ("" if online_access() else OFFLINE)
    source = backend_source()
    if not refusal and source is None:
        refusal = "The backend's source is not bundled with this add-on."
    if not refusal:
        try:
            source = staged_source(source, venv.parent / "backend-src")
        except OSError as exc:
            refusal = f"Could not prepare the backend's source in {venv.parent}: {exc.strerror or exc}."
    if refusal:
        state.running, state.error = False, refusal
        return
    threading.Thread(target=_run, args=(state, base_python, venv, source, machine), daemon=True,
                     name="reconstruct-setup").start()


def cancel() -> None:
    s = state
    if s.running:
        s.cancelled = True
        if s.proc is not None and s.proc.poll() is None:
            s.proc.terminate()


def _run(s: SetupState, base_python: str, venv: Path, source: Path, machine) -> None:
    from . import install_plan

    try:
        p = install_plan.plan(machine or install_plan.detect())
        if not p.ok:
            s.error = p.refusal
            return
        s.summary, s.notes = p.summary, p.notes
        torch_index = os.environ.get("RECONSTRUCT_TORCH_INDEX")  # "" = the default index (see README)
        python = str(venv_python(venv))
        # An existing environment is repointed at this Blender's Python and keeps its packages,
        # so an interrupted or outdated one is finished without downloading it again.
        create = [base_python, "-m", "venv", *(["--upgrade"] if venv_python(venv).exists() else []), str(venv)]
        todo = [install_plan.Step("Creating the environment", create),
                *install_plan.steps(p, python, str(source), backend_requirements(source),
                                    uv=install_plan.uv_on_path(), torch_index=torch_index)]
        (venv / RECORD).unlink(missing_ok=True)  # unfinished until the last step succeeds
        s.step_count = len(todo)
        for s.step_index, step in enumerate(todo, 1):
            if not _run_step(s, step):
                return
        _write_record(venv, p, torch_index)
        s.done = True
    except OSError as exc:
        s.error = f"Setting up the backend failed: {exc.strerror or exc}"
    finally:
        s.running, s.proc = False, None


def _run_step(s: SetupState, step) -> bool:
    s.step, s.package, s.size, s.done_bytes, s.total_bytes = step.title, "", "", 0, 0
    shown = " ".join(step.command)
    s.lines.append("$ " + shown)
    if s.cancelled:
        s.error = "Cancelled. The environment is unfinished: press Set Up Backend to finish it."
        return False
    try:
        s.proc = subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  encoding="utf-8", errors="replace", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as exc:
        s.error, s.failed_command = f"{step.title} failed: {exc.strerror or exc}", shown
        return False
    for line in s.proc.stdout:
        if parse_progress(line.rstrip(), s):
            s.lines.append(line.rstrip())
            del s.lines[:-200]
    code = s.proc.wait()
    if s.cancelled:
        s.error = "Cancelled. The environment is unfinished: press Set Up Backend to finish it."
        return False
    if code != 0:
        s.error, s.failed_command = f"{step.title} failed (exit code {code})", shown
        return False
    return True


def draw_progress(layout) -> None:
    s = state
    if not (s.running or s.error or s.done):
        return
    box = layout.box()
    if s.running:
        box.label(text=f"Step {s.step_index} of {s.step_count}: {s.step} ..." if s.step_count else "Starting ...",
                  icon="TIME")
        if s.package:
            amount = f"{s.done_bytes / 1e6:.0f} of {s.total_bytes / 1e6:.0f} MB" if s.total_bytes else s.size
            text = f"{s.package}: {amount}" if amount else s.package
            if s.total_bytes and hasattr(box, "progress"):
                box.progress(factor=s.done_bytes / s.total_bytes, type="BAR", text=text)
            else:
                box.label(text=text)
        box.operator("reconstruct.cancel_setup", icon="CANCEL")
    elif s.error:
        for i, part in enumerate(_wrap(s.error)):
            box.label(text=part, icon="ERROR" if i == 0 else "BLANK1")
        if s.failed_command:
            box.label(text=f"Command: {s.failed_command[:200]}")
    else:
        box.label(text="Backend installed. Press 'Check Backend'.", icon="CHECKMARK")
    if s.summary:
        box.label(text=f"Installing: {s.summary}" if s.running else f"Plan: {s.summary}")
    for note in s.notes:
        for i, part in enumerate(_wrap(note)):
            box.label(text=part, icon="INFO" if i == 0 else "BLANK1")
    for line in s.lines[-6:]:
        box.label(text=line[:160])


def _wrap(text: str, width: int = 110) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]
