"""Training metrics: `<workdir>/metrics.jsonl`, one progress line per log step, TensorBoard and
profiler traces via clu.

Steps/s and the ETA come from `Progress` (clu's ReportProgress figures and note, without
`clu.periodic_actions`, which imports TensorFlow: training needs TF only for TensorBoard, the
tfds source and profiling), profiler traces from `clu.periodic_actions.Profile`; both run on
every process, as clu intends (each process's profile is its own file). Only process 0 writes
metrics files. Metrics are fetched one step late by the trainer, so logging never makes the
host wait for the step it just dispatched.

In a gs:// workdir objects cannot be appended to, so new lines are held and written (the whole
object rewritten) at most every `UPLOAD_EVERY_SECS`, at every checkpoint (`flush`) and at the
end; lines lost in a crash are past the last checkpoint and would be dropped on resume anyway.
TensorBoard and the profiler write to local temporary directories whose files are copied into
`<workdir>/tensorboard` and `<workdir>/profile` at the same times: TensorFlow's and the
profiler's own gs:// clients have fixed endpoints (no emulator override), so they stay out of
the tested path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from sd_jax.errors import UserError
from sd_jax.io import paths
from sd_jax.tf_cpu import import_tensorflow
from sd_jax.train.metrics import drop_empty_buckets

METRICS_FILE = "metrics.jsonl"
UPLOAD_EVERY_SECS = 60.0  # gs:// workdirs: the longest a logged line waits to reach the bucket.


def _periodic_actions() -> Any:
    """`clu.periodic_actions`, which imports TensorFlow (clu's metric writers): TF first, kept off
    the accelerators JAX owns."""
    import_tensorflow()
    from clu import periodic_actions

    return periodic_actions


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


class _DirectoryMirror:
    """Copies each file under the local directory `local` that changed since the last copy to
    the same place under `remote` (a whole-object upload: GCS has no append)."""

    def __init__(self, local: str, remote: epath.Path):
        self.local, self.remote = local, remote
        self._sizes: dict[str, int] = {}

    def copy_changed(self) -> None:
        for folder, _, names in os.walk(self.local):
            for name in names:
                file = os.path.join(folder, name)
                size = os.path.getsize(file)
                if self._sizes.get(file) != size:
                    with open(file, "rb") as f:
                        (self.remote / os.path.relpath(file, self.local)).write_bytes(f.read())
                    self._sizes[file] = size

    def close(self) -> None:
        self.copy_changed()
        shutil.rmtree(self.local, ignore_errors=True)


class _MirroredWriter:
    """clu's writer on a local temporary directory; `flush` copies the event files to `remote`."""

    def __init__(self, writer: Any, local: str, remote: epath.Path):
        self.writer, self.mirror = writer, _DirectoryMirror(local, remote)

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.writer.write_scalars(step, scalars)

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        self.writer.write_images(step, images)

    def flush(self) -> None:
        self.writer.flush()
        self.mirror.copy_changed()

    def close(self) -> None:
        self.writer.close()  # Flushes; then the files are final.
        self.mirror.close()


def tensorboard_writer(logdir: epath.Path) -> Any:
    """A clu writer for `logdir`, mirrored from a local temporary directory when `logdir` is in a
    bucket; None without TensorBoard."""
    if not paths.is_uri(logdir):
        return _tensorboard_writer(os.fspath(logdir))
    local = tempfile.mkdtemp(prefix="sd_jax_tensorboard_")
    writer = _tensorboard_writer(local)
    return None if writer is None else _MirroredWriter(writer, local, logdir)


def _format_secs(secs: float) -> str:
    """'1d10h17m' for 123456.7 s, as clu's ReportProgress writes its ETA."""
    days, rest = divmod(int(secs), 86_400)
    hours, rest = divmod(rest, 3_600)
    return (f"{days}d" if days else "") + (f"{hours}h" if hours else "") + f"{rest // 60}m"


class Progress:
    """Steps/s, progress and ETA on every `every_steps`-th step and the last, over the steps
    since the previous report (the first interval, from construction, counts compiling): the
    figures and note of clu's ReportProgress ('2.1 steps/s, 40.0% (400/1000), ETA: 5m')."""

    def __init__(self, num_steps: int, every_steps: int, start_step: int = 0):
        self.num_steps, self.every_steps = num_steps, every_steps
        self._t0 = self._time = time.monotonic()
        self._step = start_step
        self.note = ""
        self.scalars: dict[str, float] = {}

    def __call__(self, step: int) -> bool:
        """Call after every step; on a report step updates `note` and `scalars` (steps_per_sec,
        uptime) and returns True."""
        if step == self._step or (step % self.every_steps and step != self.num_steps):
            return False
        now = time.monotonic()
        rate = (step - self._step) / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        self.note = (f"{rate:.1f} steps/s, {100 * step / self.num_steps:.1f}% "
                     f"({step}/{self.num_steps}), "
                     f"ETA: {_format_secs((self.num_steps - step) / rate)}")
        self.scalars = {"steps_per_sec": rate, "uptime": now - self._t0}
        return True


def _log_line(step: int, record: dict[str, float], note: str | None) -> str:
    """'step 400: loss 0.1234 (unweighted 0.2345) | <progress note> | 77 img/s'."""
    line = f"step {step}: loss {record.get('loss', float('nan')):.4f}"
    if "unweighted_loss" in record:
        line += f" (unweighted {record['unweighted_loss']:.4f})"
    if note is None:
        return line + " | steps/s from the next log step on"
    return line + f" | {note} | {record['images_per_sec']:.0f} img/s"


class MetricsLogger:
    """Gets every step's host metrics (`record`); writes one record per log step to
    `metrics.jsonl`, stdout and TensorBoard (process 0)."""

    def __init__(
        self, workdir: str | os.PathLike, *, num_steps: int, batch_size: int,
        log_every: int = 1, start_step: int = 0, tensorboard: bool = True,
    ):
        self.primary = jax.process_index() == 0
        self.num_steps, self.batch_size, self.log_every = num_steps, batch_size, log_every
        workdir = paths.as_path(workdir)
        self.path = workdir / METRICS_FILE
        self._remote = paths.is_uri(workdir)
        self._pending: list[str] = []  # Lines not yet in the file (gs:// only).
        self.writer = None
        if self.primary and tensorboard:
            self.writer = tensorboard_writer(workdir / "tensorboard")
        if self.primary:
            self._drop_records_after(start_step)
        self._last_upload = time.monotonic()
        # The clock starts now: the first interval counts compiling.
        self._progress = Progress(num_steps, log_every, start_step)

    def _drop_records_after(self, step: int) -> None:
        """On resume, forget records the interrupted run logged past its last checkpoint."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def record(self, step: int, metrics: dict[str, float]) -> dict[str, float] | None:
        """Takes the host metrics of `step` (steps done; every step, in order) and logs them on
        log steps (every `log_every` and the last); returns the logged record, else None."""
        reported = self._progress(step)
        if step % self.log_every and step != self.num_steps:
            return None
        record = drop_empty_buckets({k: float(v) for k, v in metrics.items()})
        note = None  # No interval yet (a log step the progress did not report).
        if reported:
            note = self._progress.note
            record.update(self._progress.scalars)
            record["images_per_sec"] = record["steps_per_sec"] * self.batch_size
        if self.primary:
            self._pending.append(json.dumps({"step": step, **record}) + "\n")
            if not self._remote or time.monotonic() - self._last_upload >= UPLOAD_EVERY_SECS:
                self._write_pending()
            print(_log_line(step, record, note), flush=True)
        if self.writer is not None:
            self.writer.write_scalars(step, record)
        return record

    def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """uint8 images [H, W, C] (or [N, H, W, C]) to TensorBoard (process 0)."""
        if self.writer is not None:
            self.writer.write_images(step, images)

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


class Profiler:
    """`clu.periodic_actions.Profile`: one profiler trace of `num_steps` steps after step
    `first_step`, into `<workdir>/profile` (TensorBoard's profile plugin reads it). Call it after
    dispatching each step; `close()` ends a trace the run stopped in and copies a gs:// one."""

    def __init__(self, workdir: epath.Path, first_step: int, num_steps: int):
        if first_step < 0 or num_steps < 1:
            raise UserError(f"train.profile_start_step={first_step} and train.profile_num_steps="
                            f"{num_steps}: give a step >= 1 to start at and at least 1 step "
                            "(profile_start_step=0 turns profiling off)")
        logdir = workdir / "profile"
        self._mirror = None
        if paths.is_uri(logdir):  # The profiler writes through its own gs:// client: see above.
            self._mirror = _DirectoryMirror(tempfile.mkdtemp(prefix="sd_jax_profile_"), logdir)
            local = self._mirror.local
        else:
            logdir.mkdir(parents=True, exist_ok=True)
            local = os.fspath(logdir)
        # profile_duration_ms=0: steps only; every_secs=None: once.
        self._profile = _periodic_actions().Profile(
            logdir=local, num_profile_steps=num_steps, profile_duration_ms=0,
            first_profile=first_step, every_secs=None)

    def __call__(self, step: int) -> None:
        self._profile(step)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # No trace running: the usual case.
            jax.profiler.stop_trace()
        if self._mirror is not None:
            self._mirror.close()


def make_profiler(config_train: Any, workdir: epath.Path) -> Profiler | None:
    """A `Profiler` for `train.profile_start_step` > 0, else None."""
    if int(config_train.profile_start_step) == 0:
        return None
    return Profiler(workdir, int(config_train.profile_start_step),
                    int(config_train.profile_num_steps))
