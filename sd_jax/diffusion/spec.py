"""`DiffusionSpec` and `SamplingSpec`: the diffusion process a model is trained with, and how it is
sampled, as typed values.

Frozen and hashable, so the compiled train step and sampler are keyed by its value. It holds names
(keys of `SCHEDULES` here and of the tables in `schedules`, `process` and `losses`) and numbers,
never a config object:
`sd_jax.specs.diffusion_spec(config)` builds it from a validated config. Each name is looked up in
its table where it is used, so adding a schedule, prediction, loss or weighting is one function
and one table entry (docs/design.md, "Adding an option").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sd_jax.diffusion import schedules

LogSnrFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """Schedule, parametrisation and loss of one diffusion model (docs/recipe.md sections 1-3)."""

    image_size: int  # Pixels per side: the shifted schedules depend on it.
    prediction: str = "v"  # What the denoiser outputs: a key of process.PREDICTIONS.
    schedule: str = "shifted_cosine"  # A key of SCHEDULES.
    noise_d: float = 64.0  # Base resolution of 'shifted_cosine'.
    noise_d_low: float = 32.0  # 'interpolated_cosine': the strong shift, at the noisy end t = 1.
    noise_d_high: float = 256.0  # 'interpolated_cosine': the mild shift, at the clean end t = 0.
    logsnr_min: float = -15.0  # Clip of the cosine schedule (before any shift).
    logsnr_max: float = 15.0
    time_sampling: str = "uniform"  # A key of schedules.TIME_SAMPLING.
    loss: str = "v_mse"  # A key of losses.LOSSES ('auto' is resolved before: sd_jax.specs).
    loss_weighting: str = "constant"  # A key of losses.LOSS_WEIGHTINGS.
    sigmoid_bias: float = 0.0  # b of the 'sigmoid' weighting.
    multiscale: bool = False  # Multiscale loss over average-pooled scales.
    multiscale_min_size: int = 32  # Smallest pooled size of the multiscale loss.
    # A key of losses.MULTISCALE_WEIGHTINGS, or one weight per scale (smallest first).
    multiscale_weighting: str | tuple[float, ...] = "inverse_size"

    def __post_init__(self):
        assert self.schedule in SCHEDULES, self.schedule  # validate() names the fix.

    def logsnr_fn(self) -> LogSnrFn:
        """The schedule `t -> logSNR` at this image size (`SCHEDULES[self.schedule]`)."""
        return SCHEDULES[self.schedule](self)

    def logsnr_range(self) -> tuple[float, float]:
        """(logSNR at t = 1, logSNR at t = 0): the schedule's range, as Python floats."""
        with jax.ensure_compile_time_eval():  # Concrete numbers even when called under jit.
            low, high = self.logsnr_fn()(jnp.asarray([1.0, 0.0], jnp.float32))
        return float(low), float(high)



@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Everything `samplers.sample` needs: the diffusion process, the image shape, the sampler.

    Frozen and hashable, so a compiled sampler is keyed by its value (`sd_jax.sample.generate`):
    two configs with the same settings share one program, and any change makes another.
    `sd_jax.specs.sampling_spec(config)` builds it from a validated config.
    """

    diffusion: DiffusionSpec  # Schedule and prediction the model was trained with.
    image_channels: int
    num_classes: int  # 0: unconditional; also the null label used by guidance.
    num_steps: int = 128  # Steps of the sampler (network evaluations: samplers.nfe).
    sampler: str = "ddpm"  # A key of samplers.SAMPLERS.
    grid: str = "uniform_t"  # A key of samplers.GRIDS: where the steps fall in logSNR.
    noise_param: float = 0.2  # DDPM: log-variance interpolation (paper: 0.2).
    guidance_scale: float = 1.0  # 1 + w; 1.0: no guidance.
    guidance_logsnr_min: float = -1e9  # Guidance only inside [min, max] of logSNR (SiD2).
    guidance_logsnr_max: float = 1e9
    clip_x0: bool = True  # Clip every x0 prediction to [-1, 1].

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image: (H, W, C)."""
        size = self.diffusion.image_size
        return size, size, self.image_channels

    def replace(self, **changes: object) -> SamplingSpec:
        """A copy with some fields changed (e.g. `guidance_scale=1.5`)."""
        return dataclasses.replace(self, **changes)

def _cosine(spec: DiffusionSpec) -> LogSnrFn:
    return functools.partial(schedules.logsnr_cosine, logsnr_min=spec.logsnr_min,
                             logsnr_max=spec.logsnr_max)


def _shifted_cosine(spec: DiffusionSpec) -> LogSnrFn:
    return functools.partial(schedules.logsnr_shifted_cosine, image_d=spec.image_size,
                             noise_d=spec.noise_d, logsnr_min=spec.logsnr_min,
                             logsnr_max=spec.logsnr_max)


def _interpolated_cosine(spec: DiffusionSpec) -> LogSnrFn:
    return functools.partial(
        schedules.logsnr_interpolated_cosine, image_d=spec.image_size,
        noise_d_low=spec.noise_d_low, noise_d_high=spec.noise_d_high,
        logsnr_min=spec.logsnr_min, logsnr_max=spec.logsnr_max)


# `diffusion.schedule` name -> the spec's schedule `t -> logSNR` (a function of schedules.py
# with the spec's image size, shifts and clip).
SCHEDULES: dict[str, Callable[[DiffusionSpec], LogSnrFn]] = {
    "cosine": _cosine,
    "shifted_cosine": _shifted_cosine,
    "interpolated_cosine": _interpolated_cosine,
}
