"""Which frames of a video to match: each frame with the ones just after it,
plus the pairs that close a loop (a walk around an object ends where it
began). COLMAP's own loop detection needs a vocabulary tree, a download we
do not want to depend on, so loop candidates come from two cheap sources:
the first frames against the last ones, and frames that look alike on a
small grey thumbnail. Geometric verification drops candidates that do not
hold, so a wrong guess costs one pair's matching."""
from __future__ import annotations

from pathlib import Path

import numpy as np

OVERLAP = 10
"""Each frame is matched with this many frames after it."""
ENDS = 8
"""The first and last this-many frames are matched with each other."""
LOOKALIKES = 3
"""Each frame's most similar distant frames that are matched with it."""
MIN_SIMILARITY = 0.6
"""Normalised cross-correlation of the thumbnails below which frames are not candidates."""
_THUMB = (32, 24)


def _thumbs(image_dir: Path, names: list[str]) -> np.ndarray:
    from PIL import Image

    rows = []
    for name in names:
        with Image.open(image_dir / name) as im:
            g = np.asarray(im.convert("L").resize(_THUMB, Image.Resampling.BOX), np.float32).ravel()
        g -= g.mean()
        rows.append(g / max(float(np.linalg.norm(g)), 1e-6))
    return np.stack(rows)


def video_pairs(names: list[str], image_dir: Path) -> list[tuple[str, str]]:
    """Pairs of frame names (in frame order) to match."""
    n = len(names)
    pairs = {(i, j) for i in range(n) for j in range(i + 1, min(n, i + OVERLAP + 1))}
    ends = min(ENDS, n // 4)
    pairs |= {(i, j) for i in range(ends) for j in range(n - ends, n) if j - i > OVERLAP}
    if n > OVERLAP + 1:
        thumbs = _thumbs(image_dir, names)
        similarity = thumbs @ thumbs.T
        far = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]) > OVERLAP
        similarity[~far] = -1
        for i in range(n):
            for j in np.argsort(-similarity[i])[:LOOKALIKES]:
                if similarity[i, j] >= MIN_SIMILARITY:
                    pairs.add((min(i, int(j)), max(i, int(j))))
    return [(names[i], names[j]) for i, j in sorted(pairs)]


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
