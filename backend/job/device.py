"""What this backend runs on (for the handshake and summary.json), which torch
device a stage takes, and how much memory it used.

Three stages can use a GPU, each for its own reason: features/matching
(pycolmap's GPU SIFT, only in a CUDA build of pycolmap), dense stereo (torch
on CUDA) and splats (torch on CUDA *and* gsplat's CUDA kernels). stage_devices
says, per stage, where it will run and why, in a user's words; choose_device
is what a stage calls, and falls back to the CPU with a warning where CUDA is
there but unusable."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from blender_addon.shared.protocol import __version__

if TYPE_CHECKING:
    import torch

_PACKAGES = ("pycolmap", "numpy", "torch", "gsplat", "trimesh", "msgpack", "pillow")


_REQUIRED = {"pycolmap": "pycolmap", "numpy": "numpy", "PIL": "pillow", "torch": "torch", "gsplat": "gsplat",
             "scipy": "scipy"}  # import name -> package

GPU_STAGES = ("features", "dense", "splats")

SIMULATE_ENV = "RECONSTRUCT_SIMULATE"
"""A simulation hook for tests, read only here: a CUDA machine cannot be had
where the tests run. Comma-separated: "cuda" makes the probe act as if torch
saw a CUDA GPU; "no-gsplat-kernels" as if gsplat had no CUDA kernels and no
way to build them. Nothing else in the backend reads it, so every consequence
(the handshake, the stage's fallback and warning) is the real code's."""

SIMULATED_GPU = "Simulated CUDA GPU"

Device = Literal["cuda", "cpu"]
Warn = Callable[[str, str], None]


@dataclass(frozen=True)
class StageDevice:
    """Where one stage will run, and why."""

    device: Device
    reason: str
    """In a user's words: the GPU's name on CUDA; on the CPU, why not CUDA and what would change it."""
    fallback: bool = False
    """A CUDA GPU is there but this stage cannot use it (the stage warns when it runs)."""

    def line(self, stage: str) -> str:
        """"splats: CUDA (NVIDIA ...)" or "splats: CPU, because ..."."""
        return f"{stage}: CUDA ({self.reason})" if self.device == "cuda" else f"{stage}: CPU, {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


def missing_packages() -> list[str]:
    """Packages the pipeline cannot run without that are not installed."""
    from importlib.util import find_spec

    return [package for module, package in _REQUIRED.items() if find_spec(module) is None]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"backend": __version__}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_device() -> dict:
    """The compute device: a CUDA GPU when torch sees one, else the CPU.
    Imports torch (about a second), so callers do it once."""
    info = {"type": "cpu", "name": "CPU", "sift_gpu": False}
    try:
        import pycolmap

        info["sift_gpu"] = bool(pycolmap.has_cuda)
    except ImportError:
        pass
    gpu, _ = _torch_gpu()
    if gpu is not None:
        info.update(type="cuda", name=gpu)
    else:
        import platform

        info["name"] = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return info


def stage_devices(requested: str = "auto") -> dict[str, StageDevice]:
    """Where each stage that can use a GPU will run with the device setting
    `requested` ("auto", "cuda" or "cpu"), and why. Never compiles or
    initialises anything slow: gsplat's kernels are judged from the files and
    tools they would be loaded or built from (choose_device tries them for real
    when the stage runs)."""
    if requested == "cpu":
        cpu = StageDevice("cpu", "as the device setting asks")
        return {stage: cpu for stage in GPU_STAGES}
    gpu, no_gpu = _torch_gpu()
    return {"features": _features_device(gpu), "dense": _dense_device(gpu, no_gpu),
            "splats": _splats_device(gpu, no_gpu)}


def choose_device(name: str, what: str = "dense", warn: Warn | None = None) -> "torch.device":
    """The torch device for a stage ("dense", "splats"; "splat render" counts
    as splats). Where CUDA is seen but this stage cannot use it: with "auto",
    the CPU and a warning through `warn(code, message)`; with "cuda", an error
    that names the cause."""
    import torch

    if name == "cpu":
        return torch.device("cpu")
    stage = "splats" if what.startswith("splat") else "dense"
    gpu, no_gpu = _torch_gpu()
    chosen = _splats_device(gpu, no_gpu) if stage == "splats" else _dense_device(gpu, no_gpu)
    if chosen.device == "cuda":
        failure = _cuda_failure(stage)
        if failure is None:
            return torch.device("cuda")
        chosen = StageDevice("cpu", f"because {failure}", fallback=True)
    if name == "cuda":
        from backend.errors import ErrorCode, ReconstructError

        raise ReconstructError(ErrorCode.STAGE_FAILED, f"The {what} device 'cuda' was asked for, but {what} "
                               f"cannot run on CUDA: {chosen.reason.removeprefix('because ')}.",
                               f"Set the {what} device to Auto or CPU to run it on the CPU (slower), or fix "
                               f"the cause above.", {"stage": stage, "reason": chosen.reason})
    if chosen.fallback:
        label = {"dense": "Dense stereo", "splats": "Splat training"}.get(what, what.capitalize())
        message = f"{label} runs on the CPU (slower) although a CUDA GPU is there, {chosen.reason}."
        (warn or (lambda code, text: print(text, file=sys.stderr)))("cuda_unusable", message)
    return torch.device("cpu")


def memory_peak(device=None) -> dict:
    """The worker process's peak resident memory so far (it runs every stage
    of a job, so this covers the stages before too), and CUDA's peak."""
    import resource

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device is not None and device.type == "cuda":
        import torch

        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


# -- probes -----------------------------------------------------------------------


def _simulated() -> set[str]:
    return {token.strip() for token in os.environ.get(SIMULATE_ENV, "").split(",") if token.strip()}


