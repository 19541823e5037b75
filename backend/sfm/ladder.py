"""Registration: photos and verified matches to one calibrated model.

The first attempt is COLMAP's incremental mapper with its defaults. When it
leaves photos out, or its focal drifts far from the EXIF prior, the ladder
tries other settings in turn (EXIF focal held, relaxed thresholds, the global
mapper, the best fragment extended with relaxed thresholds) and keeps the
attempt with the most photos that passes the sanity checks: a wrong model
that places every photo is worse than an honest partial one.

Every attempt runs with a fixed random seed, so the same photos and matches
give the same model (measured: identical registered sets and poses to 1e-6
over two runs from scratch; see tests/test_registration.py).
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pycolmap

from backend.options import SfmOptions

Progress = Callable[[float, str], None]
Log = Callable[[str], None]

SEED = 0
"""COLMAP's RANSAC, initial-pair trials and BA ordering draw from one PRNG;
seeded, a run repeats exactly."""

# Sanity checks: a model failing any of them is never kept.
FOCAL_PRIOR_RANGE = (0.75, 1.33)
"""Estimated / EXIF focal. EXIF (or its 35 mm equivalent) is right to a few
per cent on real lenses; a factor of 4/3 off is a model that solved the
wrong geometry (the failure the ladder exists for), not a lens."""
FOCAL_DRIFT = 0.03
"""Estimated / EXIF focal beyond 3% starts the ladder (EXIF focal held
usually fixes it), though the model may still be kept if nothing does better."""
FOCAL_SIZE_RANGE = (0.5, 3.0)
"""Without EXIF: focal / longest image side. 0.5 is a 90 degree field of
view (wider needs a fisheye model), 3.0 a 19 degree one (a ~110 mm lens on
full frame); phones sit near 0.8-1.2, the Middlebury temple at 2.4."""
MAX_MEAN_REPROJECTION_ERROR = 2.0
"""px. COLMAP filters observations above 4 px; a mean near that is a model
held together by its outliers."""
MIN_MEAN_TRACK_LENGTH = 2.5
"""A consistent model sees most points in 3+ photos (real sets: 3.5-6);
near 2 it is a chain of unrelated two-view fits."""
MIN_IMAGE_OBSERVATIONS = 25
"""3D points a registered photo must see: COLMAP registers with 30 inliers
by default; a photo below 25 after bundle adjustment is placed on noise."""

BUDGET_FACTOR = 3.0
"""The whole ladder takes at most 3x the first attempt's time..."""
BUDGET_FLOOR_S = 20.0
"""...or 20 s, whichever is longer: on tiny sets the first attempt takes
2-4 s and 3x that would not fit the process start-up of one more attempt."""


