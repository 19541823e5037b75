"""How long each stage of a job will take: from the photos' count and size, the
options and the device. No bpy, no numpy: the backend and the sidebar share it.

The cost model per stage is a few constants in seconds, measured on the
reference machine (2 x86-64 cores, no GPU, unloaded): fitted to the stage
times benchmarks/cpu_defaults.py records on temple and fountain, and checked
there on castle-P19, which they were not fitted to. Another CPU is scaled by its core count:
everything heavy here (SIFT, the ZNCC stereo in torch, the CPU rasteriser) is
data parallel, but not perfectly (memory bandwidth), so time goes as
(2 / cores) ** 0.8 rather than 2 / cores. A CUDA GPU divides the torch stages
by a rough factor (CUDA_SPEEDUP); while a job runs, `update` replaces the
model of the running stage by its measured speed, which is what the user sees
for most of the run."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

REFERENCE_CORES = 2
REFERENCE_PROBE_CPU_SECONDS = 0.10
"""The thread time of `measure_speed`'s probe on the reference machine."""
CORE_EXPONENT = 0.8
CUDA_SPEEDUP = {"mvs": 20.0, "fusion": 5.0, "splats": 60.0}


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    seconds: float


def megapixels(size: tuple[int, int], max_image_size: int) -> float:
    """A photo's megapixels once its longest side is at most max_image_size."""
    w, h = size
    scale = min(1.0, max_image_size / max(w, h)) if max_image_size else 1.0
    return round(w * scale) * round(h * scale) / 1e6


def measure_speed(rounds: int = 150) -> float:
    """How much slower than the reference machine this one runs CPU stages
    now (1.0 = as fast; 2.0 = twice the time): a probe of about 0.1 s (SHA-256
    over 1 MiB buffers, C code that releases the GIL, so a thread can run it
    without stalling Blender's UI). Its thread time against the reference's
    gives the core's own speed; its wall time against its thread time gives
    the share of the cores other programs leave us (a machine running
    something else as well). Clamped to 0.25-10."""
    import hashlib
    import time

    buffer = bytes(1 << 20)
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(rounds):
        hashlib.sha256(buffer).digest()
    wall, cpu = time.perf_counter() - wall, max(1e-6, time.thread_time() - cpu)
    core = cpu / (REFERENCE_PROBE_CPU_SECONDS * rounds / 150)
    contention = max(1.0, wall / cpu)
    return min(10.0, max(0.25, core * contention))


def estimate(sizes: list[tuple[int, int]], options: dict, devices: dict[str, str] | None = None,
             cores: int | None = None, stages: list[str] | None = None,
             speed: float = 1.0) -> list[StageEstimate]:
    """Seconds per stage. sizes: each photo's (width, height); options: the
    resolved options as plain data ({"sfm": {...}, "dense": {...}, "splats":
    {...}}, JobOptions.to_dict()); devices: "cpu" or "cuda" per option group
    (default cpu); stages: the stages that will run (default all); speed:
    measure_speed()'s factor for the CPU stages."""
    devices = devices or {}
    cores = cores or os.cpu_count() or REFERENCE_CORES
    cpu_scale = (REFERENCE_CORES / cores) ** CORE_EXPONENT * speed
    n = len(sizes)
    sfm, dense, splats, texture = ({**OPTION_DEFAULTS[g], **options.get(g, {})}
                                   for g in ("sfm", "dense", "splats", "texture"))
    sift_mp = [megapixels(s, sfm["max_image_size"]) for s in sizes]
    full_mp = [megapixels(s, sfm.get("undistort_max_size") or 0) for s in sizes]
    depth_mp = [megapixels(s, dense["max_image_size"]) for s in sizes]
    held = splats.get("holdout_every") or 0
    train_mp = [megapixels(s, splats["max_image_size"]) for s in sizes]
    mean_train_mp = sum(train_mp) / n if n else 0.0
    # Matching cost follows the features per photo: about one per 330 px of a
    # photo's SIFT image, up to max_num_features.
    feature_mp = min(sum(sift_mp) / n if n else 0.0, sfm["max_num_features"] * 330 / 1e6)
    pairs = n * (n - 1) / 2
    # Constants fitted to the stage times of benchmarks/cpu_defaults.py on temple (16 x 0.3 MP) and
    # fountain (11 x 6 MP) on the reference machine unloaded; castle-P19 (19 photos) checks them.
    model = {
        "features": n * 0.05 + 0.38 * sum(sift_mp),
        "matching": 0.035 * pairs * feature_mp,
        "mapping": n * 0.03 + 0.28 * sum(sift_mp),
        "undistort": 0.065 * sum(full_mp),
        "mvs": (n * 0.6 + 2.0 * sum(depth_mp)) * dense["num_sources"] / 6,
        "fusion": n * 0.02 + 0.8 * sum(depth_mp),
        "mesh": 4.0 + 40.0 * dense["face_budget"] / 1e6,
        # Seeing every face from every photo, then baking the atlas's texels and reading the photos
        # (fitted on fountain: 200k faces into 4k in 46 s, 50k faces into 2k in 10 s).
        "texture": 2.0 + 6e-6 * min(dense["face_budget"], 1e9) * n + 1.3e-6 * texture["size"] ** 2
                   + 0.1 * sum(full_mp),
        # Loading and the held-out evaluation, then the steps: a fixed part
        # (the optimizer and densification over the splats) and one per pixel.
        "splats": 3.0 + 0.02 * n * (1 + (1 / held if held else 0))
                  + splats["steps"] * (0.1 + 7.0 * mean_train_mp),
    }
    group = {"features": "sfm", "matching": "sfm", "mapping": "sfm", "undistort": "sfm",
             "mvs": "dense", "fusion": "dense", "mesh": "dense", "texture": "texture", "splats": "splats"}
    out = []
    for stage, seconds in model.items():
        if stages is not None and stage not in stages:
            continue
        if devices.get(group[stage], "cpu") == "cuda" and stage in CUDA_SPEEDUP:
            seconds /= CUDA_SPEEDUP[stage]
        else:
            seconds *= cpu_scale
        out.append(StageEstimate(stage, seconds))
    return out


