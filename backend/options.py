"""Options for a reconstruction job: typed, validated, one class per stage
group. The command line, the protocol and the quality presets all fill the
same dataclasses."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from backend.errors import ErrorCode, ReconstructError

Quality = Literal["fast", "balanced", "high"]
Matcher = Literal["auto", "exhaustive", "sequential", "spatial"]
Mapper = Literal["incremental", "global"]
Device = Literal["auto", "gpu", "cpu"]
Upsample = Literal["auto", "always", "never"]
TorchDevice = Literal["auto", "cuda", "cpu"]
Strategy = Literal["default", "mcmc"]

CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV",
                 "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "OPENCV_FISHEYE")


@dataclass
class SfmOptions:
    """Structure-from-Motion: photos to calibrated cameras and sparse points."""

    max_image_size: int = 2000
    """Longest side (px) that feature extraction sees; cameras stay full size."""
    max_num_features: int = 8192
    """SIFT features kept per photo."""
    sift_upsample: Upsample = "auto"
    """Run SIFT's first octave on the image doubled in size. It finds the
    features small images need, but costs about 3x the time on large ones,
    where it does not improve the poses (measured on fountain-P11). auto:
    only when SIFT sees fewer than 1200 px."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model; OPENCV for wide or strongly distorted lenses."""
    single_camera: bool | None = None
    """All photos share one camera's intrinsics (same body, lens and zoom).
    None (auto): shared when every photo has the same size and the same EXIF
    camera and focal length (or none at all). Per-photo intrinsics on a set
    from one camera are poorly constrained: the temple's pose error drops
    from 1.8% to 0.24% of the camera radius with them shared."""
    matcher: Matcher = "auto"
    """auto: exhaustive for small sets, sequential for video-like frame names,
    spatial for large geotagged sets."""
    mapper: Mapper = "incremental"
    """incremental (robust, default) or global (faster on large sets)."""
    undistort_max_size: int = 0
    """Longest side of the undistorted images for the dense stages; 0 = full size."""
    device: Device = "auto"
    """Where SIFT runs: auto uses a CUDA GPU when pycolmap has one."""
    num_threads: int = -1


@dataclass
class DenseOptions:
    """Multi-view stereo, fusion and meshing: cameras to dense points and a mesh."""

    max_image_size: int = 1600
    """Longest side (px) of the images depth maps are computed at."""
    num_sources: int = 6
    """Source views compared with each reference view (chosen by shared sparse
    points and triangulation angle)."""
    window_radius: int = 3
    """Half size of the photo-consistency (ZNCC) window: 3 = 7 x 7 px."""
    min_consistent: int = 2
    """Other views whose depth must agree with a pixel's for it to be fused."""
    roi: dict | None = None
    """Region of interest, an oriented box in world (= Blender) coordinates:
    {"center": [3], "rotation": [[3], [3], [3]] (columns: the box's axes),
    "half_size": [3]}. None: the bounds of the sparse points."""
    mesh_depth: int = 0
    """Poisson octree depth; 0 chooses it from the point spacing."""
    face_budget: int = 300_000
    """The mesh is simplified to at most this many triangles."""
    device: TorchDevice = "auto"
    """Where depth maps are computed: auto uses a CUDA GPU when torch has one."""


@dataclass
class SplatOptions:
    """3D Gaussian splatting: cameras, sparse points and photos to splats."""

    steps: int = 7000
    """Training steps (one photo each)."""
    max_image_size: int = 1600
    """Longest side (px) of the photos the splats are trained on."""
    sh_degree: int = 3
    """Spherical-harmonic degree of the view-dependent colour (0 = flat colour).
    Degrees are switched on one by one during training."""
    strategy: Strategy = "default"
    """How splats are added and removed: gsplat's default (split, clone and
    prune by screen-space gradient, as in the 3DGS paper) or mcmc (a fixed
    budget of `max_splats`, relocated from dead splats to busy ones)."""
    max_splats: int = 1_000_000
    """Upper bound on the number of splats (the MCMC budget; default densification
    stops growing here)."""
    holdout_every: int = 8
    """Every n-th photo (by name) is held out of training and scores the result
    (PSNR, SSIM in summary.json); 0 trains on all."""
    seed: int = 0
    device: TorchDevice = "auto"
    """auto: gsplat's CUDA rasteriser when torch sees a GPU, else our CPU one."""
    checkpoint_seconds: float = 60.0
    """How often a training run saves a checkpoint it can resume from."""


