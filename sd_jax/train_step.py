"""The train step: one pure function, jitted once with shardings and the state donated."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from sd_jax import losses, sharding
from sd_jax.models import loss_name
from sd_jax.train_state import TrainState, learning_rate_fn

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def drop_labels(rng: jax.Array, labels_b: jax.Array, rate: float, num_classes: int) -> jax.Array:
    """Replaces each label by the null label `num_classes` with probability `rate` (guidance)."""
    if num_classes <= 0 or rate <= 0:
        return labels_b
    drop_b = jax.random.bernoulli(rng, rate, labels_b.shape)
    return jnp.where(drop_b, num_classes, labels_b).astype(jnp.int32)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
) -> tuple[TrainState, Metrics]:
    """One optimizer step on `batch` ('image' [-1, 1] BHWC float32, 'label' int32 B).

    `rng` is the run's base key; the step's randomness is `fold_in(rng, state.step)`, so a resumed
    run draws exactly the numbers an uninterrupted one would. Metrics: `loss` (weighted),
    `unweighted_loss`, `grad_norm`, `learning_rate` and the unweighted loss per logSNR bucket
    (`losses.logsnr_bucket_metrics`), all of the whole global batch.
    """
    step_rng = jax.random.fold_in(rng, state.step)
    label_rng, loss_rng, dropout_rng = jax.random.split(step_rng, 3)
    labels_b = drop_labels(
        label_rng, batch["label"], config.train.label_dropout, config.model.num_classes
    )

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        def denoise_fn(z_bhwc: jax.Array, logsnr_b: jax.Array, labels: jax.Array) -> jax.Array:
            return model.apply(
                {"params": params}, z_bhwc, logsnr_b, labels, train=True,
                rngs={"dropout": dropout_rng},
            )

        return losses.diffusion_loss(
            denoise_fn, batch["image"], labels_b, loss_rng, config.diffusion,
            config.model.image_size, config.model.prediction,
            loss=loss_name(config.diffusion, config.model.arch),
        )

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    # Sums and counts (not means) per bucket, so that micro-batches simply add up.
    edges = losses.logsnr_bucket_edges(config.diffusion, config.model.image_size)
    sums, counts = losses.logsnr_bucket_sums(aux["logsnr_b"], aux["unweighted_loss_b"], edges)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, config.train.ema_decay),
        opt_state=opt_state,
    )
    metrics = {
        "loss": loss.astype(jnp.float32),
        "unweighted_loss": jnp.sum(sums) / jnp.sum(counts),
        "grad_norm": optax.global_norm(grads),
        "learning_rate": learning_rate_fn(config.optimizer)(state.step),
        **losses.logsnr_bucket_metrics(sums, counts, edges),
    }
    return new_state, metrics


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    state_shardings: TrainState,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
    """`train_step` with model/optimizer/config bound, jitted once; the input state is donated."""
    step_fn = functools.partial(train_step, model=model, tx=tx, config=config)
    data = sharding.batch_sharding(mesh)
    rep = sharding.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, {"image": data, "label": data}, rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )
