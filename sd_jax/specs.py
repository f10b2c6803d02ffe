"""The config, read once into the typed specs the maths takes.

    spec = specs.diffusion_spec(config)     # DiffusionSpec: schedule, prediction, loss
    sampling = specs.sampling_spec(config)  # SamplingSpec: the sampler, with that DiffusionSpec
    model = specs.model_spec(config)        # ModelSpec: the network

This is the only place that reads `config.diffusion` and `config.sample` for the maths (the
modules under `sd_jax/diffusion` never see a config). The config must have passed
`sd_jax.validate.validate`, which checks every value these read; here they are only copied,
with `diffusion.loss='auto'` resolved to the architecture's own loss.
"""

from __future__ import annotations

import ml_collections

from sd_jax.diffusion.spec import DiffusionSpec, SamplingSpec
from sd_jax.models.registry import ARCHITECTURES
from sd_jax.models.spec import ModelSpec


def loss_name(config: ml_collections.ConfigDict) -> str:
    """`diffusion.loss`, with 'auto' replaced by the architecture's `default_loss`."""
    if config.diffusion.loss == "auto":
        return ARCHITECTURES[config.model.arch].default_loss
    return config.diffusion.loss


def diffusion_spec(config: ml_collections.ConfigDict) -> DiffusionSpec:
    """The diffusion process of `config` (`config.diffusion` and the model's size and output)."""
    d, m = config.diffusion, config.model
    weighting = d.multiscale_weighting
    return DiffusionSpec(
        image_size=int(m.image_size), prediction=str(m.prediction), schedule=str(d.schedule),
        noise_d=float(d.noise_d), noise_d_low=float(d.noise_d_low),
        noise_d_high=float(d.noise_d_high), logsnr_min=float(d.logsnr_min),
        logsnr_max=float(d.logsnr_max), time_sampling=str(d.time_sampling),
        loss=loss_name(config), loss_weighting=str(d.loss_weighting),
        sigmoid_bias=float(d.sigmoid_bias), multiscale=bool(d.multiscale),
        multiscale_min_size=int(d.multiscale_min_size),
        multiscale_weighting=(weighting if isinstance(weighting, str)
                              else tuple(float(w) for w in weighting)),
    )


def sampling_spec(config: ml_collections.ConfigDict) -> SamplingSpec:
    """The sampler of `config.sample` for the model and diffusion process of `config`."""
    s, m = config.sample, config.model
    return SamplingSpec(
        diffusion=diffusion_spec(config), image_channels=int(m.image_channels),
        num_classes=int(m.num_classes), num_steps=int(s.num_steps), sampler=str(s.sampler),
        grid=str(s.grid),
        noise_param=float(s.noise_param), guidance_scale=float(s.guidance_scale),
        guidance_logsnr_min=float(s.guidance_logsnr_min),
        guidance_logsnr_max=float(s.guidance_logsnr_max),
    )


def model_spec(config: ml_collections.ConfigDict) -> ModelSpec:
    """The network of `config.model`."""
    return ModelSpec.from_config(config.model)
