"""Set Up Backend's whole success path, as a new user meets it: a fresh
Blender profile, the zip installed, Set Up Backend run for real against the
package indexes this machine reaches (the CPU build), Check Backend ready,
then a fast temple job from the sidebar lands its cameras. Minutes: it
installs torch, pycolmap, gsplat and the rest into a new environment.

On this machine PyTorch's own CPU index cannot be reached, only the indexes
pip is configured with (where the CPU torch lies on disk), so the plan's
torch index is overridden with RECONSTRUCT_TORCH_INDEX="" (the default
index): every other step is the plan's own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("bpy")

import build_addon  # noqa: E402
from conftest import dataset  # noqa: E402

SESSION = """
import json, sys, time, bpy
zip_path, photos, workspaces = sys.argv[1:4]
bpy.context.preferences.system.use_online_access = True  # the user allows Blender online access
assert bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                 enable_on_install=True) == {"FINISHED"}
from bl_ext.user_default.reconstruct.link import jobs, setup_backend
from bl_ext.user_default.reconstruct.ui import preferences

times = {}
started = time.monotonic()
assert bpy.ops.reconstruct.setup_backend() == {"FINISHED"}
seen = set()
while setup_backend.state.running:
    s = setup_backend.state
    if (s.step, s.package) not in seen:
        seen.add((s.step, s.package))
        print(f"{time.monotonic() - started:6.1f}s  {s.step}  {s.package} {s.size}", flush=True)
    time.sleep(0.2)
s = setup_backend.state
assert s.done, f"{s.error} {s.failed_command}\\n" + "\\n".join(s.lines[-40:])
times["setup"] = time.monotonic() - started

def drive(until, timeout):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, bpy.context.scene.reconstruct.message
        time.sleep(min(jobs._tick() or 0.1, 0.1))

prefs = preferences.get()
prefs.workspace_root, prefs.device = workspaces, "cpu"
started = time.monotonic()
assert bpy.ops.reconstruct.check_backend() == {"FINISHED"}
drive(lambda: preferences.status["ok"] is not None, 120)
times["check"] = time.monotonic() - started
settings = bpy.context.scene.reconstruct
settings.photos_dir, settings.quality = photos, "fast"
settings.stage_dense = settings.stage_mesh = settings.stage_texture = settings.stage_splats = False
started = time.monotonic()
assert bpy.ops.reconstruct.run() == {"FINISHED"}
drive(lambda: settings.state in ("DONE", "ERROR", "CANCELLED") and not jobs.runner.running, 600)
times["job"] = time.monotonic() - started
cameras = [o for o in bpy.data.collections[settings.collection].objects if o.type == "CAMERA"]
jobs.runner.stop_backend()
print("RESULT", json.dumps({"times": times, "status": preferences.status, "python": preferences.backend_python(),
                            "state": settings.state, "message": settings.message, "error": settings.error,
                            "cameras": len(cameras), "plan": s.summary, "addon": preferences.__file__}))
"""


@pytest.mark.slow
def test_a_new_user_sets_up_the_backend_and_gets_cameras(tmp_path):
    photos = dataset("middlebury_temple_sparse_ring") / "images"
    zip_path = build_addon.build(tmp_path / "dist")
    profile, home = tmp_path / "profile", tmp_path / "reconstruct-home"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(profile), "BLENDER_USER_CONFIG": str(profile / "config"),
           "BLENDER_USER_SCRIPTS": str(profile / "scripts"), "RECONSTRUCT_HOME": str(home),
           "RECONSTRUCT_TORCH_INDEX": ""}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SESSION, str(zip_path), str(photos), str(tmp_path / "ws")],
                          env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    total = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    print(proc.stdout)
    print(f"whole path {total:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["times"].items()))
    assert str(profile) in result["addon"]  # the installed copy, not this checkout
    assert result["python"].startswith(str(home))  # the environment Set Up Backend made
    assert result["status"]["ok"] is True and result["status"]["text"].startswith("Backend 0.1.0 ready")
    assert result["plan"].startswith("torch CPU")
    assert result["state"] == "DONE", result
    assert result["cameras"] >= 14, result  # the temple registers 16/16 at its defaults
    record = json.loads((home / f"py{sys.version_info[0]}{sys.version_info[1]}" / "reconstruct-env.json").read_text())
    assert record["complete"] and record["torch_index_override"] == ""
