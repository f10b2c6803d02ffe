"""Digits at any model.image_size: the loader upsamples the 8x8 digits with PIL's bicubic filter
(Keys cubic convolution, a = -0.5; docs/resolution.md, "Digits at any resolution")."""

import numpy as np
import pytest
from PIL import Image

from configs import quickstart
from sd_jax.data import build_loader, digits_source
from sd_jax.data.preprocess import crop_resize


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_loader_renders_grey_digits_at_any_size(size):
    config = quickstart.get_config()
    config.model.image_size, config.train.batch_size = size, 16
    loader = build_loader(config, process_index=0, process_count=1)
    batch = loader.get_batch(0)
    images = batch["image"]
    assert images.shape == (16, size, size, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], images[..., 1])  # Still grey.
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    source = digits_source()
    for image, index in zip(images, loader.global_indices(0), strict=True):
        np.testing.assert_array_equal(image, crop_resize(source[index][0], size))


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_upsampling_filter_is_cubic(size):
    """Cubic convolution reproduces quadratics exactly (bilinear errs by up to c h^2 / 4 = 4
    counts here); away from the borders, where PIL renormalises the truncated kernel, the
    upsampled profile equals the quadratic at the output pixel centres up to uint8 rounding
    (0.5) and PIL's fixed-point weights: 1 count."""
    j = np.arange(8.0)
    row = 16.0 * (j - 3.5) ** 2 + 10.0  # Integers 10 .. 206: exact in uint8.
    image = np.repeat(np.broadcast_to(row, (8, 8))[..., None], 3, axis=-1).astype(np.uint8)
    scale = size // 8
    centres = (np.arange(size) + 0.5) / scale - 0.5  # Output pixel centres in input pixels.
    exact = 16.0 * (centres - 3.5) ** 2 + 10.0
    interior = (centres >= 1.0) & (centres <= 6.0)  # The cubic's support is 2 input pixels.
    up = crop_resize(image, size).astype(np.float64)
    assert up.shape == (size, size, 3)
    np.testing.assert_allclose(up[:, interior, 0], np.broadcast_to(exact[interior],
                                                                   (size, interior.sum())),
                               atol=1.0)
    bilinear = np.asarray(Image.fromarray(image).resize((size, size),
                                                        Image.Resampling.BILINEAR), np.float64)
    assert np.abs(bilinear[:, interior, 0] - exact[interior]).max() >= 2.9  # Test can fail.
