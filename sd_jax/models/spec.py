"""ModelSpec: the hashable view of `config.model` that the networks are built from.

It holds the fields and what follows from them alone (widths, resolutions, dropout per level);
what differs between architectures, and the levels that depend on it, belong to the network
classes (`unet.UNet.levels`). `sd_jax.validate` checks a config's model fields before any spec
is built.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from sd_jax.models import transforms

# model.input_transform: the fixed transforms, or 'conv' (a learned patch_size x patch_size,
# stride patch_size conv in, transposed conv out: the paper's "conv 4x4"; see unet.UNet).
TRANSFORMS = (*transforms.KINDS, "conv")
REMAT = ("none", "transformer", "all")
ATTENTION_IMPLS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class Level:
    """One convolutional level of the U-Net: its resolution, width and what follows it."""

    resolution: int  # Spatial size of the feature map at this level.
    channels: int
    down_channels: int | None  # Width after the 2x downsampling; None for the U-Net's last level.
    down_logical: str  # Logical name of the width after downsampling ('embed' into a transformer).
    attention: bool  # Self-attention after each ResBlock (U-Net at 16 and 8).
    dropout: float  # Dropout rate at this level (0 above dropout_max_resolution).


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the network needs from `config.model`, checked once at build time."""

    arch: str
    image_size: int
    image_channels: int
    input_transform: str
    patch_size: int
    base_channels: int
    channel_multipliers: tuple[int, ...]
    num_res_blocks: int
    transformer_depth: int
    num_heads: int
    mlp_ratio: int
    emb_dim: int
    dropout: float
    dropout_max_resolution: int
    attention_resolutions: tuple[int, ...]
    num_classes: int
    dtype: str
    remat: str
    attention_impl: str
    colour_transform: str

    @classmethod
    def from_config(cls, model_cfg: ml_collections.ConfigDict) -> ModelSpec:
        """The spec of a validated `config.model` (`sd_jax.validate` checks every field)."""
        values = {f.name: model_cfg[f.name] for f in dataclasses.fields(cls)
                  if f.name in model_cfg}
        values.setdefault("attention_impl", "xla")
        values.setdefault("colour_transform", "none")
        values["channel_multipliers"] = tuple(int(m) for m in values["channel_multipliers"])
        values["attention_resolutions"] = tuple(int(r) for r in values["attention_resolutions"])
        return cls(**values)

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def transform_factor(self) -> int:
        """Spatial downsampling of the input transform (fixed, or the learned 'conv')."""
        if self.input_transform == "conv":
            return self.patch_size
        return transforms.factor(self.input_transform, self.patch_size)

    @property
    def input_channels(self) -> int:
        """Channels per position after the input transform (48 for DWT-2 of RGB; for the learned
        'conv', the values in one patch its head writes)."""
        return self.image_channels * self.transform_factor**2

    def level_width(self, i: int) -> int:
        """Width of conv level i: `base_channels * channel_multipliers[i]`, and for the first
        level at least `input_channels`.

        Why the floor: the stem (a conv from the input's C channels) and the output head (a conv
        into them) are linear maps between the input and the first level's features. With fewer
        features than C the head's outputs span at most a (width / C) fraction of the image space:
        in the rest the network cannot predict the noise, so DDPM/DDIM carry the initial noise
        through to t = 0 (docs/resolution.md measures it: 64 px, DWT-2, width 32 < 48).
        """
        width = self.base_channels * self.channel_multipliers[i]
        return max(width, self.input_channels) if i == 0 else width

    @property
    def lowest_resolution(self) -> int:
        """Resolution after all downsampling (the transformer's grid for the U-ViTs)."""
        steps = len(self.channel_multipliers) - 1
        return self.image_size // self.transform_factor // 2**steps

    @property
    def transformer_width(self) -> int:
        return self.base_channels * self.channel_multipliers[-1]

    def dropout_at(self, resolution: int) -> float:
        """Dropout rate for blocks running at `resolution` (paper: only at 16x16 and below)."""
        return self.dropout if resolution <= self.dropout_max_resolution else 0.0
