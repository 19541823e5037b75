"""Which frames of a video to keep: sharp ones, spread by how much the view
changes rather than by time. Pure numpy on small grey images; no decoding
here (backend/video/frames.py feeds it).

Why our own few lines rather than a library: the two measures are a Laplacian
and a mean difference of thumbnails, cheaper to write than to depend on
OpenCV for, and the choice itself (one frame per equal share of change) is
the part that matters and that the tests check.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLUR_RATIO = 0.55
"""A frame is blurred when its sharpness is below this share of the median of
the frames around it (about one second): motion blur from a jerk of the
hand halves the Laplacian's variance or worse, while the scene's own texture
changes it slowly."""
SHARP_ENOUGH = 0.8
"""Within a share of the video, frames this close to the sharpest count as sharp."""
THUMB = 48
"""Side (px) of the thumbnails whose differences measure how much the view changes."""


@dataclass(frozen=True)
class FrameMeasure:
    index: int
    """The frame's number in the video, from 0."""
    time: float
    """Its timestamp in seconds."""
    sharpness: float
    """Variance of the Laplacian of the grey frame at the analysis size."""
    thumb: np.ndarray
    """THUMB x THUMB grey, normalised to mean 1 (exposure changes do not count as change)."""


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: high for crisp edges, low for blur."""
    g = grey.astype(np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """Block means down to THUMB x THUMB, normalised to mean 1."""
    h, w = grey.shape
    ys = np.linspace(0, h, THUMB + 1).astype(int)
    xs = np.linspace(0, w, THUMB + 1).astype(int)
    g = np.add.reduceat(np.add.reduceat(grey.astype(np.float64), ys[:-1], axis=0), xs[:-1], axis=1)
    g /= np.outer(np.diff(ys), np.diff(xs))
    return (g / max(g.mean(), 1e-6)).astype(np.float32)


def measure(index: int, time: float, grey: np.ndarray) -> FrameMeasure:
    return FrameMeasure(index, time, sharpness(grey), thumbnail(grey))


def auto_target(duration: float) -> int:
    """The default number of frames to keep: 4 a second, at least 100 and at most 300
    (enough overlap for a walk around at a normal pace; more only slows SfM down)."""
    return int(min(300, max(100, round(4 * duration))))


def blurred(measures: list[FrameMeasure], window: int) -> np.ndarray:
    """Which frames are blurred compared with the frames within `window` of them."""
    s = np.array([m.sharpness for m in measures])
    half = max(window // 2, 2)
    local = np.array([np.median(s[max(0, i - half): i + half + 1]) for i in range(len(s))])
    return s < BLUR_RATIO * local


def change(measures: list[FrameMeasure]) -> np.ndarray:
    """Cumulative change of view from the first frame: the mean absolute
    difference of consecutive thumbnails, summed. A camera that stops adds
    next to nothing, so a pause gives no extra frames."""
    steps = [0.0] + [float(np.abs(b.thumb - a.thumb).mean()) for a, b in zip(measures, measures[1:])]
    return np.cumsum(steps)


def choose(measures: list[FrameMeasure], target: int, window: int) -> tuple[list[int], np.ndarray]:
    """Positions (into `measures`) of the frames to keep, and the blurred mask.

    The video's change of view is cut into `target` equal shares; from each
    share the sharpest frame that is not blurred is kept (none when all of a
    share is blurred), preferring among the nearly sharpest (SHARP_ENOUGH of
    the share's best) the one nearest the share's middle, so the kept frames
    are evenly spread. The first and last usable frames are always kept, so a
    walk around the subject is covered to its end and its loop can close."""
    bad = blurred(measures, window)
    usable = np.flatnonzero(~bad)
    if len(usable) == 0:
        return [], bad
    if len(usable) <= target:
        return usable.tolist(), bad
    cumulative = change(measures)
    total = cumulative[-1]
    if total <= 0:  # a still image: one share
        share = np.zeros(len(measures), int)
    else:
        share = np.minimum((cumulative / total * target).astype(int), target - 1)
    sharp = np.array([m.sharpness for m in measures])
    position = cumulative / total * target if total > 0 else np.zeros(len(measures))
    kept = {int(usable[0]), int(usable[-1])}
    for k in range(target):
        members = usable[share[usable] == k]
        if len(members):
            good = members[sharp[members] >= SHARP_ENOUGH * sharp[members].max()]
            kept.add(int(good[np.argmin(np.abs(position[good] - (k + 0.5)))]))
    return sorted(kept), bad
