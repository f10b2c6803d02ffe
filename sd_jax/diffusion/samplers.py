"""Sampling: classifier-free guidance, the time grid, and the table of solvers.

`sample(denoise_fn, rng, labels_b, spec)` takes the denoiser as a function
`denoise_fn(z_bhwc, logsnr_b, labels_b) -> output`, so it works for any model and for sharded
batches: it is traceable (one `lax.fori_loop` over a fixed number of steps, no host ops). Jit it
with the params as an argument, e.g. `jax.jit(lambda p, rng, y: sample(lambda z, l, c:
apply(p, z, l, c), rng, y, spec))`, rather than closing over concrete params (which would bake
them into the program as constants); `sd_jax.sample.generate.Sampler` does that for a model on a
mesh.

`SAMPLERS` maps `sample.sampler` to a solver of `solvers.py` and its network evaluations per step
(NFE: `nfe(spec)`); `GRIDS` maps `sample.grid` to where the `num_steps` noise levels fall. Every
grid spans the schedule's range [logSNR(t=1), logSNR(t=0)] in `num_steps` intervals, from the
noisiest end, and the solver evaluates the denoiser at its first `num_steps` points: the last
point (the clean end) is where the final x0 prediction lands.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sd_jax.diffusion import process, schedules, solvers
from sd_jax.diffusion.process import DenoiseFn
from sd_jax.diffusion.solvers import Predict
from sd_jax.diffusion.spec import SamplingSpec


def guided_output(
    denoise_fn: DenoiseFn,
    z_bhwc: jax.Array,
    logsnr_b: jax.Array,
    labels_b: jax.Array,
    *,
    guidance_scale: float,
    guidance_logsnr_min: float,
    guidance_logsnr_max: float,
    null_label: int,
) -> jax.Array:
    """Denoiser output with classifier-free guidance `(1 + w) out_cond - w out_uncond`.

    `guidance_scale = 1 + w` must be a Python number; at 1.0 only the conditional pass runs.
    The combination is applied to the raw output: eps, v and x0 are all affine in one another
    with z-only offsets, so it equals `eps = (1 + w) eps_cond - w eps_uncond` in every form.
    Guidance acts where `guidance_logsnr_min <= logsnr <= guidance_logsnr_max` (SiD2 interval);
    elsewhere the conditional output is returned unchanged. All `logsnr_b` entries must agree
    (one noise level per step, as in `sample`), since the interval check uses the first one.

    Inside the interval both passes run as ONE call on a batch of 2B, example i's conditional and
    unconditional rows side by side (rows 2i, 2i + 1): one large forward keeps an accelerator
    busier than two small ones, and since the pairs stay next to each other a batch split over
    devices is doubled in place, with no data moved between devices. Outside the interval a
    `lax.cond` runs the conditional pass alone on B rows (no work for an output nobody uses).
    """
    dtype = z_bhwc.dtype  # float32 (float64 in the exactness tests), whatever the model's.
    if guidance_scale == 1.0:
        return denoise_fn(z_bhwc, logsnr_b, labels_b).astype(dtype)
    w = guidance_scale - 1.0
    logsnr = logsnr_b.reshape(-1)[0]
    in_interval = (logsnr >= guidance_logsnr_min) & (logsnr <= guidance_logsnr_max)

    def pairs(x_b: jax.Array, y_b: jax.Array) -> jax.Array:  # [B, ...] x2 -> [2B, ...]
        return jnp.stack([x_b, y_b], axis=1).reshape(-1, *x_b.shape[1:])

    def guided() -> jax.Array:
        null_b = jnp.full_like(labels_b, null_label)
        out = denoise_fn(pairs(z_bhwc, z_bhwc), pairs(logsnr_b, logsnr_b),
                         pairs(labels_b, null_b)).astype(dtype)
        out = out.reshape(-1, 2, *out.shape[1:])
        return (1.0 + w) * out[:, 0] - w * out[:, 1]

    def conditional() -> jax.Array:
        return denoise_fn(z_bhwc, logsnr_b, labels_b).astype(dtype)

    return jax.lax.cond(in_interval, guided, conditional)


def predictor(denoise_fn: DenoiseFn, labels_b: jax.Array, spec: SamplingSpec) -> Predict:
    """`predict(z, logsnr_b) -> (x0_hat, eps_hat)`: the guided output as x0 and eps, x0 clipped
    to [-1, 1] (and eps made consistent with it) when `spec.clip_x0`."""
    def predict(z: jax.Array, logsnr_b: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = guided_output(
            denoise_fn, z, logsnr_b, labels_b, guidance_scale=spec.guidance_scale,
            guidance_logsnr_min=spec.guidance_logsnr_min,
            guidance_logsnr_max=spec.guidance_logsnr_max, null_label=spec.num_classes)
        x0, eps = process.x0_eps_from_output(z, out, logsnr_b, spec.diffusion.prediction)
        if spec.clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
            alpha, sigma = schedules.alpha_sigma(logsnr_b[0])
            eps = (z - alpha * x0) / sigma  # Keep (x0, eps) consistent with z after clipping.
        return x0, eps

    return predict


def _uniform_t(spec: SamplingSpec) -> Callable[[jax.Array | int], jax.Array]:
    """Point i at t = i / n of the configured schedule (the paper's grid)."""
    logsnr_fn = spec.diffusion.logsnr_fn()
    return lambda i: logsnr_fn(i / spec.num_steps)


def _uniform_logsnr(spec: SamplingSpec) -> Callable[[jax.Array | int], jax.Array]:
    """Equal steps in logSNR (DPM-Solver's 'logSNR' grid)."""
    low, high = spec.diffusion.logsnr_range()
    return lambda i: low + (high - low) * (spec.num_steps - i) / spec.num_steps


EDM_RHO = 7.0  # Karras et al. 2022's grid exponent.


def _edm(spec: SamplingSpec) -> Callable[[jax.Array | int], jax.Array]:
    """EDM's grid (rho = 7) in sigma' = sigma / alpha = exp(-logSNR / 2): steps small near the
    clean end, where detail forms."""
    low, high = spec.diffusion.logsnr_range()
    root_max, root_min = math.exp(-low / 2) ** (1 / EDM_RHO), math.exp(-high / 2) ** (1 / EDM_RHO)

    def logsnr_at(i):
        u = (spec.num_steps - i) / spec.num_steps
        return -2.0 * EDM_RHO * jnp.log(root_max + u * (root_min - root_max))

    return logsnr_at


# `sample.grid` name -> spec -> (grid point i -> logSNR); point num_steps is the noisiest.
GRIDS: dict[str, Callable[[SamplingSpec], Callable[[jax.Array | int], jax.Array]]] = {
    "uniform_t": _uniform_t,
    "uniform_logsnr": _uniform_logsnr,
    "edm": _edm,
}


class SamplerEntry(NamedTuple):
    """A solver and the network evaluations each of its steps costs."""

    solve: solvers.Solver
    evaluations_per_step: int


# `sample.sampler` name -> its solver (solvers.py) and network evaluations per step.
SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry(solvers.first_order(solvers.ddpm_update), 1),  # Paper, noise_param 0.2.
    "ddim": SamplerEntry(solvers.first_order(solvers.ddim_update), 1),
    "dpmpp_2m": SamplerEntry(solvers.dpmpp_2m(), 1),
    "dpmpp_2m_sde": SamplerEntry(solvers.dpmpp_2m_sde(), 1),
    "heun": SamplerEntry(solvers.heun(), 2),
}


