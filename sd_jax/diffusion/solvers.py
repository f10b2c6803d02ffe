"""The samplers' update rules: how the state moves from one noise level of the grid to the next.

Every solver is a function `(predict, z, logsnr_at, rng, spec) -> x0` (`samplers.SAMPLERS` names
them): `predict(z, logsnr_b)` is the guided, clipped `(x0_hat, eps_hat)` at one noise level,
`z` the initial noise, `logsnr_at(i)` the per-example noise level of grid point `i` (`n =
spec.num_steps` is the noisiest, 1 the last one evaluated) and `rng` the key of the noise a
stochastic solver adds. Each moves z from point n down to point 1 and returns the x0 prediction
there, which is a first-order step to the clean end (sigma = 0), as in the reference solvers.

Notation: `lambda = logSNR / 2 = log(alpha / sigma)`; a step from s to t (less noise) has
`h = lambda_t - lambda_s > 0`. DPM-Solver++ (Lu et al. 2022) works with the data prediction
`D = x0_hat` in this time; EDM's Heun (Karras et al. 2022) integrates `dx/dsigma' = (x - D) /
sigma'` in the variance-exploding variables `x = z / alpha`, `sigma' = sigma / alpha`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sd_jax.diffusion import schedules
from sd_jax.diffusion.spec import SamplingSpec

Predict = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
LogSnrAt = Callable[[jax.Array | int], jax.Array]
Solver = Callable[[Predict, jax.Array, LogSnrAt, jax.Array, SamplingSpec], jax.Array]


def ddpm_log_variance(logsnr_t: jax.Array, logsnr_s: jax.Array, noise_param: float) -> jax.Array:
    """log of `upper^noise_param * lower^(1 - noise_param)` for the step t -> s (s < t).

    upper = sigma_{t|s}^2 = (1 - r) sigma_t^2 (forward transition variance, 'beta'),
    lower = sigma_{s|t}^2 = (1 - r) sigma_s^2 (posterior variance), r = exp(logsnr_t - logsnr_s).
    """
    log_one_minus_r = jnp.log(-jnp.expm1(logsnr_t - logsnr_s))
    log_sigma2_t = jax.nn.log_sigmoid(-logsnr_t)
    log_sigma2_s = jax.nn.log_sigmoid(-logsnr_s)
    return log_one_minus_r + noise_param * log_sigma2_t + (1.0 - noise_param) * log_sigma2_s


def ddpm_update(z, x0, eps, logsnr_t, logsnr_s, noise_key, spec):
    """Ancestral step t -> s: the posterior mean of q(z_s | z_t, x0) plus noise of variance
    `exp(noise_param log upper + (1 - noise_param) log lower)` (iDDPM / VDM convention)."""
    del eps
    alpha_t, _ = schedules.alpha_sigma(logsnr_t)
    alpha_s, _ = schedules.alpha_sigma(logsnr_s)
    r = jnp.exp(logsnr_t - logsnr_s)  # Mean: r alpha_s / alpha_t z_t + (1 - r) alpha_s x0.
    mean = r * (alpha_s / alpha_t) * z + (1.0 - r) * alpha_s * x0
    std = jnp.exp(0.5 * ddpm_log_variance(logsnr_t, logsnr_s, spec.noise_param))
    return mean + std * jax.random.normal(noise_key, z.shape, z.dtype)


def ddim_update(z, x0, eps, logsnr_t, logsnr_s, noise_key, spec):
    """Deterministic step t -> s: `z_s = alpha_s x0 + sigma_s eps` (first order in lambda)."""
    del z, logsnr_t, noise_key, spec
    alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
    return alpha_s * x0 + sigma_s * eps


def first_order(update: Callable[..., jax.Array]) -> Solver:
    """A solver that calls the denoiser once per step and moves z with `update(z, x0, eps,
    logsnr_t, logsnr_s, noise_key, spec) -> z_s` (DDPM, DDIM)."""
    def run(predict: Predict, z: jax.Array, logsnr_at: LogSnrAt, rng: jax.Array,
            spec: SamplingSpec) -> jax.Array:
        n = spec.num_steps

        def step(j, z):  # j = 0 .. n - 2 goes from t = (n - j) / n to s = (n - j - 1) / n.
            i = n - j
            x0, eps = predict(z, logsnr_at(i))
            return update(z, x0, eps, logsnr_at(i)[0], logsnr_at(i - 1)[0],
                          jax.random.fold_in(rng, j), spec)

        z = jax.lax.fori_loop(0, n - 1, step, z)
        return predict(z, logsnr_at(1))[0]

    return run


def _multistep(update: Callable[..., jax.Array], second_order: bool) -> Solver:
    """A two-step solver in lambda with data prediction: `update(z, x0, x0_prev, r, logsnr_s,
    logsnr_t, noise_key)` moves z from s to t, where `r = h_prev / h` and `x0_prev` is the
    prediction of the step before (unused at the first step, which is first order, and without
    `second_order`: the tests remove the correction this way to see the order fall)."""
    def run(predict: Predict, z: jax.Array, logsnr_at: LogSnrAt, rng: jax.Array,
            spec: SamplingSpec) -> jax.Array:
        n = spec.num_steps

        def step(j, carry):
            z, x0_prev, h_prev = carry
            i = n - j
            logsnr_s, logsnr_t = logsnr_at(i)[0], logsnr_at(i - 1)[0]
            x0, _ = predict(z, logsnr_at(i))
            h = 0.5 * (logsnr_t - logsnr_s)
            r = jnp.where(j == 0, 1.0, h_prev / h)  # Any r: the first step ignores x0_prev.
            corrected = second_order & (j > 0)
            z = update(z, x0, jnp.where(corrected, x0_prev, x0), r, logsnr_s, logsnr_t,
                       jax.random.fold_in(rng, j))
            return z, x0, h

        zero = jnp.zeros((), z.dtype)
        z, _, _ = jax.lax.fori_loop(0, n - 1, step, (z, jnp.zeros_like(z), zero))
        return predict(z, logsnr_at(1))[0]

    return run


def dpmpp_2m_update(z, x0, x0_prev, r, logsnr_s, logsnr_t, noise_key):
    """DPM-Solver++(2M), s -> t: `z_t = (sigma_t / sigma_s) z_s + alpha_t (1 - e^-h) D` with
    `D = (1 + 1 / (2r)) x0 - x0_prev / (2r)` (`D = x0` when `x0_prev = x0`: first order)."""
    del noise_key
    alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
    alpha_t, sigma_t = schedules.alpha_sigma(logsnr_t)
    h = 0.5 * (logsnr_t - logsnr_s)
    d = x0 + (x0 - x0_prev) / (2.0 * r)
    return (sigma_t / sigma_s) * z - alpha_t * jnp.expm1(-h) * d


def dpmpp_2m_sde_update(z, x0, x0_prev, r, logsnr_s, logsnr_t, noise_key):
    """DPM-Solver++(2M) SDE (midpoint form), s -> t:
    `z_t = (sigma_t / sigma_s) e^-h z_s + alpha_t (1 - e^-2h) (x0 + (x0 - x0_prev) / (2r))
    + sigma_t sqrt(1 - e^-2h) noise`: the reverse SDE's exact solution for a constant D (first
    order) plus the two-step correction of D."""
    alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
    alpha_t, sigma_t = schedules.alpha_sigma(logsnr_t)
    h = 0.5 * (logsnr_t - logsnr_s)
    d = x0 + (x0 - x0_prev) / (2.0 * r)
    mean = (sigma_t / sigma_s) * jnp.exp(-h) * z - alpha_t * jnp.expm1(-2.0 * h) * d
    std = sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * h))
    return mean + std * jax.random.normal(noise_key, z.shape, z.dtype)


def dpmpp_2m(second_order: bool = True) -> Solver:
    """DPM-Solver++(2M): one network evaluation per step, second order after the first."""
    return _multistep(dpmpp_2m_update, second_order)


def dpmpp_2m_sde(second_order: bool = True) -> Solver:
    """DPM-Solver++(2M) SDE: as `dpmpp_2m`, with the noise of the reverse SDE added."""
    return _multistep(dpmpp_2m_sde_update, second_order)


def heun(second_order: bool = True) -> Solver:
    """EDM's Heun: an Euler (= DDIM) step to t, the denoiser again there, and the trapezoid of
    the two slopes in `x = z / alpha`, `sigma' = e^-lambda`; two network evaluations per step
    (one for the last, Euler, step to sigma = 0). Without `second_order`: plain Euler."""
    def run(predict: Predict, z: jax.Array, logsnr_at: LogSnrAt, rng: jax.Array,
            spec: SamplingSpec) -> jax.Array:
        del rng
        n = spec.num_steps

        def step(j, z):
            i = n - j
            logsnr_s, logsnr_t = logsnr_at(i)[0], logsnr_at(i - 1)[0]
            alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
            alpha_t, sigma_t = schedules.alpha_sigma(logsnr_t)
            x, ve_s, ve_t = z / alpha_s, sigma_s / alpha_s, sigma_t / alpha_t
            slope_s = (x - predict(z, logsnr_at(i))[0]) / ve_s
            x_euler = x + (ve_t - ve_s) * slope_s
            if not second_order:
                return alpha_t * x_euler
            slope_t = (x_euler - predict(alpha_t * x_euler, logsnr_at(i - 1))[0]) / ve_t
            return alpha_t * (x + (ve_t - ve_s) * 0.5 * (slope_s + slope_t))

        z = jax.lax.fori_loop(0, n - 1, step, z)
        return predict(z, logsnr_at(1))[0]

    return run
