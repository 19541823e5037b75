"""Issue 13: how upright, centred and metric the world frame lands, on photo
sets too slow for CI. For each set, runs mapping (unless --workspace points at
a finished one), re-estimates the frame from the untransformed model
(sparse/model/colmap_frame) and compares with the ground truth after a
similarity alignment of the camera centres:
  up error: angle between the model's +Z mapped into the GT and the GT's up
  (-Z for the Strecha sets, scene.json's up for synthetic scenes);
  centre error: the model's origin in the GT against the subject centre
  (synthetic scenes only), over the scene size;
  scale error: |GT-units per model-unit - 1| (GT in metres: fountain, synthetic).

  .venv/bin/python -m benchmarks.upright strecha_castle_p19 strecha_entry_p10
  .venv/bin/python -m benchmarks.upright --workspace /tmp/ws strecha_fountain_p11
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap

from backend.sfm.frame import world_frame
from backend.tools.evaluate import umeyama

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
CACHE = REPO / ".cache" / "tests"
METRIC = {"strecha_fountain_p11"}  # GT in metres (LIDAR)


def _centres(rec) -> dict[str, np.ndarray]:
    return {rec.images[i].name: np.asarray(rec.images[i].projection_center()) for i in rec.reg_image_ids()}


def set_paths(name: str) -> tuple[Path, Path, dict]:
    """(images, GT model, facts) for a shared set or a synthetic scene in CACHE."""
    if (CACHE / name / "scene.json").exists():
        scene = json.loads((CACHE / name / "scene.json").read_text())
        return CACHE / name / "images", CACHE / name / "gt_colmap", {
            "up": np.asarray(scene["up"], float), "metric": scene.get("units") == "m",
            "centre": np.asarray(scene["subject_centre"], float), "size": float(scene["scene_size"])}
    return DATA / name / "images", DATA / name / "gt_colmap", {"up": np.array([0, 0, -1.0]), "metric": name in METRIC}


def evaluate(model_dir: Path, images: Path, gt_dir: Path, facts: dict) -> dict:
    """Frame errors of the COLMAP-frame model in model_dir against the GT."""
    rec = pycolmap.Reconstruction(str(model_dir))
    names = [rec.images[i].name for i in rec.reg_image_ids()]
    frame = world_frame(rec, images, names)
    rec.transform(frame.sim3())
    est, gt = _centres(rec), _centres(pycolmap.Reconstruction(str(gt_dir)))
    common = sorted(set(est) & set(gt))
    sim = umeyama(np.stack([est[n] for n in common]), np.stack([gt[n] for n in common]))
    z = sim.rotation @ np.array([0, 0, 1.0])
    out = {"cameras": len(common), "up_error_deg": float(np.degrees(np.arccos(np.clip(z @ facts["up"], -1, 1)))),
           "summary": frame.info.get("summary"), "warnings": frame.info.get("warnings"),
           "plane": frame.info.get("ground_plane"), "rolls": frame.info.get("up", {}).get("rolls")}
    if facts.get("metric"):
        out["scale_error"] = float(abs(sim.scale - 1.0))  # GT metres per model unit; 1 when the model is metric
    if "centre" in facts:
        origin = sim.apply(np.zeros((1, 3)))[0]
        out["centre_error_over_size"] = float(np.linalg.norm(origin - facts["centre"]) / facts["size"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--workspace", type=Path, help="a finished workspace (one set) instead of running mapping")
    ap.add_argument("--max-image-size", default="1000")
    args = ap.parse_args(argv)
    results = {}
    for name in args.sets:
        images, gt_dir, facts = set_paths(name)
        ws = args.workspace or Path(f"/tmp/b_ws_{name}")
        if args.workspace is None and not (ws / "sparse" / "model" / "colmap_frame").is_dir():
            subprocess.run([sys.executable, "-m", "backend", "run", str(images), "--workspace", str(ws),
                            "--stages", "mapping", "--max-image-size", args.max_image_size], cwd=REPO, check=True)
        results[name] = evaluate(ws / "sparse" / "model" / "colmap_frame", images, gt_dir, facts)
        print(name, json.dumps(results[name], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
