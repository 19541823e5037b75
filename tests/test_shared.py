"""The modules the add-on and the backend share live in blender_addon/shared/
and import without Blender: the backend runs them in its own Python."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import blender_addon.shared as shared
from conftest import REPO

EXPECTED = {"camera_math", "colmap_io", "layout", "ply_io", "preview_math", "protocol", "splat_ply", "stages"}


def test_every_shared_module_imports_with_bpy_blocked():
    names = {m.name for m in pkgutil.iter_modules(shared.__path__)}
    assert EXPECTED <= names
    code = ("import sys, importlib; sys.modules['bpy'] = None; "  # `import bpy` now raises ImportError
            "[importlib.import_module('blender_addon.shared.' + n) for n in sys.argv[1:]]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bpy', 'mathutils', 'bl_ext')))")
    proc = subprocess.run([sys.executable, "-c", code, *sorted(names)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['bpy']"  # only our blocker: nothing reached for Blender


def test_the_backend_imports_the_add_on_only_through_its_shared_modules():
    offenders = []
    for path in sorted((REPO / "backend").rglob("*.py")):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["from"], ["import"]) and len(words) > 1 and words[1].startswith("blender_addon") \
                    and not words[1].startswith("blender_addon.shared"):
                offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    # The tools that drive Blender itself (demo .blend, previews) are the exception.
    assert all(o.startswith("backend/tools/") for o in offenders), offenders
