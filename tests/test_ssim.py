"""One SSIM (Wang et al. 2004: 11 px Gaussian window, sigma 1.5) for the
previews' scores and the splats' training and held-out scores, equal to an
independent implementation (scikit-image's)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from blender_addon.shared.preview_math import ssim
from backend.splats.train import ssim as training_ssim


def _pairs():
    """Five image pairs a score meets: noise, blur, a shift, a colour cast, unrelated images."""
    rng = np.random.default_rng(7)
    base = np.clip(np.cumsum(np.cumsum(rng.normal(size=(64, 80, 3)), 0), 1) / 40 + 0.5, 0, 1)
    blurred = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1) + np.roll(base, (1, 1), (0, 1))) / 4
    yield base, np.clip(base + rng.normal(scale=0.05, size=base.shape), 0, 1)
    yield base, blurred
    yield base, np.roll(base, 3, 1)
    yield base, np.clip(base * [1.1, 0.95, 0.8], 0, 1)
    yield base, rng.random(base.shape)


@pytest.mark.parametrize("a, b", list(_pairs()))
def test_our_ssim_equals_scikit_image(a, b):
    reference = structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0)
    assert ssim(a, b) == pytest.approx(reference, abs=1e-4)
    as_tensor = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    assert float(training_ssim(as_tensor(a), as_tensor(b))) == pytest.approx(reference, abs=1e-4)
