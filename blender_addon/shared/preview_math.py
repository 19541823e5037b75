"""How well a render matches its photo, and the images that show it: numpy
only, shared by the add-on (inside Blender) and the backend's command line.

Images are float arrays [H, W, C] in 0..1, display-referred (sRGB values as
stored in the PNGs), top row first.

Coverage: the pixels where the render's alpha is at least 0.5, i.e. where the
reconstruction drew something (scenes render with a transparent film; splats
report their accumulated opacity). PSNR and SSIM are computed over those
pixels only: what the reconstruction left out is reported as coverage, not
counted as error, so a partial but accurate model scores well and says so.
"""
from __future__ import annotations

import numpy as np

COVERED_ALPHA = 0.5
# SSIM as Wang et al. (2004) define it, the one definition every score here
# and the splats' training loss use: an 11 px Gaussian window with sigma 1.5,
# K1 = 0.01, K2 = 0.03, values in 0..1 (scikit-image's structural_similarity
# with gaussian_weights=True, use_sample_covariance=False, data_range=1).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 px window
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2
HEAT_MAX = 0.25  # mean absolute difference (0..1) shown as the hottest colour


def ssim_kernel() -> np.ndarray:
    """The 1-D Gaussian the SSIM window is made of (normalised, 11 taps)."""
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-x**2 / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _blur(a: np.ndarray) -> np.ndarray:
    """Gaussian-weighted mean around each pixel (same shape; edges mirrored, as scipy's 'reflect')."""
    g, r = ssim_kernel().astype(a.dtype), SSIM_RADIUS
    out = a
    for axis in (0, 1):
        pad = [(r, r) if i == axis else (0, 0) for i in range(out.ndim)]
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, w in enumerate(g):
            acc += w * (padded[k:k + n] if axis == 0 else padded[:, k:k + n])
        out = acc
    return out


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM [H, W] of two [H, W, C] images in 0..1, averaged over the channels.
    (float32 and the five blurs in one pass: this runs on Blender's main thread per preview.)"""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    c = a.shape[-1]
    blurred = _blur(np.concatenate([a, b, a * a, b * b, a * b], -1))
    mu_a, mu_b = blurred[..., :c], blurred[..., c:2 * c]
    var_a = blurred[..., 2 * c:3 * c] - mu_a**2
    var_b = blurred[..., 3 * c:4 * c] - mu_b**2
    cov = blurred[..., 4 * c:] - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return s.mean(-1, dtype=np.float64)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two whole images: the map without the window's half-width
    at the borders, where the window would leave the image."""
    r = SSIM_RADIUS
    return float(ssim_map(a, b)[r:-r, r:-r].mean())


def scores(photo: np.ndarray, render: np.ndarray) -> dict:
    """PSNR (dB) and SSIM over the covered pixels, and the covered fraction.
    `render` is RGBA [H, W, 4], colour not premultiplied; `photo` RGB [H, W, 3]."""
    covered = render[..., 3] >= COVERED_ALPHA
    coverage = float(covered.mean())
    if not covered.any():
        return {"psnr": None, "ssim": None, "coverage": 0.0}
    rgb = render[..., :3]
    mse = float(((rgb - photo) ** 2)[covered].mean())
    return {"psnr": 10 * np.log10(1.0 / max(mse, 1e-10)), "ssim": float(ssim_map(rgb, photo)[covered].mean()),
            "coverage": coverage}


def heatmap(photo: np.ndarray, render: np.ndarray) -> np.ndarray:
    """[H, W, 3] mean absolute difference as black -> red -> yellow -> white;
    pixels the render does not cover show the photo, dimmed and grey."""
    diff = np.clip(np.abs(render[..., :3] - photo).mean(-1) / HEAT_MAX, 0, 1)
    heat = np.stack([np.clip(3 * diff, 0, 1), np.clip(3 * diff - 1, 0, 1), np.clip(3 * diff - 2, 0, 1)], -1)
    grey = np.repeat(photo.mean(-1, keepdims=True) * 0.35, 3, -1)
    return np.where((render[..., 3] >= COVERED_ALPHA)[..., None], heat, grey)


def over(render: np.ndarray, background) -> np.ndarray:
    """[H, W, 3]: an RGBA render (not premultiplied) over a background colour or image."""
    alpha = render[..., 3:]
    return render[..., :3] * alpha + np.asarray(background, np.float64) * (1 - alpha)


def side_by_side(photo: np.ndarray, renders: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Rows of photo | render (over the dimmed photo) | heat map, one row per render."""
    h, w = photo.shape[:2]
    rows = []
    for render in renders:
        shown = over(render, photo * 0.35)
        row = [photo, shown, heatmap(photo, render)]
        sep = np.ones((h, gap, 3))
        rows.append(np.concatenate([row[0], sep, row[1], sep, row[2]], 1))
    sep = np.ones((gap, rows[0].shape[1], 3))
    return np.concatenate([x for r in rows for x in (r, sep)][:-1], 0)


def shrink(image: np.ndarray, width: int, height: int | None = None) -> np.ndarray:
    """Box-filtered downscale to `width` x `height` px (default: the aspect kept);
    an image already that small is returned as it is."""
    h, w = image.shape[:2]
    height = height or max(1, round(h * width / w))
    if w <= width and h <= height:
        return image
    ys = (np.arange(height + 1) * h / height).astype(int)
    xs = (np.arange(width + 1) * w / width).astype(int)
    c = np.pad(image.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    s = c[ys[1:]][:, xs[1:]] - c[ys[:-1]][:, xs[1:]] - c[ys[1:]][:, xs[:-1]] + c[ys[:-1]][:, xs[:-1]]
    area = np.outer(np.diff(ys), np.diff(xs))[..., None]
    return s / area


def contact_sheet(images: list[np.ndarray], columns: int = 4, width: int = 480, gap: int = 8) -> np.ndarray:
    """The images (in the order given) shrunk to `width` and laid out in a grid on white."""
    thumbs = [shrink(im, width) for im in images]
    cell_w = max(t.shape[1] for t in thumbs)
    cell_h = max(t.shape[0] for t in thumbs)
    columns = max(1, min(columns, len(thumbs)))
    rows = -(-len(thumbs) // columns)
    sheet = np.ones((rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3))
    for i, t in enumerate(thumbs):
        r, c = divmod(i, columns)
        y, x = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
    return sheet
