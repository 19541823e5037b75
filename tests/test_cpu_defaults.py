"""A CPU laptop finishes: without a GPU the presets' stages that run on the CPU
get CPU-fit values (the user's own values still win), the sidebar shows a
per-stage time estimate from the photos' headers before Reconstruct, and the
elapsed time it shows is right to the second."""
from __future__ import annotations

import time

import pytest

from backend.options import JobOptions
from blender_addon.shared import estimate as est
from blender_addon.shared.presets import CPU_PRESETS, QUALITY_PRESETS
from conftest import DATA

TEMPLE = DATA / "middlebury_temple_sparse_ring" / "images"  # RECONSTRUCT_DATA or ../shared/data


def test_without_a_gpu_the_preset_takes_its_cpu_values():
    options = JobOptions.from_dict({"quality": "balanced"}, cuda=False)
    cpu = CPU_PRESETS["balanced"]
    assert options.cpu_defaults == ["dense", "splats"]
    assert options.splats.steps == cpu["splats"]["steps"] < QUALITY_PRESETS["balanced"]["splats"]["steps"]
    assert options.splats.max_image_size == cpu["splats"]["max_image_size"]
    assert options.splats.max_splats == cpu["splats"]["max_splats"]
    assert options.dense.max_image_size == cpu["dense"]["max_image_size"]
    assert options.sfm.max_image_size == QUALITY_PRESETS["balanced"]["sfm"]["max_image_size"]  # SIFT keeps its size


def test_with_a_gpu_the_preset_is_unchanged_unless_a_group_is_set_to_cpu():
    gpu = JobOptions.from_dict({}, cuda=True)
    assert gpu.cpu_defaults == [] and gpu.splats.steps == QUALITY_PRESETS["balanced"]["splats"]["steps"]
    mixed = JobOptions.from_dict({"splats": {"device": "cpu"}}, cuda=True)
    assert mixed.cpu_defaults == ["splats"] and mixed.splats.steps == CPU_PRESETS["balanced"]["splats"]["steps"]
    assert mixed.dense.max_image_size == QUALITY_PRESETS["balanced"]["dense"]["max_image_size"]


def test_an_option_the_user_set_is_never_overridden():
    options = JobOptions.from_dict({"quality": "high", "splats": {"steps": 7000, "max_image_size": 1600},
                                    "dense": {"max_image_size": 1200}}, cuda=False)
    assert (options.splats.steps, options.splats.max_image_size, options.dense.max_image_size) == (7000, 1600, 1200)
    assert options.splats.max_splats == CPU_PRESETS["high"]["splats"]["max_splats"]  # what the user left unset


def test_resolved_options_read_back_the_same():
    """The worker rebuilds the options from to_dict(): the same values, the
    same record of the CPU defaults, on whatever machine."""
    options = JobOptions.from_dict({}, cuda=False)
    assert JobOptions.from_dict(options.to_dict(), cuda=True) == options


def test_the_sidebar_resolves_the_preset_as_the_backend_does():
    backend = JobOptions.from_dict({"quality": "fast"}, cuda=False).to_dict()
    sidebar = est.preset_options("fast", ("dense", "splats"))
    for group, values in sidebar.items():
        assert {k: backend[group][k] for k in values} == values


SIZES = [(640, 480)] * 16
CPU = {"sfm": "cpu", "dense": "cpu", "splats": "cpu"}


def _total(sizes, options=None, devices=CPU, cores=2):
    options = options or est.preset_options("balanced", ("dense", "splats"))
    return sum(e.seconds for e in est.estimate(sizes, options, devices, cores=cores))


def test_the_estimate_grows_with_the_photos_count_and_size():
    assert _total(SIZES[:8]) < _total(SIZES) < _total(SIZES * 2)
    assert _total([(640, 480)] * 11) < _total([(1600, 1200)] * 11) < _total([(3200, 2400)] * 11)
    # Past the stages' max_image_size only SIFT and undistortion see the bigger photo.
    assert _total([(6400, 4800)] * 11) > _total([(3200, 2400)] * 11)


def test_the_estimate_follows_the_options_the_stages_and_the_device():
    cpu_preset = est.preset_options("balanced", ("dense", "splats"))
    gpu_preset = est.preset_options("balanced")
    assert _total(SIZES, est.preset_options("fast", ("dense", "splats"))) < _total(SIZES) < \
        _total(SIZES, est.preset_options("high", ("dense", "splats")))
    assert _total(SIZES, gpu_preset) > 10 * _total(SIZES, cpu_preset)  # the GPU preset on the CPU: hours
    assert _total(SIZES, gpu_preset, {"sfm": "cpu", "dense": "cuda", "splats": "cuda"}) < _total(SIZES, gpu_preset)
    assert _total(SIZES, cores=8) < _total(SIZES, cores=2)
    cameras = est.estimate(SIZES, cpu_preset, CPU, cores=2, stages=est.stages_run(["undistort"]))
    assert [e.stage for e in cameras] == ["features", "matching", "mapping", "undistort"]


