"""Options for a reconstruction job: typed, validated, one class per stage
group. The command line, the protocol and the quality presets all fill the
same dataclasses, and one validator (`JobOptions.from_dict`) checks every
value against its field's type and range, so a wrong value anywhere gets a
message naming the field."""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from blender_addon.shared.presets import CPU_PRESETS, QUALITY_PRESETS
from blender_addon.shared.stages import NAMES
from backend.errors import ErrorCode, ReconstructError

Quality = Literal["fast", "balanced", "high"]
Matcher = Literal["auto", "exhaustive", "sequential", "spatial", "video"]
Mapper = Literal["auto", "incremental", "global"]
Frame = Literal["auto", "colmap"]
Device = Literal["auto", "cuda", "cpu"]
"""Where a stage runs; one word for every group: auto takes a CUDA GPU when there is one."""
Upsample = Literal["auto", "always", "never"]
Strategy = Literal["default", "mcmc"]

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
                 "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE")


@dataclass
class SfmOptions:
    """Structure-from-Motion: photos to calibrated cameras and sparse points."""

    max_image_size: int = field(default=2000, metadata={"range": (64, 16384)})
    """Longest side (px) that feature extraction sees; cameras stay full size."""
    max_num_features: int = field(default=8192, metadata={"range": (100, 262144), "flag": "--max-features"})
    """SIFT features kept per photo."""
    sift_upsample: Upsample = "auto"
    """Run SIFT's first octave on the image doubled in size. It finds the
    features small images need, but costs about 3x the time on large ones,
    where it does not improve the poses (measured on fountain-P11). auto:
    only when SIFT sees fewer than 1200 px."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model; OPENCV for wide or strongly distorted lenses."""
    single_camera: bool | None = field(default=None, metadata={"flag": "--single-camera",
                                                               "flag_false": "--per-photo-camera"})
    """All photos share one camera's intrinsics (same body, lens and zoom).
    None (auto): shared when every photo has the same size and the same EXIF
    camera and focal length (or none at all). Per-photo intrinsics on a set
    from one camera are poorly constrained: the temple's pose error drops
    from 1.8% to 0.24% of the camera radius with them shared."""
    matcher: Matcher = "auto"
    """auto: video for a video's frames (sequential, plus the pairs that close
    a loop), exhaustive for small sets, sequential for video-like frame
    names, spatial for large geotagged sets."""
    mapper: Mapper = "auto"
    """auto: incremental first; when it leaves photos out or its focal drifts
    far from the EXIF prior, a ladder of other attempts (EXIF focal held,
    relaxed thresholds, the global mapper, merged fragments), keeping the one
    with the most photos that passes the sanity checks. incremental or
    global: that one attempt only."""
    frame: Frame = "auto"
    """auto: the model is turned upright (+Z up), centred on the subject
    standing on the ground (Z = 0) and scaled to metres (from GPS when the
    photos carry it, else a stated heuristic); colmap: COLMAP's own arbitrary
    frame. sparse/model/frame.json records the transform either way."""
    undistort_max_size: int = field(default=0, metadata={"range": (0, 16384)})
    """Longest side of the undistorted images for the dense stages; 0 = full size."""
    device: Device = "auto"
    """Where SIFT runs: auto uses a CUDA GPU when pycolmap has one."""
    num_threads: int = field(default=-1, metadata={"range": (-1, 1024), "flag": "--threads"})
    """-1: every core."""


@dataclass
class DenseOptions:
    """Multi-view stereo, fusion and meshing: cameras to dense points and a mesh."""

    max_image_size: int = field(default=1600, metadata={"range": (64, 16384), "flag": "--dense-max-size"})
    """Longest side (px) of the images depth maps are computed at."""
    num_sources: int = field(default=6, metadata={"range": (1, 64)})
    """Source views compared with each reference view (chosen by shared sparse
    points and triangulation angle)."""
    window_radius: int = field(default=3, metadata={"range": (1, 15)})
    """Half size of the photo-consistency (ZNCC) window: 3 = 7 x 7 px."""
    slanted: bool = field(default=True, metadata={"flag": "--slanted", "flag_false": "--fronto-parallel-only"})
    """Sweep slanted plane families too (the ground, surfaces tilted left, right, up and down),
    not only planes facing the camera: surfaces seen at grazing angles match. Off is faster."""
    min_consistent: int = field(default=2, metadata={"range": (1, 64)})
    """Other views whose depth must agree with a pixel's for it to be fused."""
    roi: dict | None = None
    """Region of interest, an oriented box in world (= Blender) coordinates:
    {"center": [3], "rotation": [[3], [3], [3]] (columns: the box's axes),
    "half_size": [3]}, or on the command line "cx,cy,cz,hx,hy,hz" (axis-aligned). None: the bounds of
    the sparse points."""
    mesh_depth: int = field(default=0, metadata={"range": (0, 13)})
    """Poisson octree depth; 0 chooses it from the point spacing."""
    face_budget: int = field(default=300_000, metadata={"range": (100, 100_000_000)})
    """The mesh is simplified to at most this many triangles."""
    device: Device = field(default="auto", metadata={"flag": "--dense-device"})
    """Where depth maps are computed: auto uses a CUDA GPU when torch has one."""


