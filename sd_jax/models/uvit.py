"""U-ViT (simple diffusion, paper section 4) and SiD2's residual U-ViT.

The conv levels, skips, conditioning and output head are the U-Net's (`unet.UNet`); the lowest
level is replaced by a stack of pre-norm transformer blocks on [B, L, D] tokens (L = 16 x 16 for
the ImageNet configs), with residual connections only. `ResidualUViT` (`arch='residual_uvit'`)
switches the conv levels to SiD2's one-residual-per-down/up-step layout (see `unet.py`).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from sd_jax.models import layers
from sd_jax.models.unet import UNet


class UViT(UNet):
    """U-Net with a transformer stack at the lowest resolution."""

    has_transformer: ClassVar[bool] = True
    conv_attention: ClassVar[bool] = False
    default_loss: ClassVar[str] = "v_mse"  # Paper: the U-ViT trains on v-MSE.

    # dtype of the transformer's residual stream (the branches run in the compute dtype). float32,
    # measured by experiments/precision/ (docs/performance.md, "Precision"): in bfloat16 each of
    # the 2 x depth additions rounds the stream to 8 bits (output error vs the float32 model
    # 1.6e-2 instead of 1.1e-2 at depth 36) for 0.6% fewer bytes accessed and no less saved
    # memory.
    residual_dtype: ClassVar[str] = "float32"

    def middle(self, h: jnp.ndarray, emb: jnp.ndarray, train: bool) -> jnp.ndarray:
        """Transformer stack: tokens + position + conditioning, `transformer_depth` blocks.

        Returns the residual stream (`residual_dtype`) as [B, h, w, D] (no final norm: the next
        conv level starts with GroupNorm).
        """
        spec = self.spec
        b, res_h, res_w, width = h.shape
        x = h.reshape(b, res_h * res_w, width).astype(self.residual_dtype)
        pos = self.param("pos_embed", layers.logical(nn.initializers.normal(0.02),
                                                     (None, "embed")), (res_h * res_w, width))
        cond = layers.dense(width, ("cond", "embed"), spec.compute_dtype, name="cond_to_tokens")
        x = x + (pos[None] + cond(nn.swish(emb))[:, None]).astype(x.dtype)
        block_cls = layers.maybe_remat(layers.TransformerBlock, spec.remat, "transformer",
                                       train_argnum=2)
        dropout = spec.dropout_at(res_h)
        for i in range(spec.transformer_depth):
            x = block_cls(spec.num_heads, spec.mlp_ratio, dropout, spec.compute_dtype,
                          spec.attention_impl, name=f"transformer{i}")(x, train)
        return x.reshape(b, res_h, res_w, width)


class ResidualUViT(UViT):
    """SiD2's residual U-ViT: no block-wise skips, one residual around each down/up step."""

    residual_skips: ClassVar[bool] = True
