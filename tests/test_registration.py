"""The registration ladder (backend/sfm/ladder.py) on captures where COLMAP's
defaults fall short: what it keeps, what it drops and why, and that the same
photos give the same model.

Synthetic scenes are rendered once per session (conftest); every run here
stops at the mapping stage.
"""
from __future__ import annotations

import shutil

import numpy as np
import pycolmap
import pytest

from backend.tools.evaluate import align_to_ground_truth, compare_poses, up_error_deg
from conftest import read_json, run_backend


def _attempts(ws) -> dict[str, dict]:
    return {a["name"]: a for a in read_json(ws / "summary.json")["registration"]["attempts"]}


def _kept(ws) -> dict:
    kept = [a for a in _attempts(ws).values() if a["kept"]]
    assert len(kept) == 1, _attempts(ws)
    return kept[0]


def _poses(model_dir) -> dict[str, np.ndarray]:
    rec = pycolmap.Reconstruction(model_dir)
    return {im.name: im.cam_from_world().matrix() for im in rec.images.values() if im.has_pose}


@pytest.fixture(scope="module")
def street_run(street_scene, tmp_path_factory):
    ws = tmp_path_factory.mktemp("street") / "ws"
    run_backend("run", street_scene / "images", "--workspace", ws, "--stages", "mapping", check=True)
    return ws


def test_forward_walk_registers_every_photo_with_the_true_focal(street_scene, street_run):
    summary = read_json(street_run / "summary.json")
    scene = read_json(street_scene / "scene.json")
    assert summary["registered_images"] == 22 and summary["unregistered"] == []
    # The incremental mapper places all 22 but lets the focal slide ~10% off
    # its EXIF prior (and the path with it): the ladder must not stop there.
    first = _attempts(street_run)["incremental"]
    assert first["focal_drifted"] and not first["kept"], first
    assert len(summary["registration"]["attempts"]) > 1
    kept = _kept(street_run)
    assert kept["registered"] == 22 and kept["failed_checks"] == []
    focal = summary["cameras"][0]["params"][0]
    assert abs(focal / scene["intrinsics"]["fx"] - 1) <= 0.02, focal
    centres = np.array(scene["camera_centres"])
    walk = float(np.linalg.norm(np.diff(centres, axis=0), axis=1).sum())  # about 40 m
    errors = compare_poses(street_run / "sparse" / "model", street_scene / "gt_colmap")
    assert errors.num_compared == 22
    assert errors.median_centre_error <= 0.005 * walk, (errors, walk)  # measured 0.26% of the radius


def _street_frame(street_scene, street_run) -> tuple[float, float, float]:
    """Scale, up error (degrees) and origin offset (m) of the street's world frame
    after a similarity alignment to the truth (metric, +Z up)."""
    sim = align_to_ground_truth(street_run / "sparse" / "model", street_scene / "gt_colmap")
    up_deg = up_error_deg(sim)
    origin = float(np.linalg.norm(sim.apply(np.zeros(3)) - read_json(street_scene / "scene.json")["subject_centre"]))
    print(f"street frame: scale {sim.scale:.4f}, up {up_deg:.2f} deg, origin {origin:.2f} m off")
    return sim.scale, up_deg, origin


def test_forward_walk_lands_in_metres_from_gps_centred_on_the_walk(street_scene, street_run):
    summary, scene = read_json(street_run / "summary.json"), read_json(street_scene / "scene.json")
    assert summary["frame"]["scale"]["method"] == "GPS", summary["frame"]
    # Geolocation: where the world origin lies on Earth, against the truth's subject centre.
    from backend.tools.synthetic_scene import gps_to_enu

    where = summary["frame"]["scale"]["world_origin"]
    enu = gps_to_enu([where["lat"], where["lon"], scene["gps_origin"]["alt"]], scene["gps_origin"])
    assert np.linalg.norm(enu[:2] - np.array(scene["subject_centre"])[:2]) <= 0.5, (enu, scene["subject_centre"])
    scale, up_deg, origin = _street_frame(street_scene, street_run)
    assert abs(scale - 1) <= 0.03  # measured 0.001%
    assert up_deg <= 2.0  # the bound the issue sets for real captures
    assert origin <= 0.05 * scene["scene_size"]


@pytest.mark.xfail(strict=True, reason="known gap: the kept model's cameras are 1.2 degrees (median) off their "
                   "true rotation relative to its centres, so the cameras' up is 1.4 degrees off the aligned truth; "
                   "issue 13 asks for 1 degree on synthetic walks")
def test_forward_walk_is_upright_within_one_degree(street_scene, street_run):
    assert _street_frame(street_scene, street_run)[1] <= 1.0