QUALITY_PRESETS: dict[str, dict[str, dict]] = {
    "fast": {"sfm": {"max_image_size": 1024, "max_num_features": 4096},
             "dense": {"max_image_size": 800, "face_budget": 100_000},
             "splats": {"steps": 3000, "max_image_size": 800}},
    "balanced": {"sfm": {"max_image_size": 2000, "max_num_features": 8192},
                 "dense": {"max_image_size": 1600, "face_budget": 300_000},
                 "splats": {"steps": 7000, "max_image_size": 1600}},
    "high": {"sfm": {"max_image_size": 3200, "max_num_features": 16384},
             "dense": {"max_image_size": 3200, "face_budget": 1_000_000},
             "splats": {"steps": 30_000, "max_image_size": 3200}},
}

# Stage -> (option group, fields of it that its output depends on). A stage
# reruns when these (or anything upstream) change; fields listed nowhere
# change no result.
STAGE_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "features": ("sfm", ("max_image_size", "max_num_features", "camera_model")),  # + first octave, camera sharing
    "matching": ("sfm", ("matcher",)),
    "mapping": ("sfm", ("mapper",)),
    "undistort": ("sfm", ("undistort_max_size",)),
    "mvs": ("dense", ("max_image_size", "num_sources", "window_radius", "roi")),
    "fusion": ("dense", ("min_consistent", "roi")),
    "mesh": ("dense", ("mesh_depth", "face_budget", "roi")),
    "splats": ("splats", ("steps", "max_image_size", "sh_degree", "strategy", "max_splats", "holdout_every", "seed")),
}
STAGES = tuple(STAGE_OPTIONS)
# The stage whose output each stage reads: splats need the cameras and photos,
# not the dense geometry, so they run (and stay cached) independently of it.
STAGE_INPUT: dict[str, str | None] = {"features": None, "matching": "features", "mapping": "matching",
                                      "undistort": "mapping", "mvs": "undistort", "fusion": "mvs",
                                      "mesh": "fusion", "splats": "undistort"}


def stages_needed(requested) -> tuple[str, ...]:
    """The requested stages and every stage they read from, in run order."""
    needed = set()
    for stage in requested:
        while stage is not None and stage not in needed:
            needed.add(stage)
            stage = STAGE_INPUT[stage]
    return tuple(s for s in STAGES if s in needed)


@dataclass
class JobOptions:
    quality: Quality = "balanced"
    sfm: SfmOptions = field(default_factory=SfmOptions)
    dense: DenseOptions = field(default_factory=DenseOptions)
    splats: SplatOptions = field(default_factory=SplatOptions)
    force: str | None = None
    """Rerun this stage and everything after it, even if cached."""

    @classmethod
    def from_dict(cls, data: dict) -> "JobOptions":
        """Build from plain data (protocol or CLI). A quality preset fills the
        fields that `data["sfm"]`, `data["dense"]` and `data["splats"]` do not
        set explicitly."""
        data = dict(data or {})
        quality = data.pop("quality", "balanced")
        if quality not in QUALITY_PRESETS:
            raise _bad("quality", quality, list(QUALITY_PRESETS))
        groups = {}
        for group, cls_ in (("sfm", SfmOptions), ("dense", DenseOptions), ("splats", SplatOptions)):
            values = {**QUALITY_PRESETS[quality][group], **dict(data.pop(group, None) or {})}
            known = {f.name for f in fields(cls_)}
            unknown = set(values) - known
            if unknown:
                raise ReconstructError(ErrorCode.BAD_OPTIONS,
                                       f"Unknown {group} option(s): {', '.join(sorted(unknown))}.",
                                       f"Known options: {', '.join(sorted(known))}.")
            groups[group] = cls_(**values)
        force = data.pop("force", None)
        if data:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"Unknown option(s): {', '.join(sorted(data))}.",
                                   "Check the option names against the README.")
        _validate(groups["sfm"])
        _validate_dense(groups["dense"])
        _validate_splats(groups["splats"])
        if force is not None and force not in STAGES:
            raise _bad("force", force, list(STAGES))
        return cls(quality=quality, force=force, **groups)

    def to_dict(self) -> dict:
        return asdict(self)


