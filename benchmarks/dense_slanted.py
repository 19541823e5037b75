"""Dense points on the ground seen at grazing angles (issue 17, acceptance 1):
F-score at 1% and 0.5% of the object's diagonal, over the surface two or more
cameras see, with the slanted plane families and with fronto-parallel planes
only, on two synthetic scenes with ground truth:

- the demo scene (two rings at 25 and 50 degrees), scored like the demo (the
  object's box grown by a quarter);
- a low orbit (backend.tools.synthetic_scene.low_orbit_params: rings at 8 and 16
  degrees), scored over the object and the ground out to half its size around
  it, where most of the visible surface is ground at a grazing angle.

    .venv/bin/python benchmarks/dense_slanted.py [--work DIR]

The cameras are computed once per scene, the dense stages once per mode.
Writes benchmarks/results/dense_slanted.{md,json}; exits 1 when a slanted row
scores under 0.95 at 1%.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, backend, write_report  # noqa: E402

SCENES = {"demo scene": ("SceneParams", 0.25), "low orbit": ("low_orbit_params", 0.5)}
MODES = {"slanted": [], "fronto-parallel only": ["--fronto-parallel-only"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="keep the scenes and workspaces here (default: a temporary folder)")
    args = parser.parse_args()
    from backend.tools import synthetic_scene
    from backend.tools.evaluate import evaluate_synthetic

    work = args.work or Path(tempfile.mkdtemp(prefix="dense-slanted-"))
    rows = []
    for scene_name, (params, margin) in SCENES.items():
        key = scene_name.replace(" ", "-")
        scene = synthetic_scene.ensure_scene(REPO / ".cache" / "tests" / "synthetic-scene" if key == "demo-scene"
                                             else work / f"{key}-scene", getattr(synthetic_scene, params)())
        sfm = work / f"{key}-sfm"
        backend("run", scene / "images", "--workspace", sfm, "--stages", "undistort")
        for mode, flags in MODES.items():
            ws = work / f"{key}-{mode.split()[0]}"
            shutil.rmtree(ws, ignore_errors=True)
            shutil.copytree(sfm, ws)
            started = time.perf_counter()
            backend("run", scene / "images", "--workspace", ws, "--stages", "fusion", *flags)
            seconds = time.perf_counter() - started
            geometry = evaluate_synthetic(ws, scene, margin=margin)
            mvs = json.loads((ws / "job.json").read_text())["stages"]["mvs"]["result"]
            rows.append({"scene": scene_name, "margin": margin, "mode": mode, "dense": geometry["dense"],
                         "dense_half": geometry["dense_half"], "region": mvs.get("region", {}).get("kind"),
                         "seconds_per_depth_map": mvs["seconds_per_depth_map"], "dense_seconds": seconds})
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    (RESULTS / "dense_slanted.json").parent.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dense_slanted.json").write_text(json.dumps({"machine": machine, "rows": rows,
                                                              "date": time.strftime("%Y-%m-%d")}, indent=2))
    lines = ["# Dense points on grazing ground: slanted plane families vs fronto-parallel planes", "",
             f"Machine: {machine}, no GPU. {time.strftime('%Y-%m-%d')}. F-score, accuracy and completeness over "
             "the true surface two or more cameras see (backend.tools.evaluate.evaluate_synthetic), in the "
             "object's box grown by the margin.", "",
             "| scene (margin) | planes | F at 1% | accuracy / completeness | F at 0.5% | points | s / depth map | region |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, h = r["dense"], r["dense_half"]
        lines.append(f"| {r['scene']} ({r['margin']}) | {r['mode']} | {d['f_score']:.3f} | {d['accuracy']:.4f} / "
                     f"{d['completeness']:.3f} | {h['f_score']:.3f} | {d['num_points']} | "
                     f"{r['seconds_per_depth_map']:.2f} | {r['region']} |")
    write_report(RESULTS / "dense_slanted.md", lines + [""])
    missed = [r for r in rows if r["mode"] == "slanted" and r["dense"]["f_score"] < 0.95]
    if missed:
        print("issue 17's bar (F >= 0.95 at 1%) missed on: " + ", ".join(r["scene"] for r in missed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
