"""What this backend runs on (for the handshake and summary.json), which torch
device a stage takes, and how much memory it used."""
from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

from blender_addon.shared.protocol import __version__

if TYPE_CHECKING:
    import torch

_PACKAGES = ("pycolmap", "numpy", "torch", "gsplat", "trimesh", "msgpack", "pillow")


_REQUIRED = {"pycolmap": "pycolmap", "numpy": "numpy", "PIL": "pillow", "torch": "torch", "gsplat": "gsplat",
             "scipy": "scipy"}  # import name -> package


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
    try:
        import torch

        if torch.cuda.is_available():
            info.update(type="cuda", name=torch.cuda.get_device_name(0))
    except ImportError:
        pass
    if info["type"] == "cpu":
        import os
        import platform

        info["name"] = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
    return info


def choose_device(name: str, what: str = "dense") -> "torch.device":
    import torch

    if name == "cpu" or not torch.cuda.is_available():
        if name == "cuda":
            raise RuntimeError(f"{what} device 'cuda' was asked for, but torch sees no CUDA GPU")
        return torch.device("cpu")
    return torch.device("cuda")


def memory_peak(device=None) -> dict:
    """The worker process's peak resident memory so far (it runs every stage
    of a job, so this covers the stages before too), and CUDA's peak."""
    import resource

    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device is not None and device.type == "cuda":
        import torch

        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak
