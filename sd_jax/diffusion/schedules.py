"""Noise schedules in logSNR form (docs/recipe.md sections 1-2).

Everything here is a pure function of arrays: it broadcasts, and works under jit, vmap and grad.
`t` runs from 0 (clean data, high logSNR) to 1 (pure noise, low logSNR).
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from sd_jax.errors import UserError

SCHEDULES = ("cosine", "shifted_cosine", "interpolated_cosine")
TIME_SAMPLING = ("uniform", "stratified")


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


def get_logsnr_fn(
    diffusion_cfg: ml_collections.ConfigDict, image_size: int
) -> Callable[[jax.Array], jax.Array]:
    """The schedule `t -> logsnr` named by `diffusion_cfg.schedule` for `image_size` images."""
    name = diffusion_cfg.schedule
    clip = dict(logsnr_min=diffusion_cfg.logsnr_min, logsnr_max=diffusion_cfg.logsnr_max)
    if name == "cosine":
        return functools.partial(logsnr_cosine, **clip)
    if name == "shifted_cosine":
        return functools.partial(
            logsnr_shifted_cosine, image_d=image_size, noise_d=diffusion_cfg.noise_d, **clip
        )
    if name == "interpolated_cosine":
        if diffusion_cfg.noise_d_low > diffusion_cfg.noise_d_high:
            raise UserError(
                f"diffusion.noise_d_low={diffusion_cfg.noise_d_low} is above diffusion."
                f"noise_d_high={diffusion_cfg.noise_d_high}; noise_d_low is the stronger shift, "
                "used at the noisy end t = 1 (e.g. 32 and 256 at 512): swap them.")
        return functools.partial(
            logsnr_interpolated_cosine,
            image_d=image_size,
            noise_d_low=diffusion_cfg.noise_d_low,
            noise_d_high=diffusion_cfg.noise_d_high,
            **clip,
        )
    raise UserError(f"Unknown diffusion.schedule={name!r}; choose one of {', '.join(SCHEDULES)}.")


def sample_times(rng: jax.Array, batch_size: int, method: str = "uniform") -> jax.Array:
    """Draws `t_b` in [0, 1) for a batch.

    'uniform': independent U(0, 1). 'stratified': low-discrepancy as in VDM, one shared offset
    `u ~ U(0, 1)` and `t_i = (u + i / B) mod 1`, so the batch covers [0, 1) evenly.
    """
    if method == "uniform":
        return jax.random.uniform(rng, (batch_size,))
    if method == "stratified":
        offset = jax.random.uniform(rng, ())
        return jnp.mod(offset + jnp.arange(batch_size) / batch_size, 1.0)
    raise UserError(
        f"Unknown diffusion.time_sampling={method!r}; choose one of {', '.join(TIME_SAMPLING)}."
    )
