"""What Set Up Backend installs on each kind of machine a user has, or what it
tells them when nothing can be installed: computed by one function, without
downloading anything."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from blender_addon.link import setup_backend
from blender_addon.link.install_plan import (Machine, env_name, parse_cuda_version, plan, shared_root, steps)

PY311 = (3, 11)


def _packages(p):
    return {pkg.requirement: pkg.index for pkg in p.packages}


def test_linux_with_a_cuda_12_driver_gets_torch_cu126_and_pycolmap_s_cuda_build():
    p = plan(Machine("linux", "x86_64", PY311, cuda=(12, 8)))
    assert p.ok
    assert _packages(p) == {"torch==2.13.0": "https://download.pytorch.org/whl/cu126",
                            "pycolmap-cuda12==4.2.1": None, "gsplat==1.5.3": None}
    assert any("nvcc" in n and "CPU rasteriser" in n for n in p.notes)


def test_linux_with_a_cuda_13_driver_gets_torch_cu130():
    for cuda in ((13, 0), (13, 2), (14, 1)):
        p = plan(Machine("linux", "x86_64", PY311, cuda=cuda))
        assert _packages(p)["torch==2.13.0"] == "https://download.pytorch.org/whl/cu130"
        assert "pycolmap-cuda12==4.2.1" in _packages(p)


def test_an_old_driver_gets_the_cpu_build_and_is_told_to_update_it():
    p = plan(Machine("linux", "x86_64", PY311, cuda=(12, 4)))
    assert _packages(p)["torch==2.13.0"] == "https://download.pytorch.org/whl/cpu"
    assert any("CUDA 12.4" in n and "Update the NVIDIA driver" in n for n in p.notes)


def test_linux_without_a_gpu_gets_the_cpu_index_not_the_3_gb_default():
    p = plan(Machine("linux", "x86_64", PY311))
    assert _packages(p) == {"torch==2.13.0": "https://download.pytorch.org/whl/cpu", "pycolmap==4.2.1": None,
                            "gsplat==1.5.3": None}
    assert p.summary.startswith("torch CPU")


def test_windows_with_nvidia_gets_a_cuda_torch_and_the_cpu_pycolmap():
    p = plan(Machine("windows", "amd64", PY311, cuda=(13, 1)))
    assert _packages(p) == {"torch==2.13.0": "https://download.pytorch.org/whl/cu130", "pycolmap==4.2.1": None,
                            "gsplat==1.5.3": None}
    assert any("no CUDA build for Windows" in n for n in p.notes)


def test_windows_without_a_gpu_uses_the_default_index_whose_torch_is_the_cpu_one():
    p = plan(Machine("windows", "amd64", PY311))
    assert _packages(p) == {"torch==2.13.0": None, "pycolmap==4.2.1": None, "gsplat==1.5.3": None}


def test_macos_14_on_apple_silicon_installs_from_the_default_index():
    p = plan(Machine("darwin", "arm64", PY311, os_version=(14, 5)))
    assert _packages(p) == {"torch==2.13.0": None, "pycolmap==4.2.1": None, "gsplat==1.5.3": None}


@pytest.mark.parametrize("machine, words", [
    (Machine("darwin", "arm64", PY311, os_version=(13, 6)), ["macOS 13.6", "macOS 14", "Update macOS"]),
    (Machine("darwin", "x86_64", PY311, os_version=(15, 0)), ["Intel Macs"]),
    (Machine("linux", "aarch64", PY311), ["ARM", "pycolmap 4.2.1"]),
    (Machine("windows", "arm64", PY311), ["ARM"]),
    (Machine("linux", "x86_64", (3, 9)), ["Python 3.9", "3.10 to 3.14", "Base Python"]),
])
def test_where_nothing_can_be_installed_the_plan_says_why_and_what_to_do(machine, words):
    p = plan(machine)
    assert not p.ok and not p.packages
    for word in words:
        assert word in p.refusal
    assert "another machine" in p.refusal  # a remote backend


def test_pythons_from_3_10_to_3_14_are_planned():
    for minor in range(10, 15):
        assert plan(Machine("linux", "x86_64", (3, minor))).ok


def test_the_commands_use_uv_when_it_is_there_and_pip_otherwise():
    p = plan(Machine("linux", "x86_64", PY311, cuda=(13, 0)))
    reqs = ["numpy>=1.24", "pycolmap>=4.2,<5", "torch>=2.1", "gsplat>=1.5.3,<2", "msgpack>=1.0"]
    pip = steps(p, "/env/bin/python", "/src", reqs)
    assert [s.command[:4] for s in pip][0] == ["/env/bin/python", "-m", "pip", "install"]
    torch = pip[1].command
    assert torch[-3:] == ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cu130"]
    assert "--progress-bar" in torch
    rest = pip[2].command
    # The plan's pins replace the backend's own ranges; pycolmap-cuda12 stands in for pycolmap.
    assert {"torch==2.13.0", "pycolmap-cuda12==4.2.1", "gsplat==1.5.3", "numpy>=1.24", "msgpack>=1.0"} <= set(rest)
    assert not [r for r in rest if r.startswith(("pycolmap>", "torch>", "gsplat>"))]
    assert pip[-1].command[-3:] == ["--no-deps", "--force-reinstall", "/src"]
    uv = steps(p, "/env/bin/python", "/src", reqs, uv="/usr/bin/uv")
    assert all(s.command[:5] == ["/usr/bin/uv", "pip", "install", "--python", "/env/bin/python"] for s in uv)
    assert len(uv) == len(pip) - 1  # no pip to update
    # The index can be overridden: "" is the default index (what this test machine can reach).
    assert "--index-url" not in steps(p, "/env/bin/python", "/src", reqs, torch_index="")[1].command


def test_nvidia_smi_s_cuda_version_is_read():
    out = "| NVIDIA-SMI 550.54.14   Driver Version: 550.54.14   CUDA Version: 12.4     |"
    assert parse_cuda_version(out) == (12, 4)
    assert parse_cuda_version("NVIDIA-SMI has failed because it couldn't communicate with the driver") is None


def test_the_environment_lives_outside_blender_s_per_version_folders():
    home = Path("/home/ann")
    assert shared_root("linux", {}, home) == home / ".local/share/reconstruct"
    assert shared_root("linux", {"XDG_DATA_HOME": "/data"}, home) == Path("/data/reconstruct")
    assert shared_root("darwin", {}, home) == home / "Library/Application Support/Reconstruct"
    assert shared_root("windows", {"LOCALAPPDATA": "C:/Users/ann/AppData/Local"}, home) == \
        Path("C:/Users/ann/AppData/Local/Reconstruct")
    assert shared_root("linux", {"RECONSTRUCT_HOME": "/x"}, home) == Path("/x")
    assert env_name((3, 11)) == "py311"


def test_windows_paths_stay_under_260_characters():
    """The longest file in torch's wheel (the CPU one on disk; the CUDA ones' "+cu130" is a character
    longer) below a Windows user folder with a 20-character name (Windows' longest) and an 8-character one."""
    wheels = sorted(Path("/opt/wheels").glob("torch-2.13.0*.whl"))
    if not wheels:
        pytest.skip("no torch wheel on disk to read its file names from")
    with zipfile.ZipFile(wheels[0]) as zf:
        longest = max(len(n) for n in zf.namelist()) + 1
    for user, limit in ((20, 260), (8, 245)):
        root = shared_root("windows", {"LOCALAPPDATA": "C:\\Users\\" + "u" * user + "\\AppData\\Local"}, Path("."))
        site = str(root).replace("/", "\\") + "\\" + env_name((3, 11)) + "\\Lib\\site-packages\\"
        assert len(site) + longest < limit, (len(site), longest)


def test_pip_s_and_uv_s_output_becomes_which_package_and_how_much():
    s = setup_backend.SetupState()
    setup_backend.parse_progress("Collecting torch==2.13.0", s)
    assert s.package == "torch"
    setup_backend.parse_progress("  Downloading torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl (191.8 MB)", s)
    assert (s.package, s.size) == ("torch", "191.8 MB")
    assert not setup_backend.parse_progress("Progress 52428800 of 191794682", s)  # counted, not logged
    assert (s.done_bytes, s.total_bytes) == (52428800, 191794682)
    setup_backend.parse_progress("Downloading pycolmap-cuda12 (38.2MiB)", s)  # uv
    assert (s.package, s.size, s.total_bytes) == ("pycolmap-cuda12", "38.2MiB", 0)
    setup_backend.parse_progress("Installing collected packages: torch", s)
    assert s.package == "installing"
    assert setup_backend.parse_progress("random text (not progress)", s)
