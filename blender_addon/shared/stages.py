"""The stages of a reconstruction, each declared once. Shared by the backend
(run order, input hashes, the worker's dispatch, `--stages`) and the add-on
(the sidebar's toggles, what to import when a stage is done, the progress
bar); no bpy, no numpy.

A new stage is one `Stage(...)` here plus the function it names in `run`,
which the backend's worker calls with a StageContext.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    label: str
    """What users read (progress line, sidebar)."""
    reads: str | None
    """The stage whose output (and result) this one reads; its hash chains that
    stage's last run, so a rerun upstream reruns this one. A stage may also read
    the outputs of that stage's own inputs, and nothing else."""
    group: str
    """The option group (JobOptions field) the stage's options live in."""
    options: tuple[str, ...]
    """The fields of that group its output depends on: its input hash covers them."""
    output: str
    """Where its output lives in the workspace (a path relative to it; blender_addon/shared/layout.py)."""
    kind: str
    """How the output is written: "file" or "folder" (into <output>.tmp, moved
    into place when whole) or "partial" (<output>.partial keeps finished parts
    across a cancel, for a rerun with the same hash to resume)."""
    run: str
    """"module:function" the backend's worker calls with a StageContext."""
    weight: float
    """Its share of the whole job's progress bar (the weights add up to 1)."""
    part: str | None = None
    """What the add-on imports once the stage is done."""
    toggle: str | None = None
    """The sidebar's switch for the stage (Settings.stage_<toggle>); None: the
    stage runs whenever a later one needs it."""
    description: str = ""


STAGES: tuple[Stage, ...] = (
    # Runs only when the input is a video (the job adds it; no stage reads it
    # by name): its output folder is what the later stages read as the photos.
    Stage("frames", "Video Frames", None, "video", ("target_frames",), "frames", "folder",
          "backend.video.frames:frames_stage", 0.03,
          description="for a video: its sharp frames, spread over the walk, as JPEGs with their timestamps"),
    Stage("features", "Features", None, "sfm", ("max_image_size", "max_num_features", "camera_model"),
          "sparse/features.db", "file", "backend.sfm.colmap:features_stage", 0.08,
          description="SIFT features of every photo (COLMAP database)"),
    Stage("matching", "Matching", "features", "sfm", ("matcher",), "sparse/database.db", "file",
          "backend.sfm.colmap:matching_stage", 0.08, description="matched and geometrically verified photo pairs"),
    Stage("mapping", "Cameras", "matching", "sfm", ("mapper", "frame"), "sparse/model", "folder", "backend.sfm.colmap:mapping_stage",
          0.08, description="calibrated cameras and sparse points (COLMAP model), upright, centred and in metres"),
    Stage("undistort", "Undistortion", "mapping", "sfm", ("undistort_max_size",), "undistorted", "folder",
          "backend.sfm.colmap:undistort_stage", 0.04, part="cameras",
          description="pinhole photos and model, for the dense stages, the splats and Blender's cameras"),
    Stage("mvs", "Depth Maps", "undistort", "dense", ("max_image_size", "num_sources", "window_radius", "slanted", "roi"),
          "dense/stereo", "partial", "backend.dense.mvs:mvs_stage", 0.27, description="a depth and normal map per photo"),
    Stage("fusion", "Dense Points", "mvs", "dense", ("min_consistent", "roi"), "dense/fused.ply", "file",
          "backend.dense.fusion:fusion_stage", 0.05, part="dense", toggle="dense",
          description="depth maps fused into a dense colored point cloud"),
    Stage("mesh", "Mesh", "fusion", "dense", ("mesh_depth", "face_budget", "roi"), "mesh", "folder",
          "backend.dense.meshing:mesh_stage", 0.07, part="mesh", toggle="mesh",
          description="an editable mesh with vertex colors (Poisson), trimmed and simplified"),
    Stage("texture", "Texture", "mesh", "texture", ("size",), "texture", "folder",
          "backend.texture.stage:texture_stage", 0.05, part="mesh", toggle="texture",
          description="the mesh with UVs and the photos' colours in a texture atlas (OBJ + MTL + PNG, GLB)"),
    Stage("splats", "Gaussian Splats", "fusion", "splats",
          ("steps", "max_image_size", "sh_degree", "strategy", "max_splats", "holdout_every", "seed"),
          "splats", "partial", "backend.splats.train:splats_stage", 0.25, part="splats", toggle="splats",
          description="3D Gaussian splats started at the dense points and trained on the photos: photoreal, "
                      "view-dependent colour; fast on a CUDA GPU, minutes to hours on the CPU"),
)
STAGE = {stage.name: stage for stage in STAGES}
NAMES = tuple(STAGE)


def needed(requested) -> tuple[str, ...]:
    """The requested stages and every stage they read from, in run order."""
    out = set()
    for name in requested:
        while name is not None and name not in out:
            out.add(name)
            name = STAGE[name].reads
    return tuple(s for s in NAMES if s in out)


def downstream(name: str) -> tuple[str, ...]:
    """`name` and every stage that reads from it, directly or not."""
    out = [name]
    for stage in STAGES:
        if stage.reads in out:
            out.append(stage.name)
    return tuple(out)


def ancestors(name: str) -> tuple[str, ...]:
    """The stages whose outputs `name` may read: what it reads, and so on up."""
    out, reads = [], STAGE[name].reads
    while reads is not None:
        out.append(reads)
        reads = STAGE[reads].reads
    return tuple(out)


def overall(done: set[str], stage: str, fraction: float, run: tuple[str, ...] = NAMES) -> float:
    """The whole job's progress, 0-1, from the stages done and one stage's own
    fraction, weighted by the stages' shares among those that run."""
    total = sum(STAGE[s].weight for s in run) or 1.0
    finished = sum(STAGE[s].weight for s in run if s in done and s != stage)
    return min(1.0, (finished + STAGE[stage].weight * fraction) / total)


def markdown_table() -> str:
    """The README's stage list (tests/test_stages.py checks the README holds it as written here)."""
    rows = ["| stage | reads | writes | options it depends on | what it makes |", "|---|---|---|---|---|"]
    for s in STAGES:
        source = s.reads or ("the video" if s.group == "video" else "the photos (or the video's frames)")
        rows.append(f"| `{s.name}` ({s.label}) | {source} | `{s.output}` | "
                    f"{', '.join(f'{s.group}.{o}' for o in s.options)} | {s.description} |")
    return "\n".join(rows)
