"""Training metrics: `<workdir>/metrics.jsonl`, a progress line with ETA, and TensorBoard via clu.

Only process 0 writes files. Metrics are fetched one step late by the trainer, so logging never
makes the host wait for the step it just dispatched.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
from absl import logging

from sd_jax.errors import UserError
from sd_jax.tf_cpu import import_tensorflow

METRICS_FILE = "metrics.jsonl"
DIVERGENCE_ADVICE = ("the last checkpoint is intact; lower config.optimizer.learning_rate or "
                     "check the data")


def _tensorboard_writer(logdir: Path) -> Any:
    """clu's default writer (TensorBoard + log lines), or None when TensorBoard is missing.

    `clu.metric_writers` imports TensorFlow and `tensorboard` (several seconds), so it is imported
    only here; TF is kept off the accelerators JAX owns.
    """
    try:
        import_tensorflow()  # Before clu imports it: TF must never see the accelerators.
        from clu import metric_writers
    except ImportError as e:
        logging.warning("no TensorBoard logs (%s); pip install tensorboard", e)
        return None
    return metric_writers.create_default_writer(str(logdir), asynchronous=True)


def check_finite(step: int, loss: float, advice: str = DIVERGENCE_ADVICE) -> None:
    """Raises UserError naming the step when the loss is NaN or Inf; `advice` ends the line."""
    if not math.isfinite(loss):
        raise UserError(f"loss is {loss} at step {step}; stopping without saving this state: "
                        f"{advice}")


def format_duration(seconds: float) -> str:
    """'1d 02:03:04' style duration for ETAs."""
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86400)
    text = str(datetime.timedelta(seconds=rest))
    return f"{days}d {text}" if days else text


class MetricsLogger:
    """Writes one record per logged step to `metrics.jsonl`, stdout and TensorBoard (process 0)."""

    def __init__(
        self, workdir: str | Path, *, num_steps: int, batch_size: int, start_step: int = 0,
        tensorboard: bool = True,
    ):
        self.primary = jax.process_index() == 0
        self.num_steps, self.batch_size = num_steps, batch_size
        self.path = Path(workdir) / METRICS_FILE
        self.writer = None
        if self.primary and tensorboard:
            self.writer = _tensorboard_writer(Path(workdir) / "tensorboard")
        if self.primary:
            self._drop_records_after(start_step)
        self._last_step, self._last_time = start_step, time.perf_counter()

    def _drop_records_after(self, step: int) -> None:
        """On resume, forget records the interrupted run logged past its last checkpoint."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        """Logs host scalars for `step` (steps done) plus throughput; returns the record."""
        now = time.perf_counter()
        steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        record = {k: float(v) for k, v in metrics.items()}
        record.update(steps_per_sec=steps_per_sec, images_per_sec=steps_per_sec * self.batch_size)
        if self.primary:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")
            eta = format_duration((self.num_steps - step) / max(steps_per_sec, 1e-9))
            print(
                f"step {step}/{self.num_steps} ({100.0 * step / self.num_steps:.1f}%) "
                f"loss {record.get('loss', float('nan')):.4f} | {steps_per_sec:.2f} steps/s "
                f"{record['images_per_sec']:.0f} img/s | ETA {eta}",
                flush=True,
            )
        if self.writer is not None:
            self.writer.write_scalars(step, record)
        return record

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def param_overview(params: Any) -> str:
    """A table of parameter counts per top-level module, with the total."""
    counts = {name: sum(x.size for x in jax.tree.leaves(sub)) for name, sub in params.items()}
    counts["total"] = sum(counts.values())
    width = max(len(name) for name in counts)
    rows = [f"  {name:<{width}}  {n:>14,}" for name, n in counts.items() if name != "total"]
    rows.append(f"  {'total':<{width}}  {counts['total']:>14,}")
    return "parameters per module:\n" + "\n".join(rows)
