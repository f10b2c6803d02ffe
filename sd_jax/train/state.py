"""Train state (step, params, EMA params, optimizer state), created already sharded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from sd_jax import sharding
from sd_jax.models.init import init_params


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a plain pytree of arrays (checkpointable as is)."""

    step: jax.Array  # int32 scalar: number of optimizer steps taken.
    params: Any
    ema_params: Any
    opt_state: Any


def learning_rate_fn(opt_cfg: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """Linear warm-up to `learning_rate` over `warmup_steps`, then constant (paper).

    Step 0 already uses `lr / warmup_steps`, so no step is spent with a zero learning rate.
    """
    peak, warmup = float(opt_cfg.learning_rate), int(opt_cfg.warmup_steps)

    def schedule(count: jax.Array) -> jax.Array:
        if warmup <= 0:
            return jnp.asarray(peak, jnp.float32)
        return peak * jnp.minimum(1.0, (count + 1.0) / warmup)

    return schedule


def make_optimizer(opt_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam (b1, b2, eps from the config), global-norm clipping, optional decoupled weight decay."""
    parts = []
    if opt_cfg.grad_clip and opt_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(opt_cfg.grad_clip)))
    parts.append(optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps))
    if opt_cfg.weight_decay:
        parts.append(optax.add_decayed_weights(float(opt_cfg.weight_decay)))
    parts.append(optax.scale_by_learning_rate(learning_rate_fn(opt_cfg)))
    return optax.chain(*parts)


def _init_boxed(
    model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
    rng: jax.Array,
) -> TrainState:
    """The state with params still in their logical-partitioning boxes (for eval_shape)."""
    params = init_params(model, config.model, rng)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),  # optax maps over the boxes, so its state keeps their names.
    )


def state_shardings(
    model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> tuple[TrainState, TrainState]:
    """Returns (abstract state of ShapeDtypeStructs carrying shardings, tree of shardings)."""
    rng = jax.random.PRNGKey(config.seed)
    boxed = jax.eval_shape(lambda r: _init_boxed(model, tx, config, r), rng)
    shardings = sharding.tree_shardings(boxed, mesh, sharding.rules_from_config(config))
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed), shardings,
    )
    return abstract, shardings


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> tuple[TrainState, TrainState]:
    """Initialises the state directly into its shardings (never whole on one device).

    Returns (state, state_shardings). Params init from `PRNGKey(config.seed)`.
    """
    _, shardings = state_shardings(model, tx, config, mesh)
    init = jax.jit(
        lambda r: nn.meta.unbox(_init_boxed(model, tx, config, r)), out_shardings=shardings
    )
    return init(jax.random.PRNGKey(config.seed)), shardings

