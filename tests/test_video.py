"""Issue 18: a phone video walked around the subject goes in as it is. The user points the
command line (or the sidebar) at the movie file; the backend keeps the sharp frames spread
over the walk, matches them in order and closes the loop where the walk comes back to its
start, and every frame lands where the camera was. A file that is not a usable video gets
a message saying so, and nothing is touched.

The video is rendered with bpy (backend/tools/synthetic_video.py): one full orbit of the
synthetic object, 120 frames at 10 fps (12 s) with five frames smeared by motion blur,
encoded to H.264 through Blender's own FFmpeg output."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import BACKEND_PYTHON, CACHE, run_backend, tree_digest

FRAMES = 40  # kept frames asked for: 9 degrees apart, a quick SfM on the CPU


@pytest.fixture(scope="session")
def orbit_video() -> Path:
    from backend.tools.synthetic_video import ensure_video

    return ensure_video(CACHE / "orbit-video")


@pytest.fixture(scope="module")
def video_job(orbit_video, tmp_path_factory):
    """`run orbit.mp4` from the command line, cameras only, into <root>/orbit: the workspace the
    sidebar picks for this video under the same root (the add-on's test reruns it)."""
    root = tmp_path_factory.mktemp("video") / "workspaces"
    ws = root / "orbit"
    before = tree_digest(orbit_video)
    proc = run_backend("run", orbit_video / "orbit.mp4", "--workspace", ws, "--quality", "fast",
                       "--frames", FRAMES, "--stages", "mapping", check=True, timeout=900)
    assert tree_digest(orbit_video) == before, "the video's folder was changed"
    return {"root": root, "ws": ws, "proc": proc, "truth": json.loads((orbit_video / "video.json").read_text())}


def _frames(ws: Path) -> dict:
    return json.loads((ws / "frames" / "frames.json").read_text())


def _centre_errors(ws: Path, truth: dict) -> tuple[list[str], np.ndarray]:
    """Each registered frame's camera-centre error after a similarity alignment to the
    rendered cameras, as a share of the orbit's radius, in frame order."""
    import pycolmap

    from backend.tools.evaluate import umeyama

    rec = pycolmap.Reconstruction(str(ws / "sparse" / "model"))
    images = sorted((rec.images[i] for i in rec.reg_image_ids()), key=lambda im: im.name)
    index = {f["name"]: f["index"] for f in _frames(ws)["frames"]}
    est = np.stack([np.asarray(im.projection_center()) for im in images])
    gt = np.asarray(truth["camera_centres"])[[index[im.name] for im in images]]
    sim = umeyama(est, gt)
    return [im.name for im in images], np.linalg.norm(sim.apply(est) - gt, axis=1) / truth["orbit_radius"]


def test_the_kept_frames_are_sharp_and_cover_the_whole_orbit(video_job):
    record, truth = _frames(video_job["ws"]), video_job["truth"]
    kept = [f["index"] for f in record["frames"]]
    assert record["decoded"] == truth["params"]["frames"]
    assert not set(kept) & set(truth["blurred"]), "a motion-blurred frame was kept"
    assert sorted(record["blurred"]) == sorted(truth["blurred"]), "a sharp frame was taken for blurred"
    assert FRAMES <= len(kept) <= FRAMES + 2
    assert kept[0] <= 1 and kept[-1] >= truth["params"]["frames"] - 2, "the walk is not covered to its ends"
    gaps = np.diff(kept)
    assert gaps.max() <= 2 * np.mean(gaps), f"frames bunch up: gaps {gaps.tolist()}"
    for f in record["frames"]:  # timestamps kept, from the video's own clock
        assert f["time"] == pytest.approx(f["index"] / truth["fps"], abs=1e-3)
    names = sorted(p.name for p in (video_job["ws"] / "frames").glob("*.jpg"))
    assert names == [f["name"] for f in record["frames"]]


def test_every_frame_registers_with_one_camera_within_half_a_percent(video_job):
    summary = json.loads((video_job["ws"] / "summary.json").read_text())
    assert summary["registered_images"] == summary["total_images"] == len(_frames(video_job["ws"])["frames"])
    assert summary["camera_mode"] == "SINGLE" and len(summary["cameras"]) == 1, "frames of one video share a camera"
    assert summary["matcher"] == "video"
    assert summary["video"]["kept"] == summary["total_images"]
    _, errors = _centre_errors(video_job["ws"], video_job["truth"])
    assert errors.max() <= 0.005, f"largest centre error {100 * errors.max():.3f}% of the orbit radius"
    print(f"centre error: median {100 * np.median(errors):.3f}%, max {100 * errors.max():.3f}% of the radius")


def test_the_orbit_closes_where_it_began(video_job):
    """The last frames are matched with the first ones, so the error does not pile up along the
    walk: without the loop's pairs (plain sequential matching) the last three frames are off by
    0.066% of the radius against 0.032% for the first three; with them, 0.014% against 0.019%."""
    import pycolmap

    ws = video_job["ws"]
    names, errors = _centre_errors(ws, video_job["truth"])
    with pycolmap.Database.open(str(ws / "sparse" / "database.db")) as db:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        closing = db.read_two_view_geometry(ids[names[0]], ids[names[-1]])
    assert len(closing.inlier_matches) >= 100, "the first and last frames were not matched"
    start, end = errors[:3].mean(), errors[-3:].mean()
    assert end <= start, f"error at the end {100 * end:.3f}% > at the start {100 * start:.3f}%"


def test_the_command_line_reports_what_it_kept(video_job):
    assert "video: 120 frames decoded, 5 blurred left out" in video_job["proc"].stdout


def test_a_rerun_with_the_same_video_reuses_the_frames(video_job, orbit_video):
    frames = video_job["ws"] / "frames"
    before = {p.name: p.stat().st_mtime_ns for p in frames.iterdir()}
    proc = run_backend("run", orbit_video / "orbit.mp4", "--workspace", video_job["ws"], "--quality", "fast",
                       "--frames", FRAMES, "--stages", "mapping", check=True)
    assert "ran: nothing (all stages up to date)" in proc.stdout, proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in frames.iterdir()} == before


