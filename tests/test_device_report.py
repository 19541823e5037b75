"""The backend tells the truth about its device: on a CUDA machine where
gsplat has no CUDA kernels, the handshake and Check Backend say the splats run
on the CPU and why, and the splat stage trains on the CPU with a warning
naming the cause instead of failing. A CUDA machine cannot be had here, so
these run under backend/job/device.py's documented simulation hook
(RECONSTRUCT_SIMULATE); everything downstream of the probe is the real code.
Also: `python -m backend previews` without bpy says what it needs."""
from __future__ import annotations

import os
import subprocess

import bpy
import pytest

from blender_addon.shared import protocol
from conftest import BACKEND_PYTHON, REPO, read_json
from protocol_helpers import Backend

NO_KERNELS = "cuda,no-gsplat-kernels"
CAUSE = "gsplat has no CUDA kernels: install the CUDA toolkit"


@pytest.fixture
def simulated_cuda(monkeypatch):
    """Every backend process this test starts inherits the simulation."""
    monkeypatch.setenv("RECONSTRUCT_SIMULATE", NO_KERNELS)


def _backend(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([BACKEND_PYTHON, "-m", "backend", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_the_handshake_says_the_splats_run_on_the_cpu_and_why(simulated_cuda, tmp_path):
    backend = Backend(tmp_path)
    try:
        reply = backend.handshake()
    finally:
        backend.close()
    assert reply["type"] == protocol.HANDSHAKE, reply
    assert reply["device"]["type"] == "cuda"  # torch "sees" the GPU...
    stages = reply["stage_devices"]
    assert set(stages) == {"features", "dense", "splats"}
    assert stages["dense"]["device"] == "cuda"
    splats = stages["splats"]  # ...but the splats cannot use it
    assert splats["device"] == "cpu" and splats["fallback"] is True
    assert CAUSE in splats["reason"] and "prebuilt gsplat wheel" in splats["reason"]


def test_without_a_gpu_every_stage_says_cpu_and_why(tmp_path):
    """The same report on this machine as it is (torch's CPU build, no GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "RECONSTRUCT_SIMULATE"}
    proc = _backend("check", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for stage in ("features", "dense", "splats"):
        assert any(line.startswith(f"{stage}: CPU, because") for line in lines), proc.stdout


@pytest.fixture(scope="module")
def temple_tiny(temple, tmp_path_factory):
    """The temple through undistortion at 320 px (about 30 s): a real workspace to train a few steps on."""
    ws = tmp_path_factory.mktemp("device-report") / "ws"
    proc = _backend("run", temple / "images", "--workspace", ws, "--quality", "fast", "--undistort-max-size",
                    "320", "--stages", "undistort")
    assert proc.returncode == 0, proc.stderr
    return ws, temple / "images"


def test_splats_train_on_the_cpu_with_a_warning_when_gsplat_has_no_kernels(simulated_cuda, temple_tiny):
    ws, photos = temple_tiny
    proc = _backend("run", photos, "--workspace", ws, "--quality", "fast", "--undistort-max-size", "320",
                    "--stages", "splats", "--splat-steps", "20", "--splat-size", "64")
    assert proc.returncode == 0, proc.stderr
    assert "'NoneType'" not in proc.stderr and "Rerun to retry" not in proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:") and CAUSE in line]
    assert warning and "runs on the CPU" in warning[0], proc.stderr
    summary = read_json(ws / "summary.json")
    assert summary["device"]["splats"] == "cpu"
    assert summary["splats"]["num_splats"] > 0 and summary["splats"]["steps"] == 20
    assert any(w["code"] == "cuda_unusable" and CAUSE in w["message"] for w in summary.get("warnings", [])), \
        "the fallback's warning is not in summary.json"


def test_asking_for_cuda_splats_fails_naming_the_cause(simulated_cuda, temple_tiny):
    ws, photos = temple_tiny
    proc = _backend("run", photos, "--workspace", ws, "--quality", "fast", "--undistort-max-size", "320",
                    "--stages", "splats", "--splat-steps", "20", "--splat-size", "64", "--splat-device", "cuda",
                    "--force", "splats")
    assert proc.returncode == 2, proc.stderr
    assert "splats device 'cuda' was asked for" in proc.stderr and CAUSE in proc.stderr
    assert "Set the splats device to Auto or CPU" in proc.stderr
    assert "Traceback" not in proc.stderr and "Rerun to retry" not in proc.stderr


def test_check_backend_in_blender_shows_where_the_splats_run(simulated_cuda, tmp_path):
    from addon_helpers import disable_addon, drive, fresh_blender_with_addon
    from blender_addon.ui import operators, preferences

    jobs = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path / "workspaces"))
    try:
        assert bpy.ops.reconstruct.check_backend() == {"FINISHED"}
        drive(jobs, lambda: preferences.status["ok"] is not None, timeout=120)
        assert preferences.status["ok"] is True, preferences.status
        # The operator's timer, called as bpy.app.timers would (the bpy module runs no event loop).
        while operators.show_stage_devices() is not None:
            jobs._tick()
        text = preferences.status["text"]
        assert "ready on cuda" in text and "splats: CPU, because gsplat has no CUDA kernels" in text, text
        assert "dense: CUDA" in text, text
        # A second press finds the backend running and reports every line in full at once.
        assert bpy.ops.reconstruct.check_backend() == {"FINISHED"}
        assert "splats: CPU, because gsplat has no CUDA kernels" in preferences.status["text"]
    finally:
        if bpy.app.timers.is_registered(operators.show_stage_devices):
            bpy.app.timers.unregister(operators.show_stage_devices)
        jobs.runner.stop_backend()
        disable_addon()


@pytest.mark.parametrize("splats_only", [False, True])
def test_previews_without_bpy_say_what_they_need(tmp_path, splats_only):
    """Set Up Backend's environment has no bpy: here it is blocked, as if absent."""
    blocked = "import sys; sys.modules['bpy'] = None; from backend.cli import main; sys.exit(main())"
    args = ["previews", str(tmp_path / "ws"), *(["--no-mesh"] if splats_only else [])]
    proc = subprocess.run([BACKEND_PYTHON, "-c", blocked, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: The previews render through Blender"), proc.stderr
    assert "Render Previews" in proc.stderr and "pip install bpy==5.0.1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
