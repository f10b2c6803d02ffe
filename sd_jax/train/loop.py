"""`train(config, workdir)`: sharded, resumable training (`launch.py --mode=train`)."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath
from jax.sharding import Mesh

from sd_jax import data, models, sharding
from sd_jax.checkpoints import checkpointer
from sd_jax.errors import UserError
from sd_jax.io import lock, paths
from sd_jax.models.summary import parameter_table
from sd_jax.train import periodic
from sd_jax.train import state as train_state
from sd_jax.train.logger import MetricsLogger, make_profiler
from sd_jax.train.metrics import DIVERGENCE_ADVICE, check_finite
from sd_jax.train.step import make_train_step
from sd_jax.train.stop import StopSignal

TRAIN_RNG = 1  # fold_in tag of the seed's key (the key itself inits params; periodic: 2).
# A NaN this soon after a restore points at the checkpoint (a sign flip in Adam's second moment
# gives NaN within two steps), not at the learning rate.
RESTORE_SUSPECT_STEPS = 10


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def divergence_advice(step: int, resumed: tuple[int, epath.Path] | None) -> str:
    """What to do about a NaN/Inf at `step`; `resumed` = (step, directory) of the restore."""
    if resumed is not None and step - resumed[0] <= RESTORE_SUSPECT_STEPS:
        since, where = step - resumed[0], resumed[1]
        return (f"this is {since} step(s) after resuming from checkpoint {where}, which may be "
                f"damaged: move it to {where.parent.parent / checkpointer.DAMAGED_DIR}/ and rerun "
                "to resume from the one before (a lower learning rate would not help)")
    return DIVERGENCE_ADVICE


class _LaggedMetrics:
    """Holds a step's device metrics and reads them only after the next step is dispatched."""

    def __init__(self, logger: MetricsLogger,
                 resumed: tuple[int, epath.Path] | None = None):
        self.logger = logger
        self.resumed = resumed
        self.pending: tuple[int, dict[str, jax.Array]] | None = None

    def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """Reads the previous step's metrics (NaN check, maybe log), then holds this step's."""
        self.flush()
        self.pending = (step, metrics)

    def flush(self) -> None:
        """Reads the held metrics now (waits for that step) and hands them to the logger."""
        if self.pending is None:
            return
        step, metrics = self.pending
        self.pending = None
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(step, host["loss"], divergence_advice(step, self.resumed))
        self.logger.record(step, host)  # Every step: clu's ReportProgress times each one.


def _restore_or_init(
    ckpt: checkpointer.Checkpointer, model: Any, tx: Any, config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> tuple[train_state.TrainState, Any, int]:
    """Resumes from the newest intact checkpoint in the workdir, else initialises.
    -> (state, shardings, step)."""
    abstract, shardings = train_state.state_shardings(model, tx, config, mesh)
    found = ckpt.restore_newest_intact(abstract, config.model)
    if found is None:
        state, _ = train_state.create_train_state(model, tx, config, mesh)
        return state, shardings, 0
    state, meta, step = found
    checkpointer.check_meta(meta, config)
    logging.info("resumed from the checkpoint at step %d", step)
    print(f"resuming from step {step}", flush=True)
    return state, shardings, int(step)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike
          ) -> train_state.TrainState:
    """Trains `config` in `workdir` (a local path or gs://), resuming from its newest checkpoint.
    Returns the final state.

    Holds `<workdir>/train.lock` (process 0) while it runs, so a second training of the same
    workdir stops with one line naming this one. Saves every `train.checkpoint_every` steps, at
    the end, on SIGTERM/SIGINT and at JAX's preemption sync point, and says "checkpoint N saved"
    only once that save is committed; a failed save stops training with one line. Logs every
    `train.log_every` steps; samples EMA grids every `train.sample_every` steps.
    """
    workdir = paths.as_path(workdir)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    with lock.hold(workdir / lock.TRAIN_LOCK, "train", primary, sharding.from_process_zero):
        return _train(config, workdir)


