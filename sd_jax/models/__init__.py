"""Flax (linen) networks: U-ViT, SiD2's residual U-ViT and the paper's U-Net.

`build_model(model_cfg)` returns a module called as
`model.apply({"params": p}, z_bhwc, logsnr_b, labels_b, train=bool, rngs={"dropout": key})`,
which returns a float32 array of `z_bhwc.shape` (v or eps, per `model_cfg.prediction`).
The architectures are the entries of `registry.ARCHITECTURES` (`model_cfg.arch` names one).
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from sd_jax.models.registry import ARCHITECTURES, build
from sd_jax.models.spec import ModelSpec
from sd_jax.models.unet import UNet
from sd_jax.models.uvit import ResidualUViT, UViT

__all__ = ["ARCHITECTURES", "ModelSpec", "ResidualUViT", "UNet", "UViT", "build", "build_model"]


def build_model(model_cfg: ml_collections.ConfigDict) -> nn.Module:
    """Builds the network described by a validated `config.model`."""
    return build(ModelSpec.from_config(model_cfg))
