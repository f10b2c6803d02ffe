"""Lossless input transforms (paper section 4: downsample early) and their exact inverses.

- 'none': identity.
- 'dwt1' / 'dwt2': orthonormal 2D Haar wavelet transform, level 1 / 2. Level 1 maps every 2x2
  block [[a, b], [c, d]] to the four subbands LL = (a+b+c+d)/2, LH = (a-b+c-d)/2,
  HL = (a+b-c-d)/2, HH = (a-b-c+d)/2 (an orthonormal 4x4 matrix, so energy is preserved and the
  inverse is the transpose). Level 2 applies level 1 again to all four subbands (the full Haar
  wavelet-packet tree), giving 16x channels at 1/4 the size, as in the paper's "DWT-2".
- 'patch': space-to-depth with patch size p (p^2 x channels at 1/p the size).

Channel layout after a transform: [..., subband/patch position, original channel] flattened,
so the original RGB channels are the fastest-varying axis.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

# Rows: LL, LH, HL, HH; columns: the 2x2 block positions (0,0), (0,1), (1,0), (1,1).
HAAR_2X2 = 0.5 * np.array(
    [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=np.float32)


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


def _forward_inverse(kind: str, patch_size: int) -> tuple[Callable, Callable]:
    pairs = {
        "none": (lambda x: x, lambda x: x),
        "dwt1": (haar_dwt, haar_idwt),
        "dwt2": (lambda x: haar_dwt(haar_dwt(x)), lambda x: haar_idwt(haar_idwt(x))),
        "patch": (lambda x: space_to_depth(x, patch_size),
                  lambda x: depth_to_space(x, patch_size)),
    }
    if kind not in pairs:
        raise ValueError(f"unknown input transform {kind!r}")
    return pairs[kind]


def forward(x_bhwc: jnp.ndarray, kind: str, patch_size: int = 1) -> jnp.ndarray:
    """Applies the input transform `kind` ('none' | 'dwt1' | 'dwt2' | 'patch')."""
    return _forward_inverse(kind, patch_size)[0](x_bhwc)


def inverse(y_bhwc: jnp.ndarray, kind: str, patch_size: int = 1) -> jnp.ndarray:
    """Exact inverse of `forward`, applied to the network's output."""
    return _forward_inverse(kind, patch_size)[1](y_bhwc)
