"""Sample quality on natural images with no downloaded weights: multi-scale sliced Wasserstein
distance, power per octave of the spectrum, colour saturation. NumPy, float64.

- `swd`: the multi-scale sliced Wasserstein distance of Karras et al. (2018, "Progressive
  growing of GANs", their `metrics/sliced_wasserstein.py`): a Laplacian pyramid per image (the
  5-tap binomial filter of cv2.pyrDown / pyrUp, mirrored edges) with levels from the image size
  down to 16 px; per level 128 random 7x7 patches per image (the patch fully inside), each set's
  descriptors normalised per channel by that set's own mean and std; the sliced Wasserstein-1
  distance of the two descriptor sets averaged over 4 x 128 random unit directions; reported
  x 1e3 per level and averaged (`swd_<size>`, `swd_avg`). Equal descriptor counts are needed
  (sorted projections are paired), so both sets use min(N_samples, N_reference) images. Being
  normalised per set, SWD does not see a global colour or contrast change of a whole level:
  the spectrum and saturation ratios below do.
- `octave_power`: the power spectrum of every channel (mean removed, 2-D Hann window, FFT),
  summed over the frequencies of each octave of radius r = |f| in cycles per pixel: band k holds
  r in (2^-(k+2), 2^-(k+1)], i.e. periods 2^(k+1) .. 2^(k+2) px (band 0 also takes the corners
  r > 0.5, the last band everything down to the lowest non-zero frequency). Reported as the
  samples' mean power per image over the data's (`power_ratio_<periods>`, 1.0 = the data's
  detail at that scale).
- `saturation`: mean HSV saturation (max - min) / max over pixels (0 where max = 0);
  `saturation_ratio` = samples over data.
"""

from __future__ import annotations

import numpy as np

from sd_jax.eval.sample_quality import to_unit

BINOMIAL_5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # cv2.pyrDown's 1-D filter.
SWD_MIN_SIZE = 16  # Smallest pyramid level (Karras et al.).
PATCH_SIZE = 7
PATCHES_PER_IMAGE = 128
DIRECTION_REPEATS, DIRECTIONS_PER_REPEAT = 4, 128


def _filter_axis(x: np.ndarray, axis: int) -> np.ndarray:
    """The 5-tap binomial filter along `axis`, edges mirrored (d c b | a b c d | c b a)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    padded = np.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    return sum(w * np.take(padded, np.arange(k, k + n), axis=axis)
               for k, w in enumerate(BINOMIAL_5))


def _blur(x_nhwc: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return gain * _filter_axis(_filter_axis(x_nhwc, 1), 2)


def pyr_down(x_nhwc: np.ndarray) -> np.ndarray:
    """Blur, then keep every other row and column (cv2.pyrDown)."""
    return _blur(x_nhwc)[:, ::2, ::2]


def pyr_up(x_nhwc: np.ndarray) -> np.ndarray:
    """Zero-interleave to twice the size, then blur with gain 4 (cv2.pyrUp)."""
    n, h, w, c = x_nhwc.shape
    up = np.zeros((n, 2 * h, 2 * w, c), x_nhwc.dtype)
    up[:, ::2, ::2] = x_nhwc
    return _blur(up, gain=4.0)


def swd_sizes(size: int) -> list[int]:
    """The pyramid's level sizes: size, size / 2, ... down to SWD_MIN_SIZE."""
    sizes = []
    while size >= SWD_MIN_SIZE:
        sizes.append(size)
        size //= 2
    return sizes


def laplacian_pyramid(x_nhwc: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """Levels finest first: each the image minus the upsampled next level; the last the
    low-pass residual."""
    levels = [np.asarray(x_nhwc, np.float64)]
    for _ in range(1, num_levels):
        levels.append(pyr_down(levels[-1]))
        levels[-2] = levels[-2] - pyr_up(levels[-1])
    return levels


def patches(level_nhwc: np.ndarray, image_b: np.ndarray, top_b: np.ndarray, left_b: np.ndarray
            ) -> np.ndarray:
    """[B, 7, 7, C]: the 7x7 patches of images `image_b` with top-left corners (top, left)."""
    offsets = np.arange(PATCH_SIZE)
    rows = (top_b[:, None] + offsets)[:, :, None]
    cols = (left_b[:, None] + offsets)[:, None, :]
    return level_nhwc[image_b[:, None, None], rows, cols]


def descriptors(level_nhwc: np.ndarray, rng: np.random.Generator,
                per_image: int = PATCHES_PER_IMAGE) -> np.ndarray:
    """[N * per_image, 7 * 7 * C]: random patches of every image, normalised per channel by
    their own mean and std (Karras et al.'s `finalize_descriptors`)."""
    n, h, w, _ = level_nhwc.shape
    image_b = np.repeat(np.arange(n), per_image)
    top_b = rng.integers(0, h - PATCH_SIZE + 1, size=len(image_b))
    left_b = rng.integers(0, w - PATCH_SIZE + 1, size=len(image_b))
    desc = patches(level_nhwc, image_b, top_b, left_b)
    desc = desc - desc.mean(axis=(0, 1, 2), keepdims=True)
    desc = desc / np.maximum(desc.std(axis=(0, 1, 2), keepdims=True), 1e-12)
    return desc.reshape(len(desc), -1)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: np.ndarray) -> float:
    """Mean over unit `directions` [D, K] of the Wasserstein-1 distance between the
    projections of the equal-sized point sets a and b [M, D] (sorted, paired, |difference|)."""
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal-sized sets, got {a.shape}, {b.shape}")
    proj_a = np.sort(directions.T @ a.T, axis=1)  # [K, M], contiguous rows: a fast sort.
    proj_b = np.sort(directions.T @ b.T, axis=1)
    return float(np.mean(np.abs(proj_a - proj_b)))


