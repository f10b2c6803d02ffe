"""Pixel checks of samples (sd_jax/eval/sample_quality.py) against closed forms."""

import math

import numpy as np
import pytest

from sd_jax.eval import sample_quality


def test_hf_energy_zero_on_block_constant_images_and_exact_on_a_pattern():
    rng = np.random.default_rng(0)
    coarse = rng.random((3, 4, 4, 3))
    blocky = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)  # Constant on every 2x2 block.
    assert sample_quality.hf_energy(blocky) == 0.0
    checker = np.indices((8, 8)).sum(axis=0) % 2  # 0/1 checkerboard: |x - 1/2| = 1/2 everywhere.
    images = np.repeat(checker[None, :, :, None], 3, axis=-1).astype(np.float64)
    assert sample_quality.hf_energy(images) == 0.5
    assert sample_quality.hf_energy((images * 255).astype(np.uint8)) == 0.5  # uint8 -> /255.


def test_hf_energy_of_white_noise_matches_the_gaussian_formula():
    # x - (2x2 mean) of iid N(0, s^2) is N(0, 3/4 s^2), so E|.| = s sqrt(3/4) sqrt(2/pi).
    s, n = 0.1, 200_000 * 4
    x = np.random.default_rng(1).normal(0.0, s, (n // 64, 8, 8, 1))
    expected = s * math.sqrt(0.75) * math.sqrt(2 / math.pi)
    # The mean of n draws of |N(0, v)| has std sqrt(v (1 - 2/pi) / n) (pixels of a block are
    # correlated, so allow 4x that on top of 4 sigma).
    tol = 16 * math.sqrt(0.75 * s**2 * (1 - 2 / math.pi) / n)
    assert abs(sample_quality.hf_energy(x) - expected) < tol


def test_colour_noise_zero_for_grey_and_the_std_over_channels_otherwise():
    grey = np.repeat(np.random.default_rng(2).random((2, 4, 4, 1)), 3, axis=-1)
    assert sample_quality.colour_noise(grey) < 1e-15  # float64 rounding of the channel mean.
    pixel = np.array([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3)  # Population std sqrt(1/6).
    assert sample_quality.colour_noise(np.tile(pixel, (2, 2, 2, 1))) == pytest.approx(
        math.sqrt(1 / 6), rel=1e-12)


def test_quality_metrics_ratio_against_data():
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    same = sample_quality.quality_metrics(data, data)
    assert same["hf_ratio"] == 1.0 and same["colour_noise"] == same["colour_noise_data"]
    doubled = sample_quality.quality_metrics(data.astype(np.float64) / 255 * 2, data)
    assert doubled["hf_ratio"] == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="even"):
        sample_quality.hf_energy(np.zeros((1, 3, 3, 1)))
