"""Run the add-on's tests under every other Blender the extension supports.

    python tests/every_blender.py            # each version in OLDER_BLENDERS
    python tests/every_blender.py 4.2.0      # one

`make test` runs the whole suite under bpy 5.0.1 (the project's .venv), then
this: for each older Blender, an environment of its own (.venv-bpy<version>)
with that bpy wheel and the numpy it was built against, which sees the
project's environment's other packages (pytest, PIL, plyfile, ...) through a
.pth file rather than installing them again (torch alone is 800 MB). Only the
tests marked `every_blender` run there: the zip's install and validation,
every importer, the sidebar's jobs, Set Scale, previews; the backend they
start runs in the project's environment, as a user's runs in the one Set Up
Backend made. The workspaces the first run made (RECONSTRUCT_RUNS) are reused,
copied, rather than reconstructed again: they do not depend on Blender."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bpy 4.2 LTS and 4.5 LTS (Python 3.11, built against numpy 1.x); 5.0.1 is the project's own.
OLDER_BLENDERS = ("4.2.0", "4.5.15")
NUMPY = "numpy>=1.26,<2"


def environment(version: str) -> Path:
    """.venv-bpy<version>'s Python, created and filled on first use."""
    venv = REPO / f".venv-bpy{version}"
    python = venv / "bin" / "python"
    stamp = venv / f".installed-bpy{version}"
    if stamp.exists():
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"bpy=={version}", NUMPY], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Appended after the environment's own packages: its bpy and numpy come first.
    project_site = sysconfig.get_paths()["purelib"]
    (Path(site) / "zz_project_environment.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
    stamp.touch()
    return python


def run(version: str, args: list[str]) -> int:
    python = environment(version)
    env = {**os.environ, "RECONSTRUCT_BACKEND_PYTHON": sys.executable, "RECONSTRUCT_REUSE_RUNS": "1"}
    print(f"\n=== the add-on's tests under Blender {version} ===", flush=True)
    started = time.monotonic()
    code = subprocess.run([str(python), "-m", "pytest", "-ra", "-m", "every_blender", *args], cwd=REPO,
                          env=env).returncode
    print(f"=== Blender {version}: {'passed' if code == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s",
          flush=True)
    return code


def main(argv: list[str]) -> int:
    versions = [a for a in argv if not a.startswith("-")] or list(OLDER_BLENDERS)
    extra = [a for a in argv if a.startswith("-")]
    codes = [run(v, extra) for v in versions]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