def test_the_estimate_during_a_run_follows_the_measured_speed():
    before = est.estimate(SIZES, est.preset_options("balanced", ("dense", "splats")), CPU, cores=2)
    model = {e.stage: e.seconds for e in before}
    # Splats half done after 3x the model's half: the estimate moves to the actual pace.
    slow = {e.stage: e.seconds for e in est.update(before, "splats", 0.5, 1.5 * model["splats"], {})}
    assert slow["splats"] == pytest.approx(3 * model["splats"], rel=0.01)
    # Finished stages take what they took; the stages still to come scale by how far off those were.
    done = {"features": 2 * model["features"], "matching": 2 * model["matching"]}
    later = {e.stage: e.seconds for e in est.update(before, "mapping", 0.0, 0.0, done)}
    assert later["features"] == done["features"] and later["mesh"] == pytest.approx(2 * model["mesh"])


def test_photo_sizes_come_from_the_headers():
    from PIL import Image

    started = time.perf_counter()
    sizes = est.photo_sizes(str(TEMPLE))
    assert time.perf_counter() - started < 0.5
    assert sizes == [Image.open(p).size for p in sorted(TEMPLE.iterdir()) if p.suffix.lower() in est.PHOTO_SUFFIXES]


def test_header_sizes_of_png_and_tiff(tmp_path):
    from PIL import Image

    for name in ("a.png", "b.tif", "c.jpg"):
        Image.new("RGB", (123, 45)).save(tmp_path / name)
    (tmp_path / "d.jpg").write_bytes(b"not a photo")
    assert est.photo_sizes(str(tmp_path)) == [(123, 45)] * 3


# In real Blender from here on.

@pytest.fixture
def jobs(tmp_path):
    pytest.importorskip("bpy")
    from addon_helpers import disable_addon, fresh_blender_with_addon
    from conftest import BACKEND_PYTHON

    module = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path / "workspaces"))
    yield module
    module.runner.stop_backend()
    disable_addon()


def test_the_elapsed_time_is_right_to_the_second(jobs):
    """Settings.started / .finished keep time.time() at full precision (a
    32-bit float property rounded it to 128 s)."""
    import bpy
    from blender_addon.ui.properties import elapsed, stamp

    s = bpy.context.scene.reconstruct
    s.started = stamp()
    time.sleep(1.2)
    assert 1.0 <= elapsed(s) < 2.0
    s.finished = stamp(float(s.started) + 3723.4)
    time.sleep(0.1)
    assert elapsed(s) == pytest.approx(3723.4, abs=1e-3)  # done: the end stays put
    assert float(s.started) == pytest.approx(time.time(), abs=5)


class _Layout:
    """Stands in for the UILayout a panel is given (it exists only in a
    window): keeps the labels drawn; every other layout call returns itself."""

    def __init__(self, texts=None):
        self.texts = [] if texts is None else texts

    def label(self, text="", **_):
        self.texts.append(text)

    def __getattr__(self, name):
        return lambda *args, **kwargs: self

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)


def test_the_panel_shows_the_estimate_per_stage_before_reconstruct(jobs):
    import bpy
    from blender_addon.ui.panels import VIEW3D_PT_reconstruct

    s = bpy.context.scene.reconstruct
    s.photos_dir = str(TEMPLE)
    layout = _Layout()
    started = time.perf_counter()
    VIEW3D_PT_reconstruct.draw_estimate(layout, s)
    assert time.perf_counter() - started < 0.05  # the headers are read in a thread, not in draw()
    deadline = time.monotonic() + 10
    while jobs.estimates.reading and time.monotonic() < deadline:
        time.sleep(0.02)
    layout = _Layout()
    VIEW3D_PT_reconstruct.draw_estimate(layout, s)
    text = "\n".join(layout.texts)
    assert text.startswith("Estimate: ") and "(CPU)" in text, text
    assert "Gaussian Splats" in text and "Depth Maps" in text and "CPU defaults applied" in text
    s.stage_splats = False
    fewer = _Layout()
    VIEW3D_PT_reconstruct.draw_estimate(fewer, s)
    assert "Gaussian Splats" not in "\n".join(fewer.texts)


def test_the_running_job_s_estimate_follows_its_progress(jobs):
    clock = jobs.StageClock(est.estimate(SIZES, est.preset_options("balanced", ("dense", "splats")), CPU, cores=2))
    clock.progress("features", 0.0, now=0.0)
    clock.progress("features", 0.5, now=10.0)
    estimates, left = clock.current(now=10.0)
    first = {e.stage: e.seconds for e in estimates}["features"]
    assert first == pytest.approx(20.0, rel=0.01) and left > first - 10
    clock.progress("matching", 0.0, now=20.0)
    assert clock.done == {"features": 20.0}


def test_the_whole_panel_draws_with_the_estimate_and_the_elapsed_time(jobs):
    import types

    import bpy
    from blender_addon.ui.panels import VIEW3D_PT_reconstruct as Panel
    from blender_addon.ui.properties import stamp

    s = bpy.context.scene.reconstruct
    s.photos_dir = str(TEMPLE)
    jobs.estimates.for_settings(s, wait=True)
    s.state, s.started, s.finished = "DONE", stamp(time.time() - 75.4), stamp()
    layout = _Layout()
    Panel.draw(types.SimpleNamespace(layout=layout, draw_status=Panel.draw_status,
                                     draw_estimate=Panel.draw_estimate), bpy.context)
    assert "Done  1:15" in layout.texts and any(t.startswith("Estimate: ") for t in layout.texts), layout.texts