@dataclass
class SplatOptions:
    """3D Gaussian splatting: cameras, dense points and photos to splats."""

    steps: int = field(default=7000, metadata={"range": (1, 10_000_000), "flag": "--splat-steps"})
    """Training steps (one photo each)."""
    max_image_size: int = field(default=1600, metadata={"range": (32, 16384), "flag": "--splat-size"})
    """Longest side (px) of the photos the splats are trained on."""
    sh_degree: int = field(default=3, metadata={"range": (0, 3)})
    """Spherical-harmonic degree of the view-dependent colour (0 = flat colour).
    Degrees are switched on one by one during training."""
    strategy: Strategy = "default"
    """How splats are added and removed: gsplat's default (split, clone and
    prune by screen-space gradient, as in the 3DGS paper) or mcmc (a fixed
    budget of `max_splats`, relocated from dead splats to busy ones)."""
    max_splats: int = field(default=1_000_000, metadata={"range": (1000, 100_000_000)})
    """Upper bound on the number of splats (the MCMC budget; default densification
    stops growing here)."""
    holdout_every: int = field(default=8, metadata={"range": (0, 1_000_000)})
    """Every n-th photo (by name) is held out of training and scores the result
    (PSNR, SSIM in summary.json); 0 trains on all."""
    seed: int = field(default=0, metadata={"range": (0, 2**31 - 1), "flag": "--splat-seed"})
    """Random seed of the initialisation and the photo order."""
    device: Device = field(default="auto", metadata={"flag": "--splat-device"})
    """auto: gsplat's CUDA rasteriser when torch sees a GPU, else our CPU one."""
    checkpoint_seconds: float = field(default=60.0, metadata={"range": (1.0, 86_400.0)})
    """How often a training run saves a checkpoint it can resume from."""



@dataclass
class TextureOptions:
    """Texturing: the photos' colours on the mesh, as one texture atlas."""

    size: int = field(default=4096, metadata={"range": (256, 16384), "flag": "--texture-size"})
    """Side (px) of the square atlas image: 2048 (2k), 4096 (4k) or 8192 (8k)
    are the presets' values; "2k", "4k" and "8k" are read as those."""


@dataclass
class VideoOptions:
    """Video input: which frames of a video become the job's photos."""

    target_frames: int = field(default=0, metadata={"range": (0, 5000), "flag": "--frames"})
    """How many frames to keep from a video, spread by how much the view
    changes; blurred frames are never kept. 0 (auto): 4 per second of video,
    at least 100 and at most 300."""


