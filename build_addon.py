"""Build the installable Blender extension: dist/reconstruct-<version>.zip.

    python build_addon.py [--out DIR]

The zip holds the add-on (blender_addon/ at its root) with:
- blender_manifest.toml, its `wheels` list pointing at the bundled msgpack
  wheels (Blender 4.2-5.0 run Python 3.11: Linux, macOS and Windows wheels);
- backend_src/: the backend's source and pyproject.toml, which 'Set up
  backend' pip-installs into the add-on's own environment together with the
  add-on's shared/ modules (shipped once: the add-on and the backend both use
  that copy; see link/setup_backend.staged_source).
The manifest's version must equal blender_addon.shared.protocol.__version__.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent
ADDON = REPO / "blender_addon"
WHEEL_CACHE = REPO / ".cache" / "wheels"
MSGPACK = "msgpack==1.2.4"
PLATFORMS = ["manylinux2014_x86_64", "manylinux2014_aarch64", "macosx_11_0_arm64", "macosx_10_9_x86_64",
             "win_amd64"]


def version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', (ADDON / "shared" / "protocol.py").read_text(), re.M).group(1)


def manifest_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ADDON / "blender_manifest.toml").read_text(), re.M).group(1)


def wheels() -> list[Path]:
    """msgpack wheels for every platform Blender ships, downloaded once."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    name, ver = MSGPACK.split("==")
    if len(list(WHEEL_CACHE.glob(f"{name}-{ver}-*.whl"))) < len(PLATFORMS):
        for platform in PLATFORMS:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.11", "--implementation", "cp", "--platform", platform,
                            "-d", str(WHEEL_CACHE), MSGPACK], check=True)
    found = sorted(WHEEL_CACHE.glob(f"{name}-{ver}-*.whl"))
    if len(found) < len(PLATFORMS):
        raise SystemExit(f"expected {len(PLATFORMS)} msgpack wheels in {WHEEL_CACHE}, found {len(found)}")
    return found


def _files(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def build(out_dir: Path = REPO / "dist") -> Path:
    if manifest_version() != version():
        raise SystemExit(f"blender_manifest.toml says {manifest_version()}, protocol.__version__ says {version()}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"reconstruct-{version()}.zip"
    bundled = wheels()
    manifest = (ADDON / "blender_manifest.toml").read_text()
    manifest = manifest.replace("\n[permissions]", "\nwheels = [\n" + "".join(
        f'  "./wheels/{w.name}",\n' for w in bundled) + "]\n\n[permissions]", 1)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files(ADDON):
            rel = path.relative_to(ADDON).as_posix()
            if rel == "blender_manifest.toml":
                zf.writestr(rel, manifest)
            else:
                zf.write(path, rel)
        for wheel in bundled:
            zf.write(wheel, f"wheels/{wheel.name}")
        for name in ("pyproject.toml", "README.md"):
            zf.write(REPO / name, f"backend_src/{name}")
        for path in _files(REPO / "backend"):
            zf.write(path, f"backend_src/{path.relative_to(REPO).as_posix()}")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    print(build(parser.parse_args().out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
