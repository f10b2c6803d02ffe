"""Building blocks: conditioning embedding, ResNet block, attention, MLP, transformer block.

Precision: params are stored in float32 (the master weights); the train step casts them to the
compute dtype once per step (`cast_params`), so FSDP all-gathers move compute-dtype weights, and
the layers also accept float32 params (cast per layer). Matmuls, convs, conditioning and FiLM run
in the compute dtype; norms compute their statistics in float32 and return the compute dtype;
attention logits and softmax, the output head and the loss are float32. Every weight carries
logical axis names (docs/design.md vocabulary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Names = Sequence[str | None]
LOGSNR_FREQ_MIN = 0.01  # Lowest Fourier frequency of logSNR: period ~600, i.e. near linear.
LOGSNR_FREQ_MAX = 10.0  # Highest: period ~0.6 in logSNR (sampler steps move ~0.05).
# Logical axis of norm scales and biases and of the float32 output head's kernel: no default rule
# maps it, so these tiny weights are replicated. They are used in float32 (the norms' affine
# step, the head), and XLA places a gather at the use, so sharded they would be all-gathered in
# float32, one small collective each; replicated, every FSDP gather moves the compute dtype.
NORM_AXIS = "norm"


def num_groups(channels: int) -> int:
    """GroupNorm groups: 32 where the width allows (paper/ADM), else the largest divisor <= 32."""
    return math.gcd(32, channels)


def logical(init: nn.initializers.Initializer, names: Names) -> nn.initializers.Initializer:
    """Initializer whose params carry logical axis names for sharding."""
    return nn.with_logical_partitioning(init, tuple(names))


def dense(features: int | Sequence[int], names: Names, dtype: jnp.dtype, *, axis=-1,
          zero: bool = False, name: str | None = None) -> nn.DenseGeneral:
    """DenseGeneral with logical names `names` for the kernel (inputs then outputs)."""
    features = features if isinstance(features, int) else tuple(features)
    out_rank = 1 if isinstance(features, int) else len(features)
    kernel_init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
    return nn.DenseGeneral(
        features, axis=axis, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=logical(kernel_init, names),
        bias_init=logical(nn.initializers.zeros_init(), tuple(names)[-out_rank:]))


def conv(features: int, kernel: int, dtype: jnp.dtype, *, stride: int = 1, zero: bool = False,
         in_name: str | None = "conv_in", out_name: str | None = "conv_out",
         name: str | None = None) -> nn.Conv:
    """2D conv (NHWC); kernel logical names (None, None, in_name, out_name)."""
    kernel_init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding="SAME", dtype=dtype,
        param_dtype=jnp.float32, name=name,
        kernel_init=logical(kernel_init, (None, None, in_name, out_name)),
        bias_init=logical(nn.initializers.zeros_init(), (out_name,)))


def conv_transpose(features: int, kernel: int, dtype: jnp.dtype, *, zero: bool = False,
                   in_name: str | None = "conv_in", out_name: str | None = "conv_out",
                   name: str | None = None) -> nn.ConvTranspose:
    """Transposed conv with stride = kernel (each input pixel -> its own kernel x kernel patch)."""
    kernel_init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
    return nn.ConvTranspose(
        features, (kernel, kernel), strides=(kernel, kernel), dtype=dtype,
        param_dtype=jnp.float32, name=name,
        kernel_init=logical(kernel_init, (None, None, in_name, out_name)),
        bias_init=logical(nn.initializers.zeros_init(), (out_name,)))


def cast_params(params: Any, dtype: jnp.dtype) -> Any:
    """Floating-point leaves of `params` cast to `dtype` (one convert per weight, on its shard)."""
    dtype = jnp.dtype(dtype)

    def cast(x: jax.Array) -> jax.Array:
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, params)


def group_norm(channels: int, dtype: jnp.dtype, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm: statistics and normalisation in float32 (flax promotes), output in `dtype`.

    Scale and bias carry the logical name `norm` (replicated by the default rules, see
    NORM_AXIS)."""
    return nn.GroupNorm(
        num_groups(channels), dtype=dtype, param_dtype=jnp.float32, name=name,
        scale_init=logical(nn.initializers.ones_init(), (NORM_AXIS,)),
        bias_init=logical(nn.initializers.zeros_init(), (NORM_AXIS,)))