@dataclass
class JobOptions:
    quality: Quality = "balanced"
    video: VideoOptions = field(default_factory=VideoOptions)
    sfm: SfmOptions = field(default_factory=SfmOptions)
    dense: DenseOptions = field(default_factory=DenseOptions)
    splats: SplatOptions = field(default_factory=SplatOptions)
    texture: TextureOptions = field(default_factory=TextureOptions)
    force: str | None = None
    """Rerun this stage and everything after it, even if cached."""
    cpu_defaults: list = field(default_factory=list)
    """The option groups whose preset values were replaced by the CPU-fit ones
    of presets.CPU_PRESETS (they run on the CPU); said in the summary."""

    @classmethod
    def from_dict(cls, data, cuda: bool | None = None) -> "JobOptions":
        """Build from plain data (protocol or CLI), checking every value. A
        quality preset fills the fields that `data["sfm"]`, `data["dense"]` and
        `data["splats"]` do not set explicitly; for a group that will run on
        the CPU (its device cpu, or auto and `cuda` false) the preset's CPU
        values do. `cuda`: whether a CUDA GPU is there; None asks torch, only
        when a CPU table could apply."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"options must be a map of option groups, not "
                                   f"{_kind(data)}.", 'Send e.g. {"quality": "fast", "sfm": {"max_image_size": 1600}}.')
        data = dict(data)
        quality = data.pop("quality", "balanced")
        if not isinstance(quality, str) or quality not in QUALITY_PRESETS:
            raise _bad("quality", quality, list(QUALITY_PRESETS))
        groups, cpu_defaults = {}, []
        explicit_cpu = data.pop("cpu_defaults", None)  # from to_dict: every value is then explicit
        for group, cls_ in OPTION_GROUPS.items():
            given = data.pop(group, None)
            if given is None:
                given = {}
            if not isinstance(given, dict):
                raise ReconstructError(ErrorCode.BAD_OPTIONS, f"options.{group} must be a map of {group} options, "
                                       f"not {_kind(given)}.", f"Known {group} options: {_names(cls_)}.")
            preset = dict(QUALITY_PRESETS[quality].get(group, {}))
            cpu = CPU_PRESETS[quality].get(group)
            if cpu and any(name not in given for name in cpu) and _on_cpu(group, given.get("device", "auto"), cuda):
                preset.update(cpu)
                cpu_defaults.append(group)
            values = {**preset, **given}
            unknown = sorted(set(values) - {f.name for f in fields(cls_)}, key=str)
            if unknown:
                raise ReconstructError(ErrorCode.BAD_OPTIONS,
                                       f"Unknown {group} option(s): {', '.join(map(str, unknown))}.",
                                       f"Known options: {_names(cls_)}.")
            hints = typing.get_type_hints(cls_)
            groups[group] = cls_(**{f.name: _checked(group, f, hints[f.name], values[f.name])
                                    for f in fields(cls_) if f.name in values})
        force = data.pop("force", None)
        if data:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"Unknown option(s): {', '.join(sorted(map(str, data)))}.",
                                   "Check the option names against the README.")
        if force is not None and (not isinstance(force, str) or force not in NAMES):
            raise _bad("force", force, list(NAMES))
        _validate(groups["sfm"])
        _validate_dense(groups["dense"])
        _validate_splats(groups["splats"])
        if isinstance(explicit_cpu, list) and not cpu_defaults:
            cpu_defaults = [g for g in explicit_cpu if g in OPTION_GROUPS]
        return cls(quality=quality, force=force, cpu_defaults=cpu_defaults, **groups)

    def to_dict(self) -> dict:
        return asdict(self)


def _on_cpu(group: str, device, cuda: bool | None) -> bool:
    """Whether option group `group` with this device option will run on the
    CPU: cpu, or auto where the stage cannot use a GPU (none, or, for the
    splats, no working gsplat kernels: backend.job.device.stage_devices)."""
    if device == "cpu":
        return True
    if device != "auto":
        return False  # cuda, or a wrong value the validator names below
    if cuda is not None:
        return not cuda
    try:
        from backend.job.device import stage_devices
    except ImportError:  # the device module without per-stage answers
        stage_devices = None
    try:
        if stage_devices is not None:
            return stage_devices("auto")[{"sfm": "features"}.get(group, group)].device == "cpu"
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


def _bad(name: str, value, allowed: list) -> ReconstructError:
    return ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} is not a valid choice.",
                            f"Use one of: {', '.join(map(str, allowed))}.")


OPTION_GROUPS = {"video": VideoOptions, "sfm": SfmOptions, "dense": DenseOptions, "splats": SplatOptions, "texture": TextureOptions}


def field_docs(cls_) -> dict[str, str]:
    """Each field's docstring (the string under it in the class body): the
    one text the command line's help and the README use."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls_))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _kind(value) -> str:
    return {str: "a string", list: "a list", int: "a number", float: "a number", bool: "true/false",
            dict: "a map", bytes: "bytes", type(None): "nothing"}.get(type(value), type(value).__name__)


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _names(cls_) -> str:
    return ", ".join(f.name for f in fields(cls_))


def _checked(group: str, f, annotation, value):
    """`value` for field `f` of option group `group`, checked against the
    field's annotated type and its metadata range; raises BAD_OPTIONS naming
    the field. (bool is not accepted as a number, nor a number as a bool:
    "single_camera": "no" would otherwise read as true.)"""
    name = f"{group} option {f.name}"
    args = typing.get_args(annotation)
    if type(None) in args:
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        if value not in args or not isinstance(value, str):
            raise _bad(name, value, list(args))
        return value
    low, high = f.metadata.get("range", (None, None))
    span = f" ({_number(low)} to {_number(high)})" if low is not None else ""
    if annotation is bool:
        if not isinstance(value, bool):
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} must be true or false.",
                                   f"Give true or false{' (or leave it out: automatic)' if f.default is None else ''}.")
        return value
    if annotation in (int, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if annotation is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} must be a whole number{span}.",
                                   f"Give a whole number{span}.")
        if not number or not math.isfinite(value):
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} must be a finite number{span}.",
                                   f"Give a number{span}.")
        if low is not None and value < low:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} is too small.", f"Use{span[1:-1].replace('(', ' ')}.")
        if high is not None and value > high:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} is too large.", f"Use{span[1:-1].replace('(', ' ')}.")
        return annotation(value)
    if annotation in (str, dict) and not isinstance(value, annotation):
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} must be {_kind(annotation())}, "
                               f"not {_kind(value)}.")
    return value


def _validate(o: SfmOptions) -> None:
    if o.camera_model not in CAMERA_MODELS:
        raise _bad("sfm option camera_model", o.camera_model, list(CAMERA_MODELS))


def _validate_dense(o: DenseOptions) -> None:
    from backend.dense.roi import Box

    if o.mesh_depth and not 5 <= o.mesh_depth <= 13:
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"dense option mesh_depth={o.mesh_depth} is out of range.",
                               "Use 0 (automatic) or 5 to 13.")
    if o.roi is not None:
        Box.from_dict(o.roi)  # raises a BAD_OPTIONS error that says what is wrong


def _validate_splats(o: SplatOptions) -> None:
    if o.holdout_every == 1:
        raise ReconstructError(ErrorCode.BAD_OPTIONS, "splats option holdout_every=1 would hold out every photo.",
                               "Use 0 (train on all photos) or 2 or more (8 is the usual).")
