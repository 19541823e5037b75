"""F12 with a million splats (issue 16): what the splat layer of one rendered
frame costs, on the CPU, on top of the engine's own render.

    .venv/bin/python benchmarks/splats_f12.py [--splats 1000000] [--sizes 1280x720,1920x1080]

The splats are the viewport benchmark's synthetic PLY (degree 3, plyfile),
imported as a job's are, with the Reconstruct Splats compositor node; the
camera looks at them from 8 units. For each size, the render handler's work
is timed as F12 runs it (draw_splat_layer: projection with the SH, the tile
rasteriser, the two images filled), split into projection and rasterising,
with the pairs and pixel evaluations it did, and then one whole F12 of the
frame with Cycles at 1 sample (the engine's part is tiny then: what remains
is the layer and the compositor). Writes benchmarks/results/splats_f12.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_report  # noqa: E402
from splats_viewport import write_ply  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splats", type=int, default=1_000_000)
    parser.add_argument("--sizes", default="1280x720,1920x1080")
    args = parser.parse_args()
    import bpy

    from blender_addon.importers.splats import build_splats, prepare_splats
    from blender_addon.render import compositing, splat_raster
    from blender_addon.shared.splat_ply import read_splats
    from blender_addon.viewport.splat_draw import drawn_splats

    work = Path(tempfile.mkdtemp(prefix="splats-f12-"))
    ply = work / "splats.ply"
    write_ply(ply, args.splats, seed=1)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    obj = build_splats("splats", prepare_splats(read_splats(ply)), scene.collection)
    ply.unlink()
    compositing.ensure_compositing(scene)
    compositing.register()
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.location = (0.0, -8.0, 0.0)
    camera.rotation_euler = (np.pi / 2, 0.0, 0.0)
    bpy.context.view_layer.update()
    rows = []
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
        world_to_camera, pinhole, views = compositing._frame(scene)
        began = time.perf_counter()
        projected = [splat_raster.project(drawn_splats(o).arrays, view, pinhole) for o, view in views]
        project = time.perf_counter() - began
        began = time.perf_counter()
        layer = splat_raster.render(projected, pinhole)
        raster = time.perf_counter() - began
        began = time.perf_counter()
        compositing.draw_splat_layer(scene)
        handler = time.perf_counter() - began
        scene.render.engine = "CYCLES"
        scene.cycles.samples, scene.cycles.use_denoising = 1, False
        scene.render.filepath = str(work / f"f12-{size}.png")
        began = time.perf_counter()
        bpy.ops.render.render(write_still=True)
        f12 = time.perf_counter() - began
        rows.append(f"| {w}x{h} | {len(projected[0]):,} | {float((layer.alpha > 0.5).mean()):.0%} | {project:.2f} | "
                    f"{raster:.2f} | {handler:.2f} | {f12:.2f} |")
        print(rows[-1], flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = ["# F12 with splats: the splat layer's cost", "",
             f"Blender {bpy.app.version_string} (bpy module), {platform.machine()}, {os.cpu_count()} cores, "
             f"no GPU. `python benchmarks/splats_f12.py --splats {args.splats}`.", "",
             f"{args.splats:,} synthetic splats of degree 3 (benchmarks/splats_viewport.py's PLY), seen from 8 units. "
             "Times in seconds: projection (covariances, SH colours), rasterising (tiles, compositing), "
             "the render handler's whole work (both, and the two images filled), and one F12 with Cycles "
             "at 1 sample including all of it and the compositor.", "",
             "| frame | splats in view | covered | projection | rasterising | handler | F12 (Cycles, 1 sample) |",
             "|---|---|---|---|---|---|---|", *rows, "",
             f"Peak resident memory of the process: {peak:,.0f} MB. Everything runs on the CPU (numpy): "
             "it is the same on a machine with a GPU."]
    write_report(RESULTS / "splats_f12.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