def random_directions(rng: np.random.Generator, dim: int, count: int) -> np.ndarray:
    """[dim, count] unit vectors, uniform on the sphere."""
    dirs = rng.standard_normal((dim, count))
    return dirs / np.linalg.norm(dirs, axis=0, keepdims=True)


def swd(samples: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict[str, float]:
    """`swd_<size>` per pyramid level and `swd_avg`, x 1e3 (module docstring)."""
    x, y = to_unit(samples), to_unit(reference)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"samples {x.shape[1:]} and reference {y.shape[1:]} differ in shape")
    count = min(len(x), len(y))
    sizes = swd_sizes(x.shape[1])
    rng = np.random.default_rng(seed)
    out = {}
    for size, lx, ly in zip(sizes, laplacian_pyramid(x[:count], len(sizes)),
                            laplacian_pyramid(y[:count], len(sizes)), strict=True):
        dx, dy = descriptors(lx, rng), descriptors(ly, rng)
        dist = np.mean([sliced_wasserstein(dx, dy, random_directions(
            rng, dx.shape[1], DIRECTIONS_PER_REPEAT)) for _ in range(DIRECTION_REPEATS)])
        out[f"swd_{size}"] = 1e3 * float(dist)
    out["swd_avg"] = float(np.mean(list(out.values())))
    return out


def octave_bands(size: int) -> list[str]:
    """Names of the octave bands of an image side, finest first: '2-4px', ..., '<n>+px'."""
    count = max(int(np.log2(size)) - 1, 1)
    names = [f"{2 ** (k + 1)}-{2 ** (k + 2)}px" for k in range(count - 1)]
    return [*names, f"{2 ** count}+px"]


def octave_index(size: int) -> np.ndarray:
    """int [size, size]: the band of every FFT bin (fftfreq order), -1 for the DC bin."""
    f = np.fft.fftfreq(size)
    radius = np.hypot(f[:, None], f[None, :])
    count = len(octave_bands(size))
    # r in (2^-(k+2), 2^-(k+1)] <=> -log2(r) in [k + 1, k + 2) (log2 is exact at 2^-j).
    band = np.floor(-np.log2(np.where(radius > 0, radius, 1.0))).astype(np.int64) - 1
    band = np.clip(band, 0, count - 1)
    return np.where(radius == 0, -1, band)


def octave_power(images: np.ndarray) -> np.ndarray:
    """float64 [bands]: mean over images of the windowed power in each octave, channels summed."""
    x = to_unit(images)
    n, h, w, _ = x.shape
    if h != w:
        raise ValueError(f"octave_power needs square images, got {h}x{w}")
    window = np.outer(np.hanning(h), np.hanning(w))[None, :, :, None]
    x = (x - x.mean(axis=(1, 2), keepdims=True)) * window
    power = (np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2).sum(axis=(0, 3)) / n
    index = octave_index(h)
    return np.array([power[index == k].sum() for k in range(len(octave_bands(h)))])


def saturation(images: np.ndarray) -> float:
    """Mean HSV saturation (max - min) / max over pixels, 0 where max = 0."""
    x = to_unit(images)
    high, low = x.max(axis=-1), x.min(axis=-1)
    return float(np.mean(np.where(high > 0, (high - low) / np.where(high > 0, high, 1.0), 0.0)))


def photo_metrics(samples: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict[str, float]:
    """SWD per level, power ratio per octave and saturation ratio of samples against reference
    images (uint8 or [0, 1] floats, [N, S, S, 3])."""
    out = swd(samples, reference, seed)
    ratios = octave_power(samples) / octave_power(reference)
    out.update({f"power_ratio_{name}": float(r)
                for name, r in zip(octave_bands(np.shape(samples)[1]), ratios, strict=True)})
    sat_samples, sat_data = saturation(samples), saturation(reference)
    out.update({"saturation": sat_samples, "saturation_data": sat_data,
                "saturation_ratio": sat_samples / sat_data if sat_data > 0 else float("inf")})
    return out
