"""Orbax checkpoints in `<workdir>/checkpoints/<step>/{state,meta}`: async, atomic, verified.

A checkpoint holds the whole `TrainState` plus a JSON `meta` item with the data position (the
loader is deterministic by step, so `step` and `seed` pin it), the model config and a checksum of
every array (`checkpoint_integrity`). Orbax writes each step into a temporary directory and
renames it only when complete (in a gs:// bucket, which has no rename, it writes
`commit_success.txt` last and ignores steps without it), so an interrupted save never replaces
the last good checkpoint; leftover temporary directories are removed on the next start.

Restoring checks the stored tree against the configured model first (a different model is a
one-line `UserError`, before orbax reads anything), then restores and compares the checksums.
A checkpoint that cannot be read back as saved (truncated, files missing, a checksum differs) is
reported in one line and the next older one is used; a training run moves the damaged ones to
`<workdir>/damaged_checkpoints/` (never deletes them), so it can write those steps again.
Paths are `etils.epath` paths (`sd_jax.io.paths`), so all of this works in a gs:// bucket too.
"""

from __future__ import annotations

import contextlib
import gc
import logging as py_logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from sd_jax.checkpoints import integrity
from sd_jax.errors import UserError
from sd_jax.io import paths

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # Next to CHECKPOINT_DIR, where orbax never looks.


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    """Where a run's checkpoints live (a local path or a gs:// URI)."""
    return paths.as_path(workdir) / CHECKPOINT_DIR


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read back as it was saved (the message says why)."""


class _QuietOrbaxFailures(py_logging.Filter):
    """Drops the tracebacks of a failed background save: orbax logs one per thread that saw the
    failure, and asyncio one per abandoned write at exit (~300 lines for a full disk), where
    `Checkpointer` reports the failure in one line. Only records carrying an exception raised
    through orbax's code (or about its temporary directory) are dropped, and none at
    --verbosity=0 (INFO) or more."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if not record.exc_info or _verbose():
            return True
        frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info[2] else []
        through_orbax = any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)
        return not (through_orbax or ".orbax-checkpoint-tmp" in str(record.exc_info[1]))


_QUIET = _QuietOrbaxFailures()


def _quiet_orbax_failures() -> None:
    """Installs `_QuietOrbaxFailures` for the rest of the process (asyncio logs at exit):
    on absl's logger, which orbax logs through, and on asyncio's; and `_closed_loop_hook`."""
    for logger in (logging.get_absl_logger(), py_logging.getLogger("asyncio")):
        if _QUIET not in logger.filters:
            logger.addFilter(_QUIET)
    if getattr(sys.unraisablehook, "__wrapped__", None) is None:
        sys.unraisablehook = _closed_loop_hook(sys.unraisablehook)


def _verbose() -> bool:
    """--verbosity=0 (INFO) or more: library tracebacks are shown, not filtered."""
    return py_logging.getLogger().getEffectiveLevel() <= py_logging.INFO


def _unraisable_filter(previous: Callable[[Any], None],
                       drop: Callable[[Any, list[traceback.FrameSummary]], bool]
                       ) -> Callable[[Any], None]:
    """An unraisable hook that passes to `previous` every report `drop(info, frames)` rejects."""

    def hook(info: Any) -> None:
        frames = traceback.extract_tb(info.exc_traceback) if info.exc_traceback else []
        if not drop(info, frames):
            previous(info)

    hook.__wrapped__ = previous
    return hook


def _closed_loop_hook(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    """sys.unraisablehook without the 'Event loop is closed' errors of a failed save:
    TensorStore completes the abandoned writes on its own threads after orbax has closed their
    event loop, and each completion callback's error is reported as unraisable (~240
    tracebacks for a full disk under load). Only that error, raised inside asyncio's own
    frames, is dropped, and nothing at --verbosity=0 (INFO) or more."""

    def closed_loop(info: Any, frames: list[traceback.FrameSummary]) -> bool:
        return (info.exc_type is RuntimeError and str(info.exc_value) == "Event loop is closed"
                and bool(frames) and all(f"{os.sep}asyncio{os.sep}" in f.filename
                                         for f in frames) and not _verbose())

    return _unraisable_filter(previous, closed_loop)


def _save_cause(error: BaseException) -> str:
    """Why a save failed, short: the OS's words when TensorStore names an OS error (its message
    otherwise repeats the temporary paths), else the innermost message (`_first_line`)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    code = re.search(r"os_error_code='(\d+)'", str(error))
    return os.strerror(int(code.group(1))) if code else _first_line(error)


def _first_line(error: BaseException, limit: int = 240) -> str:
    """The innermost cause of `error` on one short line (TensorStore's outer message dumps a spec
    of many lines; the cause names the file and what is wrong with it)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split("See full TensorStore details")[0].split())
    text = text or type(error).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


