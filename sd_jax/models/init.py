"""Parameters of a network without training it: abstract shapes (nothing allocated) and the init.

`init_params(model, model_cfg, rng)` is the one call of `model.init` (on a one-image dummy batch)
that the train state, the params-only restore, inspect and plan build on.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sd_jax.models.registry import build
from sd_jax.models.spec import ModelSpec


def input_structs(model_cfg: ml_collections.ConfigDict, batch: int) -> tuple:
    """ShapeDtypeStructs of the network's inputs (z_bhwc, logsnr_b, labels_b) at `batch`."""
    size, channels = model_cfg.image_size, model_cfg.image_channels
    return (jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.int32))


def init_params(model: nn.Module, model_cfg: ml_collections.ConfigDict, rng: jax.Array) -> Any:
    """`model.init` on a one-image dummy batch; returns the (boxed) params collection."""
    z, logsnr, labels = (jnp.zeros(x.shape, x.dtype) for x in input_structs(model_cfg, 1))
    return model.init({"params": rng, "dropout": rng}, z, logsnr, labels, train=False)["params"]


def param_shapes(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Parameter ShapeDtypeStructs of `build_model(model_cfg)` (unboxed), without allocating."""
    model = build(ModelSpec.from_config(model_cfg))
    variables = jax.eval_shape(model.init, jax.random.key(0), *input_structs(model_cfg, 1))
    return nn.unbox(variables)["params"]
