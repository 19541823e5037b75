"""The extension zip a user downloads installs and enables in a fresh
Blender, with msgpack coming from its bundled wheel."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import build_addon
from blender_addon.shared import protocol

pytest.importorskip("bpy")
pytestmark = pytest.mark.every_blender  # the zip, its manifest and Set Up Backend's staging, on each Blender

INSTALL = """
import sys, bpy
zip_path = sys.argv[1]
result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
assert result == {"FINISHED"}, result
assert "bl_ext.user_default.reconstruct" in bpy.context.preferences.addons
assert hasattr(bpy.types.Scene, "reconstruct")
assert bpy.ops.reconstruct.run.poll() in (True, False)
import bl_ext.user_default.reconstruct as addon
from bl_ext.user_default.reconstruct.shared import protocol
print("VERSION", protocol.__version__)
print("ADDON", addon.__file__)
"""


def test_manifest_version_is_the_package_version():
    assert build_addon.manifest_version() == protocol.__version__


def test_zip_installs_and_enables_in_a_fresh_blender(tmp_path):
    zip_path = build_addon.build(tmp_path / "dist")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        manifest = zf.read("blender_manifest.toml").decode()
    assert "blender_manifest.toml" in names and "__init__.py" in names
    assert f'version = "{protocol.__version__}"' in manifest
    assert any(n.startswith("wheels/msgpack-") and "manylinux" in n for n in names)
    assert "backend_src/pyproject.toml" in names and "backend_src/backend/job/pipeline.py" in names
    # Each module once: the shared ones in the add-on's shared/, no second copy of the add-on.
    assert not [n for n in names if n.startswith("backend_src/blender_addon")]
    shared = sorted(n for n in names if n.endswith(".py") and "/" in n and n.split("/")[-2] == "shared")
    assert "shared/protocol.py" in shared
    with zipfile.ZipFile(zip_path) as zf:
        sources = {n: zf.read(n) for n in names if n.endswith(".py") and len(zf.read(n)) > 200}
    copies = [n for n in sources if list(sources.values()).count(sources[n]) > 1]
    assert not copies, copies
    # A fresh user profile: Blender installs the extension and its wheels there.
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "profile")}
    proc = subprocess.run([sys.executable, "-c", INSTALL, str(zip_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"VERSION {protocol.__version__}" in proc.stdout
    assert str(tmp_path / "profile") in proc.stdout  # the installed copy, not this checkout
    site = list((tmp_path / "profile").rglob("site-packages/msgpack/__init__.py"))
    assert site, "the bundled msgpack wheel was not installed"


def blender_ext_validate(path) -> subprocess.CompletedProcess:
    """Blender's own extension validator (the one the extensions platform runs), from this bpy."""
    import bpy

    script = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    return subprocess.run([sys.executable, str(script), "validate", str(path)], capture_output=True, text=True,
                          timeout=120)


def test_the_zip_passes_blenders_own_validator_and_declares_files_and_network(tmp_path):
    import bpy
    import tomllib

    zip_path = build_addon.build(tmp_path / "dist")
    proc = blender_ext_validate(zip_path)
    assert proc.returncode == 0 and "Success" in proc.stdout, f"bpy {bpy.app.version_string}: {proc.stdout}{proc.stderr}"
    with zipfile.ZipFile(zip_path) as zf:
        permissions = tomllib.loads(zf.read("blender_manifest.toml").decode())["permissions"]
    assert set(permissions) == {"files", "network"}  # Set Up Backend downloads packages
    # The validator does refuse what it should: the first wave's 68-character reason.
    bad = tmp_path / "bad"
    bad.mkdir()
    manifest = (build_addon.ADDON / "blender_manifest.toml").read_text()
    (bad / "blender_manifest.toml").write_text(manifest.replace(
        permissions["files"], "Read photo folders, write reconstruction workspaces, run the backend"))
    (bad / "__init__.py").write_text("")
    refused = blender_ext_validate(bad)
    assert refused.returncode != 0 and "64 characters" in refused.stdout + refused.stderr


def test_set_up_backend_puts_the_zip_s_backend_and_shared_modules_together(tmp_path):
    """What 'Set Up Backend' pip-installs from an installed zip: the backend and
    the add-on's one copy of the shared modules, importable without bpy."""
    zip_path = build_addon.build(tmp_path / "dist")
    addon = tmp_path / "extension"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(addon)
    code = ("import sys, pathlib; sys.path.insert(0, sys.argv[1] + '/link'); import setup_backend as m; "
            "print(m.staged_source(m.backend_source(), pathlib.Path(sys.argv[2])))")
    staged = subprocess.run([sys.executable, "-c", code, str(addon), str(tmp_path / "staging")], capture_output=True,
                            text=True, check=True, cwd=tmp_path).stdout.strip()
    check = ("import sys; sys.modules['bpy'] = None; sys.path.insert(0, sys.argv[1]); "
             "from backend.job.pipeline import run_job; from blender_addon.shared import protocol, stages; "
             "import backend, blender_addon; print(backend.__file__, blender_addon.__file__)")
    proc = subprocess.run([sys.executable, "-I", "-c", check, staged], capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"{staged}/backend/__init__.py", f"{staged}/blender_addon/__init__.py"]
    assert (tmp_path / "staging" / "pyproject.toml").is_file()