def _torch_gpu() -> tuple[str | None, str]:
    """(the CUDA GPU torch sees, or None; why not, in a user's words)."""
    if "cuda" in _simulated():
        return f"{SIMULATED_GPU} ({SIMULATE_ENV})", ""
    try:
        import torch
    except ImportError:
        return None, "because torch is not installed: press Set Up Backend"
    if torch.version.cuda is None and torch.version.hip is None:
        return None, (f"because this torch ({torch.__version__}) is a CPU-only build: on a machine with an "
                      f"NVIDIA GPU, Set Up Backend installs its CUDA build")
    if not torch.cuda.is_available():
        return None, (f"no CUDA GPU visible to torch (no NVIDIA GPU, or a driver older than torch's "
                      f"CUDA {torch.version.cuda} needs)")
    return torch.cuda.get_device_name(0), ""


def _features_device(gpu: str | None) -> StageDevice:
    try:
        import pycolmap
    except ImportError:
        return StageDevice("cpu", "because pycolmap is not installed: press Set Up Backend")
    if pycolmap.has_cuda:
        return StageDevice("cuda", f"pycolmap's GPU SIFT{f' on {gpu}' if gpu else ''}")
    return StageDevice("cpu", "because this pycolmap build has no CUDA (GPU SIFT needs pycolmap's CUDA build, "
                       "on Linux)", fallback=gpu is not None)


def _dense_device(gpu: str | None, no_gpu: str) -> StageDevice:
    return StageDevice("cuda", gpu) if gpu else StageDevice("cpu", no_gpu)


def _splats_device(gpu: str | None, no_gpu: str) -> StageDevice:
    if gpu is None:
        return StageDevice("cpu", no_gpu)
    missing = _gsplat_kernels_missing()
    if missing:
        return StageDevice("cpu", f"because {missing}", fallback=True)
    return StageDevice("cuda", gpu)


def _toolkit_advice() -> str:
    try:
        import torch

        major = (torch.version.cuda or "12").split(".")[0]
    except ImportError:
        major = "12"
    return f"install the CUDA toolkit {major}.x (nvcc) or a prebuilt gsplat wheel"


def _gsplat_kernels_missing() -> str | None:
    """Why gsplat cannot load CUDA kernels, or None when it can: mirrors
    gsplat 1.5's cuda/_backend.py, which loads a prebuilt `gsplat.csrc`, else
    JIT-builds `gsplat_cuda` with torch.utils.cpp_extension (reusing an earlier
    build) when it finds nvcc, else prints "No CUDA toolkit found" and leaves
    its kernels None. Importing that module would start the build, so this
    only looks at files and tools."""
    if "no-gsplat-kernels" in _simulated():
        return f"gsplat has no CUDA kernels: {_toolkit_advice()}"
    from importlib.machinery import EXTENSION_SUFFIXES
    from importlib.util import find_spec

    spec = find_spec("gsplat")
    if spec is None or not spec.submodule_search_locations:
        return "gsplat is not installed: press Set Up Backend"
    package = Path(next(iter(spec.submodule_search_locations)))
    if any(p.name.startswith("csrc.") and p.name.endswith(tuple(EXTENSION_SUFFIXES)) for p in package.iterdir()):
        return None  # a wheel with prebuilt kernels
    if _nvcc() is None:
        return f"gsplat has no CUDA kernels and no CUDA toolkit to build them: {_toolkit_advice()}"
    if _jit_build_exists():
        return None
    compiler = "cl" if os.name == "nt" else os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return (f"gsplat has no CUDA kernels and no C++ compiler ({compiler}) to build them: install "
                f"{'Visual Studio Build Tools and run from its prompt' if os.name == 'nt' else 'g++'} or a "
                f"prebuilt gsplat wheel")
    return None  # they build on the first run (a few minutes)


def _nvcc() -> str | None:
    """nvcc where torch.utils.cpp_extension's _find_cuda_home looks for it."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and os.name == "nt":
        homes = sorted(Path("C:/Program Files/NVIDIA GPU Computing Toolkit/CUDA").glob("v*.*"))
        home = str(homes[0]) if homes else None
    candidates = [Path(home, "bin", "nvcc.exe" if os.name == "nt" else "nvcc")] if home else []
    on_path = shutil.which("nvcc")
    if on_path:
        candidates.append(Path(on_path))
    if home is None and os.name != "nt":
        candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    return next((str(c) for c in candidates if c.is_file()), None)


def _jit_build_exists() -> bool:
    """gsplat's earlier JIT build, where torch's _get_build_directory puts it
    (computed here: that function creates the folder)."""
    import torch

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root

        accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else
                       f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
        version = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{version}_{accelerator}")
    build = Path(root, "gsplat_cuda")
    return (build / "gsplat_cuda.so").exists() or (build / "gsplat_cuda.lib").exists()


def _cuda_failure(stage: str) -> str | None:
    """Why CUDA, which the probe found, fails when this stage really uses it
    (None when it works). For splats this loads gsplat's kernels, building
    them if that is what gsplat does on a first run."""
    import torch

    try:
        torch.zeros(1, device="cuda")
    except Exception as exc:  # torch raises RuntimeError, AssertionError, ... for a CUDA that does not start
        return f"CUDA did not start ({_first_line(exc)})"
    if stage != "splats":
        return None
    try:
        from gsplat.cuda._backend import _C
    except Exception as exc:  # a failed build raises whatever the compiler step raised
        return f"gsplat's CUDA kernels failed to build ({_first_line(exc)}): {_toolkit_advice()}"
    return None if _C is not None else f"gsplat has no CUDA kernels: {_toolkit_advice()}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