@dataclass
class Attempt:
    """One way of registering the photos, with its figures and the verdict."""
    name: str
    """Machine name (summary.json), e.g. "incremental", "exif_focal"."""
    label: str
    """What users read: "EXIF focal held"."""
    registered: int = 0
    num_models: int = 0
    seconds: float = 0.0
    focal_ratio: float | None = None
    """Estimated focal / EXIF prior focal (None without an EXIF prior)."""
    mean_reprojection_error: float | None = None
    mean_track_length: float | None = None
    failed_checks: list[str] = field(default_factory=list)
    """Sanity checks the model failed, in words; a model that fails any is not kept."""
    kept: bool = False
    verdict: str = ""
    """Why it was kept or dropped, in words."""
    focal_per_side: float | None = None
    """Estimated focal / the image's longest side (the check without EXIF)."""
    min_image_observations: int | None = None
    """3D points seen by the registered photo that sees fewest."""
    focal_drifted: bool = False
    """The focal is more than FOCAL_DRIFT off the EXIF prior (kept only if nothing better passes)."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Registration:
    model: "pycolmap.Reconstruction | None"
    """The kept model (None: no attempt produced one)."""
    attempts: list[Attempt]
    num_models: int = 0
    """Models (fragments) the kept attempt produced."""

    @property
    def kept(self) -> Attempt | None:
        return next((a for a in self.attempts if a.kept), None)

    def summary_line(self, total: int) -> str:
        """"tried 3 ways; kept: EXIF focal held, 29/29" (the sidebar's and terminal's line)."""
        kept = self.kept
        what = f"kept: {kept.label}, {kept.registered}/{total}" if kept else "none kept"
        return f"tried {len(self.attempts)} way{'s' if len(self.attempts) != 1 else ''}; {what}"


# The rungs, in the order tried. Each is (name, label, kind, settings); "hold"
# rungs need an EXIF prior, "extend" continues from the best model so far.
RELAXED = {"mapper.init_min_num_inliers": 50, "mapper.init_max_error": 6.0, "mapper.init_min_tri_angle": 8.0,
           "mapper.abs_pose_min_num_inliers": 20, "mapper.abs_pose_min_inlier_ratio": 0.15,
           "mapper.abs_pose_max_error": 16.0, "mapper.max_reg_trials": 6, "mapper.init_max_reg_trials": 4,
           "init_num_trials": 400, "min_num_matches": 10}
"""Relaxed thresholds (COLMAP defaults: 100, 4 px, 16 deg, 30, 0.25, 12 px, 3, 2, 200, 15): what
lets weakly textured or wide-baseline photos in. Still above MIN_IMAGE_OBSERVATIONS."""
HOLD = {"ba_refine_focal_length": False, "mapper.abs_pose_refine_focal_length": False}
GLOBAL_HOLD = {"mapper.bundle_adjustment.refine_focal_length": False}
RUNGS = [
    ("incremental", "incremental, COLMAP defaults", "incremental", {}),
    # With an EXIF prior the global mapper holding it comes first: on the
    # forward walk the incremental mapper holding it keeps all 22 photos but
    # folds the path (5.8% centre error, 19 degrees), which no sanity check
    # sees, while the global one places them at 0.26% with the focal exact.
    ("global_exif_focal", "global mapper, EXIF focal held", "global", GLOBAL_HOLD),
    ("exif_focal", "EXIF focal held", "incremental", HOLD),
    # The global mapper before relaxed thresholds: it placed the temple's 16
    # (incremental and relaxed: 13) in 2.6 s, where relaxed helped no set.
    ("global", "global mapper", "global", {}),
    ("relaxed", "relaxed thresholds", "incremental", RELAXED),
    ("extended", "best model extended, relaxed thresholds", "extend", RELAXED),
]
NEEDS_PRIOR = {"global_exif_focal", "exif_focal"}


def register(database: Path, image_dir: Path, scratch: Path, opts: SfmOptions, num_images: int,
             progress: Progress, log: Log) -> Registration:
    """Run the attempts `opts.mapper` asks for, in `scratch` (removed after)."""
    shutil.rmtree(scratch, ignore_errors=True)
    priors = _exif_priors(database)
    if opts.mapper == "auto":
        rungs = [r for r in RUNGS if r[0] not in NEEDS_PRIOR or priors]
    else:
        rungs = [next(r for r in RUNGS if r[0] == opts.mapper)]
    attempts: list[Attempt] = []
    models: dict[str, tuple] = {}  # attempt name -> (best model, fragments)
    started = time.perf_counter()
    budget = None
    for step, (name, label, kind, settings) in enumerate(rungs):
        elapsed = time.perf_counter() - started
        if budget is not None and elapsed >= budget:
            log(f"registration ladder: time budget ({budget:.0f} s) spent, {name} not tried")
            break
        if kind == "extend":
            base = _best(attempts)
            if base is None or base.registered >= num_images:
                continue
            settings = dict(settings, _input=models[base.name][0])
        attempt = Attempt(name, label)
        # The first attempt reads as before the ladder; later ones say which they are.
        what = f"attempt {step + 1} ({label}): " if step else ""
        t0 = time.perf_counter()
        fragments = _map(database, image_dir, scratch / name, opts, num_images, progress, what,
                         kind, settings, None if budget is None else budget - elapsed)
        attempt.seconds = round(time.perf_counter() - t0, 3)
        attempt.num_models = len(fragments)
        model = max(fragments, key=lambda r: r.num_reg_images()) if fragments else None
        _judge(attempt, model, priors)
        attempts.append(attempt)
        if model is not None:
            models[name] = (model, len(fragments))
        log(f"registration: {label}: {attempt.registered}/{num_images} in {attempt.seconds:.1f} s"
            + (f"; fails {'; '.join(attempt.failed_checks)}" if attempt.failed_checks else ""))
        if budget is None:
            budget = max(BUDGET_FACTOR * attempt.seconds, attempt.seconds + BUDGET_FLOOR_S)
        if attempt.registered == num_images and not attempt.failed_checks and not attempt.focal_drifted:
            break
    best = _best(attempts)
    fallback = best is None and attempts and attempts[0].registered > 0
    if fallback:
        # Nothing passes: keep COLMAP's default result as before the ladder
        # (a two-photo model cannot pass the track check), its failures on record.
        best = attempts[0]
    for a in attempts:
        if a is best and fallback:
            a.kept = True
            a.verdict = "kept: no attempt passes the checks; COLMAP's default result, failing " + \
                "; ".join(a.failed_checks)
        elif a is best:
            a.kept = True
            a.verdict = ("kept: the only attempt" if len(attempts) == 1 else
                         f"kept: most photos registered ({a.registered}/{num_images}) of the models that pass"
                         + (", though its focal drifted from EXIF" if a.focal_drifted else ""))
        elif a.failed_checks:
            a.verdict = "dropped: " + "; ".join(a.failed_checks)
        elif a.registered == 0:
            a.verdict = "dropped: no model"
        else:
            a.verdict = f"dropped: {a.registered}/{num_images}, " + (
                f"fewer than {best.label}" if best and best.registered > a.registered else
                "its focal drifted from EXIF" if a.focal_drifted else f"no more than {best.label}, tried earlier")
    shutil.rmtree(scratch, ignore_errors=True)
    if best is None or best.name not in models:
        return Registration(None, attempts, 0)
    model, count = models[best.name]
    return Registration(model, attempts, count)


def _best(attempts: list[Attempt]) -> Attempt | None:
    """Most photos among those that pass; on a tie one whose focal kept to EXIF, then the earliest."""
    passing = [a for a in attempts if a.registered and not a.failed_checks]
    if not passing:
        return None
    return max(passing, key=lambda a: (a.registered, not a.focal_drifted, -attempts.index(a)))


def _exif_priors(database: Path) -> dict[int, float]:
    """Camera id -> EXIF focal (px) for the cameras that have one."""
    with pycolmap.Database.open(database) as db:
        return {c.camera_id: float(c.mean_focal_length()) for c in db.read_all_cameras()
                if c.has_prior_focal_length}


def _judge(attempt: Attempt, model, priors: dict[int, float]) -> None:
    """Fill the attempt's figures and the sanity checks it fails."""
    if model is None or model.num_reg_images() == 0:
        attempt.failed_checks.append("no model")
        return
    attempt.registered = model.num_reg_images()
    attempt.mean_reprojection_error = round(float(model.compute_mean_reprojection_error()), 4)
    attempt.mean_track_length = round(float(model.compute_mean_track_length()), 3)
    used = {model.images[i].camera_id for i in model.reg_image_ids()}
    ratios, sides = [], []
    for cid in sorted(used):
        cam = model.cameras[cid]
        sides.append(cam.mean_focal_length() / max(cam.width, cam.height))
        if cid in priors:
            ratios.append(cam.mean_focal_length() / priors[cid])
    attempt.focal_per_side = round(float(max(sides, key=lambda s: abs(math.log(s)))), 4)
    if ratios:
        worst = max(ratios, key=lambda r: abs(math.log(r)))
        attempt.focal_ratio = round(float(worst), 4)
        attempt.focal_drifted = abs(worst - 1) > FOCAL_DRIFT
        if not FOCAL_PRIOR_RANGE[0] <= worst <= FOCAL_PRIOR_RANGE[1]:
            attempt.failed_checks.append(f"focal {worst:.2f}x the EXIF prior (allowed "
                                         f"{FOCAL_PRIOR_RANGE[0]}-{FOCAL_PRIOR_RANGE[1]}x)")
    elif not FOCAL_SIZE_RANGE[0] <= attempt.focal_per_side <= FOCAL_SIZE_RANGE[1]:
        attempt.failed_checks.append(f"focal {attempt.focal_per_side:.2f}x the longest image side (allowed "
                                     f"{FOCAL_SIZE_RANGE[0]}-{FOCAL_SIZE_RANGE[1]}x without EXIF)")
    if attempt.mean_reprojection_error > MAX_MEAN_REPROJECTION_ERROR:
        attempt.failed_checks.append(f"mean reprojection error {attempt.mean_reprojection_error:.2f} px "
                                     f"(> {MAX_MEAN_REPROJECTION_ERROR})")
    if attempt.mean_track_length < MIN_MEAN_TRACK_LENGTH:
        attempt.failed_checks.append(f"mean track length {attempt.mean_track_length:.2f} (< {MIN_MEAN_TRACK_LENGTH})")
    seen = {i: model.images[i].num_points3D for i in model.reg_image_ids()}
    attempt.min_image_observations = int(min(seen.values()))
    weak = sorted(model.images[i].name for i, n in seen.items() if n < MIN_IMAGE_OBSERVATIONS)
    if weak:
        attempt.failed_checks.append(f"{len(weak)} photo(s) placed on fewer than {MIN_IMAGE_OBSERVATIONS} points "
                                     f"({', '.join(weak[:3])}{', ...' if len(weak) > 3 else ''})")


