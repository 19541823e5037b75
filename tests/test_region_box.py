"""The region dense stereo reconstructs, seen and adjusted in Blender (bpy): the
cameras bring the automatic region as a box (an empty drawn as a cube), the sidebar's Region; as it
came the backend keeps its own region, and once the user moves or scales it,
fusion and meshing stay inside it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.importers.results import import_workspace  # noqa: E402
from blender_addon.shared.ply_io import read_ply  # noqa: E402


def test_the_automatic_region_comes_in_as_a_box_and_adjusting_it_changes_what_is_reconstructed(
        temple, temple_run, tmp_path):
    """Issue 17, acceptance 5: squeezed to half its width and turned 10 degrees, the box
    keeps the dense points and the mesh inside it, and the summary reports it."""
    from addon_helpers import disable_addon, fresh_blender_with_addon
    from backend.dense.roi import Box
    from blender_addon.link.roi import object_box
    from conftest import BACKEND_PYTHON, read_json, run_backend

    ws = tmp_path / "ws"
    shutil.copytree(temple_run, ws)
    jobs = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path))
    try:
        settings = bpy.context.scene.reconstruct
        import_workspace(ws, "temple", bpy.context.scene, parts=("cameras", "region"))
        region = bpy.data.objects["temple region"]
        bpy.context.view_layer.update()
        assert settings.roi_object == region and region.type == "EMPTY" and region.empty_display_type == "CUBE"
        automatic = read_json(ws / "undistorted" / "region.json")
        assert automatic["kind"] == "object"  # the temple ring surrounds its subject
        assert Box.from_dict(object_box(region)).half_size == pytest.approx(automatic["half_size"])
        assert "roi" not in jobs.dense_options(settings, "cpu", ws)  # as it came: the backend's own
        full = read_ply(ws / "dense" / "fused.ply").column("x", "y", "z", dtype=np.float64)

        region.scale.x *= 0.5  # the user squeezes the box to the temple's half and turns it
        region.rotation_euler.z += np.radians(10)
        bpy.context.view_layer.update()
        roi = jobs.dense_options(settings, "cpu", ws)["roi"]
        # Depth maps at half size: what is reconstructed is what the box holds, at any size.
        run_backend("run", temple / "images", "--workspace", ws, "--roi", json.dumps(roi), "--stages", "mesh",
                    "--dense-max-size", "320", check=True)
        box = Box.from_dict(roi)
        assert box.half_size[0] == pytest.approx(automatic["half_size"][0] / 2)
        cropped = read_ply(ws / "dense" / "fused.ply").column("x", "y", "z", dtype=np.float64)
        assert box.contains(cropped).all() and 1000 < len(cropped) < 0.8 * len(full)
        mesh = read_ply(ws / "mesh" / "mesh.ply").column("x", "y", "z", dtype=np.float64)
        assert box.contains(mesh).mean() > 0.99  # decimation may move a vertex a hair
        assert Box.from_dict(read_json(ws / "summary.json")["dense"]["roi"]).half_size == pytest.approx(box.half_size)
    finally:
        disable_addon()
