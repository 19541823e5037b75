"""Gaussian splat training on fountain-P11: steps per second, time to N steps
(7000 by default), held-out PSNR/SSIM (every 8th photo), and the first step's
time (on CUDA it includes compiling gsplat's kernels), per device.

    .venv/bin/python benchmarks/splats_fountain.py [--size 1536] [--steps 7000] [--devices cuda cpu]

The cameras are computed once (SIFT at 1600 px), then each device trains in a
fresh backend process. On the CPU, 7000 steps at 1536 px take hours: pass
--cpu-steps to measure a shorter run there. Writes
benchmarks/results/splats_fountain.{md,json} (rows for devices torch does not
see are written as skipped, with the reason).
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
    parser.add_argument("--size", type=int, default=1536, help="longest side of the photos splats train on")
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--cpu-steps", type=int, help="steps on the CPU (default: --steps)")
    parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"])
    parser.add_argument("--work", type=Path, help="keep the workspaces here (default: a temporary folder)")
    args = parser.parse_args()
    import torch

    photos = DATA / "strecha_fountain_p11" / "images"
    if not photos.is_dir():
        sys.exit(f"fountain-P11 not found at {photos} (set RECONSTRUCT_DATA)")
    work = args.work or Path(tempfile.mkdtemp(prefix="splat-bench-"))
    sfm_ws = work / "sfm"
    backend("run", photos, "--workspace", sfm_ws, "--max-image-size", 1600, "--stages", "undistort")
    rows = []
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            rows.append({"device": "cuda", "skipped": "torch sees no CUDA GPU on this machine"})
            continue
        steps = args.cpu_steps if device == "cpu" and args.cpu_steps else args.steps
        ws = work / device
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(sfm_ws, ws)
        started = time.perf_counter()
        backend("run", photos, "--workspace", ws, "--max-image-size", 1600, "--stages", "splats",
                "--splat-size", args.size, "--splat-steps", steps, "--splat-device", device)
        wall = time.perf_counter() - started
        s = json.loads((ws / "summary.json").read_text())["splats"]
        rows.append({"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
                     "steps": steps, "image_size": s["image_size"], "num_splats": s["num_splats"],
                     "steps_per_second": s["steps_per_second"], "train_seconds": s["train_seconds"],
                     "first_step_seconds": s["first_step_seconds"], "psnr": s["psnr"], "ssim": s["ssim"],
                     "held_out": s["held_out"], "stage_wall_seconds": round(wall, 1)})
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "command": " ".join(["benchmarks/splats_fountain.py", *sys.argv[1:]])}
    (RESULTS / "splats_fountain.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Splat training on fountain-P11", "",
             f"{meta['date']}, {meta['machine']}, torch {meta['torch']}. Every 8th photo held out.",
             f"`{meta['command']}`", "",
             "| device | steps | size | splats | steps/s | train s | first step s | PSNR | SSIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['device']} | skipped: {r['skipped']} | | | | | | | |")
        else:
            lines.append(f"| {r['device']} | {r['steps']} | {r['image_size'][0]}x{r['image_size'][1]} | "
                         f"{r['num_splats']} | {r['steps_per_second']} | {r['train_seconds']} | "
                         f"{r['first_step_seconds']:.1f} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
    (RESULTS / "splats_fountain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
