"""Set Up Backend as a user meets it, in real Blender: one environment serves
every Blender profile; offline or on an unsupported machine it says why and
downloads nothing; Cancel leaves an unfinished environment that the next
Set Up Backend finishes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

import build_addon  # noqa: E402
from addon_helpers import disable_addon, fresh_blender_with_addon  # noqa: E402
from blender_addon.link.install_plan import Machine  # noqa: E402
from blender_addon.shared import protocol  # noqa: E402
from conftest import BACKEND_PYTHON  # noqa: E402

PROFILE = """
import json, sys, bpy
assert bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                 enable_on_install=True) == {"FINISHED"}
from bl_ext.user_default.reconstruct.ui import preferences
from bl_ext.user_default.reconstruct.link import setup_backend
from bl_ext.user_default.reconstruct.link.install_plan import Machine, plan
if sys.argv[2] == "make":  # what a finished Set Up Backend leaves: an environment and its record
    import subprocess
    venv = preferences.managed_venv()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    setup_backend._write_record(venv, plan(Machine("linux", "x86_64", (3, 11))), None)
status = setup_backend.env_status(preferences.managed_venv(), preferences.__version__)
print("RESULT", json.dumps({"python": preferences.detect_backend_python(), "env": status.state,
                            "text": status.text, "addon": preferences.__file__}))
"""


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory):
    return build_addon.build(tmp_path_factory.mktemp("dist"))


def _profile(zip_path: Path, profile: Path, home: Path, action: str = "find") -> dict:
    """A fresh Blender user profile with the extension installed from the zip."""
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(profile), "BLENDER_USER_CONFIG": str(profile / "config"),
           "BLENDER_USER_SCRIPTS": str(profile / "scripts"), "RECONSTRUCT_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", PROFILE, str(zip_path), action], env=env, capture_output=True,
                          text=True, timeout=300, cwd=profile.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_a_second_blender_profile_finds_and_reuses_the_environment(zip_path, tmp_path):
    home = tmp_path / "reconstruct-home"
    first = _profile(zip_path, tmp_path / "profile-a", home, "make")
    env_python = home / f"py{sys.version_info[0]}{sys.version_info[1]}" / "bin" / "python"
    assert first["python"] == str(env_python) and first["env"] == "ready"
    assert str(tmp_path / "profile-a") in first["addon"]  # the installed copy, not this checkout
    second = _profile(zip_path, tmp_path / "profile-b", home)
    assert str(tmp_path / "profile-b") in second["addon"]
    assert second["python"] == str(env_python) and second["env"] == "ready"
    assert not list((tmp_path / "profile-b").rglob("pyvenv.cfg"))  # nothing made in the new profile
    # An add-on of another version offers to update the environment, and still uses it meanwhile.
    record = home / env_python.parent.parent.name / "reconstruct-env.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "backend_version": "0.0.1"}))
    third = _profile(zip_path, tmp_path / "profile-c", home)
    assert third["env"] == "outdated" and "Update Backend" in third["text"]
    assert third["python"] == str(env_python)


@pytest.fixture
def prefs(tmp_path, monkeypatch):
    monkeypatch.setenv("RECONSTRUCT_HOME", str(tmp_path / "home"))
    fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path / "workspaces"))
    from blender_addon.link import setup_backend

    yield setup_backend
    setup_backend.cancel()
    deadline = time.monotonic() + 30
    while setup_backend.state.running and time.monotonic() < deadline:
        time.sleep(0.1)
    disable_addon()


def test_without_online_access_it_says_where_to_allow_it_and_downloads_nothing(prefs, tmp_path):
    bpy.context.preferences.system.use_online_access = False
    with pytest.raises(RuntimeError, match="Allow Online Access"):
        bpy.ops.reconstruct.setup_backend(base_python=sys.executable)
    assert "Edit > Preferences > System > Network" in prefs.state.error
    assert not (tmp_path / "home").exists()


def test_on_a_machine_without_packages_it_says_so_before_downloading(prefs, tmp_path):
    bpy.context.preferences.system.use_online_access = True
    prefs.start(sys.executable, tmp_path / "home" / "py311", machine=Machine("darwin", "arm64", (3, 11), (13, 6)))
    assert not prefs.state.running
    assert "macOS 13.6 is not supported" in prefs.state.error and "Update macOS" in prefs.state.error
    assert not (tmp_path / "home").exists()


def test_cancel_leaves_an_unfinished_environment_that_the_preferences_point_out(prefs, tmp_path, monkeypatch):
    from blender_addon.ui import preferences

    bpy.context.preferences.system.use_online_access = True
    monkeypatch.setenv("RECONSTRUCT_TORCH_INDEX", "")  # this machine reaches only its configured indexes
    venv = preferences.managed_venv()
    assert venv.parent == tmp_path / "home"
    assert bpy.ops.reconstruct.setup_backend(base_python=sys.executable) == {"FINISHED"}
    deadline = time.monotonic() + 120
    while prefs.state.step_index < 3 and prefs.state.running and time.monotonic() < deadline:
        time.sleep(0.1)  # until torch is being installed
    assert prefs.state.running, prefs.state.error
    assert prefs.state.step.startswith("Installing torch 2.13.0 (CPU build")
    assert bpy.ops.reconstruct.cancel_setup() == {"FINISHED"}
    deadline = time.monotonic() + 30
    while prefs.state.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert prefs.state.error.startswith("Cancelled. The environment is unfinished")
    assert prefs.env_status(venv, protocol.__version__).state == "unfinished"
    assert preferences.detect_backend_python() != str(prefs.venv_python(venv))  # not used half-built
