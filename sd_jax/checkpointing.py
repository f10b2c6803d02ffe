"""Orbax checkpoints in `<workdir>/checkpoints/<step>/{state,meta}`: async, atomic, resharding.

A checkpoint holds the whole `TrainState` plus a JSON `meta` item with the data position (the
loader is deterministic by step, so `step` and `seed` pin it). Orbax writes each step into a
temporary directory and renames it only when complete, so an interrupted save never replaces the
last good checkpoint; leftover temporary directories are removed on the next start.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers

from sd_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str | Path) -> Path:
    """Where a run's checkpoints live."""
    return Path(workdir).absolute() / CHECKPOINT_DIR


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items 'state' and 'meta'."""

    def __init__(self, workdir: str | Path, keep: int = 3, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.LatestN(n=max(int(keep), 1)),
            enable_async_checkpointing=not read_only,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(
            checkpoint_dir(workdir), item_names=("state", "meta"), options=options
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts an async save (returns once arrays are copied off the devices)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores (state, meta) onto the shardings carried by `abstract_state`'s leaves.

        The saved layout does not matter: a checkpoint written on 8 devices restores on 1.
        """
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored.state, dict(restored.meta)

    def wait(self) -> None:
        """Blocks until in-flight async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for saves and releases the manager."""
        self.manager.close()


def data_meta(step: int, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The JSON item saved with each checkpoint: where the (deterministic) data stream resumes."""
    return {
        "step": int(step),
        "seed": int(config.seed),
        "batch_size": int(config.train.batch_size),
        "process_count": jax.process_count(),
    }


def check_meta(meta: dict[str, Any], config: ml_collections.ConfigDict) -> None:
    """Warns when a resumed run would not see the data an uninterrupted one would."""
    for key, now in (("seed", config.seed), ("batch_size", config.train.batch_size)):
        if key in meta and meta[key] != now:
            logging.warning(
                "resuming a checkpoint written with %s=%s under %s=%s: the data order differs",
                key, meta[key], key, now,
            )


def restore_inference_params(
    workdir: str | Path, config: ml_collections.ConfigDict, mesh: Mesh, use_ema: bool = True
) -> tuple[Any, int]:
    """Restores only the (EMA) params of the newest checkpoint, sharded for `mesh`.

    Returns (params, step). Raises UserError if the workdir holds no checkpoint.
    """
    from sd_jax import models, train_state

    directory = checkpoint_dir(workdir)
    ckpt = Checkpointer(workdir, read_only=True) if directory.is_dir() else None
    step = ckpt.latest_step() if ckpt else None
    if step is None:
        raise UserError(f"no checkpoint in {directory}; train first (--mode=train)")
    model = models.build_model(config.model)
    tx = train_state.make_optimizer(config.optimizer)
    abstract, _ = train_state.state_shardings(model, tx, config, mesh)
    key = "ema_params" if use_ema else "params"
    target = {key: getattr(abstract, key)}
    restored = ckpt.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True,
            )
        ),
    )
    ckpt.close()
    return restored.state[key], int(step)


class StopSignal:
    """SIGTERM / SIGINT set a flag; the trainer checks it between steps, saves and exits.

    All processes must stop at the same step, so with several processes the flag is combined
    with an all-reduce every `check_every` steps; a single process checks every step for free.
    A second signal gets the previous handler (e.g. Ctrl-C twice interrupts at once).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, check_every: int = 1):
        self.received: int | None = None
        self.check_every = max(int(check_every), 1)
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        name = signal.Signals(signum).name
        logging.warning("received %s: saving a checkpoint and stopping", name)

    def should_stop(self, step: int) -> bool:
        """Whether every process should stop after `step` (collective on multi-process runs)."""
        if jax.process_count() == 1:
            return self.received is not None
        if step % self.check_every:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.received is not None))
        return bool(np.max(flags))

    def close(self) -> None:
        """Restores the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
