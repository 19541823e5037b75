"""The undistorted photos as the texturing reads them: full size for the
texels, small and blurred for levelling colours, a few in memory at a time."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from backend.dense.scene import View

MEMORY_BUDGET = 1.5e9  # bytes of decoded photos kept at once (12 MP: 144 MB each as float32)
SMALL_SIZE = 1024  # longest side of the photos colours are levelled on


class Photos:
    def __init__(self, folder: Path, views: list[View]):
        self.folder, self.views = Path(folder), views
        self._full: OrderedDict[int, np.ndarray] = OrderedDict()
        self._small: dict[int, tuple[np.ndarray, float]] = {}

    def full(self, view: int) -> np.ndarray:
        """[H, W, 3] float32 0-255 at the photo's undistorted size (the views' K)."""
        if view in self._full:
            self._full.move_to_end(view)
            return self._full[view]
        image = self._read(view)
        self._full[view] = image
        while sum(a.nbytes for a in self._full.values()) > MEMORY_BUDGET and len(self._full) > 1:
            self._full.popitem(last=False)
        return image

    def small(self, view: int) -> tuple[np.ndarray, float]:
        """The photo at most SMALL_SIZE on a side, blurred by about a pixel there,
        and its scale against full size: what seam colours are compared on, so
        that a pixel of misregistration or noise does not count as a colour step."""
        if view not in self._small:
            from PIL import Image, ImageFilter

            with Image.open(self.folder / self.views[view].name) as im:
                im = im.convert("RGB")
                scale = min(1.0, SMALL_SIZE / max(im.size))
                if scale < 1.0:
                    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                   Image.Resampling.BOX)
                im = im.filter(ImageFilter.GaussianBlur(1.0))
                self._small[view] = (np.asarray(im, np.float32), scale)
        return self._small[view]

    def _read(self, view: int) -> np.ndarray:
        from PIL import Image

        v = self.views[view]
        with Image.open(self.folder / v.name) as im:
            im = im.convert("RGB")
            if im.size != (v.width, v.height):
                im = im.resize((v.width, v.height), Image.Resampling.BILINEAR)
            return np.asarray(im, np.float32)


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[n, 3] colours of `image` at pixel positions (x, y) (pixel centres at i + 0.5), edges clamped."""
    h, w = image.shape[:2]
    x = np.clip(np.asarray(x, np.float32) - 0.5, 0, w - 1)
    y = np.clip(np.asarray(y, np.float32) - 0.5, 0, h - 1)
    x0 = np.minimum(x.astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(y.astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
