"""Shared fixtures. Third-party photo sets are read from ../shared/data (never
copied into the repo); tests that need one skip with a clear reason when it
is absent."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RECONSTRUCT_DATA", REPO.parent / "shared" / "data"))
CACHE = REPO / ".cache" / "tests"
# The backend's Python. The add-on's tests also run under older Blenders (bpy 4.2, 4.5: see the
# Makefile), in an environment of their own, as Blender's Python would; the backend they start
# then runs in the project's environment, as a user's runs in the one Set Up Backend made.
BACKEND_PYTHON = os.environ.get("RECONSTRUCT_BACKEND_PYTHON") or sys.executable


def dataset(name: str) -> Path:
    path = DATA / name
    if not (path / "images").is_dir():
        message = f"photo set {name} not found at {path} (set RECONSTRUCT_DATA to the shared data folder)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": CI must have the data", pytrace=False)  # a green CI without the data means nothing
        pytest.skip(message)
    return path


def run_backend(*args: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m backend ...` as a user would, from the repo root."""
    proc = subprocess.run([BACKEND_PYTHON, "-m", "backend", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"backend failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


RUNS = CACHE / "runs"


def reusable_run(name: str, tmp_path_factory, make) -> Path:
    """A workspace made by `make(ws)`, for tests that only read it. The suite's own run always
    makes it afresh and keeps a copy in RUNS; the add-on's runs under older Blenders
    (tests/every_blender.py sets RECONSTRUCT_REUSE_RUNS) work on a copy of that one, as the
    backend's results do not depend on the Blender that shows them."""
    ws = tmp_path_factory.mktemp(name) / "ws"
    kept = RUNS / name
    if os.environ.get("RECONSTRUCT_REUSE_RUNS") and (kept / ".complete").is_file():
        shutil.copytree(kept, ws, ignore=shutil.ignore_patterns(".complete"))
        return ws
    make(ws)
    if not os.environ.get("RECONSTRUCT_REUSE_RUNS"):
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(ws, kept)
        (kept / ".complete").touch()
    return ws


@pytest.fixture(scope="session")
def temple() -> Path:
    return dataset("middlebury_temple_sparse_ring")


@pytest.fixture(scope="session")
def temple_run(temple, tmp_path_factory) -> Path:
    """One run on the temple set (640x480, incremental, defaults) through the
    mesh (no splats), shared by tests that only read its workspace."""
    return reusable_run("temple", tmp_path_factory, lambda ws: run_backend(
        "run", temple / "images", "--workspace", ws, "--stages", "mesh", check=True))


def copy_photos(src: Path, dst: Path, names: list[str] | None = None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if names is None or p.name in names:
            shutil.copy2(p, dst / p.name)
    return dst


@pytest.fixture(scope="session")
def sceaux_run(tmp_path_factory) -> Path:
    """Sceaux Castle (EXIF focal on every photo) through mapping, SIFT at 1000 px."""
    ws = tmp_path_factory.mktemp("sceaux") / "ws"
    run_backend("run", dataset("sceaux_castle") / "images", "--workspace", ws, "--max-image-size", "1000",
                "--stages", "mapping", check=True)
    return ws


@pytest.fixture(scope="session")
def fountain() -> Path:
    return dataset("strecha_fountain_p11")


@pytest.fixture(scope="session")
def fountain_run(fountain, tmp_path_factory) -> Path:
    """fountain-P11 cameras with SIFT at 1000 px (photos are 3072x2048) and
    undistorted images at 1000 px: the size the tests use for speed."""
    return reusable_run("fountain", tmp_path_factory, lambda ws: run_backend(
        "run", fountain / "images", "--workspace", ws, "--max-image-size", "1000",
        "--undistort-max-size", "1000", "--stages", "undistort", check=True))


@pytest.fixture(scope="session")
def fountain_mesh_run(fountain, fountain_run, tmp_path_factory) -> Path:
    """fountain-P11 (the shared run's cameras, photos at 1000 px) with a small
    mesh (depth at 400 px, 50k faces), its 2k texture, and small splats (150
    steps at 96 px): what the previews and texture tests read."""
    def make(ws):
        shutil.copytree(fountain_run, ws)
        run_backend("run", fountain / "images", "--workspace", ws, "--max-image-size", "1000",
                    "--undistort-max-size", "1000", "--stages", "texture", "splats", "--dense-max-size", "400",
                    "--face-budget", "50000", "--texture-size", "2k", "--splat-steps", "150", "--splat-size", "96",
                    check=True)

    return reusable_run("fountain-previews", tmp_path_factory, make)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m backend demo`, once per session: the synthetic scene (ground
    truth known) through every stage. The rendered scene is cached between
    local runs (CI starts clean and renders it once); the reconstruction
    always runs from scratch."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    proc = run_backend("demo", "--out", out, "--scene", CACHE / "synthetic-scene", check=True, timeout=1200)
    return out, proc


def _scene(name: str, preset: str) -> Path:
    """A synthetic scene for issue 13's hard captures, rendered once into CACHE / name (about
    a minute each on one core) and reused while its params and generator version match."""
    from backend.tools import synthetic_scene

    return synthetic_scene.ensure_scene(CACHE / name, getattr(synthetic_scene, f"{preset}_params")())


@pytest.fixture(scope="session")
def street_scene() -> Path:
    """A phone's forward walk (22 JPEGs with EXIF focal and GPS, 512x384, 40 m, true focal 384 px)."""
    return _scene("street", "street")


@pytest.fixture(scope="session")
def lowtex_scene() -> Path:
    """A smooth, sparsely marked object on a dark backdrop: 16 JPEGs on one ring, ~235 SIFT features each (median)."""
    return _scene("lowtex", "lowtex")


@pytest.fixture(scope="session")
def portrait_scene() -> Path:
    """The object scene in portrait: 24 JPEGs stored landscape with EXIF Orientation 6 and 8 alternating."""
    return _scene("portrait", "portrait")


@pytest.fixture(scope="session")
def hemisphere_scene() -> Path:
    """The object scene with 24 cameras spread over the hemisphere, the first straight overhead."""
    return _scene("hemisphere", "hemisphere")


def blob_photo(seed: int, size=(480, 360)):
    """A smooth random colour pattern (a PIL image): plenty of SIFT features,
    but no two seeds show the same thing."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.random((size[1] // 12, size[0] // 12, 3))
    return Image.fromarray((low * 255).astype(np.uint8)).resize(size, Image.BICUBIC)
