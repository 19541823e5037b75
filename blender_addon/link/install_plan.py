"""What 'Set Up Backend' installs on this machine: a pure function from the
platform, the Python and the NVIDIA driver to a pinned package list (or a
refusal in plain words), and the commands that install it. No bpy."""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

OS = Literal["linux", "windows", "darwin"]

TORCH = "2.13.0"  # the version the project's tests run
PYCOLMAP = "4.2.1"
GSPLAT = "1.5.3"
PIP = "pip>=24.1"  # 24.1 added --progress-bar raw, which the progress display reads

# torch 2.13's CUDA builds (PyTorch's RELEASE.md): 12.6 (legacy, the last with pre-Turing GPUs),
# 13.0 (stable, also what PyPI's Linux wheel is built with) and 13.2 (experimental). We take
# the newest *stable* build the driver can run; 12.8 is not built for 2.13.
#   driver's "CUDA Version" (nvidia-smi)   torch index
#   >= 13.0                                 cu130
#   12.6 .. 12.x                            cu126
#   < 12.6                                  CPU build, with a note to update the driver
TORCH_CUDA_BUILDS = ((13, 0), (12, 6))
TORCH_INDEX = "https://download.pytorch.org/whl/"
# Pythons that both pycolmap 4.2.1 and torch 2.13 ship wheels for (pip download --only-binary
# for each: cp310..cp314 on Linux x86_64, Windows x64 and macOS 14 arm64). Blender 4.2-5.0 ship 3.11.
PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13), (3, 14))

# Where nothing can be installed the user should hear what to do rather than read pip's error.
ELSEWHERE = "You can run the backend on another machine and point 'Backend Python' at it, or use a supported one."


@dataclass(frozen=True)
class Machine:
    os: OS
    arch: str  # platform.machine(), lower case: x86_64/amd64, arm64/aarch64
    python: tuple[int, int]
    os_version: tuple[int, ...] = ()  # macOS only: (14, 5)
    cuda: tuple[int, int] | None = None  # the driver's "CUDA Version" from nvidia-smi; None: no NVIDIA GPU


@dataclass(frozen=True)
class Package:
    requirement: str  # "torch==2.13.0"
    index: str | None = None  # None: the default index (PyPI, or what pip/uv are configured with)
    label: str = ""  # what the progress says: "torch 2.13.0 (CUDA 13.0 build, about 3 GB)"


@dataclass(frozen=True)
class InstallPlan:
    packages: tuple[Package, ...] = ()
    notes: tuple[str, ...] = ()
    refusal: str = ""  # non-empty: nothing can be installed here, and why, and what to do
    summary: str = ""  # one line: "torch CUDA 13.0, pycolmap CUDA, gsplat"

    @property
    def ok(self) -> bool:
        return not self.refusal


def _refuse(message: str) -> InstallPlan:
    return InstallPlan(refusal=f"{message} {ELSEWHERE}")


def _torch_build(m: Machine) -> tuple[str, str | None, str, str | None]:
    """(torch index, summary, label, note) for this machine."""
    if m.os == "darwin":
        return "", "torch (Apple GPU)", f"torch {TORCH} (about 80 MB)", None
    if m.cuda is not None:
        for build in TORCH_CUDA_BUILDS:
            if m.cuda >= build:
                tag = f"cu{build[0]}{build[1]}"
                name = f"CUDA {build[0]}.{build[1]}"
                return (TORCH_INDEX + tag, f"torch {name}", f"torch {TORCH} ({name} build, about 3 GB)", None)
        driver = f"{m.cuda[0]}.{m.cuda[1]}"
        note = (f"Your NVIDIA driver supports CUDA {driver}; torch {TORCH} needs 12.6 or newer, so the backend "
                "runs on the CPU. Update the NVIDIA driver (version 560 or newer) and press Set Up Backend again "
                "to use the GPU.")
    else:
        note = None
    # Linux's default index serves a 3 GB CUDA build even without a GPU; PyPI's Windows wheel is the CPU one.
    index = TORCH_INDEX + "cpu" if m.os == "linux" else ""
    return index, "torch CPU", f"torch {TORCH} (CPU build, about 200 MB)", note