@contextlib.contextmanager
def _quiet_abandoned_reads() -> Iterator[None]:
    """Orbax reads arrays in many coroutines; when one read fails, the others are abandoned and
    Python would print each, when collected, as an 'Exception ignored' traceback of a TensorStore
    spec. The failure is reported in one line instead, so those (and only orbax's) are dropped."""
    previous = sys.unraisablehook
    sys.unraisablehook = _unraisable_filter(
        previous, lambda _, frames: any("orbax" in frame.filename for frame in frames))
    try:
        yield
    finally:
        gc.collect()  # Collect the abandoned coroutines while the filter is in place.
        sys.unraisablehook = previous


def _tree_metadata(item_dir: epath.Path) -> Any:
    """The stored tree of one item (shapes and dtypes per leaf), read without restoring it."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
        return handler.metadata(item_dir)
    finally:
        handler.close()


def _all_processes_agree(ok: bool) -> bool:
    """True only if `ok` on every process (damage may show on the process reading one shard)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with the items 'state' and 'meta'."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.LatestN(n=max(int(keep), 1)),
            enable_async_checkpointing=not read_only,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.directory, self.read_only = checkpoint_dir(workdir), read_only
        self.pending: int | None = None  # The step of a save started and not yet committed.
        if not read_only:
            _quiet_orbax_failures()
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "meta"), options=options
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts an async save (returns once arrays are copied off the devices); `poll` or
        `wait` says when it is committed. Raises UserError if it (or the save before it) fails.

        The checksums are computed on the devices from `state` itself, before the save starts.
        """
        if step in self.manager.all_steps():
            return
        self.wait()  # The previous save first: its failure is reported as its own.
        meta = {**meta, "checksums": integrity.fingerprints(state)}
        self.pending = step
        with self._failures():
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )

    def poll(self) -> int | None:
        """The step of the save committed since the last call, if any; never blocks. Raises
        UserError if that save failed."""
        if self.pending is None or self.manager.is_saving_in_progress():
            return None
        return self.wait()

    def wait(self) -> int | None:
        """Blocks until the save in flight is committed (final on disk or in the bucket) and
        returns its step (None if there was none). Raises UserError if it failed; orbax then
        leaves only its temporary directory, and the checkpoints before it as they were."""
        step = self.pending
        with self._failures():
            self.manager.wait_until_finished()
        self.pending = None
        return step

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """A failed save (full disk, no permission, a bucket error) -> one UserError line naming
        the step, the directory and the cause."""
        try:
            yield
        except UserError:
            raise
        except Exception as e:  # Orbax and TensorStore raise many types (ValueError, OSError).
            step, self.pending = self.pending, None
            latest = self.manager.latest_step()
            kept = f"step {latest}" if latest is not None else "none yet"
            raise UserError(
                f"saving the checkpoint of step {step} in {self.directory} failed: "
                f"{_save_cause(e)}; training stopped. The newest complete checkpoint ({kept}) "
                "is untouched: free space or fix access, then rerun to resume from it") from e

    def restore(self, target: Any, step: int | None = None,
                model_cfg: ml_collections.ConfigDict | None = None, partial: bool = False
                ) -> tuple[Any, dict[str, Any]]:
        """Restores one step as (state, meta) onto the shardings of `target`'s leaves.

        The saved layout does not matter: a checkpoint written on 8 devices restores on 1.
        `partial`: `target` holds only some top-level entries (e.g. `{"ema_params": ...}`).
        Raises UserError when the checkpoint holds another model (checked before reading any
        array), DamagedCheckpoint when it cannot be read back as saved.
        """
        step = self.latest_step() if step is None else step
        where = str(self.directory / str(step))
        try:
            meta = dict(self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
            saved_tree = _tree_metadata(self.directory / str(step) / "state")
        except FileNotFoundError as e:
            raise DamagedCheckpoint(f"a file is missing ({_first_line(e)})") from e
        except Exception as e:  # Orbax / TensorStore raise many types for damaged files.
            raise DamagedCheckpoint(f"its metadata is unreadable ({_first_line(e)})") from e
        integrity.check_same_model(where, saved_tree, target, meta.get("model"), model_cfg,
                                   partial)
        with _quiet_abandoned_reads():  # Exits after the exception below is released.
            try:
                restored, error = self._restore_state(step, target, partial), None
            except Exception as e:  # TensorStore reports a truncated file as a bare Exception.
                restored, error = None, f"reading it failed ({_first_line(e)})"
        if not _all_processes_agree(error is None):
            raise DamagedCheckpoint(error or "another process could not read it")
        if "checksums" not in meta:
            logging.warning("checkpoint %s has no checksums (older format): not verified", where)
        elif bad := integrity.first_mismatch(restored, meta["checksums"]):
            raise DamagedCheckpoint(f"{bad} differs from what was saved (checksum)")
        return restored, meta

    def _restore_state(self, step: int, target: Any, partial: bool) -> Any:
        if not partial:
            state = ocp.args.StandardRestore(target)
        else:
            state = ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True)
        return self.manager.restore(step, args=ocp.args.Composite(state=state)).state

    def restore_newest_intact(self, target: Any, model_cfg: ml_collections.ConfigDict,
                              partial: bool = False) -> tuple[Any, dict[str, Any], int] | None:
        """(state, meta, step) of the newest checkpoint that restores and verifies, else None.

        Each damaged checkpoint is reported in one line; unless read-only, the damaged ones newer
        than the one used are moved to <workdir>/damaged_checkpoints/. Raises UserError (naming
        them, moving nothing) when every checkpoint is damaged.
        """
        damaged: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(target, step, model_cfg, partial)
            except DamagedCheckpoint as e:
                damaged.append((step, str(e)))
                continue
            for bad, why in damaged:
                self._report(bad, why, step)
            if damaged and not self.read_only:
                self._set_aside([bad for bad, _ in damaged])
            return state, meta, step
        if damaged:
            listed = "; ".join(f"{self.directory / str(s)}: {why}" for s, why in damaged)
            raise UserError(f"every checkpoint is damaged ({listed}); nothing to resume from. "
                            "Move them aside or use a new --workdir to start afresh")
        return None

    def _report(self, step: int, why: str, used: int) -> None:
        if jax.process_index() != 0:
            return
        if self.read_only:
            action = f"using step {used} instead"
        else:
            action = (f"moving it to {self.directory.parent / DAMAGED_DIR} and resuming from "
                      f"step {used}")
        print(f"warning: checkpoint {self.directory / str(step)} is damaged: {why}; {action}",
              file=sys.stderr, flush=True)

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged steps out of orbax's sight (so they can be written again); keeps them."""
        if jax.process_index() == 0:
            target_dir = self.directory.parent / DAMAGED_DIR
            for step in steps:
                dest, n = target_dir / str(step), 1
                while dest.exists():  # The same step damaged again: keep both.
                    n += 1
                    dest = target_dir / f"{step}.{n}"
                paths.move_tree(self.directory / str(step), dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("sd_jax_damaged_checkpoints_moved")
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """Whether JAX's preemption sync point is `step`: some process got a preemption notice
        (in open-source JAX: SIGTERM, e.g. a spot VM's or a scheduler's shutdown) and all agreed
        to stop at this step. Call it after every step on every process; False without
        jax.distributed."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for a save in flight (UserError if it fails, as `wait`) and releases the
        manager."""
        with self._failures():
            self.manager.close()


def data_meta(step: int, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The JSON item saved with each checkpoint: where the (deterministic) data stream resumes,
    and the model config (named in the error when a run restores it into another model)."""
    return {
        "step": int(step),
        "seed": int(config.seed),
        "batch_size": int(config.train.batch_size),
        "process_count": jax.process_count(),
        "model": integrity.model_record(config.model),
    }


def check_meta(meta: dict[str, Any], config: ml_collections.ConfigDict) -> None:
    """Warns when a resumed run would not see the data an uninterrupted one would."""
    for key, now in (("seed", config.seed), ("batch_size", config.train.batch_size)):
        if key in meta and meta[key] != now:
            logging.warning(
                "resuming a checkpoint written with %s=%s under %s=%s: the data order differs",
                key, meta[key], key, now,
            )