def _report_saved(step: int | None, ckpt: checkpointer.Checkpointer, note: str = "") -> None:
    """One line once the save of `step` is committed (process 0)."""
    if step is not None and jax.process_index() == 0:
        print(f"{note}checkpoint {step} saved: {ckpt.directory / str(step)}", flush=True)


def _train(config: ml_collections.ConfigDict, workdir: epath.Path) -> train_state.TrainState:
    t = config.train
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_divisible(t.batch_size, mesh)
    periodic.check_config(config)  # Fails fast on missing FID weights / reference.
    profiler = make_profiler(t, workdir)  # Fails fast on bad steps; starts nothing.
    loader = data.build_loader(config)
    model = models.build_model(config.model)
    tx = train_state.make_optimizer(config.optimizer)
    ckpt = checkpointer.Checkpointer(workdir, keep=t.keep_checkpoints)
    try:
        state, shardings, start = _restore_or_init(ckpt, model, tx, config, mesh)
    except BaseException:  # E.g. a checkpoint of another model: no threads left behind.
        ckpt.close()
        loader.close()
        raise
    if start >= t.num_steps:
        ckpt.close()
        loader.close()
        if jax.process_index() == 0:
            print(f"nothing to train: {workdir} holds step {start}, at or past "
                  f"train.num_steps={t.num_steps}; raise --config.train.num_steps to train on",
                  flush=True)
        return state
    if jax.process_index() == 0:
        print(parameter_table(state.params), flush=True)
    step_fn = make_train_step(model, tx, config, mesh, shardings)
    train_rng = jax.device_put(
        jax.random.fold_in(jax.random.PRNGKey(config.seed), TRAIN_RNG), sharding.replicated(mesh)
    )
    logger = MetricsLogger(
        workdir, num_steps=t.num_steps, batch_size=t.batch_size, log_every=max(int(t.log_every), 1),
        start_step=start, tensorboard=t.tensorboard,
    )
    resumed = (start, ckpt.directory / str(start)) if start else None
    lagged = _LaggedMetrics(logger, resumed)
    stop = StopSignal(t.stop_check_every)

    def save(step: int) -> None:
        lagged.flush()  # The NaN check of the step that produced this state comes first.
        if not bool(_all_finite(state.params)):
            raise UserError(f"parameters are NaN/Inf after step {step}; not saving them: "
                            f"{divergence_advice(step, resumed)}")
        _report_saved(ckpt.wait(), ckpt)  # The save before this one is committed first.
        ckpt.save(step, state, checkpointer.data_meta(step, config))
        logger.flush()  # In a bucket, metrics.jsonl then holds every step up to the checkpoint.

    try:
        for index, batch in loader.iterate(start, t.num_steps):
            state, metrics = step_fn(state, sharding.global_batch(batch, mesh), train_rng)
            step = index + 1  # Steps done, as in checkpoints and metrics.jsonl.
            lagged.push(step, metrics)
            _report_saved(ckpt.poll(), ckpt)  # A failed save stops here, one step after it.
            if profiler is not None:
                profiler(step)
            # Asked every step on every process (the sync point is agreed on by step number).
            preempted = ckpt.reached_preemption(step)
            signalled = stop.should_stop(step)
            stopping = preempted or signalled
            if step % t.checkpoint_every == 0 or step == t.num_steps or stopping:
                save(step)
            if t.sample_every and (step % t.sample_every == 0 or step == t.num_steps):
                periodic.save_sample_grid(state.ema_params, config, mesh, step, workdir, logger)
            # All processes, same steps: sampling is a collective.
            periodic.maybe_fid(step, state.ema_params, config, mesh, workdir)
            if stopping:
                why = "by signal" if signalled else "at the preemption sync point"
                ckpt.wait()  # save(step) ran above (or found that step saved already).
                _report_saved(step, ckpt, f"stopped {why} at step {step}; ")
                break
        lagged.flush()
        _report_saved(ckpt.wait(), ckpt)
    finally:
        if profiler is not None:
            profiler.close()
        stop.close()
        ckpt.close()
        logger.close()
        loader.close()
    return state
