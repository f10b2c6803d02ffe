"""Helpers of the model tests (tests/models, tests/tools): tiny real configs, inputs, cheap jit.

XLA:CPU spends most of the time compiling, so: parameters are drawn with numpy from the
eval_shape'd tree (no compiled init) except where the real init is the point, keys use the 'rbg'
PRNG (one op instead of unrolled threefry), and jit runs with backend optimisations off.
"""

from __future__ import annotations

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SHRINK = 8  # Image sizes / 8 keep every config's input transform and number of levels.


def tiny_config(name: str = "imagenet512", arch: str = "uvit", **overrides):
    """A real config with tiny widths/depth; transforms and levels kept (sizes / 8)."""
    c = importlib.import_module(f"configs.{name}").get_config()
    m = c.model
    m.arch = arch
    m.image_size //= SHRINK
    m.dropout_max_resolution = max(1, m.dropout_max_resolution // SHRINK)
    m.attention_resolutions = tuple(r // SHRINK for r in m.attention_resolutions)
    m.update(dict(base_channels=8, emb_dim=16, transformer_depth=1, num_heads=2,
                  num_res_blocks=1, num_classes=10, dtype="float32"))
    m.update(overrides)
    return c


def inputs(model_cfg, batch: int = 2, seed: int = 0):
    size = model_cfg.image_size
    z = np.random.default_rng(seed).normal(size=(batch, size, size, model_cfg.image_channels))
    labels = jnp.arange(batch, dtype=jnp.int32) % 10
    return jnp.asarray(z, jnp.float32), jnp.linspace(-5.0, 5.0, batch), labels


FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit(fn, **kwargs):
    """jax.jit with cheap XLA:CPU compilation (the tests' tiny graphs do not need it fast)."""
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def param_shapes(model, z, logsnr, labels):
    return nn.unbox(jax.eval_shape(model.init, key(0), z, logsnr, labels))["params"]


def trained_like_params(model, z, logsnr, labels, seed: int = 1):
    """Params as after some training: lecun-scaled kernels, norm scales ~1, small non-zero rest.

    Unlike the init, no layer is zero, so every input (label, logSNR) reaches the output.
    """
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1].key
        if name in ("kernel", "embedding", "pos_embed"):
            fan_in = np.prod(shape.shape[:-1]) if name == "kernel" else 1
            std = 1.0 / np.sqrt(fan_in)
        else:
            std = 0.05
        value = rng.normal(0.0, std, shape.shape) + (1.0 if name == "scale" else 0.0)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(model, z, logsnr, labels))
