"""Params-only restore for sampling: the EMA (or raw) params of the newest intact checkpoint, laid
out for the sampling mesh, without building or reading the optimizer state."""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh

from sd_jax import sharding
from sd_jax.checkpoints import checkpointer
from sd_jax.errors import UserError
from sd_jax.models import build_model
from sd_jax.models.init import init_params


def abstract_params(config: ml_collections.ConfigDict, mesh: Mesh) -> Any:
    """The params of `config.model` as ShapeDtypeStructs carrying their shardings on `mesh`.

    Traced with `jax.eval_shape` (nothing allocated); no optimizer is built.
    """
    model = build_model(config.model)
    boxed = jax.eval_shape(lambda r: init_params(model, config.model, r),
                           jax.random.PRNGKey(config.seed))
    shardings = sharding.tree_shardings(boxed, mesh, sharding.rules_from_config(config))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.meta.unbox(boxed), shardings)


def restore_inference_params(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, mesh: Mesh, use_ema: bool = True
) -> tuple[Any, int]:
    """Restores only the EMA (or, `use_ema=False`, raw) params of the newest intact checkpoint,
    sharded for `mesh`: the optimizer state is neither built nor read.

    Returns (params, step). Raises UserError if the workdir holds no checkpoint, or if the
    checkpoint's params do not fit `config.model` exactly (checked before any array is read);
    params whose checksums differ from the saved ones make it fall back to an older checkpoint.
    """
    directory = checkpointer.checkpoint_dir(workdir)
    ckpt = checkpointer.Checkpointer(workdir, read_only=True) if directory.is_dir() else None
    if ckpt is None or ckpt.latest_step() is None:
        raise UserError(f"no checkpoint in {directory}; train first (--mode=train)")
    key = "ema_params" if use_ema else "params"
    try:
        found = ckpt.restore_newest_intact({key: abstract_params(config, mesh)}, config.model,
                                           partial=True)
    finally:
        ckpt.close()
    state, _, step = found
    return state[key], int(step)
