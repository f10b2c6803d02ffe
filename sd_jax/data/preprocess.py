"""Per-image preprocessing (paper / ADM style): centre crop, antialiased resize, flip, [-1, 1].

Everything here is plain NumPy + PIL, run by the loader's grain worker processes; the scaling
to [-1, 1] and the flip are applied on the device by the train step
(`sd_jax.train.step.device_images`, bitwise `to_float`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Bicubic with a box pre-reduction (`Image.reduce`) down to at most 3x the target size: the
# antialiased result ADM gets from its "BOX halve, then BICUBIC" loop, at a fraction of the cost.
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Returns image as uint8 [H, W, 3]: grayscale [H, W] / [H, W, 1] is repeated, alpha dropped."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an [H, W, C] image with C in (1, 3, 4), got {image.shape}")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(left, upper, right, lower) of the largest centred square in a height x width image."""
    side = min(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    return left, top, left + side, top + side


def crop_resize_pil(image: Image.Image, size: int) -> Image.Image:
    """Centre square crop of a PIL image, resized (antialiased) to size x size, in RGB."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    box = center_crop_box(image.height, image.width)
    if box == (0, 0, size, size):
        return image
    if box != (0, 0, image.width, image.height):
        image = image.crop(box)  # Crop first: pixels outside the square never reach the filter.
    return image.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)


def crop_resize(image_hwc: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] of any size -> uint8 [size, size, 3]: centre square crop + resize."""
    image_hwc = to_rgb_uint8(image_hwc)
    h, w, _ = image_hwc.shape
    if h == w == size:
        return image_hwc
    return np.asarray(crop_resize_pil(Image.fromarray(image_hwc), size))


def to_float(image_hwc_uint8: np.ndarray, flip: bool = False) -> np.ndarray:
    """uint8 [..., H, W, 3] -> float32 (x - 127.5) / 127.5, exactly -1 and 1 at 0 and 255;
    mirrored left-right if `flip`."""
    x = (np.asarray(image_hwc_uint8, dtype=np.float32) - np.float32(127.5)) / np.float32(127.5)
    return x[..., ::-1, :] if flip else x


def flip_mask(seed: int, step: int, global_batch: int) -> np.ndarray:
    """Which rows of the global batch at `step` are flipped: a function of (seed, step) only,
    so it does not depend on the number of processes or on the worker threads."""
    rng = np.random.default_rng([seed, step, 0x5F11])  # Fixed tag: separate from the order.
    return rng.random(global_batch) < 0.5
