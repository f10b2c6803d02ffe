"""Fixed, exactly invertible input transforms (paper: "downsample early") and their inverses.

- 'none': identity.
- 'dwt1' / 'dwt2': orthonormal 2D Haar wavelet transform, level 1 / 2. Level 1 maps every 2x2
  block [[a, b], [c, d]] to the four subbands LL = (a+b+c+d)/2, LH = (a-b+c-d)/2,
  HL = (a+b-c-d)/2, HH = (a-b-c+d)/2 (an orthonormal 4x4 matrix, so energy is preserved and the
  inverse is the transpose). Level 2 applies level 1 again to all four subbands (the full
  wavelet-packet tree), giving 16x channels at 1/4 the size.
- 'dwt53_1' / 'dwt53_2': the LeGall 5/3 wavelet, JPEG 2000's reversible wavelet and the one the
  paper names, in its real-valued lifting form (no rounding). Per 1-D step on x[0..N-1]:
      high[i] = x[2i+1] - (x[2i] + x[2i+2]) / 2      (predict; x[N] := x[N-2])
      low[i]  = x[2i] + (high[i-1] + high[i]) / 4      (update;  high[-1] := high[0])
  i.e. the filters (-1, 2, 6, 2, -1)/8 and (-1, 2, -1)/2 with whole-sample symmetric extension at
  the borders. Run along W, then H, giving LL, LH, HL, HH in Haar's order; level 2 applies it to
  every subband again, like 'dwt2'. The odd samples are predicted linearly, so a linear ramp
  leaves nothing in the high bands (away from the last row / column); Haar's are constant there.
  Band scaling: 5/3 is biorthogonal, not orthonormal, so no scaling preserves energy. Each band
  is multiplied by a constant chosen so that unit white noise (eps, and the noise part of the
  network input) has unit variance in every band away from the borders, as it has under Haar:
  the inverse L2 norm of the band's equivalent analysis filter (level 1: sqrt(32/23) for a low
  and sqrt(2/3) for a high step per axis). A flat image's LL band is 1.39x / 2.30x its value at
  level 1 / 2 (Haar: 2x / 4x).
- 'patch': space-to-depth with patch size p (p^2 x channels at 1/p the size).

The learned 'conv' input transform ("conv 4x4") is part of the network (`unet.UNet`), not here.
Channel layout after a transform: [..., subband/patch position, original channel] flattened,
so the original RGB channels are the fastest-varying axis; for level 2, [level-2 band,
level-1 band, channel].
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

KINDS = ("none", "dwt1", "dwt2", "dwt53_1", "dwt53_2", "patch")

# Rows: LL, LH, HL, HH; columns: the 2x2 block positions (0,0), (0,1), (1,0), (1,1).
HAAR_2X2 = 0.5 * np.array(
    [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=np.float32)
# What the two 5/3 lifting steps compute away from the borders (low at even, high at odd x).
LEGALL53_ANALYSIS = (np.array([-1, 2, 6, 2, -1]) / 8, np.array([-1, 2, -1]) / 2)


def factor(kind: str, patch_size: int = 1) -> int:
    """Spatial downsampling of the transform `kind`."""
    return {"none": 1, "dwt1": 2, "dwt2": 4, "dwt53_1": 2, "dwt53_2": 4,
            "patch": patch_size}[kind]


def space_to_depth(x_bhwc: jnp.ndarray, p: int) -> jnp.ndarray:
    """[B, H, W, C] -> [B, H/p, W/p, p*p*C], patch position major, channel minor."""
    b, h, w, c = x_bhwc.shape
    x = x_bhwc.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x_bhwc: jnp.ndarray, p: int) -> jnp.ndarray:
    """Exact inverse of `space_to_depth`."""
    b, h, w, pc = x_bhwc.shape
    c = pc // (p * p)
    x = x_bhwc.reshape(b, h, w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c)


def haar_dwt(x_bhwc: jnp.ndarray) -> jnp.ndarray:
    """One level of the orthonormal 2D Haar DWT: [B, H, W, C] -> [B, H/2, W/2, 4C]."""
    b, h, w, c = x_bhwc.shape
    blocks = space_to_depth(x_bhwc, 2).reshape(b, h // 2, w // 2, 4, c)
    bands = jnp.einsum("sk,bhwkc->bhwsc", HAAR_2X2, blocks, precision="highest")
    return bands.reshape(b, h // 2, w // 2, 4 * c)


def haar_idwt(x_bhwc: jnp.ndarray) -> jnp.ndarray:
    """Exact inverse of `haar_dwt` (the transpose of an orthonormal map)."""
    b, h, w, c4 = x_bhwc.shape
    bands = x_bhwc.reshape(b, h, w, 4, c4 // 4)
    blocks = jnp.einsum("sk,bhwsc->bhwkc", HAAR_2X2, bands, precision="highest")
    return depth_to_space(blocks.reshape(b, h, w, c4), 2)


def _shift_next(a: jnp.ndarray) -> jnp.ndarray:
    """a[i + 1] along axis 0, the last entry repeated (whole-sample symmetric extension)."""
    return jnp.concatenate([a[1:], a[-1:]], axis=0)


def _shift_prev(a: jnp.ndarray) -> jnp.ndarray:
    """a[i - 1] along axis 0, the first entry repeated (the extension's image in the highs)."""
    return jnp.concatenate([a[:1], a[:-1]], axis=0)


def lift53(x: jnp.ndarray, axis: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One unscaled 1-D 5/3 lifting step along `axis` (even length): `(low, high)`."""
    x = jnp.moveaxis(x, axis, 0)
    even, odd = x[0::2], x[1::2]
    high = odd - 0.5 * (even + _shift_next(even))
    low = even + 0.25 * (_shift_prev(high) + high)
    return jnp.moveaxis(low, 0, axis), jnp.moveaxis(high, 0, axis)


def unlift53(low: jnp.ndarray, high: jnp.ndarray, axis: int) -> jnp.ndarray:
    """Exact inverse of `lift53`: the same two steps undone in reverse order."""
    low, high = jnp.moveaxis(low, axis, 0), jnp.moveaxis(high, axis, 0)
    even = low - 0.25 * (_shift_prev(high) + high)
    odd = high + 0.5 * (even + _shift_next(even))
    x = jnp.stack([even, odd], axis=1).reshape((2 * even.shape[0],) + even.shape[1:])
    return jnp.moveaxis(x, 0, axis)


def _dwt53_level(x_bhwc: jnp.ndarray) -> jnp.ndarray:
    """One unscaled 2D level: [B, H, W, C] -> [B, H/2, W/2, 4C] (LL, LH, HL, HH)."""
    b, h, w, c = x_bhwc.shape
    low_w, high_w = lift53(x_bhwc, axis=2)
    ll, hl = lift53(low_w, axis=1)
    lh, hh = lift53(high_w, axis=1)
    return jnp.stack([ll, lh, hl, hh], axis=3).reshape(b, h // 2, w // 2, 4 * c)


def _idwt53_level(y_bhwc: jnp.ndarray) -> jnp.ndarray:
    b, h, w, c4 = y_bhwc.shape
    ll, lh, hl, hh = jnp.moveaxis(y_bhwc.reshape(b, h, w, 4, c4 // 4), 3, 0)
    low_w, high_w = unlift53(ll, hl, axis=1), unlift53(lh, hh, axis=1)
    return unlift53(low_w, high_w, axis=2)


def _filter_norm_1d(path: tuple[int, ...]) -> float:
    """L2 norm of the 1-D analysis filter of `path` (0 low / 1 high per level, level 1 first).

    Filtering and downsampling by 2, then filtering with g, equals filtering with the
    convolution of the first filter and g upsampled by 2 (noble identity), and so on.
    """
    total = np.ones(1)
    for level, band in enumerate(path):
        taps = LEGALL53_ANALYSIS[band]
        upsampled = np.zeros((len(taps) - 1) * 2**level + 1)
        upsampled[:: 2**level] = taps
        total = np.convolve(total, upsampled)
    return float(np.sqrt(np.sum(total**2)))


def dwt53_band_gains(levels: int) -> np.ndarray:
    """Per-band scale of `dwt53_{levels}`, in channel order: unit white-noise variance per band."""
    gains = []
    for bands in itertools.product(range(4), repeat=levels):  # (last level, ..., level 1).
        first_to_last = bands[::-1]
        along_h = tuple(b // 2 for b in first_to_last)
        along_w = tuple(b % 2 for b in first_to_last)
        gains.append(1.0 / (_filter_norm_1d(along_h) * _filter_norm_1d(along_w)))
    return np.asarray(gains)


def dwt53(x_bhwc: jnp.ndarray, levels: int) -> jnp.ndarray:
    """LeGall 5/3 DWT, `levels` deep on every band: [B, H, W, C] -> [B, H/2^l, W/2^l, 4^l C]."""
    y = x_bhwc
    for _ in range(levels):
        y = _dwt53_level(y)
    b, h, w, ch = y.shape
    gains = jnp.asarray(dwt53_band_gains(levels), y.dtype)
    return (y.reshape(b, h, w, 4**levels, -1) * gains[:, None]).reshape(b, h, w, ch)


def idwt53(y_bhwc: jnp.ndarray, levels: int) -> jnp.ndarray:
    """Exact inverse of `dwt53`."""
    b, h, w, ch = y_bhwc.shape
    gains = jnp.asarray(dwt53_band_gains(levels), y_bhwc.dtype)
    x = (y_bhwc.reshape(b, h, w, 4**levels, -1) / gains[:, None]).reshape(b, h, w, ch)
    for _ in range(levels):
        x = _idwt53_level(x)
    return x


def _forward_inverse(kind: str, patch_size: int) -> tuple[Callable, Callable]:
    pairs = {
        "none": (lambda x: x, lambda x: x),
        "dwt1": (haar_dwt, haar_idwt),
        "dwt2": (lambda x: haar_dwt(haar_dwt(x)), lambda x: haar_idwt(haar_idwt(x))),
        "dwt53_1": (lambda x: dwt53(x, 1), lambda x: idwt53(x, 1)),
        "dwt53_2": (lambda x: dwt53(x, 2), lambda x: idwt53(x, 2)),
        "patch": (lambda x: space_to_depth(x, patch_size),
                  lambda x: depth_to_space(x, patch_size)),
    }
    if kind not in pairs:
        raise ValueError(f"unknown input transform {kind!r}; one of {KINDS}")
    return pairs[kind]


def forward(x_bhwc: jnp.ndarray, kind: str, patch_size: int = 1) -> jnp.ndarray:
    """Applies the input transform `kind` (one of `KINDS`)."""
    return _forward_inverse(kind, patch_size)[0](x_bhwc)


def inverse(y_bhwc: jnp.ndarray, kind: str, patch_size: int = 1) -> jnp.ndarray:
    """Exact inverse of `forward`, applied to the network's output."""
    return _forward_inverse(kind, patch_size)[1](y_bhwc)