def nfe(spec: SamplingSpec) -> int:
    """Network evaluations per image (a guided pass counts once, whatever its batch): the
    solver's evaluations per step over `num_steps - 1` steps, plus the final x0 prediction."""
    return SAMPLERS[spec.sampler].evaluations_per_step * (spec.num_steps - 1) + 1


def steps_for_nfe(sampler: str, budget: int) -> int:
    """The most steps of `sampler` whose NFE (`nfe`) is at most `budget` (at least 2)."""
    return max(2, (budget - 1) // SAMPLERS[sampler].evaluations_per_step + 1)


def sample(denoise_fn: DenoiseFn, rng: jax.Array, labels_b: jax.Array, spec: SamplingSpec
           ) -> jax.Array:
    """One image per label with `spec`: float32 [B, H, W, C] x0 (in [-1, 1] if `clip_x0`); in
    float64 where JAX's default float is (under `jax.enable_x64`, for the exactness tests)."""
    batch_size, dtype = labels_b.shape[0], jnp.result_type(float)
    grid = GRIDS[spec.grid](spec)
    rng_init, rng_steps = jax.random.split(rng)

    def logsnr_at(i):  # Noise level at grid point i, one per example.
        return jnp.full((batch_size,), grid(i), dtype)

    z = jax.random.normal(rng_init, (batch_size, *spec.shape), dtype)
    predict = predictor(denoise_fn, labels_b, spec)
    return SAMPLERS[spec.sampler].solve(predict, z, logsnr_at, rng_steps, spec)
