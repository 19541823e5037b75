"""The extension zip a user downloads installs and enables in a fresh
Blender, with msgpack coming from its bundled wheel."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

import build_addon
from blender_addon import protocol

pytest.importorskip("bpy")

INSTALL = """
import sys, bpy
zip_path = sys.argv[1]
result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
assert result == {"FINISHED"}, result
assert "bl_ext.user_default.reconstruct" in bpy.context.preferences.addons
assert hasattr(bpy.types.Scene, "reconstruct")
assert bpy.ops.reconstruct.run.poll() in (True, False)
import bl_ext.user_default.reconstruct as addon
from bl_ext.user_default.reconstruct import protocol
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
    assert "backend_src/pyproject.toml" in names and "backend_src/backend/pipeline.py" in names
    # A fresh user profile: Blender installs the extension and its wheels there.
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "profile")}
    proc = subprocess.run([sys.executable, "-c", INSTALL, str(zip_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"VERSION {protocol.__version__}" in proc.stdout
    assert str(tmp_path / "profile") in proc.stdout  # the installed copy, not this checkout
    site = list((tmp_path / "profile").rglob("site-packages/msgpack/__init__.py"))
    assert site, "the bundled msgpack wheel was not installed"
