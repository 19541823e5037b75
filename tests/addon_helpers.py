"""Helpers for tests that run the add-on in real Blender (the bpy module)."""
from __future__ import annotations

import time

import bpy

from conftest import REPO  # noqa: F401  (keeps the repo root importable)


def fresh_blender_with_addon(backend_python: str, workspace_root: str):
    """Factory settings, the add-on enabled from this checkout, and its
    preferences pointed at a backend and a workspace folder."""
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("blender_addon", default_set=True, handle_error=_raise)
    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.backend_python = backend_python
    prefs.workspace_root = workspace_root
    prefs.device = "cpu"
    from blender_addon.link import jobs

    return jobs


def _raise(exc):
    raise exc


def disable_addon() -> None:
    import addon_utils

    addon_utils.disable("blender_addon", default_set=True)


def drive(jobs, until, timeout: float = 600.0) -> None:
    """Play Blender's event loop: call the add-on's timer callback as
    bpy.app.timers would, until `until()` is true."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(f"state stayed {bpy.context.scene.reconstruct.state}: "
                               f"{bpy.context.scene.reconstruct.message}")
        interval = jobs._tick()
        time.sleep(min(interval or 0.1, 0.1))


def scene_snapshot() -> tuple:
    return (sorted(o.name for o in bpy.data.objects), sorted(c.name for c in bpy.data.collections),
            sorted(c.name for c in bpy.data.cameras), sorted(m.name for m in bpy.data.meshes))


def assert_ticks_short(runner, minimum: int = 1) -> None:
    """Every timer call that followed a running job (not the ones that built a
    part's datablocks) was short: at most 20 ms of the main thread's own work,
    and at most 50 ms of wall time, which also counts waiting for the GIL
    while the result reader converts arrays (measured at most 9 ms on the Sceaux
    cloud) and for the CPU, which the backend's processes share on 2 cores."""
    cpu, wall = runner.tick_cpu, runner.tick_durations
    assert len(wall) >= minimum and len(cpu) == len(wall)
    assert max(cpu) < 0.020, f"slowest timer call used {1000 * max(cpu):.1f} ms of CPU"
    assert max(wall) < 0.050, f"slowest timer call took {1000 * max(wall):.1f} ms"
