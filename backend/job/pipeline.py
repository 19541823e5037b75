"""The job runner: photos -> features -> matching -> mapping -> undistort
-> mvs -> fusion, then mesh -> texture and, from the dense points too, splats
(the stages are declared in blender_addon/shared/stages.py); each stage cached
by the hash of its inputs.

A stage's hash chains the identity of the last run of the stage it reads
(Stage.reads) with the options it reads (Stage.options), so changing an
option reruns exactly the stages it affects, and a stage that reruns takes
every stage downstream of it along. The stages' own functions run in a
killable worker process (worker.py); this module only decides, prepares each
stage's output path, records, commits and reports.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from blender_addon.shared import stages as declared
from blender_addon.shared.protocol import __version__
from blender_addon.shared.stages import STAGE
from backend.job.device import package_versions
from backend.errors import Cancelled, ErrorCode, ReconstructError, file_error
from backend.options import JobOptions, SfmOptions
from backend.job.photos import (IMAGE_EXTENSIONS, PhotoSet, looks_like_video_frames, one_camera, resolve_photo_folder,
                                scan_photos)
from backend.job.masks import check_masks
from blender_addon.shared.media import is_video
from backend.job.upright import stage_photo_folder
from backend.job.stage_context import StageContext
from backend.job.worker_client import Worker
from backend.job.workspace import Workspace, stable_hash, write_json_atomic

EXHAUSTIVE_MAX_IMAGES = 60
UPSAMPLE_BELOW_PX = 1200


class Events(Protocol):
    """Where a job reports to: a terminal, or the protocol's event stream."""

    def progress(self, stage: str, fraction: float, message: str) -> None: ...
    def warning(self, code: str, message: str, details: dict) -> None: ...
    def log(self, message: str) -> None: ...
    def stage_done(self, stage: str, artifacts: dict[str, str]) -> None:
        """`stage`'s output is in place (finished now or reused from the cache)."""


@dataclass
class JobResult:
    workspace: Path
    summary: dict
    artifacts: dict[str, str]
    ran: list[str] = field(default_factory=list)
    """Stages that did work this run (the others were reused from the cache)."""


class _MonotonicProgress:
    """Progress never goes backwards within a stage, whatever the source
    (mapping restarts its count when it starts a second model)."""

    def __init__(self, events: Events):
        self._events, self._best = events, {}
        self.warnings: list[dict] = []
        """Every warning of this run, for summary.json."""

    def progress(self, stage: str, fraction: float, message: str) -> None:
        fraction = max(fraction, self._best.get(stage, 0.0))
        self._best[stage] = fraction
        self._events.progress(stage, fraction, message)

    def warning(self, code: str, message: str, details: dict) -> None:
        self.warnings.append({"code": code, "message": message})
        self._events.warning(code, message, details)

    def log(self, message: str) -> None:
        self._events.log(message)

    def stage_done(self, stage: str, artifacts: dict[str, str]) -> None:
        self._events.stage_done(stage, artifacts)


def photo_identity(photos: PhotoSet) -> str:
    """The photos a workspace was made for, wherever their folder is now."""
    return stable_hash(sorted((p.name, p.size) for p in photos.photos))


def choose_matcher(photos: PhotoSet, requested: str, video: bool = False) -> tuple[str, str]:
    """Which photo pairs to match, and why (the reason goes into the log)."""
    n = len(photos.photos)
    if requested != "auto":
        return requested, "requested"
    if video:
        return "video", ("frames of a video: each with the frames after it, and the end with the start and "
                         "look-alike frames, for a walk that comes back to where it began")
    if n <= EXHAUSTIVE_MAX_IMAGES:
        return "exhaustive", f"{n} photos: every pair is matched"
    if looks_like_video_frames(photos.names):
        return "sequential", "file names look like video frames: neighbouring frames are matched"
    if sum(p.has_gps for p in photos.photos) >= 0.8 * n:
        return "spatial", "photos are geotagged: nearby photos are matched"
    return "exhaustive", (f"{n} unordered photos without GPS: every pair is matched, "
                          "which is slow for very large sets")


def choose_first_octave(photos: PhotoSet, sfm: SfmOptions) -> int:
    """-1 (SIFT on the image doubled) or 0. Doubling finds the features small
    photos need; on large ones it triples extraction and matching time for no
    better poses (fountain-P11 at 1600 px: 41 s -> 15 s, same 11/11 and pose
    error; the temple at 640 px registers 2/16 without it)."""
    if sfm.sift_upsample != "auto":
        return -1 if sfm.sift_upsample == "always" else 0
    seen = min(sfm.max_image_size, max(max(p.width, p.height) for p in photos.photos))
    return -1 if seen < UPSAMPLE_BELOW_PX else 0


def choose_camera_mode(photos: PhotoSet, sfm: SfmOptions) -> tuple[str, str]:
    """pycolmap's CameraMode name for the photos, and why."""
    if sfm.single_camera is not None:
        return ("SINGLE", "shared by all photos (requested)") if sfm.single_camera else \
            ("PER_IMAGE", "one camera per photo (requested)")
    if one_camera(photos):
        return "SINGLE", "shared: every photo has the same size and EXIF camera"
    return "AUTO", "photos grouped by size and EXIF camera"


def run_job(photos_dir: str | Path, workspace_dir: str | Path, options: JobOptions, events: Events,
            cancel: threading.Event | None = None, stages: tuple[str, ...] = declared.NAMES,
            start_over: bool = False, masks: str | Path | None = None) -> JobResult:
    """Run (or reuse) the stages named in `stages` and every stage they read from.
    `masks`: a folder of masks for the photos (backend/job/masks.py).
    `photos_dir` is a folder of photos or a video file (then the frames stage
    runs first and its frames are the photos).
    `start_over`: the workspace was made for other photos; remove our outputs there first."""
    cancel = cancel or threading.Event()
    ws = Workspace(resolve_photo_folder(_absolute_folder(workspace_dir, "workspace"), "workspace"))
    source = resolve_photo_folder(_absolute_folder(photos_dir, "photo folder", must_be_absolute=False))
    video = source if source.is_file() and source.suffix.lower() not in IMAGE_EXTENSIONS else None
    if video is None and is_video(source) and not source.exists():
        raise ReconstructError(ErrorCode.PHOTOS_NOT_FOUND, f"The video {source} does not exist.",
                               "Choose the video file again (it may have been moved or renamed).")
    if ws.root == source:
        raise ReconstructError(ErrorCode.WORKSPACE_UNWRITABLE,
                               "The workspace must not be the photo folder itself.",
                               "Choose a separate folder for the results, e.g. a 'reconstruction' folder beside the photos.")
    if ws.root in source.parents:
        raise ReconstructError(ErrorCode.BAD_OPTIONS,
                               f"The {'video' if video else 'photos'} in {source} lie inside the workspace {ws.root}, "
                               "among its outputs: a run would replace them while reading them. Nothing was changed.",
                               "Choose the folder of your original photos (the workspace's own images are copies).")
    ws.open()
    worker = Worker(ws.log_file)
    worker.prestart()
    try:
        return _run(source, video, ws, options, _MonotonicProgress(events), cancel, stages, worker, start_over,
                    masks)
    finally:
        worker.close()
        ws.close()


