"""The README's demo, as a user runs it: the synthetic scene (rendered with
Cycles from known cameras) is reconstructed and the report states how close
the recovered cameras are to the truth."""
from __future__ import annotations

from conftest import CACHE, read_json, run_backend


def test_demo_recovers_every_synthetic_camera(tmp_path):
    # The rendered scene is cached between local runs (CI starts clean and renders it once);
    # the reconstruction always runs from scratch.
    proc = run_backend("demo", "--out", tmp_path / "demo", "--scene", CACHE / "synthetic-scene", check=True)
    assert "registered photos      24/24" in proc.stdout
    assert "camera centre error" in proc.stdout and "camera rotation error" in proc.stdout
    report = read_json(tmp_path / "demo" / "report.json")
    assert report["registered_images"] == report["total_images"] == 24
    errors = report["pose_errors"]
    assert errors["num_compared"] == 24
    # measured 0.037% and 0.017 degrees on 2 CPU cores; the bounds leave room for run-to-run noise
    assert errors["relative_median_centre_error"] < 0.002, errors
    assert errors["median_rotation_error_deg"] < 0.1, errors
    assert report["mean_reprojection_error"] < 0.5
