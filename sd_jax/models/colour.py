"""Orthonormal colour transform of RGB before the input transform (`model.colour_transform`).

'opponent' rotates (R, G, B) into one grey channel (R + G + B) / sqrt(3) and two colour
differences (R - G) / sqrt(2), (R + G - 2B) / sqrt(6); the network's output is rotated back.
Like the DWT it is lossless and orthonormal (white noise stays white), so only the network's
inputs and outputs change basis. Why: after DWT-2 the LL band of each RGB channel carries 16x
the pixel variance; on grey (or nearly grey) data the colour part of the noise there is a small
difference between three large, nearly equal channels, and Adam, which scales each weight on its
own, learns to cancel the common part very slowly. With the colour differences in their own
channels the model learns them as fast as any other band (docs/resolution.md).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

COLOUR_TRANSFORMS = ("none", "opponent")

_OPPONENT = np.array([[1, 1, 1], [1, -1, 0], [1, 1, -2]], np.float64)
OPPONENT = (_OPPONENT / np.linalg.norm(_OPPONENT, axis=1, keepdims=True)).astype(np.float32)


def forward(x_bhwc: jnp.ndarray, kind: str) -> jnp.ndarray:
    """RGB -> the `kind` colour basis (identity for 'none'); channels last."""
    if kind == "none":
        return x_bhwc
    return jnp.einsum("...c,dc->...d", x_bhwc, OPPONENT, precision="highest")


def inverse(y_bhwc: jnp.ndarray, kind: str) -> jnp.ndarray:
    """Exact inverse of `forward` (the transpose of an orthonormal matrix)."""
    if kind == "none":
        return y_bhwc
    return jnp.einsum("...d,dc->...c", y_bhwc, OPPONENT, precision="highest")