def layer_norm(dtype: jnp.dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over the transformer width: statistics in float32, output in `dtype`."""
    return nn.LayerNorm(
        dtype=dtype, param_dtype=jnp.float32, name=name,
        scale_init=logical(nn.initializers.ones_init(), (NORM_AXIS,)),
        bias_init=logical(nn.initializers.zeros_init(), (NORM_AXIS,)))


def logsnr_features(logsnr_b: jnp.ndarray, num_freqs: int) -> jnp.ndarray:
    """[B] -> [B, 1 + 2 * num_freqs]: logSNR itself (scaled) plus geometric Fourier features."""
    logsnr = logsnr_b.astype(jnp.float32)[:, None]
    freqs = jnp.geomspace(LOGSNR_FREQ_MIN, LOGSNR_FREQ_MAX, num_freqs, dtype=jnp.float32)
    angles = logsnr * freqs
    return jnp.concatenate([logsnr / 15.0, jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ConditionEmbedding(nn.Module):
    """logSNR (linear + Fourier features -> MLP) plus class embedding -> [B, emb_dim] in `dtype`.

    The Fourier features are computed in float32 (angles reach ~200 rad); the MLP and the class
    table run in the compute dtype.
    """

    emb_dim: int
    num_classes: int
    dtype: jnp.dtype = jnp.float32
    num_freqs: int = 64

    @nn.compact
    def __call__(self, logsnr_b: jnp.ndarray, labels_b: jnp.ndarray) -> jnp.ndarray:
        emb = dense(self.emb_dim, (None, "cond"), self.dtype, name="logsnr_in")(
            logsnr_features(logsnr_b, self.num_freqs))
        emb = dense(self.emb_dim, (None, "cond"), self.dtype, name="logsnr_out")(nn.swish(emb))
        if self.num_classes > 0:  # Row num_classes is the null label (classifier-free guidance).
            table = nn.Embed(
                self.num_classes + 1, self.emb_dim, dtype=self.dtype, param_dtype=jnp.float32,
                name="class_embed",
                embedding_init=logical(nn.initializers.normal(1.0), ("classes", "cond")))
            emb = emb + table(labels_b.astype(jnp.int32))
        return emb


class ResBlock(nn.Module):
    """GroupNorm-swish-conv x2 with FiLM conditioning (scale, shift) and a 1x1 skip if needed."""

    channels: int
    dropout: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jnp.ndarray, emb: jnp.ndarray, train: bool) -> jnp.ndarray:
        h = nn.swish(group_norm(x.shape[-1], self.dtype, name="norm1")(x))
        h = conv(self.channels, 3, self.dtype, name="conv1")(h)
        film = dense((2, self.channels), ("cond", None, "conv_out"), self.dtype, name="film")
        scale_shift = film(nn.swish(emb))[:, None, None]  # [B, 1, 1, 2, C]
        h = group_norm(self.channels, self.dtype, name="norm2")(h)
        h = h * (1 + scale_shift[..., 0, :]) + scale_shift[..., 1, :]
        h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=not train)
        h = conv(self.channels, 3, self.dtype, zero=True, name="conv2")(h)
        if x.shape[-1] != self.channels:
            x = conv(self.channels, 1, self.dtype, name="skip")(x)
        return x.astype(self.dtype) + h


class Attention(nn.Module):
    """Multi-head self-attention on [B, L, D], fused QKV projection, float32 logits/softmax."""

    num_heads: int
    dtype: jnp.dtype
    implementation: str = "xla"

    @nn.compact
    def __call__(self, x_bld: jnp.ndarray) -> jnp.ndarray:
        width = x_bld.shape[-1]
        head_dim = width // self.num_heads
        qkv = dense((3, self.num_heads, head_dim), ("embed", None, "heads", "kv"), self.dtype,
                    name="qkv")(x_bld)
        q, k, v = (qkv[:, :, i] for i in range(3))
        # XLA path: logits via einsum with preferred_element_type=float32, softmax in float32.
        out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
        return dense(width, ("heads", "kv", "embed"), self.dtype, axis=(-2, -1), zero=True,
                     name="out")(out)


class Mlp(nn.Module):
    """Transformer MLP: Dense(ratio * D) - GELU - Dense(D)."""

    ratio: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_bld: jnp.ndarray) -> jnp.ndarray:
        width = x_bld.shape[-1]
        h = dense(self.ratio * width, ("embed", "mlp"), self.dtype, name="fc1")(x_bld)
        return dense(width, ("mlp", "embed"), self.dtype, zero=True, name="fc2")(nn.gelu(h))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: branches in the compute dtype, each added to the residual
    stream `x_bld` in the stream's own dtype (float32 in the U-ViT, see `UViT.middle`)."""

    num_heads: int
    mlp_ratio: int
    dropout: float
    dtype: jnp.dtype
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x_bld: jnp.ndarray, train: bool) -> jnp.ndarray:
        drop = nn.Dropout(self.dropout, deterministic=not train)
        h = Attention(self.num_heads, self.dtype, self.attention_impl, name="attn")(
            layer_norm(self.dtype, name="norm1")(x_bld))
        x_bld = x_bld + drop(h).astype(x_bld.dtype)
        h = Mlp(self.mlp_ratio, self.dtype, name="mlp")(layer_norm(self.dtype, name="norm2")(x_bld))
        return x_bld + drop(h).astype(x_bld.dtype)


class SpatialAttention(nn.Module):
    """U-Net attention block on a [B, H, W, C] map: pre-norm self-attention, residual."""

    num_heads: int
    dtype: jnp.dtype
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x_bhwc: jnp.ndarray, train: bool) -> jnp.ndarray:
        del train
        b, h, w, c = x_bhwc.shape
        tokens = group_norm(c, self.dtype, name="norm")(x_bhwc).reshape(b, h * w, c)
        out = Attention(self.num_heads, self.dtype, self.attention_impl, name="attn")(tokens)
        return x_bhwc + out.reshape(b, h, w, c).astype(x_bhwc.dtype)


def remat_policy(mode: str, block: str):
    """jax.checkpoint policy for a block kind ('transformer' | 'conv'), or None for no remat.

    'transformer': transformer blocks only, saving the outputs of weight matmuls
    (dots_with_no_batch_dims_saveable) and recomputing attention, norms and elementwise ops.
    'all': every block, saving nothing (nothing_saveable): least memory, one extra forward.
    """
    if mode == "transformer" and block == "transformer":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if mode == "all":
        return jax.checkpoint_policies.nothing_saveable
    return None


def maybe_remat(cls: type[nn.Module], mode: str, block: str, train_argnum: int) -> type:
    """`cls` wrapped in nn.remat per `remat_policy`; `train_argnum` counts self as 0."""
    policy = remat_policy(mode, block)
    if policy is None:
        return cls
    return nn.remat(cls, policy=policy, static_argnums=(train_argnum,))