def test_the_sidebar_takes_a_video(video_job, orbit_video):
    """The sidebar's picker takes the movie file; the job reuses the command line's frames and
    cameras (same video, same settings, same workspace) and brings in one camera per frame."""
    bpy = pytest.importorskip("bpy")
    from addon_helpers import disable_addon, drive, fresh_blender_with_addon

    jobs = fresh_blender_with_addon(BACKEND_PYTHON, str(video_job["root"]))
    try:
        settings = bpy.context.scene.reconstruct
        settings.photos_dir = str(orbit_video / "orbit.mp4")
        settings.quality, settings.video_frames = "fast", FRAMES
        settings.stage_dense = settings.stage_mesh = settings.stage_splats = settings.stage_texture = False
        assert bpy.ops.reconstruct.run() == {"FINISHED"}
        drive(jobs, lambda: settings.state in ("DONE", "ERROR", "CANCELLED") and not jobs.runner.running)
        assert settings.state == "DONE", (settings.error, settings.hint)
        assert Path(settings.workspace) == video_job["ws"]
        kept = len(_frames(video_job["ws"])["frames"])
        cameras = [o for o in bpy.data.objects if o.type == "CAMERA"]
        assert len(cameras) == kept
    finally:
        jobs.runner.stop_backend()
        disable_addon()


# -- bad input ---------------------------------------------------------------------------


def _refused(tmp_path: Path, video: Path, *words: str) -> str:
    before = tree_digest(video.parent)
    ws = tmp_path / "ws"
    proc = run_backend("run", video, "--workspace", ws, "--stages", "mapping")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "internal" not in proc.stderr.lower(), proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert tree_digest(video.parent) == before, "the user's file was changed"
    assert not (ws / "frames").exists() and not (ws / "sparse").exists()
    return proc.stderr


def test_a_file_that_is_not_a_video_is_refused(tmp_path):
    video = tmp_path / "in" / "holiday.mp4"
    video.parent.mkdir()
    video.write_text("these are my notes, not a movie")
    _refused(tmp_path, video, "holiday.mp4 is not a video", "hint:")


def test_a_video_with_no_frame_that_decodes_is_refused(tmp_path, orbit_video):
    data = bytearray((orbit_video / "orbit.mp4").read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(size - 8)  # the container intact, every frame's data zeroed
    video = tmp_path / "in" / "broken.mp4"
    video.parent.mkdir()
    video.write_bytes(bytes(data))
    _refused(tmp_path, video, "No frame of broken.mp4 could be decoded", "damaged")


def test_a_video_too_short_to_reconstruct_is_refused(tmp_path):
    import av

    video = tmp_path / "in" / "blink.mp4"
    video.parent.mkdir()
    rng = np.random.default_rng(0)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    _refused(tmp_path, video, "blink.mp4 is too short", "0.5 s")


def test_choosing_frames_shows_progress_and_cancels_and_a_rerun_finishes(tmp_path, orbit_video):
    from backend.errors import Cancelled
    from backend.job.pipeline import run_job
    from backend.options import JobOptions

    cancel, messages = threading.Event(), []

    class Events:
        def progress(self, stage, fraction, message):
            if stage == "frames":
                messages.append(message)
                if "frames read" in message and len(messages) == 2:  # after "starting"
                    cancel.set()

        def warning(self, *args): pass
        def log(self, message): pass
        def stage_done(self, stage, artifacts): pass

    ws = tmp_path / "ws"
    options = JobOptions.from_dict({"quality": "fast", "video": {"target_frames": 12}})
    with pytest.raises(Cancelled):
        run_job(orbit_video / "orbit.mp4", ws, options, Events(), cancel, stages=("features",))
    assert not (ws / "frames").exists(), "a cancelled frames stage left frames behind"
    assert messages[1] == "30 frames read"
    messages.clear()
    result = run_job(orbit_video / "orbit.mp4", ws, options, Events(), threading.Event(), stages=("features",))
    assert result.ran == ["frames", "features"]
    kept = len(list((ws / "frames").glob("*.jpg")))
    assert kept >= 12
    assert "120 frames read" in messages and f"{kept} of {kept} frames kept" in messages, messages


def test_a_video_that_is_not_there_is_named(tmp_path):
    proc = run_backend("run", tmp_path / "gone" / "walk.mp4", "--workspace", tmp_path / "ws")
    assert proc.returncode == 2 and "The video" in proc.stderr and "walk.mp4 does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
