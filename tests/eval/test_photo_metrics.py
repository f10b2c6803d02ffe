"""Photo metrics (sd_jax/eval/photo_metrics.py) against float64 references written out here:
Karras et al.'s scipy Laplacian pyramid, scipy's 1-D Wasserstein distance, an explicit DFT and
colorsys's HSV; and the SWD's behaviour on known sets.

Budget: ~5 s on 2 cores.
"""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import scipy.ndimage
from scipy import stats

from sd_jax.data.photos import PhotoSource
from sd_jax.eval import photo_metrics as pm

RTOL = 1e-12  # float64 evaluations of one formula in different orders.


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Random images with a 1/f-like spectrum (blurred noise at several scales), in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = sum(scipy.ndimage.zoom(rng.standard_normal((n, size // s, size // s, 3)), (1, s, s, 1),
                               order=1) for s in (1, 2, 4, 8))
    return (x - x.min()) / (x.max() - x.min())


def karras_pyramid(x_nhwc: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """Karras et al.'s generate_laplacian_pyramid (NCHW, 5x5 filter, scipy mirror), float64."""
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1])[None, None] / 256.0
    x = np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float64)
    levels = [x]
    for _ in range(1, num_levels):
        down = scipy.ndimage.convolve(levels[-1], kernel, mode="mirror")[:, :, ::2, ::2]
        up = np.zeros_like(levels[-1])
        up[:, :, ::2, ::2] = down
        levels[-1] = levels[-1] - scipy.ndimage.convolve(up, 4 * kernel, mode="mirror")
        levels.append(down)
    return [np.transpose(level, (0, 2, 3, 1)) for level in levels]


def test_laplacian_pyramid_equals_karras_et_al_scipy_reference():
    x = smooth_images(3, 64)
    got = pm.laplacian_pyramid(x, 3)
    want = karras_pyramid(x, 3)
    assert [g.shape[1] for g in got] == [64, 32, 16] == pm.swd_sizes(64)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=RTOL)
    rebuilt = pm.pyr_up(pm.pyr_up(got[2]) + got[1]) + got[0]  # The pyramid is invertible.
    np.testing.assert_allclose(rebuilt, x, rtol=0, atol=RTOL)


def test_patches_and_their_normalisation():
    rng = np.random.default_rng(1)
    level = rng.standard_normal((4, 16, 16, 3)) * [1.0, 2.0, 3.0] + [0.0, 5.0, -1.0]
    image, top, left = np.array([0, 3, 3]), np.array([0, 9, 4]), np.array([9, 0, 2])
    got = pm.patches(level, image, top, left)
    for k in range(3):
        np.testing.assert_array_equal(got[k], level[image[k], top[k]:top[k] + 7,
                                                   left[k]:left[k] + 7])
    desc = pm.descriptors(level, rng).reshape(-1, 7, 7, 3)
    assert len(desc) == 4 * pm.PATCHES_PER_IMAGE
    np.testing.assert_allclose(desc.mean(axis=(0, 1, 2)), 0, atol=RTOL)
    np.testing.assert_allclose(desc.std(axis=(0, 1, 2)), 1, rtol=RTOL)


def test_sliced_wasserstein_equals_scipy_per_direction():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((300, 5))
    b = rng.standard_normal((300, 5)) * 1.5 + 0.3
    dirs = pm.random_directions(rng, 5, 16)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=0), 1, rtol=RTOL)
    want = np.mean([stats.wasserstein_distance(a @ d, b @ d) for d in dirs.T])
    assert pm.sliced_wasserstein(a, b, dirs) == pytest.approx(want, rel=RTOL)
    assert pm.sliced_wasserstein(a, a[rng.permutation(300)], dirs) == 0.0  # Order-free.
    with pytest.raises(ValueError, match="equal-sized"):
        pm.sliced_wasserstein(a, b[:10], dirs)


