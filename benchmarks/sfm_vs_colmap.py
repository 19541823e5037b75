"""Our SfM against Debian's COLMAP 3.8 command line and the plain pycolmap
calls, on the same photo sets with the same maximum image size.

    .venv/bin/python benchmarks/sfm_vs_colmap.py [--sets temple fountain sceaux] [--size 1600]

Needs `apt-get install colmap` (3.8). All three run on the CPU with their
default thread counts, from a fresh workspace, timed as whole processes
(start-up and imports included), up to the sparse model (no undistortion:
COLMAP's mapper command does not undistort). Writes
benchmarks/results/sfm_vs_colmap.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("RECONSTRUCT_DATA", REPO.parent / "shared" / "data"))
SETS = {"temple": "middlebury_temple_sparse_ring", "fountain": "strecha_fountain_p11", "sceaux": "sceaux_castle"}

PLAIN_PYCOLMAP = """
import sys, pycolmap
db, images, out, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
opts = pycolmap.FeatureExtractionOptions()
opts.max_image_size = size
pycolmap.extract_features(db, images, extraction_options=opts, device=pycolmap.Device.cpu)
pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
models = pycolmap.incremental_mapping(db, images, out)
best = max(models.values(), key=lambda r: r.num_reg_images())
best.write_binary(out)
"""


def timed(cmd: list[str], fresh: Path, repeat: int) -> float:
    """Median wall time of `repeat` runs, each into a fresh `fresh` folder."""
    times = []
    for _ in range(repeat):
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def model_stats(model: Path, gt: Path | None) -> dict:
    import pycolmap

    from backend.tools.evaluate import compare_poses

    rec = pycolmap.Reconstruction(str(model))
    stats = {"registered": rec.num_reg_images(), "reprojection_px": rec.compute_mean_reprojection_error(),
             "points": rec.num_points3D()}
    if gt is not None and (gt / "images.txt").exists():
        errors = compare_poses(model, gt)
        stats["centre_error_rel"] = errors.relative_median_centre_error
        stats["rotation_error_deg"] = errors.median_rotation_error_deg
    return stats


def largest_model(folder: Path) -> Path:
    import pycolmap

    models = [p for p in folder.iterdir() if (p / "images.bin").exists()]
    return max(models, key=lambda p: pycolmap.Reconstruction(str(p)).num_reg_images())


def run_colmap(images: Path, work: Path, size: int) -> float:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    db, sparse = work / "database.db", work / "sparse"
    sparse.mkdir(parents=True)
    start = time.perf_counter()
    subprocess.run(["colmap", "feature_extractor", "--database_path", db, "--image_path", images,
                    "--SiftExtraction.max_image_size", str(size), "--SiftExtraction.use_gpu", "0"],
                   check=True, env=env, capture_output=True)
    subprocess.run(["colmap", "exhaustive_matcher", "--database_path", db, "--SiftMatching.use_gpu", "0"],
                   check=True, env=env, capture_output=True)
    subprocess.run(["colmap", "mapper", "--database_path", db, "--image_path", images, "--output_path", sparse],
                   check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def bench_set(name: str, size: int, work: Path, repeat: int) -> list[dict]:
    root = DATA / SETS[name]
    images, gt = root / "images", root / "gt_colmap"
    rows = []
    if shutil.which("colmap"):
        seconds = run_colmap(images, work / "colmap", size)
        rows.append({"set": name, "tool": "COLMAP 3.8 CLI", "seconds": seconds,
                     **model_stats(largest_model(work / "colmap" / "sparse"), gt)})
    plain = work / "plain"
    seconds = timed([sys.executable, "-c", PLAIN_PYCOLMAP, str(plain / "database.db"), str(images), str(plain),
                     str(size)], plain, repeat)
    rows.append({"set": name, "tool": "plain pycolmap", "seconds": seconds, **model_stats(plain, gt)})
    for label, extra in (("ours (python -m backend run)", []),
                         ("ours, SIFT options as plain (--sift-upsample always)", ["--sift-upsample", "always"])):
        ours = work / ("ours" + "-".join(extra))
        seconds = timed([sys.executable, "-m", "backend", "run", str(images), "--workspace", str(ours),
                         "--max-image-size", str(size), "--device", "cpu", "--stages", "mapping", *extra], ours, repeat)
        rows.append({"set": name, "tool": label, "seconds": seconds, **model_stats(ours / "sparse" / "model", gt)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| set | tool | wall s | ours faster by | registered | reproj px | centre err (% radius) | rot err deg |",
             "|---|---|---|---|---|---|---|---|"]
    ours = {r["set"]: r["seconds"] for r in rows if r["tool"] == "ours (python -m backend run)"}
    for r in rows:
        ratio = r["seconds"] / ours[r["set"]]
        cerr = f"{100 * r['centre_error_rel']:.2f}" if "centre_error_rel" in r else "-"
        rerr = f"{r['rotation_error_deg']:.2f}" if "rotation_error_deg" in r else "-"
        lines.append(f"| {r['set']} | {r['tool']} | {r['seconds']:.1f} | {ratio:.2f}x | {r['registered']} | "
                     f"{r['reprojection_px']:.3f} | {cerr} | {rerr} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument("--size", type=int, default=1600)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of ours and plain pycolmap per set on the temple set (median kept); "
                             "the larger sets run once each")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            work = Path(tmp) / name
            work.mkdir()
            rows += bench_set(name, args.size, work, args.repeat if name == "temple" else 1)
            print(table(rows), flush=True)
    colmap = subprocess.run(["colmap", "help"], capture_output=True, text=True).stdout.splitlines()[:1] \
        if shutil.which("colmap") else ["not installed"]
    header = (f"SfM up to the sparse model, SIFT max image size {args.size}px, exhaustive matching, incremental "
              f"mapping, CPU only. Machine: {platform.machine()}, {os.cpu_count()} cores. COLMAP: {' '.join(colmap)}.\n"
              "Ours by default skips SIFT's upsampled first octave when SIFT sees 1200 px or more "
              "(--sift-upsample auto); the row with --sift-upsample always uses plain pycolmap's SIFT options, "
              "so its ratio to plain pycolmap is our overhead.\n"
              "'ours faster by' = that row's wall time / ours (above 1: ours is faster). Temple: median of "
              f"{args.repeat} runs for ours and plain pycolmap; the other sets and COLMAP: one run each.\n")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sfm_vs_colmap.md").write_text(header + "\n" + table(rows) + "\n")
    (out / "sfm_vs_colmap.json").write_text(json.dumps({"size": args.size, "rows": rows}, indent=2))
    print(header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
