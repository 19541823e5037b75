"""Real photo sets: registration and accuracy against their ground truth.

For speed the tests extract SIFT at 1000 px (fountain-P11 is 3072x2048,
Sceaux 2832x2128; the temple is used at its native 640x480). The cameras
and reprojection errors are always in full-resolution pixels.
"""
from __future__ import annotations

import shutil

from backend.tools.evaluate import compare_poses
from conftest import dataset, read_json, run_backend


def test_fountain_all_registered_and_poses_match_ground_truth(fountain, fountain_run):
    summary = read_json(fountain_run / "summary.json")
    assert summary["registered_images"] == 11 and summary["unregistered"] == []
    errors = compare_poses(fountain_run / "sparse" / "model", fountain / "gt_colmap")
    assert errors.num_compared == 11
    # acceptance: median centre error <= 0.5% of the mean camera-to-centroid distance, rotation <= 1 degree
    assert errors.relative_median_centre_error <= 0.005, errors
    assert errors.median_rotation_error_deg <= 1.0, errors
    # the summary a user reads has the numbers the issue asks for
    assert summary["mean_reprojection_error"] < 1.0 and summary["mean_track_length"] > 2
    assert summary["num_points"] > 1000
    assert set(summary["stage_seconds"]) == {"features", "matching", "mapping", "undistort"}
    assert summary["device"]["feature_extraction"] in ("cpu", "cuda")
    assert summary["versions"]["pycolmap"]


def test_sceaux_all_registered_under_one_pixel_with_exif_focal(tmp_path):
    sceaux = dataset("sceaux_castle")
    ws = tmp_path / "ws"
    run_backend("run", sceaux / "images", "--workspace", ws, "--max-image-size", "1000",
                "--stages", "mapping", check=True)
    summary = read_json(ws / "summary.json")
    assert summary["registered_images"] == 11
    assert summary["mean_reprojection_error"] < 1.0
    # the photos carry EXIF focal lengths, and they seeded the cameras
    assert len(summary["focal_from_exif"]) == 11
    assert all(c["focal_from_exif"] for c in summary["cameras"])


def test_temple_incremental_registers_most_and_names_the_rest(temple, temple_run):
    summary = read_json(temple_run / "summary.json")
    assert summary["registered_images"] >= 13
    assert summary["registered_images"] + len(summary["unregistered"]) == 16
    assert all(name.startswith("templeSR") for name in summary["unregistered"])
    # One camera for one camera's photos: same size, no EXIF to tell them apart.
    assert summary["camera_mode"] == "SINGLE" and len(summary["cameras"]) == 1
    # With shared intrinsics the pose error fell from 1.2-1.8% of the 0.54 m
    # camera radius (a camera per photo) to 0.24% and 0.8 degrees.
    errors = compare_poses(temple_run / "sparse" / "model", temple / "gt_colmap")
    assert errors.relative_median_centre_error <= 0.006 and errors.median_rotation_error_deg <= 1.5, errors


def test_temple_global_mapper_registers_all_16(temple, temple_run, tmp_path):
    """What we found trying the options: the global mapper places the three
    views the incremental one drops, with the same features and matches."""
    ws = tmp_path / "ws"
    shutil.copytree(temple_run, ws)
    proc = run_backend("run", temple / "images", "--workspace", ws, "--mapper", "global", "--stages", "undistort",
                       check=True)
    assert "ran: mapping, undistort\n" in proc.stdout
    summary = read_json(ws / "summary.json")
    assert summary["registered_images"] == 16 and summary["unregistered"] == []
    errors = compare_poses(ws / "sparse" / "model", temple / "gt_colmap")  # measured 1.1%, 0.8 degrees
    assert errors.relative_median_centre_error <= 0.02 and errors.median_rotation_error_deg <= 1.5, errors
