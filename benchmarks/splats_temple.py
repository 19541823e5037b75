"""The temple ring's splats at the CPU preset (issue 16, point 7): held-out
PSNR on views between training views and on the edge views, and the splat
count against the number of training pixels.

    .venv/bin/python benchmarks/splats_temple.py [--work DIR]

First the whole job as a user runs it (`python -m backend run PHOTOS
--workspace WS`, no option: the CPU preset), whose splats hold out every 8th
photo by name. Then the splats are trained again on the same workspace with
the two photos on either side of the ring's widest gap held out instead:
those are the edge views, whose nearest training camera is on one side only
(the ring is not closed evenly: 16 photos, about 22 degrees apart, with one
43 degree gap). A view counts as between training views when training cameras
lie on both sides of it, each within 1.5x the ring's median spacing.
Writes benchmarks/results/splats_temple.{md,json}; exits 1 when a view between
training views scores under 20 dB or the splats outnumber the training pixels.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import DATA, REPO, RESULTS, write_report  # noqa: E402

PHOTOS = DATA / "middlebury_temple_sparse_ring" / "images"
BAR_DB = 20.0
BEFORE = ("Before the splats started at the dense points (commit 6883c93, same job, same machine): "
          "13,456 splats from the 1,401 sparse points; templeSR0001 29.45 dB, templeSR0009 14.38 dB held out.")


def azimuths(frames) -> np.ndarray:
    """Each camera's angle (degrees) around the ring's axis: the normal of the
    plane that fits the camera centres best."""
    centres = np.stack([(-f.viewmat[:3, :3].T @ f.viewmat[:3, 3]).cpu().numpy() for f in frames])
    d = centres - centres.mean(0)
    _, _, axes = np.linalg.svd(d)
    return np.degrees(np.arctan2(d @ axes[1], d @ axes[0]))


def sides(az: np.ndarray, i: int, train: list[int]) -> tuple[float, float]:
    """Angular distance from view i to the nearest training camera counter-clockwise and clockwise."""
    diff = (az[train] - az[i]) % 360.0
    ccw = diff[diff > 1e-6].min(initial=360.0)
    cw = (360.0 - diff[diff > 1e-6]).min(initial=360.0)
    if (diff <= 1e-6).any():  # a training photo taken from the same place
        return 0.0, 0.0
    return float(ccw), float(cw)


def spacing(az: np.ndarray) -> float:
    """The ring's median angle between neighbouring cameras (same-place photos aside)."""
    s = np.sort(az)
    gaps = np.diff(np.concatenate([s, s[:1] + 360.0]))
    return float(np.median(gaps[gaps > 1e-3]))


def edge_views(az: np.ndarray) -> list[int]:
    """The two cameras either side of the widest gap in the ring."""
    order = np.argsort(az)
    gaps = np.diff(np.concatenate([az[order], az[order][:1] + 360.0]))
    k = int(np.argmax(gaps))
    return [int(order[k]), int(order[(k + 1) % len(order)])]


def train(ws: Path, out: Path, held_out: list[int] | None) -> dict:
    """The splat stage's training on `ws` as the job's options say (from its dense points), holding
    out `held_out` (indices into the photos) instead of every 8th when given."""
    from backend.options import JobOptions
    from backend.splats import train as T

    options = JobOptions.from_dict(json.loads((ws / "job.json").read_text()).get("options", {}))
    if held_out is not None:
        T.split_views = lambda names, every: ([i for i in range(len(names)) if i not in held_out], held_out)
    out.mkdir(parents=True, exist_ok=True)
    return T.train_splats(ws / "undistorted", out, options.splats, lambda f, m: None,
                          dense_ply=ws / "dense" / "fused.ply")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=None, help="reuse this workspace folder's job if it is whole")
    args = parser.parse_args()
    from backend.splats.train import load_frames, split_views

    ws = args.work or Path(tempfile.mkdtemp(prefix="splats-temple-")) / "temple"
    wall = None
    if not (ws / "summary.json").exists():
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "backend", "run", str(PHOTOS), "--workspace", str(ws)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - began
    summary = json.loads((ws / "summary.json").read_text())
    frames, _, _ = load_frames(ws / "undistorted", 64, "cpu")  # the cameras; the photos' size does not matter
    names = [f.name for f in frames]
    az = azimuths(frames)
    step = spacing(az)
    by_name = {n: i for i, n in enumerate(names)}

    default_train, default_test = split_views(names, 8)
    default = json.loads(next((ws / "splats").glob("splats.json")).read_text())
    edges = edge_views(az)
    began = time.perf_counter()
    edge = train(ws, Path(tempfile.mkdtemp(prefix="splats-edge-")), edges)
    edge_seconds = time.perf_counter() - began

    rows, record = [], []
    for run, result, test in (("default (every 8th by name)", default, default_test),
                              ("widest gap's two sides", edge, edges)):
        w, h = result["image_size"]
        train_ids = [i for i in range(len(names)) if i not in test]
        pixels = len(train_ids) * w * h
        for name, score in sorted(result["per_view"].items()):
            i = by_name[name]
            ccw, cw = sides(az, i, train_ids)
            kind = "between" if max(ccw, cw) <= 1.5 * step else "edge"
            rows.append(f"| {run} | {name} | {kind} | {ccw:.0f} / {cw:.0f} | {score['psnr']:.2f} | "
                        f"{score['ssim']:.3f} | {result['num_splats']:,} | {pixels:,} |")
            record.append({"run": run, "view": name, "kind": kind, "nearest_ccw_deg": ccw, "nearest_cw_deg": cw,
                           **score, "num_splats": result["num_splats"], "training_pixels": pixels,
                           "steps": result["steps"], "image_size": result["image_size"]})
    between = [r["psnr"] for r in record if r["kind"] == "between"]
    met = min(between) >= BAR_DB and all(r["num_splats"] < r["training_pixels"] for r in record)
    edge_scores = [r["psnr"] for r in record if r["kind"] == "edge"]
    verdict = (f"between views: mean {np.mean(between):.2f} dB, lowest {min(between):.2f} dB "
               f"({'pass' if min(between) >= BAR_DB else 'FAIL'}, the bar {BAR_DB:.0f} dB); edge views: "
               f"mean {np.mean(edge_scores):.2f} dB; splats below the training pixels: "
               f"{'yes' if all(r['num_splats'] < r['training_pixels'] for r in record) else 'NO'}")
    lines = [
        "# The temple ring's splats at the CPU preset (issue 16, point 7)", "",
        f"Machine: {platform.machine()}, 2 cores, no GPU. `.venv/bin/python benchmarks/splats_temple.py`"
        + (f"; the job took {wall:.0f} s." if wall else "."), "",
        f"The job: `python -m backend run temple/images` (the CPU preset: {default['steps']} steps at "
        f"{default['image_size'][0]}x{default['image_size'][1]}). Then the same training holding out the two "
        f"photos either side of the ring's widest gap ({edge_seconds:.0f} s). The ring's median spacing is "
        f"{step:.1f} degrees; a view is between training views when it has a training camera within "
        f"{1.5 * step:.0f} degrees on both sides (0: a training photo taken from about the same place).", "",
        "| held out | view | kind | nearest training camera each side (deg) | PSNR (dB) | SSIM | splats | "
        "training pixels |",
        "|---|---|---|---|---|---|---|---|", *rows, "", verdict, "", BEFORE]
    write_report(RESULTS / "splats_temple.md", lines)
    (RESULTS / "splats_temple.json").write_text(json.dumps({"rows": record, "verdict": verdict}, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