def plan(m: Machine) -> InstallPlan:
    """The pinned, tested set for this machine, or why there is none."""
    arch = {"amd64": "x86_64", "aarch64": "arm64"}.get(m.arch, m.arch)
    if m.os == "darwin":
        if arch != "arm64":
            return _refuse("Intel Macs are not supported: torch and pycolmap no longer publish packages for them.")
        if m.os_version[:1] < (14,):
            version = ".".join(map(str, m.os_version)) or "older than 14"
            return _refuse(f"macOS {version} is not supported: torch {TORCH} and pycolmap {PYCOLMAP} need "
                           "macOS 14 (Sonoma) or newer. Update macOS, then press Set Up Backend again.")
    elif arch != "x86_64":
        return _refuse(f"{'Linux' if m.os == 'linux' else 'Windows'} on ARM ({m.arch}) is not supported: "
                       f"pycolmap {PYCOLMAP} publishes no packages for it.")
    if m.python not in PYTHONS:
        have = ".".join(map(str, m.python))
        return _refuse(f"Python {have} is not supported: pycolmap {PYCOLMAP} and torch {TORCH} publish packages "
                       f"for Python 3.10 to 3.14. Set 'Base Python' to one of those (Blender 4.2 to 5.0 ship 3.11).")
    index, torch_summary, torch_label, torch_note = _torch_build(m)
    notes = [torch_note] if torch_note else []
    gpu_torch = torch_summary.startswith("torch CUDA")
    # pycolmap's CUDA build (GPU SIFT and matching) exists for Linux only and needs a CUDA 12 driver.
    cuda_colmap = m.os == "linux" and m.cuda is not None and m.cuda >= (12, 0)
    colmap = f"pycolmap-cuda12=={PYCOLMAP}" if cuda_colmap else f"pycolmap=={PYCOLMAP}"
    if m.os == "windows" and m.cuda is not None:
        notes.append("pycolmap has no CUDA build for Windows: features and matching run on the CPU.")
    if gpu_torch:
        notes.append(f"gsplat {GSPLAT} compiles its CUDA kernels on first use: that needs the CUDA toolkit "
                     "(nvcc) and a C++ compiler (gcc, or Visual Studio on Windows). Without them the splats "
                     "train on the CPU rasteriser, slowly.")
    else:
        notes.append("Splats train on the CPU rasteriser (gsplat's CUDA kernels need an NVIDIA GPU): expect minutes "
                     "to hours per job.")
    packages = (
        Package(f"torch=={TORCH}", index or None, torch_label),
        Package(colmap, None, f"pycolmap {PYCOLMAP}" + (" (CUDA build)" if cuda_colmap else "")),
        Package(f"gsplat=={GSPLAT}", None, f"gsplat {GSPLAT}"),
    )
    summary = f"{torch_summary}, pycolmap {'CUDA' if cuda_colmap else 'CPU'}, gsplat {GSPLAT}"
    return InstallPlan(packages=packages, notes=tuple(notes), summary=summary)


@dataclass(frozen=True)
class Step:
    title: str  # what the progress shows
    command: list[str] = field(default_factory=list)


def installer_prefix(python: str, uv: str | None) -> list[str]:
    """`uv pip install --python PY` when uv is there (resolves and downloads much faster), else pip."""
    return [uv, "pip", "install", "--python", python] if uv else [python, "-m", "pip", "install"]


def steps(p: InstallPlan, python: str, backend: str, backend_requirements: list[str],
          uv: str | None = None, torch_index: str | None = None) -> list[Step]:
    """The commands that install plan `p` into the environment whose interpreter is `python`.

    `backend_requirements` are the backend's own dependencies (its pyproject's); the plan's pins
    replace those of the same name. The backend itself goes in with --no-deps: pycolmap-cuda12
    provides the `pycolmap` module under another name, and pip would otherwise add the CPU one
    over it. `torch_index` overrides the plan's torch index ("" = the default index)."""
    install = installer_prefix(python, uv)
    progress = [] if uv else ["--progress-bar", "raw"]
    torch, *rest = p.packages
    index = torch.index if torch_index is None else (torch_index or None)
    pinned = {_name(pkg.requirement) for pkg in p.packages} | {"pycolmap"}
    others = [r for r in backend_requirements if _name(r) not in pinned]
    out = [] if uv else [Step("Updating pip", [python, "-m", "pip", "install", "--upgrade", PIP])]
    out.append(Step(f"Installing {torch.label}", [*install, *progress, torch.requirement,
                                                  *(["--index-url", index] if index else [])]))
    # torch is repeated so that nothing resolved here replaces the build just installed.
    out.append(Step("Installing " + ", ".join(pkg.label for pkg in rest) + " and the backend's other packages",
                    [*install, *progress, torch.requirement, *(pkg.requirement for pkg in rest), *others]))
    # Reinstalled every time: an update may keep the version number of the one installed.
    out.append(Step("Installing the backend", [*install, "--no-deps", "--reinstall" if uv else "--force-reinstall",
                                               backend]))
    return out


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


# Detection -------------------------------------------------------------------------------------

def detect(gpu: bool = True) -> Machine:
    """This machine, as plan() needs it. A missing or failing nvidia-smi means no NVIDIA GPU;
    gpu=False skips it (the platform's own refusals do not depend on the GPU)."""
    system = {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")
    mac = tuple(int(x) for x in platform.mac_ver()[0].split(".") if x.isdigit()) if system == "darwin" else ()
    return Machine(os=system, arch=platform.machine().lower(), python=sys.version_info[:2], os_version=mac,
                   cuda=driver_cuda() if gpu and system != "darwin" else None)


def driver_cuda() -> tuple[int, int] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_cuda_version(out)


def parse_cuda_version(nvidia_smi: str) -> tuple[int, int] | None:
    match = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", nvidia_smi)
    return (int(match[1]), int(match[2])) if match else None


def uv_on_path() -> str | None:
    return shutil.which("uv")


# Where the environment lives ---------------------------------------------------------------------

def shared_root(system: OS, environ: Mapping[str, str], home: Path) -> Path:
    """Outside Blender's per-version folders, so every Blender finds the one environment.
    RECONSTRUCT_HOME overrides it. Short on Windows, which refuses paths over 260 characters:
    torch's deepest file (a licence in its dist-info) is 172 characters below site-packages, so
    C:/Users/<20 characters>/AppData/Local/Reconstruct/py311/Lib/site-packages/ comes to 252
    at worst (an 8-character user name: 240); Blender's per-version folder left 258."""
    if environ.get("RECONSTRUCT_HOME"):
        return Path(environ["RECONSTRUCT_HOME"])
    if system == "windows":
        return Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "Reconstruct"
    if system == "darwin":
        return home / "Library" / "Application Support" / "Reconstruct"
    return Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "reconstruct"


def env_name(python: tuple[int, int]) -> str:
    """A virtual environment belongs to one Python minor version: Blenders that share it share the environment."""
    return f"py{python[0]}{python[1]}"