def _absolute_folder(path, what: str, must_be_absolute: bool = True) -> str:
    """A folder path from a user or a request: never empty (which would mean
    'wherever the process happens to run'), and absolute where it is written to."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip():
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"No {what} was given.",
                               f"Give the full path of the {what}.")
    if must_be_absolute and not Path(text).expanduser().is_absolute():
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"The {what} path {text!r} is relative: it would depend on "
                               "the folder the backend runs in.", f"Give the full path of the {what}.")
    return text


def video_identity(video: Path) -> list:
    """What the frames stage depends on: the video file (its name, size and time)."""
    st = video.stat()
    return [str(video), st.st_size, st.st_mtime_ns]


@dataclass
class _Runner:
    """What running one stage needs, shared by the frames stage (before there
    are photos) and the others."""
    ws: Workspace
    job: dict
    options: JobOptions
    events: _MonotonicProgress
    cancel: threading.Event
    worker: Worker
    forced: set
    identity: dict
    """Each stage's identity: its input hash and when it last finished (None: the photos)."""
    ran: list = field(default_factory=list)

    def stage(self, stage: str, decided: dict, photos) -> None:
        """Run `stage` unless its output is up to date. `photos()` gives the
        folder and names it reads, called only when the stage runs."""
        spec, ws, job, events = STAGE[stage], self.ws, self.job, self.events
        group = getattr(self.options, spec.group)
        digest = stable_hash(self.identity[spec.reads], {k: getattr(group, k) for k in spec.options}, decided)
        record = job["stages"].get(stage, {})
        output = ws.stage_output(stage)
        fresh = (record.get("state") == "done" and record.get("hash") == digest and stage not in self.forced)
        if fresh and not ws.stage_complete(stage):
            events.log(f"{stage}: some of its files are missing from {output}: running it again")
            fresh = False
        if fresh:
            events.progress(stage, 1.0, "up to date")
            self.identity[stage] = stable_hash(digest, record["finished"])
            events.stage_done(stage, ws.stage_artifacts(stage))
            return
        photos_folder, photo_names = photos()
        if self.cancel.is_set():
            raise Cancelled()
        if stage in self.forced:
            ws.discard_partial(output)  # --force means from scratch, not from a checkpoint
        ensure_free_space(ws, stage)
        job["stages"][stage] = {"state": "running", "hash": digest}
        ws.save_job(job)
        events.progress(stage, 0.0, "starting")
        started = time.perf_counter()
        try:
            try:
                out = ws.partial_for(output, digest) if spec.kind == "partial" else ws.temp_for(output)
                ctx = StageContext(stage, ws, photos_folder, photo_names, self.options, decided,
                                   job["stages"].get(spec.reads, {}).get("result", {}) if spec.reads else {}, out)
                result = self.worker.call(ctx.to_plain(), events=events, cancel=self.cancel)
                if spec.kind == "partial":
                    ws.commit_partial(out, output)
                else:
                    ws.commit(out, output)
            except OSError as exc:
                raise file_error(exc, f"the {stage} stage") from None
            except ReconstructError as exc:
                raise explain_failure(exc, ws, stage) from None
        except Cancelled:
            job["stages"][stage]["state"] = "cancelled"
            ws.save_job(job)
            raise
        except ReconstructError as exc:
            ws.discard_temp(output)  # gives back the space a full disk needs for job.json
            job["stages"][stage].update(state="failed", error=exc.as_fields())
            try:
                ws.save_job(job)
            except ReconstructError:
                pass  # the stage's own error says more; job.json keeps "running", which reruns it
            raise
        job["stages"][stage] = {"state": "done", "hash": digest, "seconds": round(time.perf_counter() - started, 3),
                                "result": result, "finished": time.time()}
        ws.save_job(job)
        # Downstream stages depend on this run of the stage, not only on its
        # options: a rerun (forced, or after a cancel) may move the cameras.
        self.identity[stage] = stable_hash(digest, job["stages"][stage]["finished"])
        self.ran.append(stage)
        events.progress(stage, 1.0, "done")
        events.stage_done(stage, ws.stage_artifacts(stage))


