"""Dense stages on fountain-P11: seconds per depth map per megapixel, peak
memory, and what the dense cloud covers (issue 17): the share of the ground in
front of the fountain and the flatness of its wall, with the slanted plane
families and with fronto-parallel planes only, on the CPU and (where torch sees
one) on a CUDA GPU.

    .venv/bin/python benchmarks/dense_fountain.py [--size 1600] [--devices cpu cuda]
        [--work DIR] [--baseline WORKSPACE --baseline-name TEXT]

The cameras are computed once (SIFT at 1600 px, undistorted images at --size;
kept in --work/sfm and reused when there), then the dense stages run in a fresh
backend process per row, so the peak resident memory is the dense stages' own
(the stage worker's ru_maxrss). --baseline scores a workspace an earlier version
made from the same --work/sfm alongside (backend.tools.evaluate.facade_scores
needs the same cameras). Writes benchmarks/results/dense_fountain.{md,json}.
Exits 1 when the slanted CPU row misses issue 17's bars: 80% of the ground,
the wall's median distance no worse (5% slack) and at most 1.5x the seconds per
megapixel of the baseline (else of the fronto-parallel row).
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

from common import DATA, RESULTS, backend  # noqa: E402

MODES = {"slanted": [], "fronto-parallel only": ["--fronto-parallel-only"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1600, help="longest side of the images depth is computed at")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--work", type=Path, help="keep the workspaces here (default: a temporary folder)")
    parser.add_argument("--baseline", type=Path, help="a workspace an earlier version made from --work/sfm")
    parser.add_argument("--baseline-name", default="baseline")
    args = parser.parse_args()
    import torch

    from backend.tools.evaluate import facade_scores

    photos = DATA / "strecha_fountain_p11" / "images"
    work = args.work or Path(tempfile.mkdtemp(prefix="dense-bench-"))
    sfm_ws = work / "sfm"
    started = time.perf_counter()
    backend("run", photos, "--workspace", sfm_ws, "--max-image-size", 1600, "--undistort-max-size", args.size,
            "--stages", "undistort")
    sfm_seconds = time.perf_counter() - started
    rows, workspaces = [], []
    if args.baseline:
        job = json.loads((args.baseline / "job.json").read_text())["stages"]
        rows.append({"device": job["mvs"]["result"]["device"], "mode": args.baseline_name, **_figures(job)})
        workspaces.append(args.baseline)
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            rows.append({"device": "cuda", "mode": "-", "skipped": "torch sees no CUDA GPU on this machine"})
            continue
        for mode, flags in MODES.items():
            ws = work / f"{device}-{mode.split()[0]}"
            shutil.rmtree(ws, ignore_errors=True)
            shutil.copytree(sfm_ws, ws)
            backend("run", photos, "--workspace", ws, "--max-image-size", 1600, "--undistort-max-size", args.size,
                    "--dense-max-size", args.size, "--dense-device", device, "--stages", "mesh", *flags)
            job = json.loads((ws / "job.json").read_text())["stages"]
            rows.append({"device": job["mvs"]["result"]["device"], "mode": mode, **_figures(job)})
            workspaces.append(ws)
    measured = [r for r in rows if "skipped" not in r]
    for row, scores in zip(measured, facade_scores(workspaces)):
        row["facade"] = scores
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "torch": torch.__version__, "python": platform.python_version()}
    report = {"set": "strecha_fountain_p11 (11 photos, 3072x2048)", "size": args.size, "machine": machine,
              "sfm_seconds": sfm_seconds, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dense_fountain.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Dense stages on fountain-P11 at {args.size} px", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu'] or 'none'}; "
             f"torch {machine['torch']}. {report['date']}. Cameras: SIFT at 1600 px, {sfm_seconds:.0f} s.", "",
             "Ground: the share of the ground in front of the fountain with a dense point over it "
             "(backend.tools.evaluate.facade_scores). Wall: median / 90th percentile distance of the points "
             "near the wall to a plane fitted to it, in % of the cameras' distance to the wall.", "",
             "| device | planes | depth map size | s / depth map | s / megapixel | MVS s | fusion s | mesh s | "
             "points | ground covered | wall median / p90 % | faces | peak RSS MB (mvs / fusion / mesh) | "
             "peak CUDA MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['device']} | not measured: {r['skipped']} ||||||||||||")
            continue
        rss = " / ".join(f"{v:.0f}" for v in r["peak_rss_mb"].values())
        f = r["facade"]
        lines.append(f"| {r['device']} | {r['mode']} | {r['depth_map_size'][0]}x{r['depth_map_size'][1]} | "
                     f"{r['seconds_per_depth_map']:.1f} | {r['seconds_per_megapixel']:.2f} | {r['mvs_seconds']:.0f} | "
                     f"{r['fusion_seconds']:.1f} | {r['mesh_seconds']:.1f} | {r['dense_points']} | "
                     f"{100 * f['ground_covered']:.1f}% of {f['ground_cells']} cells | "
                     f"{100 * f['wall_median_distance']:.3f} / {100 * f['wall_p90_distance']:.3f} | "
                     f"{r['mesh_faces']} | {rss} | {r['peak_cuda_mb'] or '-'} |")
    (RESULTS / "dense_fountain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    cpu = {r["mode"]: r for r in measured if r["device"] == "cpu"}
    if "slanted" in cpu and "fronto-parallel only" in cpu:
        new, old = cpu["slanted"], cpu["fronto-parallel only"]
        before = cpu.get(args.baseline_name, old)  # "today's" time: the earlier version's when given
        misses = []
        if new["facade"]["ground_covered"] < 0.8:
            misses.append(f"ground covered {100 * new['facade']['ground_covered']:.1f}% < 80%")
        if new["facade"]["wall_median_distance"] > 1.05 * before["facade"]["wall_median_distance"]:
            misses.append(f"the wall is less flat than with {before['mode']}")
        if new["seconds_per_megapixel"] > 1.5 * before["seconds_per_megapixel"]:
            misses.append(f"more than 1.5x the seconds per megapixel of {before['mode']}")
        if misses:
            print("issue 17's bars missed: " + "; ".join(misses))
            return 1
    return 0


def _figures(job: dict) -> dict:
    mvs, fusion, mesh = (job[s] for s in ("mvs", "fusion", "mesh"))
    return {"depth_maps": mvs["result"]["num_depth_maps"], "depth_map_size": mvs["result"]["size"],
            "seconds_per_depth_map": mvs["result"]["seconds_per_depth_map"],
            "seconds_per_megapixel": mvs["result"]["seconds_per_megapixel"],
            "region": mvs["result"].get("region"),
            "mvs_seconds": mvs["seconds"], "fusion_seconds": fusion["seconds"], "mesh_seconds": mesh["seconds"],
            "dense_points": fusion["result"]["num_points"], "mesh_faces": mesh["result"]["num_faces"],
            "poisson_depth": mesh["result"]["poisson_depth"],
            "peak_rss_mb": {s: job[s]["result"]["peak_rss_mb"] for s in ("mvs", "fusion", "mesh")},
            "peak_cuda_mb": mvs["result"].get("peak_cuda_mb")}


if __name__ == "__main__":
    sys.exit(main())
