"""Structure-from-Motion steps on top of pycolmap.

These run inside the stage worker process (backend/job/worker.py), one call per
stage, writing into a fresh folder the pipeline hands them. Plain data in,
plain dicts out (they travel back to the pipeline and into job.json).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pycolmap

from blender_addon.shared.layout import COLMAP_FRAME_MODEL, FRAME_FILE, REGION_JSON, UNDISTORTED_MASKS, UNDISTORTED_MODEL
from backend.sfm import ladder
from backend.sfm.pairs import video_pairs, write_pairs
from backend.sfm.frame import identity as frame_identity, world_frame
from backend.errors import ErrorCode, ReconstructError
from backend.options import SfmOptions

if TYPE_CHECKING:
    from backend.job.stage_context import StageContext

Progress = Callable[[float, str], None]


def _device(opts: SfmOptions) -> "pycolmap.Device":
    if opts.device == "cpu" or not pycolmap.has_cuda:
        return pycolmap.Device.cpu
    return pycolmap.Device.cuda


def sift_device_name(opts: SfmOptions) -> str:
    return "cuda" if _device(opts) == pycolmap.Device.cuda else "cpu"


def seal_database(database: Path) -> None:
    """Fold COLMAP's write-ahead log into the file and leave WAL mode, so the
    database is one self-contained file that can be renamed and copied."""
    import sqlite3

    # The pipeline's progress poller may hold a short read lock, and a
    # journal-mode switch does not wait for it: retry for a while.
    for attempt in range(100):
        try:
            with closing(sqlite3.connect(database, timeout=5)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.execute("PRAGMA journal_mode=DELETE")
            return
        except sqlite3.OperationalError:
            if attempt == 99:
                raise
            time.sleep(0.05)


def extract_features(database: Path, image_dir: Path, names: list[str], opts: SfmOptions,
                     first_octave: int = -1, camera_mode: str = "AUTO", mask_path: str | None = None) -> dict:
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = opts.camera_model
    if mask_path:  # no features where the user's masks are black (backend/job/masks.py)
        reader.mask_path = str(mask_path)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = opts.max_image_size
    extraction.num_threads = opts.num_threads
    extraction.sift.max_num_features = opts.max_num_features
    extraction.sift.first_octave = first_octave
    extraction.use_gpu = _device(opts) == pycolmap.Device.cuda
    # Photos get their database ids in name order, not in the order parallel
    # extraction finishes them: the ids order the mapper's choices, and a run
    # must give the same model from the same photos.
    pycolmap.Database.open(database).close()
    pycolmap.import_images(database, image_dir, camera_mode=getattr(pycolmap.CameraMode, camera_mode),
                           image_names=names, options=reader)
    pycolmap.extract_features(
        database, image_dir, image_names=names,
        camera_mode=getattr(pycolmap.CameraMode, camera_mode),
        reader_options=reader, extraction_options=extraction, device=_device(opts))
    with pycolmap.Database.open(database) as db:
        images = db.read_all_images()
        cameras = {c.camera_id: c for c in db.read_all_cameras()}
        keypoints = {im.name: db.num_keypoints_for_image(im.image_id) for im in images}
        exif_focal = sorted(im.name for im in images if cameras[im.camera_id].has_prior_focal_length)
    seal_database(database)
    missing = sorted(set(names) - set(keypoints))
    return {"num_images": len(keypoints), "keypoints": keypoints, "failed": missing,
            "exif_focal": exif_focal, "num_cameras": len(cameras), "device": sift_device_name(opts)}


def match(database: Path, kind: str, opts: SfmOptions, image_dir: Path | None = None) -> dict:
    """Match features between photo pairs chosen by `kind`, then verify them
    geometrically. The database holds features only when this starts.
    `image_dir`: the photos, which the video matcher's loop candidates look at."""
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = opts.num_threads
    matching.use_gpu = _device(opts) == pycolmap.Device.cuda
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = 0  # seeded from the clock otherwise: the same photos, another model
    common = dict(matching_options=matching, verification_options=verification, device=_device(opts))
    if kind == "exhaustive":
        pycolmap.match_exhaustive(database, **common)
    elif kind == "sequential":
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = 15
        pycolmap.match_sequential(database, pairing_options=pairing, **common)
    elif kind == "spatial":
        pycolmap.match_spatial(database, **common)
    elif kind == "video":
        with pycolmap.Database.open(database) as db:
            names = sorted(im.name for im in db.read_all_images())
        with tempfile.TemporaryDirectory(prefix="reconstruct-pairs-") as scratch:
            pairs_file = Path(scratch) / "pairs.txt"  # pycolmap reads the pairs from a file only
            write_pairs(pairs_file, video_pairs(names, image_dir))
            pairing = pycolmap.ImportedPairingOptions()
            pairing.match_list_path = str(pairs_file)
            pycolmap.match_image_pairs(database, pairing_options=pairing, **common)
    else:
        raise ValueError(f"unknown matcher {kind}")
    with pycolmap.Database.open(database) as db:
        result = {"matcher": kind, "matched_pairs": db.num_matched_image_pairs(),
                  "verified_pairs": db.num_verified_image_pairs()}
    seal_database(database)
    return result


