"""Pixel-level checks of samples that FID-like scores miss: high-frequency energy and colour noise.

Both work on images in [0, 1] (uint8 arrays are divided by 255) of shape [N, H, W, C]:

- `hf_energy`: mean |x - its 2x2 box mean|, i.e. the mean absolute deviation of every pixel from
  the average of the 2x2 block it sits in. It is exactly the energy of the three high bands of
  one Haar level (in L1 instead of L2), so per-pixel noise shows up while smooth image content
  (edges spanning many pixels) contributes little. Reported as a ratio to the data's.
- `colour_noise`: mean over pixels of the standard deviation across the RGB channels. Grey data
  (R = G = B, such as the embedded digits) has exactly 0; iid noise of std s per channel gives
  about 0.8 s.

`quality_metrics(samples, data)` returns both for samples next to the data's values; the
miniature ablations (experiments/miniature/miniature.py) and the resolution study
(docs/resolution.md) report them per arm.
"""

from __future__ import annotations

import numpy as np


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float64 [0, 1]; float images are taken as already in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected [N, H, W, C] images, got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    return images.astype(np.float64)


def box_mean_2x2(x_nhwc: np.ndarray) -> np.ndarray:
    """Every pixel replaced by the mean of its 2x2 block (H and W must be even)."""
    n, h, w, c = x_nhwc.shape
    if h % 2 or w % 2:
        raise ValueError(f"2x2 box mean needs even sizes, got {h}x{w}")
    blocks = x_nhwc.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4), keepdims=True)
    return np.broadcast_to(blocks, (n, h // 2, 2, w // 2, 2, c)).reshape(n, h, w, c)


def hf_energy(images: np.ndarray) -> float:
    """Mean |pixel - its 2x2 box mean| over all pixels and channels, on the [0, 1] scale."""
    x = to_unit(images)
    return float(np.mean(np.abs(x - box_mean_2x2(x))))


def colour_noise(images: np.ndarray) -> float:
    """Mean over pixels of the std across channels (0 for grey images), on the [0, 1] scale."""
    x = to_unit(images)
    if x.shape[-1] == 1:
        return 0.0
    return float(np.mean(np.std(x, axis=-1)))


def quality_metrics(samples: np.ndarray, data: np.ndarray) -> dict[str, float]:
    """High-frequency energy of samples and data, their ratio, and colour noise of both."""
    hf_samples, hf_data = hf_energy(samples), hf_energy(data)
    return {
        "hf_ratio": hf_samples / hf_data if hf_data > 0 else float("inf"),
        "hf_energy": hf_samples,
        "hf_energy_data": hf_data,
        "colour_noise": colour_noise(samples),
        "colour_noise_data": colour_noise(data),
    }