def test_swd_is_near_zero_for_the_same_set_and_large_against_noise():
    x = PhotoSource(32, "test").images(64)  # Natural images: the held-out photos' crops.
    noise = np.random.default_rng(3).integers(0, 256, x.shape).astype(np.uint8)
    same = pm.swd(x, x, seed=0)  # Different random patches of the same images.
    other = pm.swd(x, noise, seed=0)
    assert set(same) == {"swd_32", "swd_16", "swd_avg"}
    for key in same:  # Measured: 0.11x at 32 px, 0.04x at 16 px (fixed seeds: a fixed outcome).
        assert same[key] < 0.15 * other[key], (key, same[key], other[key])
    assert other["swd_avg"] == pytest.approx((other["swd_32"] + other["swd_16"]) / 2)
    assert pm.swd(x, x, seed=0) == same  # Deterministic in the seed.


def reference_octave_power(x: np.ndarray) -> np.ndarray:
    """Explicit DFT (a float64 matrix) and a loop over frequencies with the bands' edges."""
    n, size, _, channels = x.shape
    window = np.outer(np.hanning(size), np.hanning(size))
    k = np.arange(size)
    dft = np.exp(-2j * np.pi * np.outer(k, k) / size)
    bands = np.zeros(len(pm.octave_bands(size)))
    for i in range(n):
        for c in range(channels):
            y = (x[i, :, :, c] - x[i, :, :, c].mean()) * window
            power = np.abs(dft @ y @ dft.T) ** 2
            for u in range(size):
                for v in range(size):
                    fu, fv = (u if u < size / 2 else u - size) / size, \
                        (v if v < size / 2 else v - size) / size
                    r = (fu * fu + fv * fv) ** 0.5
                    if r == 0:
                        continue
                    band = 0
                    while band < len(bands) - 1 and r <= 2.0 ** -(band + 2):
                        band += 1
                    bands[band] += power[u, v] / n
    return bands


def test_octave_power_equals_an_explicit_dft_with_the_documented_bands():
    x = smooth_images(2, 16, seed=4)
    assert pm.octave_bands(16) == ["2-4px", "4-8px", "8+px"]
    np.testing.assert_allclose(pm.octave_power(x), reference_octave_power(x), rtol=1e-10)


def test_a_sinusoid_puts_its_power_in_its_octave_and_noise_scales_with_its_variance():
    size = 64
    yy, xx = np.mgrid[:size, :size]
    wave = 0.5 + 0.4 * np.cos(2 * np.pi * (11 * xx + 3 * yy) / size)  # r = 0.179: '4-8px'.
    power = pm.octave_power(np.repeat(wave[None, :, :, None], 3, axis=-1))
    assert pm.octave_bands(size)[int(np.argmax(power))] == "4-8px"
    assert power[1] > 0.99 * power.sum()
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((8, size, size, 3))
    ratio = pm.octave_power(0.5 + 0.05 * noise) / pm.octave_power(0.5 + 0.1 * noise)
    np.testing.assert_allclose(ratio, 0.25, rtol=1e-12)


def test_saturation_equals_colorsys_hsv():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    x[0, 0, 0] = 0  # Black: saturation 0.
    x[0, 0, 1] = 77  # Grey: saturation 0.
    want = np.mean([colorsys.rgb_to_hsv(*(p / 255.0))[1] for p in x.reshape(-1, 3)])
    assert pm.saturation(x) == pytest.approx(want, rel=RTOL)


def test_photo_metrics_of_a_set_against_itself():
    x = (smooth_images(16, 32, seed=7) * 255).round().astype(np.uint8)
    out = pm.photo_metrics(x, x)
    for name in pm.octave_bands(32):
        assert out[f"power_ratio_{name}"] == 1.0
    assert out["saturation_ratio"] == 1.0
    grey = np.repeat(x[..., :1], 3, axis=-1)
    assert pm.photo_metrics(grey, x)["saturation_ratio"] == 0.0