def model_stats(rec: "pycolmap.Reconstruction") -> dict:
    registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
    cameras = []
    for cam in rec.cameras.values():
        cameras.append({"id": cam.camera_id, "model": cam.model_name, "width": cam.width,
                        "height": cam.height, "params": [float(p) for p in cam.params],
                        "focal_from_exif": bool(cam.has_prior_focal_length)})
    return {"registered": registered, "num_points": rec.num_points3D(),
            "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
            "mean_track_length": float(rec.compute_mean_track_length()),
            "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image()),
            "cameras": cameras}


def write_region(undistorted: Path) -> dict:
    """The automatic region (backend.dense.roi.automatic_region) into undistorted/region.json,
    so Blender can show it as a box to adjust before dense stereo runs."""
    from backend.dense.mvs import resolve_roi
    from backend.dense.scene import load_scene

    box, info = resolve_roi(load_scene(undistorted, 1 << 30), None)
    region = {**box.as_dict(), **info}
    tmp = undistorted / (REGION_JSON + ".partial")
    tmp.write_text(json.dumps(region, indent=1))
    os.replace(tmp, undistorted / REGION_JSON)
    return region


def undistort(model_dir: Path, image_dir: Path, out_dir: Path, opts: SfmOptions, masks: str | None = None) -> dict:
    """Pinhole images + model (COLMAP layout: images/, sparse/, stereo/) for
    dense stereo and splats, which need pinhole cameras."""
    options = pycolmap.UndistortCameraOptions()
    if opts.undistort_max_size > 0:
        options.max_image_size = opts.undistort_max_size
    pycolmap.undistort_images(out_dir, model_dir, image_dir, output_type="COLMAP",
                              undistort_options=options, num_threads=opts.num_threads)
    rec = pycolmap.Reconstruction(out_dir / UNDISTORTED_MODEL)
    masked = 0
    if masks:
        from backend.job.masks import undistort_masks

        masked = undistort_masks(Path(masks), model_dir, out_dir / UNDISTORTED_MODEL, out_dir / UNDISTORTED_MASKS)
    region = write_region(out_dir)
    return {"num_images": rec.num_reg_images(), "region": region, "masks": masked,
            "max_size": max(max(c.width, c.height) for c in rec.cameras.values())}


# The stages (declared in blender_addon/shared/stages.py) ------------------------------

def features_stage(ctx: "StageContext") -> dict:
    ctx.poll_rows(ctx.out, "keypoints", len(ctx.photo_names), "photos")
    result = extract_features(ctx.out, ctx.photos_folder, ctx.photo_names, ctx.options.sfm,
                              ctx.decided["first_octave"], ctx.decided["camera_mode"], ctx.decided.get("masks"))
    for name in result["failed"]:
        ctx.warn("feature_extraction_failed", f"No features could be extracted from {name}; it is left out.",
                 {"name": name})
    few = sorted(name for name, n in result["keypoints"].items() if n < 100)
    if few:
        ctx.warn("few_features", f"Very few features in {', '.join(few)}: blurry, dark or textureless photos "
                 "rarely register.", {"names": few})
    if result["num_images"] < 2:
        raise ReconstructError(ErrorCode.COULD_NOT_RECONSTRUCT, "Features were found in fewer than 2 photos.",
                               "Use sharp, well-exposed photos with visible texture.", result)
    return result


