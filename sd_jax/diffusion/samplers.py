"""Samplers: DDPM ancestral (log-variance interpolation) and DDIM, with classifier-free guidance.

`sample(denoise_fn, rng, labels_b, spec)` takes the denoiser as a function
`denoise_fn(z_bhwc, logsnr_b, labels_b) -> output`, so it works for any model and for sharded
batches: it is traceable (one `lax.fori_loop` over a fixed number of steps, no host ops).
`SamplingSpec` is the hashable set of settings, the diffusion process included. Jit it with the
params as an argument, e.g. `jax.jit(lambda p, rng, y: sample(lambda z, l, c: apply(p, z, l, c),
rng, y, spec))`, rather than closing over concrete params (which would bake them into the program
as constants); `sd_jax.sample.generate.Sampler` does that for a model on a mesh.

`SAMPLERS` maps a sampler's name to its function `(predict, z, logsnr_at, rng, spec) -> x0`:
`predict(z, logsnr_b)` is the guided, clipped `(x0_hat, eps_hat)`, `z` the initial noise and
`logsnr_at(i)` the noise level of grid point `t = i / num_steps` (one per example). A new sampler
is one such function and one entry.

Time grid: `t_i = i / num_steps`, from t = 1 (noise) down to t = 0; each of the `num_steps`
steps of DDPM and DDIM calls the denoiser once (with guidance, once on a doubled batch inside the
guidance interval) and the last one returns its x0 prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sd_jax.diffusion import process, schedules
from sd_jax.diffusion.process import DenoiseFn
from sd_jax.diffusion.spec import DiffusionSpec

Predict = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
LogSnrAt = Callable[[jax.Array | int], jax.Array]


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Everything `sample` needs: the diffusion process, the image shape, the sampler settings.

    Frozen and hashable, so a compiled sampler is keyed by its value (`sd_jax.sample.generate`):
    two configs with the same settings share one program, and any change makes another.
    `sd_jax.specs.sampling_spec(config)` builds it from a validated config.
    """

    diffusion: DiffusionSpec  # Schedule and prediction the model was trained with.
    image_channels: int
    num_classes: int  # 0: unconditional; also the null label used by guidance.
    num_steps: int = 128
    sampler: str = "ddpm"  # A key of SAMPLERS.
    noise_param: float = 0.2  # DDPM: log-variance interpolation (paper: 0.2).
    guidance_scale: float = 1.0  # 1 + w; 1.0: no guidance.
    guidance_logsnr_min: float = -1e9  # Guidance only inside [min, max] of logSNR (SiD2).
    guidance_logsnr_max: float = 1e9
    clip_x0: bool = True  # Clip every x0 prediction to [-1, 1].

    def __post_init__(self):
        assert self.sampler in SAMPLERS and self.num_steps >= 1, self  # validate() names the fix.

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image: (H, W, C)."""
        size = self.diffusion.image_size
        return size, size, self.image_channels

    def replace(self, **changes: object) -> SamplingSpec:
        """A copy with some fields changed (e.g. `guidance_scale=1.5`)."""
        return dataclasses.replace(self, **changes)


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
    if guidance_scale == 1.0:
        return denoise_fn(z_bhwc, logsnr_b, labels_b).astype(jnp.float32)
    w = guidance_scale - 1.0
    logsnr = logsnr_b.reshape(-1)[0]
    in_interval = (logsnr >= guidance_logsnr_min) & (logsnr <= guidance_logsnr_max)

    def pairs(x_b: jax.Array, y_b: jax.Array) -> jax.Array:  # [B, ...] x2 -> [2B, ...]
        return jnp.stack([x_b, y_b], axis=1).reshape(-1, *x_b.shape[1:])

    def guided() -> jax.Array:
        null_b = jnp.full_like(labels_b, null_label)
        out = denoise_fn(pairs(z_bhwc, z_bhwc), pairs(logsnr_b, logsnr_b),
                         pairs(labels_b, null_b)).astype(jnp.float32)
        out = out.reshape(-1, 2, *out.shape[1:])
        return (1.0 + w) * out[:, 0] - w * out[:, 1]

    def conditional() -> jax.Array:
        return denoise_fn(z_bhwc, logsnr_b, labels_b).astype(jnp.float32)

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
    """Deterministic step t -> s: `z_s = alpha_s x0 + sigma_s eps`."""
    del z, logsnr_t, noise_key, spec
    alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
    return alpha_s * x0 + sigma_s * eps


def first_order(update: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """A sampler that calls the denoiser once per step and moves z with `update(z, x0, eps,
    logsnr_t, logsnr_s, noise_key, spec) -> z_s`; the last step returns its x0 prediction."""
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


# `sample.sampler` name -> (predict, z, logsnr_at, rng, spec) -> x0 (module docstring).
SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "ddpm": first_order(ddpm_update),  # Paper's sampler, noise_param 0.2.
    "ddim": first_order(ddim_update),
}


def sample(denoise_fn: DenoiseFn, rng: jax.Array, labels_b: jax.Array, spec: SamplingSpec
           ) -> jax.Array:
    """One image per label with `spec`: float32 [B, H, W, C] x0 (in [-1, 1] if `clip_x0`)."""
    batch_size = labels_b.shape[0]
    logsnr_fn = spec.diffusion.logsnr_fn()
    rng_init, rng_steps = jax.random.split(rng)

    def logsnr_at(i):  # Noise level at grid point t = i / num_steps, one per example.
        return jnp.full((batch_size,), logsnr_fn(i / spec.num_steps), jnp.float32)

    z = jax.random.normal(rng_init, (batch_size, *spec.shape), jnp.float32)
    predict = predictor(denoise_fn, labels_b, spec)
    return SAMPLERS[spec.sampler](predict, z, logsnr_at, rng_steps, spec)
