"""What the benchmark scripts share: where the repository, the photo sets and
the results are, and the backend run as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("RECONSTRUCT_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"


def backend(*args) -> None:
    """`python -m backend ARGS...` from the repository root, output discarded."""
    subprocess.run([sys.executable, "-m", "backend", *map(str, args)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_report(path: Path, lines: list[str]) -> None:
    """A benchmark's markdown report: written to `path` and printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print("\n".join(lines))
