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


QUALITY_PRESETS: dict[str, dict[str, dict]] = {
    "fast": {"sfm": {"max_image_size": 1024, "max_num_features": 4096},
             "dense": {"max_image_size": 800, "face_budget": 100_000}},
    "balanced": {"sfm": {"max_image_size": 2000, "max_num_features": 8192},
                 "dense": {"max_image_size": 1600, "face_budget": 300_000}},
    "high": {"sfm": {"max_image_size": 3200, "max_num_features": 16384},
             "dense": {"max_image_size": 3200, "face_budget": 1_000_000}},
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
}
STAGES = tuple(STAGE_OPTIONS)
SFM_STAGES = STAGES[:STAGES.index("undistort") + 1]
DENSE_STAGES = STAGES[len(SFM_STAGES):]


@dataclass
class JobOptions:
    quality: Quality = "balanced"
    sfm: SfmOptions = field(default_factory=SfmOptions)
    dense: DenseOptions = field(default_factory=DenseOptions)
    force: str | None = None
    """Rerun this stage and everything after it, even if cached."""

    @classmethod
    def from_dict(cls, data: dict) -> "JobOptions":
        """Build from plain data (protocol or CLI). A quality preset fills the
        fields that `data["sfm"]` and `data["dense"]` do not set explicitly."""
        data = dict(data or {})
        quality = data.pop("quality", "balanced")
        if quality not in QUALITY_PRESETS:
            raise _bad("quality", quality, list(QUALITY_PRESETS))
        groups = {}
        for group, cls_ in (("sfm", SfmOptions), ("dense", DenseOptions)):
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
