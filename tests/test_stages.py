"""Each stage is declared once (blender_addon/shared/stages.py); the run order, the
command line, the worker's dispatch and the sidebar's switches all come from
those declarations, so a new stage is one declaration plus its function."""
from __future__ import annotations

import importlib
import typing
from dataclasses import fields, replace

import pytest

from blender_addon.shared import stages
from blender_addon.shared.layout import Layout
from blender_addon.shared.stages import STAGES, Stage


def test_every_declared_stage_is_complete():
    from backend.options import OPTION_GROUPS

    names = [s.name for s in STAGES]
    assert len(set(names)) == len(names)
    for i, stage in enumerate(STAGES):
        module, function = stage.run.split(":")
        assert callable(getattr(importlib.import_module(module), function)), stage.run
        assert stage.reads is None or stage.reads in names[:i], f"{stage.name} reads a later stage"
        group = OPTION_GROUPS[stage.group]
        assert set(stage.options) <= {f.name for f in fields(group)}, stage
        assert stage.kind in ("file", "folder", "partial")
        assert stage.label and stage.description
    assert sum(s.weight for s in STAGES) == pytest.approx(1.0)
    outputs = [s.output for s in STAGES]
    assert len(set(outputs)) == len(outputs)
    toggles = [s.toggle for s in STAGES if s.toggle]
    assert len(set(toggles)) == len(toggles)


def test_run_order_and_dependencies_come_from_the_declarations():
    assert stages.needed(["mesh"]) == ("features", "matching", "mapping", "undistort", "mvs", "fusion", "mesh")
    # The splats start at the dense points, so asking for them alone makes the depth maps too.
    assert stages.needed(["splats"]) == ("features", "matching", "mapping", "undistort", "mvs", "fusion", "splats")
    assert stages.downstream("undistort") == ("undistort", "mvs", "fusion", "mesh", "texture", "splats")
    assert stages.ancestors("mesh") == ("fusion", "mvs", "undistort", "mapping", "matching", "features")
    # The progress bar: all done is 1, half of the first of the stages that run is its half share.
    run = stages.needed(["undistort"])
    assert stages.overall(set(run), "undistort", 1.0, run) == pytest.approx(1.0)
    first = stages.STAGE["features"].weight / sum(stages.STAGE[s].weight for s in run)
    assert stages.overall(set(), "features", 0.5, run) == pytest.approx(first / 2)


def _example_stage(ctx) -> dict:
    """A throwaway stage for the test below: it reads the undistorted cameras."""
    cameras = ctx.path("undistort") / "sparse"
    ctx.progress(0.5, "half way")
    ctx.out.mkdir(parents=True)
    (ctx.out / "made.txt").write_text(f"from {cameras} with {ctx.options.sfm.max_image_size}")
    return {"read": str(cameras), "options": ctx.options.sfm.max_image_size, "input": ctx.input}


@pytest.fixture
def with_example_stage(monkeypatch):
    example = Stage("thumbnails", "Thumbnails", "undistort", "sfm", ("max_image_size",), "thumbnails", "folder",
                    f"{__name__}:_example_stage", 0.0, part=None, toggle="thumbnails",
                    description="small copies of the photos")
    declared = (*STAGES, example)
    monkeypatch.setattr(stages, "STAGES", declared)
    monkeypatch.setattr(stages, "NAMES", tuple(s.name for s in declared))
    monkeypatch.setattr(stages, "STAGE", {s.name: s for s in declared})
    return example


