"""Training metrics: `<workdir>/metrics.jsonl`, a progress line with ETA, and TensorBoard via clu.

Only process 0 writes files. Metrics are fetched one step late by the trainer, so logging never
makes the host wait for the step it just dispatched.

In a gs:// workdir objects cannot be appended to, so new lines are held and written (the whole
object rewritten) at most every `UPLOAD_EVERY_SECS`, at every checkpoint (`flush`) and at the
end; lines lost in a crash are past the last checkpoint and would be dropped on resume anyway.
TensorBoard writes to a local temporary directory whose event files are copied into
`<workdir>/tensorboard` at the same times: TensorFlow's own gs:// client has fixed endpoints
(no emulator override), so it stays out of the tested path.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import jax
from absl import logging
from etils import epath

from sd_jax import paths
from sd_jax.errors import UserError
from sd_jax.tf_cpu import import_tensorflow

METRICS_FILE = "metrics.jsonl"
DIVERGENCE_ADVICE = ("the last checkpoint is intact; lower config.optimizer.learning_rate or "
                     "check the data")
UPLOAD_EVERY_SECS = 60.0  # gs:// workdirs: the longest a logged line waits to reach the bucket.


def _tensorboard_writer(logdir: str) -> Any:
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


class _MirroredWriter:
    """clu's writer on a local temporary directory; `flush` copies each event file that grew
    since the last copy to `remote` (a whole-object upload: GCS has no append)."""

    def __init__(self, writer: Any, local: str, remote: epath.Path):
        self.writer, self.local, self.remote = writer, local, remote
        self._sizes: dict[str, int] = {}

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.writer.write_scalars(step, scalars)

    def flush(self) -> None:
        self.writer.flush()
        self._copy_changed()

    def _copy_changed(self) -> None:
        for folder, _, names in os.walk(self.local):
            for name in names:
                file = os.path.join(folder, name)
                size = os.path.getsize(file)
                if self._sizes.get(file) != size:
                    with open(file, "rb") as f:
                        (self.remote / os.path.relpath(file, self.local)).write_bytes(f.read())
                    self._sizes[file] = size

    def close(self) -> None:
        self.writer.close()  # Flushes; then the files are final.
        self._copy_changed()
        shutil.rmtree(self.local, ignore_errors=True)


def tensorboard_writer(logdir: epath.Path) -> Any:
    """A clu writer for `logdir`, mirrored from a local temporary directory when `logdir` is in a
    bucket; None without TensorBoard."""
    if not paths.is_uri(logdir):
        return _tensorboard_writer(os.fspath(logdir))
    local = tempfile.mkdtemp(prefix="sd_jax_tensorboard_")
    writer = _tensorboard_writer(local)
    return None if writer is None else _MirroredWriter(writer, local, logdir)


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
        self, workdir: str | os.PathLike, *, num_steps: int, batch_size: int,
        start_step: int = 0, tensorboard: bool = True,
    ):
        self.primary = jax.process_index() == 0
        self.num_steps, self.batch_size = num_steps, batch_size
        workdir = paths.as_path(workdir)
        self.path = workdir / METRICS_FILE
        self._remote = paths.is_uri(workdir)
        self._pending: list[str] = []  # Lines not yet in the file (gs:// only).
        self.writer = None
        if self.primary and tensorboard:
            self.writer = tensorboard_writer(workdir / "tensorboard")
        if self.primary:
            self._drop_records_after(start_step)
        self._last_step, self._last_time = start_step, time.perf_counter()
        self._last_upload = time.monotonic()

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
            self._pending.append(json.dumps({"step": step, **record}) + "\n")
            if not self._remote or time.monotonic() - self._last_upload >= UPLOAD_EVERY_SECS:
                self._write_pending()
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

    def _write_pending(self) -> None:
        if self._pending:
            paths.append_text(self.path, "".join(self._pending))
            self._pending.clear()
        if self._remote and self.writer is not None:
            self.writer.flush()  # Copies the TensorBoard event files into the bucket.
        self._last_upload = time.monotonic()

    def flush(self) -> None:
        """Makes everything logged so far visible in the workdir (the trainer calls it at each
        checkpoint)."""
        if self.primary:
            self._write_pending()

    def close(self) -> None:
        """Writes what is pending and closes the TensorBoard writer."""
        if self.primary:
            self._write_pending()
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
