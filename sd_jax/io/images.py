"""Image conversions shared by sampling, evaluation and the trainer's sample grids."""

from __future__ import annotations

import os

import numpy as np
from etils import epath

from sd_jax.io.paths import as_path


def to_uint8(x_bhwc: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 exactly as the ADM sampler does: `((x + 1) * 127.5).clamp(0, 255)`
    followed by a truncating cast (not rounding)."""
    x = (np.asarray(x_bhwc, dtype=np.float32) + 1.0) * 127.5
    return np.clip(x, 0.0, 255.0).astype(np.uint8)


def make_grid(images_bhwc: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles uint8 images [B, H, W, C] into one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    images_bhwc = np.asarray(images_bhwc)
    b, h, w, c = images_bhwc.shape
    ncols = ncols or int(np.ceil(np.sqrt(b)))
    nrows = int(np.ceil(b / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, images_bhwc.dtype)
    for i, img in enumerate(images_bhwc):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = img
    return grid


def save_png(image_hwc: np.ndarray, path: str | os.PathLike) -> epath.Path:
    """Writes a uint8 [H, W, C] (C = 1 or 3) image as PNG (local or gs://), creating parent
    folders."""
    from PIL import Image

    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(image_hwc)
    with path.open("wb") as f:  # Given a file object, PIL needs the format named.
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(f, format="PNG")
    return path
