"""The train step: one pure function, jitted once with shardings and the state donated.

Batch contract (what every loader sends): `{"image": uint8 [B, H, W, 3] (not flipped),
"flip": bool [B], "label": int32 [B]}`, rows split over all devices. The step normalises to
[-1, 1] and flips on the device (`device_images`), so a quarter of the float32 bytes cross from
host to device.

Gradient accumulation: with `train.microbatch_size` = m < B the global batch is processed as
B / m micro-batches of m rows in one `lax.scan`, summing float32 gradients, then one optimizer
and one EMA update. Micro-batch j holds the global rows `j, j + B/m, j + 2B/m, ...`, so with the
rows split over devices in order every micro-batch is split evenly over all devices (no data
moves). Each example's t, noise and label drop are functions of (seed, step, its global row)
only, so the micro-batch size changes the summation order and nothing else (model dropout
masks, drawn per micro-batch, excepted).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from sd_jax import sharding, specs
from sd_jax.diffusion import losses, schedules
from sd_jax.diffusion.spec import DiffusionSpec
from sd_jax.models.layers import cast_params
from sd_jax.train import metrics as metrics_lib
from sd_jax.train.state import TrainState, learning_rate_fn

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
BATCH_KEYS = ("image", "flip", "label")


def drop_labels(rng: jax.Array, labels_b: jax.Array, rate: float, num_classes: int) -> jax.Array:
    """Replaces each label by the null label `num_classes` with probability `rate` (guidance)."""
    if num_classes <= 0 or rate <= 0:
        return labels_b
    drop_b = jax.random.bernoulli(rng, rate, labels_b.shape)
    return jnp.where(drop_b, num_classes, labels_b).astype(jnp.int32)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p - e), ema, params)


# uint8 -> [-1, 1] as a 256-entry table, computed by NumPy with IEEE division exactly as the host
# path `data.preprocess.to_float` does. Arithmetic under jit is not bitwise that: XLA rewrites
# `x / 127.5` as `x * (1 / 127.5)` (1 ulp off for about half the values), and TPUs do not divide
# exactly; a table lookup gives the same bits on every backend.
UINT8_TO_UNIT = (np.arange(256, dtype=np.float32) - np.float32(127.5)) / np.float32(127.5)


def device_images(image_bhwc: jax.Array, flip_b: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] -> float32 `(x - 127.5) / 127.5` in [-1, 1], mirrored left-right where
    `flip_b`: bitwise the host path `data.preprocess.to_float(image, flip)`."""
    x = jnp.take(jnp.asarray(UINT8_TO_UNIT), image_bhwc.astype(jnp.int32), axis=0,
                 mode="clip")  # uint8 is always in range: no fill mask.
    return jnp.where(flip_b[:, None, None, None], x[:, :, ::-1], x)


def num_microbatches(batch_size: int, microbatch_size: int) -> int:
    """Micro-batches per step (`microbatch_size` 0 or `batch_size`: 1, no accumulation)."""
    if microbatch_size in (0, batch_size):
        return 1
    if microbatch_size < 0 or batch_size % microbatch_size:
        raise ValueError(f"microbatch_size={microbatch_size} does not divide {batch_size}")
    return batch_size // microbatch_size


def _split_micro(x: jax.Array, count: int) -> jax.Array:
    """[B, ...] -> [count, B / count, ...] with micro-batch j = rows j, j + count, ...: a reshape
    that keeps each device's rows on it when rows are split over devices in order."""
    return jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)