def matching_stage(ctx: "StageContext") -> dict:
    matcher = ctx.decided["matcher"]
    shutil.copyfile(ctx.path("features"), ctx.out)
    n = ctx.input["num_images"]
    ctx.poll_rows(ctx.out, "two_view_geometries", n * (n - 1) // 2 if matcher == "exhaustive" else n * 15,
                  "photo pairs")
    result = match(ctx.out, matcher, ctx.options.sfm, ctx.photos_folder)
    if result["verified_pairs"] == 0:
        raise ReconstructError(
            ErrorCode.COULD_NOT_RECONSTRUCT,
            f"Could not reconstruct: no two photos share enough matching features "
            f"(tried matching: {matcher} on {n} photos; {result['matched_pairs']} pairs had some matches, "
            f"none passed geometric verification).",
            "The photos must show the same subject from overlapping viewpoints (about 60% overlap between "
            "neighbours). Add photos between the existing ones, or try --matcher exhaustive.", result)
    return result


def mapping_stage(ctx: "StageContext") -> dict:
    sfm, database = ctx.options.sfm, ctx.path("matching")
    with pycolmap.Database.open(database) as db:
        n = db.num_images()
    scratch = ctx.out.with_name(ctx.out.name + ".models")
    registration = ladder.register(database, ctx.photos_folder, scratch, sfm, n, ctx.progress, ctx.log)
    if registration.model is None:
        verified, matcher = ctx.input["verified_pairs"], ctx.input["matcher"]
        raise ReconstructError(
            ErrorCode.COULD_NOT_RECONSTRUCT,
            f"Could not reconstruct: no consistent 3D model could be built "
            f"(tried matching: {matcher} on {n} photos, {verified} verified photo pairs; "
            f"{registration.summary_line(n)}).",
            "The photos must show the same subject from overlapping viewpoints (about 60% overlap between "
            "neighbours) and the subject must not move or reflect much. Add photos between the existing ones.",
            {"verified_pairs": verified, "matcher": matcher, "mapper": sfm.mapper,
             "attempts": [a.as_dict() for a in registration.attempts]})
    rec = registration.model
    # The model as registered, in COLMAP's frame, beside the one in ours:
    # frame.json's transform brings other tools' files made from it along.
    rec.write_binary(str(_made(ctx.out / COLMAP_FRAME_MODEL)))
    frame = world_frame(rec, ctx.photos_folder, ctx.photo_names) if sfm.frame == "auto" else \
        frame_identity("requested: COLMAP's frame")
    rec.transform(frame.sim3())
    rec.write_binary(str(ctx.out))
    (ctx.out / FRAME_FILE).write_text(json.dumps(frame.as_dict(), indent=2, sort_keys=True))
    result = model_stats(rec)
    result.update(num_models=registration.num_models, attempts=[a.as_dict() for a in registration.attempts],
                  registration=registration.summary_line(len(ctx.photo_names)), frame=frame.info)
    if len(registration.attempts) > 1:
        ctx.warn("registration_ladder", f"Registration {registration.summary_line(len(ctx.photo_names))}.",
                 {"attempts": result["attempts"]})
    unregistered = sorted(set(ctx.photo_names) - set(result["registered"]))
    if unregistered:
        ctx.warn("unregistered", f"{len(unregistered)} of {len(ctx.photo_names)} photos could not be placed: "
                 f"{', '.join(unregistered)}.", {"names": unregistered})
    for note in frame.info.get("warnings", []):
        ctx.warn("frame", note)
    return result


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def undistort_stage(ctx: "StageContext") -> dict:
    return undistort(ctx.path("mapping"), ctx.photos_folder, ctx.out, ctx.options.sfm, ctx.decided.get("masks"))
