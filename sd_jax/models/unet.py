"""The paper's U-Net baseline, and the conv encoder/decoder that the U-ViTs share with it.

Layout (ADM-style): colour and input transform -> 3x3 conv stem -> per level `num_res_blocks`
ResBlocks (+ self-attention at `attention_resolutions`), each output kept as a U-Net skip -> 2x2
stride-2 conv down -> middle -> per level: 2x2 stride-2 transposed conv up, `num_res_blocks + 1`
ResBlocks on [h, skip] -> GroupNorm-swish-conv head (zero-initialised, float32) -> inverse
transforms. With `residual_skips` (SiD2's residual U-ViT) there are no block-wise skips; each
down/up step is wrapped in one residual: `h = up(x - h_after_down) + h_before_down`.
With `input_transform='conv'` (the paper's "conv 4x4") the stem is a learned p x p stride-p conv
on the pixels and the head a p x p stride-p transposed conv back to them (p = `patch_size`).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from sd_jax.models import colour, layers, transforms
from sd_jax.models.spec import Level, ModelSpec


class UNet(nn.Module):
    """Conv U-Net: ResBlocks on all levels, attention at 16 and 8, ResBlock-attn-ResBlock middle."""

    spec: ModelSpec
    # Read by ModelSpec and sd_jax.models.registry; subclasses override them.
    has_transformer: ClassVar[bool] = False  # Lowest level: a transformer stack (U-ViT).
    conv_attention: ClassVar[bool] = True  # Self-attention at attention_resolutions.
    residual_skips: ClassVar[bool] = False  # SiD2: one residual per down/up step, no U-Net skips.
    default_loss: ClassVar[str] = "eps_mse"  # diffusion.loss='auto' (paper: U-Net on eps-MSE).

    @classmethod
    def levels(cls, spec: ModelSpec) -> list[Level]:
        """The convolutional levels of this architecture on `spec`; for the U-ViTs the last
        multiplier is the transformer's width."""
        mults = spec.channel_multipliers
        num_conv = len(mults) - 1 if cls.has_transformer else len(mults)
        res = spec.image_size // spec.transform_factor
        levels = []
        for i in range(num_conv):
            last = i == len(mults) - 1
            into_transformer = cls.has_transformer and i == num_conv - 1
            levels.append(Level(
                resolution=res,
                channels=spec.level_width(i),
                down_channels=None if last else spec.level_width(i + 1),
                down_logical="embed" if into_transformer else "conv_out",
                attention=cls.conv_attention and res in spec.attention_resolutions,
                dropout=spec.dropout_at(res),
            ))
            res //= 2
        return levels

    @classmethod
    def attention_widths(cls, spec: ModelSpec) -> list[int]:
        """Widths of every self-attention: the transformer's, or the U-Net's attention levels
        plus its middle block."""
        if cls.has_transformer:
            return [spec.transformer_width]
        levels = cls.levels(spec)
        return [lv.channels for lv in levels if lv.attention] + [levels[-1].channels]

    def res_block(self, channels: int, dropout: float, name: str) -> nn.Module:
        cls = layers.maybe_remat(layers.ResBlock, self.spec.remat, "conv", train_argnum=3)
        return cls(channels, dropout, self.spec.compute_dtype, name=name)

    def attention(self, name: str) -> nn.Module:
        cls = layers.maybe_remat(layers.SpatialAttention, self.spec.remat, "conv", train_argnum=2)
        return cls(self.spec.num_heads, self.spec.compute_dtype, self.spec.attention_impl,
                   name=name)

    def middle(self, h: jnp.ndarray, emb: jnp.ndarray, train: bool) -> jnp.ndarray:
        """Lowest level of the U-Net (overridden by the U-ViT's transformer stack)."""
        channels, res = h.shape[-1], h.shape[1]
        dropout = self.spec.dropout_at(res)
        h = self.res_block(channels, dropout, "mid_res0")(h, emb, train)
        h = self.attention("mid_attn")(h, train)
        return self.res_block(channels, dropout, "mid_res1")(h, emb, train)

    def level_blocks(self, h, emb, train, level: Level, tag: str, skips: list | None):
        """ResBlocks (+ attention) of one level; on the way up, concatenates popped `skips`."""
        count = self.spec.num_res_blocks + (0 if skips is None else 1)
        outputs = []
        for j in range(count):
            if skips is not None:
                h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
            h = self.res_block(level.channels, level.dropout, f"{tag}_res{j}")(h, emb, train)
            if level.attention:
                h = self.attention(f"{tag}_attn{j}")(h, train)
            outputs.append(h)
        return h, outputs

    @nn.compact
    def __call__(self, z_bhwc: jnp.ndarray, logsnr_b: jnp.ndarray, labels_b: jnp.ndarray,
                 train: bool = False) -> jnp.ndarray:
        """Maps noisy images [B, H, W, C] to the v / eps / x0 prediction, float32, same shape."""
        spec, dtype = self.spec, self.spec.compute_dtype
        learned = spec.input_transform == "conv"  # Else a fixed, exactly inverted transform.
        x = colour.forward(z_bhwc.astype(jnp.float32), spec.colour_transform)
        if not learned:
            x = transforms.forward(x, spec.input_transform, spec.patch_size)
        emb = layers.ConditionEmbedding(spec.emb_dim, spec.num_classes, dtype, name="cond")(
            logsnr_b, labels_b)
        levels = self.levels(spec)
        stem_kernel, stem_stride = (spec.patch_size, spec.patch_size) if learned else (3, 1)
        h = layers.conv(levels[0].channels, stem_kernel, dtype, stride=stem_stride,
                        name="stem")(x.astype(dtype))

        saved = []  # Per level: (U-Net skips or None, h before down, h after down).
        for i, level in enumerate(levels):
            skips = None if self.residual_skips else [h]
            h, outputs = self.level_blocks(h, emb, train, level, f"down{i}", None)
            if skips is not None:
                skips.extend(outputs)
            before = h
            if level.down_channels is not None:
                h = layers.conv(level.down_channels, 2, dtype, stride=2,
                                out_name=level.down_logical, name=f"down{i}_down")(h)
            saved.append((skips, before, h))

        h = self.middle(h, emb, train)

        for i in reversed(range(len(levels))):
            level, (skips, before, after) = levels[i], saved[i]
            if level.down_channels is not None:
                up = layers.conv_transpose(level.channels, 2, dtype, in_name=level.down_logical,
                                           name=f"up{i}_up")
                h = up(h - after) + before if self.residual_skips else up(h)
            h, _ = self.level_blocks(h, emb, train, level, f"up{i}", skips)

        # The output head runs in float32; its kernel is replicated (layers.NORM_AXIS).
        h = nn.swish(layers.group_norm(h.shape[-1], jnp.float32, name="out_norm")(h))
        head = dict(zero=True, in_name=layers.NORM_AXIS, out_name=layers.NORM_AXIS,
                    name="out_conv")
        if learned:
            out = layers.conv_transpose(spec.image_channels, spec.patch_size, jnp.float32,
                                        **head)(h)
        else:
            out = layers.conv(x.shape[-1], 3, jnp.float32, **head)(h)
            out = transforms.inverse(out, spec.input_transform, spec.patch_size)
        return colour.inverse(out, spec.colour_transform).astype(jnp.float32)
