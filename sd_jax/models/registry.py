"""Architecture name -> network class: the one table to extend when adding an architecture.

Everything the rest of the code needs to know about an architecture is a class attribute of its
network class (documented on `unet.UNet`): whether the lowest level is a transformer stack,
whether the conv levels carry self-attention, the kind of skips, and the loss it trains with
when `diffusion.loss = 'auto'`. Adding an architecture takes its module, one entry here and a
config; `config.model.arch` then names it.
"""

from __future__ import annotations

import flax.linen as nn

from sd_jax.models.spec import ModelSpec
from sd_jax.models.unet import UNet
from sd_jax.models.uvit import ResidualUViT, UViT

ARCHITECTURES: dict[str, type[UNet]] = {
    "uvit": UViT,  # simple diffusion's U-ViT: v-MSE.
    "residual_uvit": ResidualUViT,  # SiD2's residual U-ViT: v-MSE.
    "unet": UNet,  # simple diffusion's U-Net baseline: eps-MSE from its v output.
}


def build(spec: ModelSpec) -> nn.Module:
    """The network of `spec`: an instance of its architecture's class."""
    return ARCHITECTURES[spec.arch](spec)
