"""ModelSpec: the validated, hashable view of `config.model` that the modules are built from."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import ml_collections

from sd_jax.errors import UserError
from sd_jax.models import transforms
from sd_jax.models.colour import COLOUR_TRANSFORMS

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
        """Builds and validates a spec; raises UserError with a fix for bad values."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = {n: model_cfg[n] for n in names if n in model_cfg}
        values.setdefault("attention_impl", "xla")
        values.setdefault("colour_transform", "none")
        missing = sorted(set(names) - set(values))
        if missing:
            raise UserError(f"config.model is missing fields {missing}; build on configs/base.py")
        values["channel_multipliers"] = tuple(int(m) for m in values["channel_multipliers"])
        values["attention_resolutions"] = tuple(int(r) for r in values["attention_resolutions"])
        spec = cls(**values)
        spec.validate()
        return spec

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
    def architecture(self) -> type:
        """The network class of `arch` (registry.ARCHITECTURES); UserError if unknown."""
        # Imported here: the registry imports the network modules, which import this one.
        from sd_jax.models.registry import architecture

        return architecture(self.arch)

    @property
    def has_transformer(self) -> bool:
        """Whether the lowest level is a transformer stack (the last multiplier is its width)."""
        return self.architecture.has_transformer

    @property
    def lowest_resolution(self) -> int:
        """Resolution after all downsampling (the transformer's grid for the U-ViTs)."""
        steps = len(self.channel_multipliers) - 1
        return self.image_size // self.transform_factor // 2**steps

    @property
    def transformer_width(self) -> int:
        return self.base_channels * self.channel_multipliers[-1]

    def attention_widths(self) -> list[int]:
        """Widths of every self-attention: the transformer's, or the U-Net's attention levels
        plus its middle block."""
        if self.has_transformer:
            return [self.transformer_width]
        return [lv.channels for lv in self.levels() if lv.attention] + [self.levels()[-1].channels]

    def dropout_at(self, resolution: int) -> float:
        """Dropout rate for blocks running at `resolution` (paper: only at 16x16 and below)."""
        return self.dropout if resolution <= self.dropout_max_resolution else 0.0

    def levels(self) -> list[Level]:
        """The convolutional levels; for the U-ViTs the last multiplier is the transformer."""
        mults = self.channel_multipliers
        conv_attention = self.architecture.conv_attention
        num_conv = len(mults) - 1 if self.has_transformer else len(mults)
        res = self.image_size // self.transform_factor
        levels = []
        for i in range(num_conv):
            last = i == len(mults) - 1
            into_transformer = self.has_transformer and i == num_conv - 1
            levels.append(Level(
                resolution=res,
                channels=self.level_width(i),
                down_channels=None if last else self.level_width(i + 1),
                down_logical="embed" if into_transformer else "conv_out",
                attention=conv_attention and res in self.attention_resolutions,
                dropout=self.dropout_at(res),
            ))
            res //= 2
        return levels

    def validate(self) -> None:
        """Raises UserError when the config cannot describe a network."""
        _ = self.architecture  # An unknown model.arch raises here, listing the registered ones.
        choices = [("input_transform", TRANSFORMS), ("remat", REMAT),
                   ("attention_impl", ATTENTION_IMPLS),
                   ("colour_transform", COLOUR_TRANSFORMS)]
        for field, allowed in choices:
            if getattr(self, field) not in allowed:
                raise UserError(f"model.{field}={getattr(self, field)!r}; use one of {allowed}")
        if self.colour_transform != "none" and self.image_channels != 3:
            raise UserError(f"model.colour_transform={self.colour_transform!r} needs RGB images "
                            f"(image_channels=3, got {self.image_channels}); use 'none'")
        if self.has_transformer and len(self.channel_multipliers) < 2:
            raise UserError(f"model.arch={self.arch!r} needs >= 2 channel_multipliers (conv "
                            "levels + transformer)")
        if self.input_transform in ("patch", "conv") and self.patch_size < 1:
            raise UserError(f"model.patch_size={self.patch_size} must be >= 1")
        total = self.transform_factor * 2 ** (len(self.channel_multipliers) - 1)
        if self.image_size % total:
            raise UserError(
                f"model.image_size={self.image_size} is not divisible by the total downsampling "
                f"{total} (input transform x 2 per level); change channel_multipliers")
        for w in self.attention_widths():
            if w % self.num_heads:
                raise UserError(f"attention width {w} is not divisible by num_heads="
                                f"{self.num_heads}")
        if self.num_classes < 0:
            raise UserError("model.num_classes must be >= 0 (0: unconditional)")


def num_groups(channels: int) -> int:
    """GroupNorm groups: 32 where the width allows (paper/ADM), else the largest divisor <= 32."""
    return math.gcd(32, channels)