def test_mapping_repeats_exactly(street_scene, street_run, tmp_path):
    """Same matches, mapping again: the same photos and poses (the ladder seeds COLMAP's PRNG)."""
    ws = tmp_path / "ws"
    shutil.copytree(street_run, ws)
    run_backend("run", street_scene / "images", "--workspace", ws, "--force", "mapping", "--stages", "mapping", check=True)
    a, b = _poses(street_run / "sparse" / "model"), _poses(ws / "sparse" / "model")
    assert set(a) == set(b) and len(a) == 22
    assert max(np.abs(a[n] - b[n]).max() for n in a) <= 1e-6
    assert [x["registered"] for x in _attempts(street_run).values()] == \
        [x["registered"] for x in _attempts(ws).values()]


def test_two_runs_from_scratch_are_identical(temple, temple_run, tmp_path):
    """From the photos: features, matches and the ladder, on 2 threads. Three
    sources of chance, each fixed where it arises: SIFT threads finishing in
    any order gave the images other ids (colmap.extract_features imports the
    images in name order first), two-view RANSAC seeded from the clock
    (colmap.match seeds it) and the mappers' PRNG (the ladder seeds it).
    Measured: identical to 3e-15 on 2 threads, so no num_threads=1 needed."""
    ws = tmp_path / "ws"
    run_backend("run", temple / "images", "--workspace", ws, "--stages", "mapping", check=True)
    a, b = _poses(temple_run / "sparse" / "model"), _poses(ws / "sparse" / "model")
    assert set(a) == set(b) and len(a) == 16
    assert max(np.abs(a[n] - b[n]).max() for n in a) <= 1e-6


@pytest.fixture(scope="module")
def lowtex_run(lowtex_scene, tmp_path_factory):
    ws = tmp_path_factory.mktemp("lowtex") / "ws"
    run_backend("run", lowtex_scene / "images", "--workspace", ws, "--stages", "mapping", check=True)
    return ws


def test_sanity_checks_flag_a_wrong_focal_and_a_photo_placed_on_too_few_points(temple_run):
    """The checks on a real model (the temple's), then on the same model made
    wrong in one way at a time: each must be caught."""
    from backend.sfm import ladder

    model_dir = temple_run / "sparse" / "model" / "colmap_frame"
    good = ladder.Attempt("x", "x")
    ladder._judge(good, pycolmap.Reconstruction(model_dir), {})
    assert good.registered == 16 and good.failed_checks == [], good

    rec = pycolmap.Reconstruction(model_dir)  # focal 2.4x the longest side: plausible without EXIF...
    cam = next(iter(rec.cameras.values()))
    a = ladder.Attempt("x", "x")
    ladder._judge(a, rec, {cam.camera_id: cam.mean_focal_length() / 1.5})  # ...but 1.5x an EXIF prior is not
    assert a.focal_ratio == pytest.approx(1.5, abs=1e-3) and any("EXIF prior" in c for c in a.failed_checks), a
    cam.params = [4 * cam.width, *list(cam.params)[1:]]  # 4x the longest side, no EXIF
    rec.cameras[cam.camera_id] = cam
    a = ladder.Attempt("x", "x")
    ladder._judge(a, rec, {})
    assert any("longest image side" in c for c in a.failed_checks), a

    rec = pycolmap.Reconstruction(model_dir)  # one photo left with 10 of its points
    image = next(iter(rec.images.values()))
    for k in [k for k, p in enumerate(image.points2D) if p.has_point3D()][10:]:
        rec.delete_observation(image.image_id, k)
    a = ladder.Attempt("x", "x")
    ladder._judge(a, rec, {})
    assert a.min_image_observations == 10 and any(image.name in c for c in a.failed_checks), a


def test_low_texture_keeps_no_model_that_fails_the_checks(lowtex_run):
    """~250 SIFT features a photo: some attempts place all 16 photos on a
    handful of points (75% of the radius off, measured), and are dropped."""
    attempts = list(_attempts(lowtex_run).values())
    kept = _kept(lowtex_run)
    for a in attempts:
        if a["failed_checks"] and a["name"] != kept["name"]:
            assert a["verdict"].startswith("dropped:") and not a["kept"], a
    # Kept despite failing only when nothing passes: the first attempt, said so.
    if kept["failed_checks"]:
        assert all(a["failed_checks"] for a in attempts) and kept["name"] == attempts[0]["name"]
        assert "no attempt passes" in kept["verdict"]
    assert read_json(lowtex_run / "summary.json")["registration"]["line"].startswith(
        f"tried {len(attempts)} ways; kept: ")


@pytest.mark.xfail(strict=True, reason="issue 13: ~250 SIFT features a photo give 15-58 verified matches "
                   "per pair; no mapper setting gets past 8/16 correctly (needs more features, not the ladder)")
def test_low_texture_registers_most_in_one_model(lowtex_scene, lowtex_run):
    ws = lowtex_run
    summary = read_json(ws / "summary.json")
    assert summary["registered_images"] >= 0.9 * 16
    errors = compare_poses(ws / "sparse" / "model", lowtex_scene / "gt_colmap")
    assert errors.relative_median_centre_error <= 0.01, errors