def example_noise(keys_b: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal noise of `shape` per example, each from its own key (threefry keys: under
    vmap they give exactly the per-key draws, so a row's noise is the same in any batch)."""
    return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys_b)


def dropout_key(step_key: jax.Array) -> jax.Array:
    """Key for the model's dropout masks at a step (fold in the micro-batch index per use)."""
    return jax.random.fold_in(step_key, 3)


def microbatch_metrics(aux: dict[str, jax.Array], batch_size: int, spec: DiffusionSpec
                       ) -> Metrics:
    """One micro-batch's contributions to the step's metrics, from the loss's `aux` (per-example
    arrays of this micro-batch). The step SUMS every leaf over the micro-batches, so each entry
    must be additive: a sum over this micro-batch's rows (divided by the global `batch_size` for
    a global mean, as `loss`), or a count; any pytree sums. A new metric: add its sums here,
    computed from `aux` (extend `losses.diffusion_loss_given_noise`'s aux if it lacks a
    per-example input), and, unless it is already a scalar the logger can write, turn the sums
    into scalar metrics in `train_step` (as the per-bucket sums and counts are)."""
    # Sums and counts (not means) per logSNR bucket, so that micro-batches simply add up.
    edges = metrics_lib.logsnr_bucket_edges(spec)
    sums, counts = metrics_lib.logsnr_bucket_sums(aux["logsnr_b"], aux["unweighted_loss_b"],
                                                  edges)
    return {"loss": jnp.sum(aux["loss_b"]) / batch_size, "bucket_sums": sums,
            "bucket_counts": counts}


def microbatches(batch: Batch, step_key: jax.Array, count: int,
                 config: ml_collections.ConfigDict) -> Batch:
    """The global `batch` as `count` micro-batches (leaves [count, B / count, ...]; module
    docstring), each row with its label after label dropout, its time `t` and its noise key,
    all drawn from `step_key` and the row's global index; "index" numbers the micro-batches."""
    batch_size = batch["label"].shape[0]
    labels_b = drop_labels(jax.random.fold_in(step_key, 0), batch["label"],
                           config.train.label_dropout, config.model.num_classes)
    t_b = schedules.sample_times(jax.random.fold_in(step_key, 1), batch_size,
                                 config.diffusion.time_sampling)
    noise_keys_b = jax.vmap(jax.random.fold_in, (None, 0))(
        jax.random.fold_in(step_key, 2), jnp.arange(batch_size))
    micro = jax.tree.map(lambda x: _split_micro(x, count), {
        "image": batch["image"], "flip": batch["flip"], "label": labels_b, "t": t_b,
        "noise_key": noise_keys_b})
    micro["index"] = jnp.arange(count)
    return micro


def microbatch_loss(params: Any, mb: Batch, drop_key: jax.Array, *, model: nn.Module,
                    spec: DiffusionSpec, batch_size: int) -> tuple[jax.Array, Metrics]:
    """The training forward of one micro-batch `mb` (one entry of `microbatches`): its share of
    the step's mean weighted loss (`batch_size` is the global batch), and its metrics. The train
    step differentiates it; `--mode=plan` traces its backward pass (sd_jax/tools/plan.py)."""
    def denoise_fn(z_bhwc: jax.Array, logsnr_b: jax.Array, labels: jax.Array) -> jax.Array:
        return model.apply(
            {"params": params}, z_bhwc, logsnr_b, labels, train=True,
            rngs={"dropout": jax.random.fold_in(drop_key, mb["index"])},
        )

    x0_bhwc = device_images(mb["image"], mb["flip"])
    eps_bhwc = example_noise(mb["noise_key"], x0_bhwc.shape[1:])
    _, aux = losses.diffusion_loss_given_noise(denoise_fn, x0_bhwc, mb["label"], mb["t"],
                                               eps_bhwc, spec)
    metrics = microbatch_metrics(aux, batch_size, spec)
    return metrics["loss"], metrics


def loss_and_grads(
    params: Any,
    batch: Batch,
    step_key: jax.Array,
    *,
    model: nn.Module,
    config: ml_collections.ConfigDict,
    param_shardings: Any = None,
) -> tuple[Metrics, Any]:
    """(metrics, float32 gradient) of the global `batch`'s mean weighted loss w.r.t. `params`,
    accumulated over `train.microbatch_size` micro-batches (module docstring). `metrics` are
    `microbatch_metrics` summed over the micro-batches; `metrics["loss"]` is the mean loss.

    `step_key` is the step's key: every example's t, noise and label drop derive from it and the
    example's global row, so the result does not depend on the micro-batch size beyond float
    summation order (and dropout masks, drawn per micro-batch). `param_shardings` (under jit)
    pins each micro-batch's gradient to its parameter's sharding, so the float32 accumulator is
    split like the params (FSDP) and each gradient is reduce-scattered once per micro-batch.
    """
    batch_size = batch["label"].shape[0]
    count = num_microbatches(batch_size, int(config.train.microbatch_size))
    micro = microbatches(batch, step_key, count, config)
    loss_fn = functools.partial(microbatch_loss, drop_key=dropout_key(step_key), model=model,
                                spec=specs.diffusion_spec(config), batch_size=batch_size)
    # Cast once per step: the convert runs on each device's shard, so FSDP gathers move the
    # compute dtype. The float32 master weights stay with the caller.
    params_c = cast_params(params, config.model.dtype)

    def micro_step(mb: Batch) -> tuple[Metrics, Any]:
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params_c, mb)
        # The gradient of the cast is the upcast: accumulate in the params' float32.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        if param_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        return metrics, grads

    if count == 1:
        return micro_step(jax.tree.map(lambda x: x[0], micro))

    def accumulate(carry: tuple[Metrics, Any], mb: Batch) -> tuple[tuple[Metrics, Any], None]:
        return jax.tree.map(jnp.add, carry, micro_step(mb)), None

    shapes = jax.eval_shape(micro_step, jax.tree.map(lambda x: x[0], micro))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    (metrics, grads), _ = jax.lax.scan(accumulate, zeros, micro)
    return metrics, grads


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    param_shardings: Any = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer step and one EMA update on the global `batch` (module docstring).

    `rng` is the run's base key; the step's randomness is `fold_in(rng, state.step)`, so a resumed
    run draws exactly the numbers an uninterrupted one would. Metrics, all of the whole global
    batch: `loss` (weighted), `unweighted_loss`, `grad_norm`, `learning_rate` and the unweighted
    loss per logSNR bucket (`metrics.logsnr_bucket_metrics`), from `microbatch_metrics` summed
    over the micro-batches.
    """
    step_key = jax.random.fold_in(rng, state.step)
    summed, grads = loss_and_grads(state.params, batch, step_key, model=model, config=config,
                                   param_shardings=param_shardings)
    sums, counts = summed.pop("bucket_sums"), summed.pop("bucket_counts")
    edges = metrics_lib.logsnr_bucket_edges(specs.diffusion_spec(config))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, config.train.ema_decay),
        opt_state=opt_state,
    )
    metrics = {
        **summed,  # `loss` and whatever else `microbatch_metrics` sums.
        "unweighted_loss": jnp.sum(sums) / jnp.sum(counts),
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": learning_rate_fn(config.optimizer)(state.step),
        **metrics_lib.logsnr_bucket_metrics(sums, counts, edges),
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
    micro = int(config.train.microbatch_size)  # validate() checked it against the devices.
    assert micro in (0, config.train.batch_size) or micro % mesh.devices.size == 0, micro
    step_fn = functools.partial(train_step, model=model, tx=tx, config=config,
                                param_shardings=state_shardings.params)
    data = sharding.batch_sharding(mesh)
    rep = sharding.replicated(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, dict.fromkeys(BATCH_KEYS, data), rep),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,),
    )
