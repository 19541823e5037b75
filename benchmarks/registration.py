"""The registration ladder against a single incremental attempt, on the photo
sets with ground truth and the synthetic hard captures.

    .venv/bin/python benchmarks/registration.py [--sets temple fountain ...] [--max-image-size 1000] [--repeat 3]

Features and matches are made once per set (not timed); then the mapping
stage runs `--repeat` times with the ladder (`--mapper auto`) and with one
incremental attempt (`--mapper incremental`), and the mapping stage's own
seconds (summary.json) are compared. Reports registered/total, the median
camera-centre error (% of the camera radius, after a similarity alignment),
rotation error, focal error against the ground truth, each attempt's time and
verdict, and the ladder's extra time. Writes benchmarks/results/registration.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import DATA, REPO, RESULTS, backend, write_report

SETS = {"fountain": DATA / "strecha_fountain_p11", "castle": DATA / "strecha_castle_p19",
        "entry": DATA / "strecha_entry_p10", "temple": DATA / "middlebury_temple_sparse_ring",
        "street": REPO / ".cache" / "tests" / "street", "lowtex": REPO / ".cache" / "tests" / "lowtex"}


def gt_focal(gt: Path) -> float:
    import pycolmap

    rec = pycolmap.Reconstruction()
    rec.read_text(str(gt))
    return statistics.median(float(c.mean_focal_length()) for c in rec.cameras.values())


def measure(ws: Path, gt: Path) -> dict:
    from backend.tools.evaluate import compare_poses

    summary = json.loads((ws / "summary.json").read_text())
    row = {"registered": summary["registered_images"], "total": summary["total_images"],
           "mapping_s": summary["stage_seconds"]["mapping"], "line": summary["registration"]["line"],
           "attempts": [{k: a[k] for k in ("name", "registered", "seconds", "focal_ratio", "kept", "verdict")}
                        for a in summary["registration"]["attempts"]]}
    try:
        errors = compare_poses(ws / "sparse" / "model", gt)
        row.update(centre_error_pct=100 * errors.relative_median_centre_error,
                   rotation_deg=errors.median_rotation_error_deg)
    except ValueError:  # fewer than 3 photos in common: nothing to align
        row.update(centre_error_pct=None, rotation_deg=None)
    focal = statistics.median(c["params"][0] for c in summary["cameras"]) if summary["cameras"] else None
    row["focal_error_pct"] = None if focal is None else 100 * (focal / gt_focal(gt) - 1)
    return row


def run_set(name: str, folder: Path, size: int, repeat: int, threads: int, work: Path) -> dict:
    ws = work / name
    common = ["--workspace", ws, "--max-image-size", size, "--threads", threads]
    backend("run", folder / "images", *common, "--stages", "matching")
    result = {}
    for mapper in ("auto", "incremental"):
        rows = []
        for _ in range(repeat):
            backend("run", folder / "images", *common, "--mapper", mapper, "--force", "mapping",
                    "--stages", "mapping")
            rows.append(measure(ws, folder / "gt_colmap"))
        row = rows[0]
        row["mapping_s_runs"] = [r["mapping_s"] for r in rows]
        row["mapping_s"] = statistics.median(row["mapping_s_runs"])
        result[mapper] = row
    ladder, single = result["auto"], result["incremental"]
    result["extra_s"] = ladder["mapping_s"] - single["mapping_s"]
    result["extra_pct"] = 100 * result["extra_s"] / single["mapping_s"]
    result["first_attempt_enough"] = len(ladder["attempts"]) == 1
    return result


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--max-image-size", type=int, default=1000,
                        help="SIFT's longest side (the tests' size; the temple and synthetic sets are smaller)")
    parser.add_argument("--repeat", type=int, default=3, help="mapping runs per mapper (median time)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            if not (SETS[name] / "images").is_dir():
                print(f"skipped {name}: {SETS[name]} not found (the synthetic sets are rendered by the tests)")
                continue
            results[name] = run_set(name, SETS[name], args.max_image_size, args.repeat, args.threads, Path(tmp))
            print(name, json.dumps(results[name]["auto"]["line"]), flush=True)
    lines = ["# Registration ladder vs one incremental attempt", "",
             f"SIFT at {args.max_image_size} px max, {args.threads} threads, mapping stage only, median of "
             f"{args.repeat} runs. Centre error: % of the mean camera-to-centroid distance after a similarity "
             "alignment; focal error against the ground truth's median focal.", "",
             "| set | mapper | registered | centre err % | rotation deg | focal err % | mapping s | kept |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for mapper in ("incremental", "auto"):
            m = r[mapper]
            lines.append(f"| {name} | {'ladder' if mapper == 'auto' else 'incremental only'} | "
                         f"{m['registered']}/{m['total']} | {fmt(m['centre_error_pct'], '.3f')} | "
                         f"{fmt(m['rotation_deg'])} | {fmt(m['focal_error_pct'])} | {m['mapping_s']:.2f} | "
                         f"{m['line']} |")
    lines += ["", "## Attempts (ladder)", "", "| set | attempt | registered | seconds | focal/EXIF | verdict |",
              "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for a in r["auto"]["attempts"]:
            lines.append(f"| {name} | {a['name']} | {a['registered']} | {a['seconds']:.2f} | "
                         f"{fmt(a['focal_ratio'], '.3f')} | {a['verdict']} |")
    lines += ["", "## The ladder's extra time", "",
              "| set | first attempt enough | incremental s | ladder s | extra s | extra % |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {'yes' if r['first_attempt_enough'] else 'no'} | "
                     f"{r['incremental']['mapping_s']:.2f} | {r['auto']['mapping_s']:.2f} | {r['extra_s']:+.2f} | "
                     f"{r['extra_pct']:+.1f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "registration.json").write_text(json.dumps(results, indent=2))
    write_report(RESULTS / "registration.md", lines)


if __name__ == "__main__":
    main()
