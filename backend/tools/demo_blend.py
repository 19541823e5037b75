"""Write the demo's .blend through the add-on's own import path.

Runs as its own process (`python -m backend.tools.demo_blend WORKSPACE OUT NAME`)
so bpy never shares a process with pycolmap.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import bpy
    import addon_utils  # only importable once bpy is

    workspace, out, name = Path(argv[0]), Path(argv[1]), argv[2]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("blender_addon", default_set=True)
    from blender_addon.importers.results import import_workspace

    collection = import_workspace(workspace, name, bpy.context.scene)
    out.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(out))
    cameras = sum(o.type == "CAMERA" for o in collection.objects)
    print(f"{out}: {cameras} cameras, {', '.join(o.name for o in collection.objects if o.type == 'MESH')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
