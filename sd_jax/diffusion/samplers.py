"""Samplers: DDPM ancestral (log-variance interpolation) and DDIM, with classifier-free guidance.

`sample` takes the denoiser as a function `denoise_fn(z_bhwc, logsnr_b, labels_b) -> output`, so
it works for any model and for sharded batches: it is traceable (one `lax.fori_loop` over a fixed
number of steps, no host ops). `SamplingSpec` is the validated, hashable view of the config's
sampling settings; `spec.sample(denoise_fn, rng, labels_b)` calls `sample` with them. Jit it with
the params as an argument, e.g. `jax.jit(lambda p, rng, y: spec.sample(lambda z, l, c:
apply(p, z, l, c), rng, y))`, rather than closing over concrete params (which would bake them
into the program as constants); `sd_jax.sample.generate.Sampler` does that for a model on a mesh.

Time grid: `t_i = i / num_steps`, from t = 1 (noise) down to t = 0; each of the `num_steps`
steps calls the denoiser once (with guidance, once on a doubled batch inside the guidance
interval) and the last one returns its x0 prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from sd_jax.diffusion import losses, schedules
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


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Everything `sample` needs from `config.sample`, `config.diffusion` and `config.model`.

    Frozen and hashable, so a compiled sampler is keyed by its value (`sd_jax.sample.generate`): two
    configs with the same sampling settings share one program, and any change makes another.
    """

    image_size: int
    image_channels: int
    num_classes: int  # 0: unconditional; also the null label used by guidance.
    prediction: str  # What the denoiser returns: 'v' | 'eps' | 'x0'.
    schedule: str  # config.diffusion: the noise schedule and its parameters.
    noise_d: float
    noise_d_low: float
    noise_d_high: float
    logsnr_min: float
    logsnr_max: float
    num_steps: int  # config.sample from here on.
    sampler: str
    noise_param: float
    guidance_scale: float
    guidance_logsnr_min: float
    guidance_logsnr_max: float
    clip_x0: bool = True

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> SamplingSpec:
        """The spec of `config` (validated; UserError with a fix for bad values)."""
        m, d, s = config.model, config.diffusion, config.sample
        spec = cls(
            image_size=int(m.image_size), image_channels=int(m.image_channels),
            num_classes=int(m.num_classes), prediction=str(m.prediction),
            schedule=str(d.schedule), noise_d=float(d.noise_d), noise_d_low=float(d.noise_d_low),
            noise_d_high=float(d.noise_d_high), logsnr_min=float(d.logsnr_min),
            logsnr_max=float(d.logsnr_max), num_steps=int(s.num_steps), sampler=str(s.sampler),
            noise_param=float(s.noise_param), guidance_scale=float(s.guidance_scale),
            guidance_logsnr_min=float(s.guidance_logsnr_min),
            guidance_logsnr_max=float(s.guidance_logsnr_max),
        )
        spec.validate()
        return spec

    def replace(self, **changes: Any) -> SamplingSpec:
        """A validated copy with some fields changed (e.g. `guidance_scale=1.5`)."""
        spec = dataclasses.replace(self, **changes)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raises UserError for settings `sample` cannot run."""
        if self.sampler not in SAMPLERS:
            raise UserError(f"Unknown sample.sampler={self.sampler!r}; choose one of "
                            f"{', '.join(SAMPLERS)}.")
        if self.prediction not in losses.PREDICTIONS:
            raise UserError(f"Unknown model.prediction={self.prediction!r}; choose one of "
                            f"{', '.join(losses.PREDICTIONS)}.")
        if self.num_steps < 1:
            raise UserError(f"sample.num_steps must be >= 1, got {self.num_steps}.")
        if self.guidance_scale != 1.0 and self.num_classes == 0:
            raise UserError(
                "sample.guidance_scale != 1 needs a class-conditional model (model.num_classes "
                "> 0); set sample.guidance_scale=1.0 for an unconditional model.")
        self.logsnr_fn()  # An unknown or inconsistent schedule raises here.

    def logsnr_fn(self) -> Callable[[jax.Array], jax.Array]:
        """The schedule `t -> logsnr` at this image size."""
        fields = ("schedule", "noise_d", "noise_d_low", "noise_d_high", "logsnr_min",
                  "logsnr_max")
        diffusion = ml_collections.ConfigDict({f: getattr(self, f) for f in fields})
        return schedules.get_logsnr_fn(diffusion, self.image_size)

    def sample(self, denoise_fn: DenoiseFn, rng: jax.Array, labels_b: jax.Array) -> jax.Array:
        """`sample` with these settings: one image per label, float32 [B, H, W, C] in [-1, 1]."""
        shape = (labels_b.shape[0], self.image_size, self.image_size, self.image_channels)
        return sample(
            denoise_fn, rng, labels_b, shape, logsnr_fn=self.logsnr_fn(),
            num_steps=self.num_steps, sampler=self.sampler, noise_param=self.noise_param,
            guidance_scale=self.guidance_scale, guidance_logsnr_min=self.guidance_logsnr_min,
            guidance_logsnr_max=self.guidance_logsnr_max, null_label=self.num_classes,
            prediction=self.prediction, clip_x0=self.clip_x0,
        )