def _set(options, settings: dict) -> None:
    for key, value in settings.items():
        if key.startswith("_"):
            continue
        *path, attr = key.split(".")
        target = options
        for part in path:
            target = getattr(target, part)
        setattr(target, attr, value)


def _map(database: Path, image_dir: Path, scratch: Path, opts: SfmOptions, num_images: int, progress: Progress,
         what: str, kind: str, settings: dict, time_left: float | None) -> list:
    scratch.mkdir(parents=True, exist_ok=True)
    pycolmap.set_random_seed(SEED)
    if kind == "global":
        options = pycolmap.GlobalPipelineOptions()
        # One thread: on two, its parallel reductions sum in another order
        # from run to run and the street's poses moved by up to 6e-4 (one
        # thread repeats exactly, measured at the same speed on 22 photos).
        options.num_threads = 1
        options.random_seed = SEED
        _set(options, settings)
        progress(0.0, f"{what}global mapping")
        # The global mapper writes the relative poses it decomposes back into
        # the database, and a later run reading them gets another model: it
        # works on a copy, so the matching stage's output stays as made.
        copy = scratch / "database.db"
        shutil.copyfile(database, copy)
        return list(pycolmap.global_mapping(copy, image_dir, scratch, options).values())
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = opts.num_threads
    options.random_seed = SEED
    options.mapper.random_seed = SEED
    options.triangulation.random_seed = SEED
    _set(options, settings)
    if time_left is not None:
        # COLMAP stops adding photos once this is spent and returns what it has.
        options.max_runtime_seconds = max(1, int(time_left))
    input_path = ""
    if "_input" in settings:
        input_path = scratch / "input"
        input_path.mkdir()
        settings["_input"].write_binary(str(input_path))
    # Counted per model: the mapper starts a new model (another initial
    # pair) when the photos fall apart, and a count over all of them
    # read "registered 48 of 16 photos".
    count = {"models": 1 if input_path else 0, "placed": settings["_input"].num_reg_images() if input_path else 0}

    def on_initial_pair() -> None:
        count["models"] += 1
        count["placed"] = 2
        progress(2 / max(2, num_images), what + ("initial pair" if count["models"] == 1 else
                                                       f"initial pair of model {count['models']}"))

    def on_image() -> None:
        count["placed"] = min(num_images, count["placed"] + 1)
        model = f"model {count['models']}: " if count["models"] > 1 else ""
        progress(count["placed"] / max(1, num_images),
                 f"{what}{model}registered {count['placed']} of {num_images} photos")

    return list(pycolmap.incremental_mapping(database, image_dir, scratch, options, input_path=input_path,
                                             initial_image_pair_callback=on_initial_pair,
                                             next_image_callback=on_image).values())