def update(estimates: list[StageEstimate], stage: str, fraction: float, elapsed: float,
           done: dict[str, float] | None = None) -> list[StageEstimate]:
    """The estimates during a run: finished stages take their actual seconds
    (`done`), the running one its measured speed (elapsed / fraction, trusted
    in proportion to how far it is, so the first seconds of a stage do not
    swing it), the rest keep the model, scaled by how far off the finished
    stages were (the machine may be busier than the model assumed)."""
    done = done or {}
    modelled = sum(e.seconds for e in estimates if e.stage in done)
    actual = sum(done.values())
    drift = min(3.0, max(1 / 3, actual / modelled)) if modelled > 0 and actual > 0 else 1.0
    out = []
    for e in estimates:
        if e.stage in done:
            out.append(StageEstimate(e.stage, done[e.stage]))
        elif e.stage == stage:
            model = max(e.seconds * drift, elapsed)
            if fraction > 0.02:
                weight = min(1.0, fraction * 2)
                model = weight * (elapsed / fraction) + (1 - weight) * model
            out.append(StageEstimate(e.stage, max(model, elapsed)))
        else:
            out.append(StageEstimate(e.stage, e.seconds * drift))
    return out


def remaining(estimates: list[StageEstimate], stage: str, elapsed: float, done: dict[str, float]) -> float:
    """Seconds left: the running stage's rest and the stages not yet run."""
    return sum(max(0.0, e.seconds - elapsed) if e.stage == stage else e.seconds
               for e in estimates if e.stage not in done)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def photo_sizes(folder: str) -> list[tuple[int, int]]:
    """Each photo's (width, height) in a folder, from the file's header only
    (a few hundred bytes of each: cheap enough for a sidebar), EXIF rotation
    ignored (a size's megapixels do not change with it). Files it cannot read
    are left out."""
    sizes = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return sizes
    for name in names:
        if not name.lower().endswith(PHOTO_SUFFIXES):
            continue
        try:
            size = image_size(os.path.join(folder, name))
        except (OSError, struct.error, ValueError):
            size = None
        if size:
            sizes.append(size)
    return sizes


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of a JPEG, PNG or TIFF from its header."""
    with open(path, "rb") as f:
        head = f.read(26)
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            while True:
                marker = f.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:
                    continue
                length = struct.unpack(">H", f.read(2))[0]
                if 0xC0 <= marker[1] <= 0xCF and marker[1] not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">xHH", f.read(5))
                    return w, h
                f.seek(length - 2, 1)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(f, "<" if head[:2] == b"II" else ">")
    return None


def _tiff_size(f, order: str) -> tuple[int, int] | None:
    f.seek(4)
    f.seek(struct.unpack(order + "I", f.read(4))[0])
    found = {}
    for _ in range(struct.unpack(order + "H", f.read(2))[0]):
        tag, kind, _count, value = struct.unpack(order + "HHI4s", f.read(12))
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2 if kind == 3 else 4])[0]
    return (found[256], found[257]) if len(found) == 2 else None


OPTION_DEFAULTS = {"sfm": {"undistort_max_size": 0}, "dense": {"num_sources": 6}, "splats": {"holdout_every": 8},
                   "texture": {"size": 4096}}
"""The few option defaults the model reads that no preset sets (backend/options.py's)."""


def preset_options(quality: str, cpu_groups=()) -> dict:
    """The options a job with only `quality` set gets, as plain data, with the
    CPU-fit values for the groups in `cpu_groups` (what the backend resolves:
    backend.options.JobOptions.from_dict)."""
    from .presets import CPU_PRESETS, QUALITY_PRESETS

    return {group: {**OPTION_DEFAULTS.get(group, {}), **values,
                    **(CPU_PRESETS[quality].get(group, {}) if group in cpu_groups else {})}
            for group, values in QUALITY_PRESETS[quality].items()}


def stages_run(requested) -> list[str]:
    """The stages a request for `requested` runs (with what they read)."""
    from .stages import needed

    return list(needed(requested))