def _run(source: Path, video: Path | None, ws: Workspace, options: JobOptions, events: _MonotonicProgress,
         cancel: threading.Event, stages: tuple[str, ...], worker: Worker, start_over: bool,
         masks: str | Path | None = None) -> JobResult:
    job = ws.load_job()
    if masks and video is not None:
        raise ReconstructError(ErrorCode.BAD_MASKS, "Masks for a video's frames are not supported yet; nothing "
                               "was changed.", "Run the video without masks, or export its frames as photos "
                               "and give a mask per photo (photo.jpg -> photo.jpg.png).")
    cache = job.get("photo_cache") if job.get("photos") == str(source) else None
    if video is not None:
        try:
            identity = stable_hash(video.name, video.stat().st_size)
        except OSError as exc:
            raise file_error(exc, "reading the video") from None
    else:
        photos = scan_photos(source, cache=cache)
        identity = photo_identity(photos)
    made_for = job.get("photos")
    if start_over:
        ws.start_over()
        job = ws.load_job()
    elif made_for and job["stages"] and made_for != str(source):
        if job.get("photo_identity") != identity:
            raise ReconstructError(
                ErrorCode.WORKSPACE_OTHER_PHOTOS,
                f"The workspace {ws.root} was made for the {'video' if video else 'photos'} in {made_for}, "
                f"not {source}; nothing was changed.",
                "Choose another workspace (or job name) for these photos, or start over (--new on the command line, "
                "'Start Over' in the sidebar) to replace that workspace's results.",
                {"made_for": made_for, "photos": str(source)})
        events.log(f"the photos moved from {made_for} to {source}: same files, same workspace")
    forced = set(declared.downstream(options.force)) if options.force else set()
    runner = _Runner(ws, job, options, events, cancel, worker, forced, {})
    run_stages = declared.needed(stages)
    if video is not None:
        job.update(photos=str(source), photo_identity=identity)
        ws.save_job(job)
        runner.identity[None] = stable_hash(video_identity(video))
        runner.stage("frames", {"video": str(video)}, lambda: (video.parent, []))
        run_stages = ("frames", *run_stages)
        photos = scan_photos(ws.frames, cache=cache)
    for skipped in photos.skipped:
        events.warning("skipped_file", f"Skipped {skipped.name}: {skipped.reason}.", asdict(skipped))
    for notice in photos.notices:
        events.warning(notice.code, notice.message + ".", notice.details)
    job.update(photos=str(source), photo_identity=identity, options=options.to_dict(),
               backend_version=__version__, photo_cache={p.name: asdict(p) for p in photos.photos},
               skipped=[asdict(s) for s in photos.skipped])
    ws.save_job(job)
    sfm = options.sfm
    matcher, matcher_reason = choose_matcher(photos, sfm.matcher, video is not None)
    events.log(f"matching: {matcher} ({matcher_reason})")
    first_octave = choose_first_octave(photos, sfm)
    camera_mode = choose_camera_mode(photos, sfm)
    events.log(f"intrinsics: {camera_mode[1]}")
    decided = {"features": {"first_octave": first_octave, "camera_mode": camera_mode[0]},
               "matching": {"matcher": matcher}}
    runner.identity[None] = stable_hash(photos.fingerprint())
    if masks:
        # Every stage depends on the masks' files; a job without masks keeps the hashes it had.
        mask_identity = check_masks(masks, photos)
        runner.identity[None] = stable_hash(photos.fingerprint(), mask_identity)
        decided["features"]["masks"] = decided.setdefault("undistort", {})["masks"] = mask_identity[0]
        events.log(f"masks: {len(photos.photos)} from {mask_identity[0]}")
    staged = []

    def stage_photos():  # the first stage that runs: photos stored on their side turned upright
        if not staged:
            try:
                staged.append(stage_photo_folder(photos, ws.upright_photos, cancel.is_set, events.log))
            except OSError as exc:
                raise file_error(exc, "turning photos stored on their side upright") from None
        return staged[0], photos.names

    for stage in run_stages:
        if stage != "frames":
            runner.stage(stage, decided.get(stage, {}), stage_photos)
    summary = write_summary(ws, job, photos, matcher, first_octave, camera_mode[0], run_stages,
                            events.warnings, video)
    artifacts = {name: path for stage in run_stages for name, path in ws.stage_artifacts(stage).items()}
    artifacts["summary"] = str(ws.summary_file)
    return JobResult(ws.root, summary, artifacts, runner.ran)


MIN_FREE_BYTES = int(float(os.environ.get("RECONSTRUCT_MIN_FREE_MB", 64)) * 2**20)
"""Below this much free space on the workspace's disk, a stage is not started,
and a stage that failed is reported as having run out of space: pycolmap and
sqlite report a full disk as "No registered database factory succeeded",
std::bad_alloc or an abort, which tell a user nothing. (The variable lets a
test fill a small disk during a stage.)"""


def _free_bytes(ws: Workspace) -> int | None:
    try:
        return shutil.disk_usage(ws.root).free
    except OSError:
        return None


def _no_space(ws: Workspace, stage: str, free: int, details: dict | None = None) -> ReconstructError:
    return ReconstructError(
        ErrorCode.FILE_ERROR,
        f"The disk holding the workspace {ws.root} is full ({free / 2**20:.0f} MB free): the {stage} stage "
        "cannot write its output.",
        "Free some space on that disk (or choose a workspace on another disk), then run again: finished stages "
        "are kept.", {"free_bytes": free, **(details or {})})


def ensure_free_space(ws: Workspace, stage: str) -> None:
    free = _free_bytes(ws)
    if free is not None and free < MIN_FREE_BYTES:
        raise _no_space(ws, stage, free)


