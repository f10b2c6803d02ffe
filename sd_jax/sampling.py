"""Samplers: DDPM ancestral (log-variance interpolation) and DDIM, with classifier-free guidance.

`sample` takes the denoiser as a function `denoise_fn(z_bhwc, logsnr_b, labels_b) -> output`, so
it works for any model and for sharded batches: it is traceable (one `lax.fori_loop` over a fixed
number of steps, no host ops). Jit it with the params as an argument, e.g.
`jax.jit(lambda p, rng, y: sample_from_config(lambda z, l, c: apply(p, z, l, c), rng, y, cfg))`,
rather than closing over concrete params (which would bake them into the program as constants).

Time grid: `t_i = i / num_steps`, from t = 1 (noise) down to t = 0; each of the `num_steps`
steps calls the denoiser once (twice with guidance) and the last one returns its x0 prediction.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from sd_jax import losses, schedules
from sd_jax.errors import UserError

SAMPLERS = ("ddpm", "ddim")

DenoiseFn = losses.DenoiseFn


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
    """
    out_cond = denoise_fn(z_bhwc, logsnr_b, labels_b).astype(jnp.float32)
    if guidance_scale == 1.0:
        return out_cond
    w = guidance_scale - 1.0
    logsnr = logsnr_b.reshape(-1)[0]
    in_interval = (logsnr >= guidance_logsnr_min) & (logsnr <= guidance_logsnr_max)

    def guided(out_cond):
        null_b = jnp.full_like(labels_b, null_label)
        out_uncond = denoise_fn(z_bhwc, logsnr_b, null_b).astype(jnp.float32)
        return (1.0 + w) * out_cond - w * out_uncond

    return jax.lax.cond(in_interval, guided, lambda out: out, out_cond)


def _ddpm_log_variance(logsnr_t: jax.Array, logsnr_s: jax.Array, noise_param: float):
    """log of `upper^noise_param * lower^(1 - noise_param)` for the step t -> s (s < t).

    upper = sigma_{t|s}^2 = (1 - r) sigma_t^2 (forward transition variance, 'beta'),
    lower = sigma_{s|t}^2 = (1 - r) sigma_s^2 (posterior variance), r = exp(logsnr_t - logsnr_s).
    """
    log_one_minus_r = jnp.log(-jnp.expm1(logsnr_t - logsnr_s))
    log_sigma2_t = jax.nn.log_sigmoid(-logsnr_t)
    log_sigma2_s = jax.nn.log_sigmoid(-logsnr_s)
    return log_one_minus_r + noise_param * log_sigma2_t + (1.0 - noise_param) * log_sigma2_s


def sample(
    denoise_fn: DenoiseFn,
    rng: jax.Array,
    labels_b: jax.Array,
    shape: tuple[int, ...],
    *,
    logsnr_fn: Callable[[jax.Array], jax.Array],
    num_steps: int,
    sampler: str,
    noise_param: float,
    guidance_scale: float,
    guidance_logsnr_min: float,
    guidance_logsnr_max: float,
    null_label: int,
    prediction: str,
    clip_x0: bool = True,
) -> jax.Array:
    """Draws `shape` (e.g. `[B, H, W, C]`) samples with `num_steps` steps; returns x0 (float32).

    sampler: 'ddpm' (ancestral; variance `exp(noise_param log upper + (1 - noise_param) log
    lower)`, iDDPM/VDM convention, paper: 0.2) or 'ddim' (deterministic). `prediction`: what
    `denoise_fn` returns ('v' | 'eps' | 'x0'). `clip_x0` clips every x0 prediction to [-1, 1].
    """
    if sampler not in SAMPLERS:
        raise UserError(f"Unknown sample.sampler={sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if prediction not in losses.PREDICTIONS:
        raise UserError(
            f"Unknown prediction={prediction!r}; choose one of {', '.join(losses.PREDICTIONS)}."
        )
    if num_steps < 1:
        raise UserError(f"sample.num_steps must be >= 1, got {num_steps}.")
    batch_size = shape[0]
    rng_init, rng_steps = jax.random.split(rng)

    def predict(z, logsnr_b):
        out = guided_output(
            denoise_fn,
            z,
            logsnr_b,
            labels_b,
            guidance_scale=guidance_scale,
            guidance_logsnr_min=guidance_logsnr_min,
            guidance_logsnr_max=guidance_logsnr_max,
            null_label=null_label,
        )
        x0, eps = losses.x0_eps_from_output(z, out, logsnr_b, prediction)
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
            alpha, sigma = schedules.alpha_sigma(logsnr_b[0])
            eps = (z - alpha * x0) / sigma  # Keep (x0, eps) consistent with z after clipping.
        return x0, eps

    def logsnr_at(i):  # Noise level at grid point t = i / num_steps, one per example.
        return jnp.full((batch_size,), logsnr_fn(i / num_steps), jnp.float32)

    def step(j, z):  # j = 0 .. num_steps - 2 goes from t = (n - j) / n to s = (n - j - 1) / n.
        i = num_steps - j
        logsnr_t, logsnr_s = logsnr_at(i)[0], logsnr_at(i - 1)[0]
        x0, eps = predict(z, logsnr_at(i))
        alpha_t, _ = schedules.alpha_sigma(logsnr_t)
        alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
        if sampler == "ddim":
            return alpha_s * x0 + sigma_s * eps
        # Posterior mean of q(z_s | z_t, x0): r alpha_s / alpha_t z_t + (1 - r) alpha_s x0.
        r = jnp.exp(logsnr_t - logsnr_s)
        mean = r * (alpha_s / alpha_t) * z + (1.0 - r) * alpha_s * x0
        std = jnp.exp(0.5 * _ddpm_log_variance(logsnr_t, logsnr_s, noise_param))
        noise = jax.random.normal(jax.random.fold_in(rng_steps, j), z.shape, z.dtype)
        return mean + std * noise

    z = jax.random.normal(rng_init, shape, jnp.float32)
    z = jax.lax.fori_loop(0, num_steps - 1, step, z)
    return predict(z, logsnr_at(1))[0]


def sample_from_config(
    denoise_fn: DenoiseFn,
    rng: jax.Array,
    labels_b: jax.Array,
    config: ml_collections.ConfigDict,
) -> jax.Array:
    """`sample` with settings from `config.sample`, `config.diffusion` and `config.model`."""
    s, m = config.sample, config.model
    if s.guidance_scale != 1.0 and m.num_classes == 0:
        raise UserError(
            "sample.guidance_scale != 1 needs a class-conditional model (model.num_classes > 0); "
            "set sample.guidance_scale=1.0 for an unconditional model."
        )
    shape = (labels_b.shape[0], m.image_size, m.image_size, m.image_channels)
    return sample(
        denoise_fn,
        rng,
        labels_b,
        shape,
        logsnr_fn=schedules.get_logsnr_fn(config.diffusion, m.image_size),
        num_steps=s.num_steps,
        sampler=s.sampler,
        noise_param=s.noise_param,
        guidance_scale=float(s.guidance_scale),
        guidance_logsnr_min=s.guidance_logsnr_min,
        guidance_logsnr_max=s.guidance_logsnr_max,
        null_label=m.num_classes,
        prediction=m.prediction,
    )
