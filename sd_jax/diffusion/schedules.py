"""Noise schedules in logSNR form (docs/recipe.md sections 1-2), and how training draws times.

Everything here is a pure function of arrays: it broadcasts, and works under jit, vmap and grad.
`t` runs from 0 (clean data, high logSNR) to 1 (pure noise, low logSNR). `spec.SCHEDULES` maps
a schedule's name to these functions with a spec's parameters; `TIME_SAMPLING` maps a name to how
a batch draws its times.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


def logsnr_cosine(t: jax.Array, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> jax.Array:
    """Cosine schedule `-2 log tan(pi t / 2)`, clipped to [logsnr_min, logsnr_max].

    The clip reparametrises `t` (rather than clipping the output), so the schedule stays smooth
    and has finite gradients at t = 0 and t = 1.
    """
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    t = jnp.asarray(t, jnp.result_type(float))
    return -2.0 * jnp.log(jnp.tan(t_min + t * (t_max - t_min)))


def logsnr_shifted_cosine(
    t: jax.Array,
    image_d: int,
    noise_d: int = 64,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> jax.Array:
    """Cosine schedule shifted for `image_d` pixels so that, pooled to `noise_d`, its SNR is the
    cosine schedule's: `logsnr_cosine(t) + 2 log(noise_d / image_d)` (paper section 3.1)."""
    shift = 2.0 * math.log(noise_d / image_d)
    return logsnr_cosine(t, logsnr_min, logsnr_max) + shift


def logsnr_interpolated_cosine(
    t: jax.Array,
    image_d: int,
    noise_d_low: int,
    noise_d_high: int,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> jax.Array:
    """Interpolates in logSNR between two shifts: `t * shifted(noise_d_low) + (1 - t) *
    shifted(noise_d_high)`, the order of the paper's code listing (docs/recipe.md section 2).

    So the mildest shift (`noise_d_high`, fine detail) holds at the clean end t = 0 and the
    strongest (`noise_d_low`, most noise, global structure) at the noisy end t = 1: at 512 with
    32 / 256 and the +-15 clip it runs from 15 + 2 ln(256/512) ~ 13.6 down to
    -15 + 2 ln(32/512) ~ -20.5: each end is that of the shift that is meant to govern it.
    """
    t = jnp.asarray(t, jnp.result_type(float))
    low = logsnr_shifted_cosine(t, image_d, noise_d_low, logsnr_min, logsnr_max)
    high = logsnr_shifted_cosine(t, image_d, noise_d_high, logsnr_min, logsnr_max)
    return t * low + (1.0 - t) * high


def alpha_sigma(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns `(alpha, sigma)` with `alpha^2 = sigmoid(logsnr)`, `sigma^2 = sigmoid(-logsnr)`.

    Computed as `exp(log_sigmoid(.) / 2)`, i.e. `sqrt(sigmoid(.))` in log space: no `1 - x`
    cancellation, and no zero under the square root (so finite gradients) even at |logsnr| ~ 100.
    """
    logsnr = jnp.asarray(logsnr, jnp.result_type(float))
    alpha = jnp.exp(0.5 * jax.nn.log_sigmoid(logsnr))
    sigma = jnp.exp(0.5 * jax.nn.log_sigmoid(-logsnr))
    return alpha, sigma


def uniform_times(rng: jax.Array, batch_size: int) -> jax.Array:
    """Independent `t ~ U(0, 1)` per example."""
    return jax.random.uniform(rng, (batch_size,))


def stratified_times(rng: jax.Array, batch_size: int) -> jax.Array:
    """Low-discrepancy times as in VDM: one shared offset `u ~ U(0, 1)` and
    `t_i = (u + i / B) mod 1`, so the batch covers [0, 1) evenly."""
    offset = jax.random.uniform(rng, ())
    return jnp.mod(offset + jnp.arange(batch_size) / batch_size, 1.0)


# `diffusion.time_sampling` name -> how a batch draws its `t_b` in [0, 1).
TIME_SAMPLING: dict[str, Callable[[jax.Array, int], jax.Array]] = {
    "uniform": uniform_times,
    "stratified": stratified_times,
}


def sample_times(rng: jax.Array, batch_size: int, method: str = "uniform") -> jax.Array:
    """Draws `t_b` in [0, 1) for a batch with `TIME_SAMPLING[method]`."""
    return TIME_SAMPLING[method](rng, batch_size)
