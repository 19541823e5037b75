"""Dense stages on fountain-P11: seconds per depth map per megapixel, fusion
and meshing time, and peak memory, on the CPU and (where torch sees one) on
a CUDA GPU.

    .venv/bin/python benchmarks/dense_fountain.py [--size 1536] [--devices cpu cuda]

The cameras are computed once (SIFT at 1600 px, undistorted images at
--size), then the dense stages run in a fresh backend process per device,
so the peak resident memory is the dense stages' own (the stage worker's
ru_maxrss). Writes benchmarks/results/dense_fountain.{md,json}.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1536, help="longest side of the images depth is computed at")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--work", type=Path, help="keep the workspaces here (default: a temporary folder)")
    args = parser.parse_args()
    import torch

    photos = DATA / "strecha_fountain_p11" / "images"
    work = args.work or Path(tempfile.mkdtemp(prefix="dense-bench-"))
    sfm_ws = work / "sfm"
    started = time.perf_counter()
    backend("run", photos, "--workspace", sfm_ws, "--max-image-size", 1600, "--undistort-max-size", args.size,
            "--stages", "undistort")
    sfm_seconds = time.perf_counter() - started
    rows = []
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            rows.append({"device": "cuda", "skipped": "torch sees no CUDA GPU on this machine"})
            continue
        ws = work / device
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(sfm_ws, ws)
        backend("run", photos, "--workspace", ws, "--max-image-size", 1600, "--undistort-max-size", args.size,
                "--dense-max-size", args.size, "--dense-device", device)
        job = json.loads((ws / "job.json").read_text())["stages"]
        mvs, fusion, mesh = (job[s] for s in ("mvs", "fusion", "mesh"))
        rows.append({
            "device": mvs["result"]["device"],
            "depth_maps": mvs["result"]["num_depth_maps"],
            "depth_map_size": mvs["result"]["size"],
            "seconds_per_depth_map": mvs["result"]["seconds_per_depth_map"],
            "seconds_per_megapixel": mvs["result"]["seconds_per_megapixel"],
            "mvs_seconds": mvs["seconds"], "fusion_seconds": fusion["seconds"], "mesh_seconds": mesh["seconds"],
            "dense_points": fusion["result"]["num_points"], "mesh_faces": mesh["result"]["num_faces"],
            "poisson_depth": mesh["result"]["poisson_depth"],
            "peak_rss_mb": {s: job[s]["result"]["peak_rss_mb"] for s in ("mvs", "fusion", "mesh")},
            "peak_cuda_mb": mvs["result"].get("peak_cuda_mb"),
        })
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
             "| device | depth map size | s / depth map | s / megapixel | MVS s | fusion s | mesh s | points | "
             "faces | peak RSS MB (mvs / fusion / mesh) | peak CUDA MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['device']} | not measured: {r['skipped']} |||||||||")
            continue
        rss = " / ".join(f"{v:.0f}" for v in r["peak_rss_mb"].values())
        lines.append(f"| {r['device']} | {r['depth_map_size'][0]}x{r['depth_map_size'][1]} | "
                     f"{r['seconds_per_depth_map']:.1f} | {r['seconds_per_megapixel']:.2f} | {r['mvs_seconds']:.0f} | "
                     f"{r['fusion_seconds']:.1f} | {r['mesh_seconds']:.1f} | {r['dense_points']} | {r['mesh_faces']} | "
                     f"{rss} | {r['peak_cuda_mb'] or '-'} |")
    (RESULTS / "dense_fountain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