def explain_failure(exc: ReconstructError, ws: Workspace, stage: str) -> ReconstructError:
    """A stage that crashed or failed inside a library on a full disk is
    reported as the full disk it is."""
    if exc.code != ErrorCode.STAGE_FAILED:
        return exc
    free = _free_bytes(ws)
    if free is not None and free < MIN_FREE_BYTES:
        return _no_space(ws, stage, free, {"original": exc.as_fields()})
    # The same libraries say as little about a folder they may not write to.
    probe = ws.stage_output(stage).with_name(".write-probe")
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as os_exc:
        error = file_error(os_exc, f"the {stage} stage")
        error.details["original"] = exc.as_fields()
        return error
    return exc


def write_summary(ws: Workspace, job: dict, photos: PhotoSet, matcher: str, first_octave: int,
                  camera_mode: str, run_stages: tuple[str, ...], warnings: list[dict] | None = None,
                  video: Path | None = None) -> dict:
    # Records of stages this run did not reach may describe an older upstream.
    stages = {name: rec for name, rec in job["stages"].items() if name in run_stages}
    mapping = stages.get("mapping", {}).get("result", {})
    features = stages.get("features", {}).get("result", {})
    registered = mapping.get("registered", [])
    frames = stages.get("frames", {}).get("result") if video is not None else None
    summary = {
        "photos": str(photos.folder),
        "video": None if frames is None else {"file": str(video), **frames},
        "workspace": str(ws.root),
        "total_images": len(photos.names),
        "registered_images": len(registered),
        "unregistered": sorted(set(photos.names) - set(registered)) if mapping else [],
        "skipped_files": [asdict(s) for s in photos.skipped],
        "mean_reprojection_error": mapping.get("mean_reprojection_error"),
        "mean_track_length": mapping.get("mean_track_length"),
        "num_points": mapping.get("num_points"),
        "num_models": mapping.get("num_models"),
        "registration": {"line": mapping.get("registration"), "attempts": mapping.get("attempts", [])},
        "frame": mapping.get("frame"),
        "cameras": mapping.get("cameras", []),
        "focal_from_exif": features.get("exif_focal", []),
        "matcher": matcher,
        "sift_first_octave": first_octave,
        "camera_mode": camera_mode,
        "mapper": job["options"]["sfm"]["mapper"],
        "stage_seconds": {name: rec.get("seconds") for name, rec in stages.items() if rec.get("state") == "done"},
        "device": {"feature_extraction": features.get("device", "cpu"),
                   "mvs": stages.get("mvs", {}).get("result", {}).get("device"),
                   "splats": stages.get("splats", {}).get("result", {}).get("device")},
        "dense": _dense_summary(stages),
        "splats": _splat_summary(stages.get("splats", {}).get("result", {})),
        "texture": _texture_summary(stages.get("texture", {}).get("result", {})),
        "warnings": warnings or [],
        "versions": package_versions(),
        "options": job["options"],
    }
    write_json_atomic(ws.summary_file, summary)
    return summary


def _dense_summary(stages: dict) -> dict:
    mvs, fusion, mesh = (stages.get(s, {}).get("result", {}) for s in ("mvs", "fusion", "mesh"))
    return {"depth_maps": mvs.get("num_depth_maps"), "depth_map_size": mvs.get("size"),
            "seconds_per_megapixel": mvs.get("seconds_per_megapixel"), "peak_rss_mb": mvs.get("peak_rss_mb"),
            "dense_points": fusion.get("num_points"), "roi": fusion.get("roi") or mvs.get("roi"),
            "mesh_faces": mesh.get("num_faces"), "mesh_vertices": mesh.get("num_vertices"),
            "mesh_watertight": mesh.get("watertight")}


def _texture_summary(result: dict) -> dict:
    keys = ("size", "charts", "texels_per_pixel", "faces_seen", "photos_used", "seam_edges", "seconds",
            "peak_rss_mb")
    return {k: result.get(k) for k in keys}


def _splat_summary(result: dict) -> dict:
    keys = ("num_splats", "started_from", "steps", "image_size", "sh_degree", "strategy", "held_out", "psnr", "ssim",
            "steps_per_second", "train_seconds", "first_step_seconds", "background", "resumed_from_step")
    return {k: result.get(k) for k in keys}
