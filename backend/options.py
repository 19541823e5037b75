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
    single_camera: bool = False
    """All photos share one camera (same body, lens and zoom)."""
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


QUALITY_PRESETS: dict[str, dict] = {
    "fast": {"max_image_size": 1024, "max_num_features": 4096},
    "balanced": {"max_image_size": 2000, "max_num_features": 8192},
    "high": {"max_image_size": 3200, "max_num_features": 16384},
}

# Stage -> SfmOptions fields its output depends on. A stage reruns when these
# (or anything upstream) change; fields listed nowhere change no result.
STAGE_OPTION_FIELDS: dict[str, tuple[str, ...]] = {
    "features": ("max_image_size", "max_num_features", "camera_model", "single_camera"),  # + first octave
    "matching": ("matcher",),
    "mapping": ("mapper",),
    "undistort": ("undistort_max_size",),
}
SFM_STAGES = tuple(STAGE_OPTION_FIELDS)


@dataclass
class JobOptions:
    quality: Quality = "balanced"
    sfm: SfmOptions = field(default_factory=SfmOptions)
    force: str | None = None
    """Rerun this stage and everything after it, even if cached."""

    @classmethod
    def from_dict(cls, data: dict) -> "JobOptions":
        """Build from plain data (protocol or CLI). A quality preset fills the
        SfM fields that `data["sfm"]` does not set explicitly."""
        data = dict(data or {})
        quality = data.pop("quality", "balanced")
        if quality not in QUALITY_PRESETS:
            raise _bad("quality", quality, list(QUALITY_PRESETS))
        sfm_data = {**QUALITY_PRESETS[quality], **dict(data.pop("sfm", None) or {})}
        force = data.pop("force", None)
        if data:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"Unknown option(s): {', '.join(sorted(data))}.",
                                   "Check the option names against the README.")
        known = {f.name for f in fields(SfmOptions)}
        unknown = set(sfm_data) - known
        if unknown:
            raise ReconstructError(ErrorCode.BAD_OPTIONS, f"Unknown SfM option(s): {', '.join(sorted(unknown))}.",
                                   f"Known options: {', '.join(sorted(known))}.")
        sfm = SfmOptions(**sfm_data)
        _validate(sfm)
        if force is not None and force not in SFM_STAGES:
            raise _bad("force", force, list(SFM_STAGES))
        return cls(quality=quality, sfm=sfm, force=force)

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
