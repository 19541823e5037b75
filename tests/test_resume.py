"""Runs are resumable: nothing is redone without a reason, an option change
reruns only what it affects, and a run killed mid-stage resumes cleanly."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pycolmap

from conftest import REPO, read_json, run_backend


def _finished(ws: Path) -> dict[str, float]:
    return {name: rec["finished"] for name, rec in read_json(ws / "job.json")["stages"].items()}


def _fork(temple_run: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(temple_run, ws)
    return ws


def test_second_identical_run_does_no_stage_work(temple, temple_run, tmp_path):
    ws = _fork(temple_run, tmp_path)
    before = _finished(ws)
    model_mtime = (ws / "sparse" / "model" / "images.bin").stat().st_mtime_ns
    proc = run_backend("run", temple / "images", "--workspace", ws, "--stages", "mesh", check=True)
    assert "ran: nothing (all stages up to date)" in proc.stdout
    assert _finished(ws) == before  # no stage record was rewritten
    assert (ws / "sparse" / "model" / "images.bin").stat().st_mtime_ns == model_mtime
    assert read_json(ws / "summary.json")["registered_images"] >= 13


def test_changing_an_option_reruns_only_the_stages_it_affects(temple, temple_run, tmp_path):
    ws = _fork(temple_run, tmp_path)
    before = _finished(ws)
    proc = run_backend("run", temple / "images", "--workspace", ws, "--undistort-max-size", "320",
                       "--stages", "undistort", check=True)
    assert "ran: undistort\n" in proc.stdout
    after = _finished(ws)
    assert {k for k in after if after[k] != before[k]} == {"undistort"}
    assert read_json(ws / "job.json")["stages"]["undistort"]["result"]["max_size"] == 320

    proc = run_backend("run", temple / "images", "--workspace", ws, "--undistort-max-size", "320",
                       "--mapper", "global", "--stages", "undistort", check=True)
    assert "ran: mapping, undistort\n" in proc.stdout
    proc = run_backend("run", temple / "images", "--workspace", ws, "--undistort-max-size", "320",
                       "--mapper", "global", "--force", "matching", "--stages", "undistort", check=True)
    assert "ran: matching, mapping, undistort\n" in proc.stdout
    assert _finished(ws)["features"] == before["features"]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def test_run_killed_during_matching_resumes_to_a_valid_model(temple, tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.Popen([sys.executable, "-m", "backend", "run", str(temple / "images"), "--workspace", str(ws),
                             "--stages", "undistort"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    worker = None
    for line in proc.stderr:
        if line.startswith("matching") and "starting" in line:
            worker = _children(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)  # what `kill -9` or a crash does: no cleanup at all
            break
    proc.wait()
    assert worker, "the run never reached matching"
    job = read_json(ws / "job.json")
    assert job["stages"]["matching"]["state"] == "running", "the kill did not land during matching"
    assert not (ws / "sparse" / "database.db").exists()
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in worker), "the stage worker outlived the killed run"

    rerun = run_backend("run", temple / "images", "--workspace", ws, "--stages", "undistort", check=True)
    assert "ran: matching, mapping, undistort\n" in rerun.stdout  # features were kept
    rec = pycolmap.Reconstruction(str(ws / "sparse" / "model"))
    assert rec.num_reg_images() >= 13 and rec.num_points3D() > 500
    assert not list(ws.rglob("*.tmp"))


def test_an_option_that_changes_nothing_reruns_nothing(temple, temple_run, tmp_path):
    """The temple's 640 px photos get SIFT upsampling under 'auto' already,
    so asking for it explicitly is the same job."""
    ws = _fork(temple_run, tmp_path)
    proc = run_backend("run", temple / "images", "--workspace", ws, "--sift-upsample", "always", "--stages", "mesh",
                       check=True)
    assert "ran: nothing (all stages up to date)" in proc.stdout
    assert read_json(ws / "summary.json")["sift_first_octave"] == -1


def test_sift_upsamples_only_what_sift_sees_small():
    from backend.options import SfmOptions
    from backend.job.photos import Photo, PhotoSet
    from backend.job.pipeline import choose_first_octave

    def photos(width, height):
        return PhotoSet(Path("."), [Photo(f"{i}.jpg", 1, 1, width, height) for i in range(3)])

    assert choose_first_octave(photos(640, 480), SfmOptions(max_image_size=2000)) == -1
    assert choose_first_octave(photos(3072, 2048), SfmOptions(max_image_size=1000)) == -1
    assert choose_first_octave(photos(3072, 2048), SfmOptions(max_image_size=1600)) == 0
    assert choose_first_octave(photos(3072, 2048), SfmOptions(max_image_size=1600, sift_upsample="always")) == -1
    assert choose_first_octave(photos(640, 480), SfmOptions(sift_upsample="never")) == 0