def _bad(name: str, value, allowed: list) -> ReconstructError:
    return ReconstructError(ErrorCode.BAD_OPTIONS, f"{name}={value!r} is not a valid choice.",
                            f"Use one of: {', '.join(map(str, allowed))}.")


def _validate(o: SfmOptions) -> None:
    if o.camera_model not in CAMERA_MODELS:
        raise _bad("camera_model", o.camera_model, list(CAMERA_MODELS))
    for name, allowed in (("matcher", Matcher), ("mapper", Mapper), ("device", Device),
                          ("sift_upsample", Upsample)):
        if getattr(o, name) not in allowed.__args__:
            raise _bad(name, getattr(o, name), list(allowed.__args__))
    if o.max_image_size < 64:
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"max_image_size={o.max_image_size} is too small.",
                               "Use at least 64 px (1000-3200 is typical).")
    if o.max_num_features < 100:
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"max_num_features={o.max_num_features} is too small.",
                               "Use at least 100 (4096-16384 is typical).")
    if o.undistort_max_size < 0:
        raise ReconstructError(ErrorCode.BAD_OPTIONS, "undistort_max_size must be 0 (full size) or positive.")


def _validate_dense(o: DenseOptions) -> None:
    from backend.roi import Box

    if o.device not in TorchDevice.__args__:
        raise _bad("dense device", o.device, list(TorchDevice.__args__))
    for name, low in (("max_image_size", 64), ("num_sources", 1), ("window_radius", 1), ("min_consistent", 1),
                      ("face_budget", 100)):
        if not isinstance(getattr(o, name), int) or getattr(o, name) < low:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"dense {name}={getattr(o, name)!r} is too small.",
                                   f"Use an integer of at least {low}.")
    if o.mesh_depth and not 5 <= o.mesh_depth <= 13:
        raise ReconstructError(ErrorCode.BAD_OPTIONS, f"mesh_depth={o.mesh_depth} is out of range.",
                               "Use 0 (automatic) or 5 to 13.")
    if o.roi is not None:
        Box.from_dict(o.roi)  # raises a BAD_OPTIONS error that says what is wrong


def _validate_splats(o: SplatOptions) -> None:
    for name, allowed in (("strategy", Strategy), ("device", TorchDevice)):
        if getattr(o, name) not in allowed.__args__:
            raise _bad(f"splats {name}", getattr(o, name), list(allowed.__args__))
    for name, low in (("steps", 1), ("max_image_size", 32), ("max_splats", 1000), ("holdout_every", 0)):
        if not isinstance(getattr(o, name), int) or getattr(o, name) < low:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"splats {name}={getattr(o, name)!r} is too small.",
                                   f"Use an integer of at least {low}.")
    if o.sh_degree not in (0, 1, 2, 3):
        raise _bad("splats sh_degree", o.sh_degree, [0, 1, 2, 3])
    if o.holdout_every == 1:
        raise ReconstructError(ErrorCode.BAD_OPTIONS, "splats holdout_every=1 would hold out every photo.",
                               "Use 0 (train on all photos) or 2 or more (8 is the usual).")