def test_a_new_stage_is_one_declaration_and_its_function(with_example_stage, tmp_path):
    from backend.job import worker
    from backend.cli import build_parser
    from backend.options import JobOptions
    from backend.job.stage_context import StageContext

    # The command line offers it, and asking for it brings what it reads.
    parser = build_parser()
    run = next(a for a in parser._subparsers._group_actions[0].choices["run"]._actions if a.dest == "stages")
    assert "thumbnails" in run.choices and "small copies of the photos" in run.help
    assert stages.needed(["thumbnails"])[-2:] == ("undistort", "thumbnails")
    assert stages.downstream("undistort")[-1] == "thumbnails"

    # The worker runs it from its declaration, with what it declares it reads.
    layout = Layout(tmp_path / "ws")
    assert layout.output("thumbnails") == tmp_path / "ws" / "thumbnails"
    ctx = StageContext("thumbnails", layout, tmp_path / "photos", ["a.jpg"], JobOptions.from_dict({"quality": "fast"}),
                       {}, {"num_images": 1}, tmp_path / "ws" / "thumbnails.tmp")
    sent = []
    result = worker._call({"ctx": ctx.to_plain()}, sent.append)
    assert result == {"read": str(layout.undistorted / "sparse"), "options": 1024, "input": {"num_images": 1}}
    assert sent == [{"type": "progress", "fraction": 0.5, "message": "half way"}]
    with pytest.raises(KeyError):  # only what it declares: not the dense stages' outputs
        replace(ctx, out=tmp_path / "x").path("mvs")


def test_the_option_fields_a_stage_hashes_are_the_ones_the_cli_offers():
    from backend.cli import build_parser
    from backend.options import OPTION_GROUPS

    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]
    dests = {a.dest for a in run._actions}
    for group, cls_ in OPTION_GROUPS.items():
        hints = typing.get_type_hints(cls_)
        for f in fields(cls_):
            assert f"{group}.{f.name}" in dests, f"{group}.{f.name} has no flag"
            assert hints[f.name] is not None


class _Quiet:
    def progress(self, stage, fraction, message): pass
    def warning(self, code, message, details): pass
    def log(self, message): pass
    def stage_done(self, stage, artifacts): pass


def test_an_option_reruns_exactly_the_stages_that_declare_it(tmp_path):
    """Hashing on tiny inputs: three generated photos, features only."""
    from backend.options import JobOptions
    from backend.job.pipeline import run_job
    from conftest import blob_photo

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        blob_photo(i, (240, 180)).save(photos / f"p{i}.jpg", quality=95)
    ws = tmp_path / "ws"

    def run(**sfm):
        options = JobOptions.from_dict({"quality": "fast", "sfm": sfm})
        return run_job(photos, ws, options, _Quiet(), stages=("features",)).ran

    assert run() == ["features"]
    assert run() == []  # nothing changed
    assert run(mapper="global") == []  # an option of a later stage only
    assert run(max_num_features=500) == ["features"]  # an option features declares
    blob_photo(3, (240, 180)).save(photos / "p3.jpg", quality=95)
    assert run(max_num_features=500) == ["features"]  # a photo was added


def test_the_sidebar_switches_come_from_the_declarations(with_example_stage, tmp_path):
    """The same throwaway stage gets its switch in the sidebar, and the job request asks for it."""
    bpy = pytest.importorskip("bpy")
    from addon_helpers import disable_addon, fresh_blender_with_addon
    from conftest import BACKEND_PYTHON

    jobs = fresh_blender_with_addon(BACKEND_PYTHON, str(tmp_path / "workspaces"))
    try:
        settings = bpy.context.scene.reconstruct
        toggles = {name for name in settings.bl_rna.properties.keys() if name.startswith("stage_")}
        assert toggles == {"stage_dense", "stage_mesh", "stage_texture", "stage_splats", "stage_thumbnails"}
        assert settings.bl_rna.properties["stage_thumbnails"].name == "Thumbnails"
        settings.stage_dense = settings.stage_mesh = settings.stage_texture = settings.stage_splats = False
        assert jobs.requested_stages(settings) == ["undistort", "thumbnails"]
        settings.stage_thumbnails = False
        settings.stage_mesh = True
        assert jobs.requested_stages(settings) == ["undistort", "mesh"]
    finally:
        disable_addon()


def test_the_readme_lists_the_stages_as_declared():
    from conftest import REPO

    assert stages.markdown_table() in (REPO / "README.md").read_text(), stages.markdown_table()
