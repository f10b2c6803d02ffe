"""Stopping cleanly: SIGTERM / SIGINT become "save a checkpoint and stop" at a step every process
agrees on (JAX's preemption service has SIGTERM under jax.distributed)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def jax_takes_sigterm() -> bool:
    """True when JAX's preemption service owns SIGTERM: `jax.distributed.initialize()` installed
    its (C) handler, which tells every process about a SIGTERM on any one of them through the
    coordination service. A Python handler would replace it, so it is left in place."""
    return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


class StopSignal:
    """SIGTERM / SIGINT set a flag; the trainer checks it between steps, saves and exits.

    All processes must stop at the same step, so with several processes the flag is combined
    with an all-reduce every `check_every` steps; a single process checks every step for free.
    A second signal gets the previous handler (e.g. Ctrl-C twice interrupts at once). Under
    jax.distributed SIGTERM is JAX's (`jax_takes_sigterm`): the trainer stops at the preemption
    sync point instead (`Checkpointer.reached_preemption`), so only SIGINT is handled here.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, check_every: int = 1):
        self.received: int | None = None
        self.check_every = max(int(check_every), 1)
        self._previous: dict[int, Any] = {}
        signals = (signal.SIGINT,) if jax_takes_sigterm() else self.SIGNALS
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
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
