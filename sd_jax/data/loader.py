"""Deterministic, resumable batches through grain: `Loader.get_batch(step)` depends only on
(seed, step, process).

The pipeline is one grain MapDataset: `range(steps * b)` -> `map(ReadExample)` (source index
from (seed, position), decode, crop, resize; `sd_jax/data/examples.py`) -> `batch(b)`, so element
k is this process's batch at step k (b = global batch / processes). `iterate(start)` slices it at
`start` and reads it with `data.num_workers` grain worker processes (`mp_prefetch`: each builds
whole batches, handed over in step order through shared memory), so decoding scales with
processes rather than with threads under the GIL. Resume needs no iterator state: the
checkpoint's step is the position.

Batch contract: {"image": uint8 [b, S, S, 3] unflipped, "flip": bool [b], "label": int32 [b]};
the flip rows are `preprocess.flip_mask(seed, step, B)` (a function of (seed, step) only) AND
`data.random_flip`, and the train step scales to [-1, 1] and mirrors on the device
(`train_step.device_images`).
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import sys
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np
from absl import flags

from sd_jax.data.examples import ReadExample
from sd_jax.data.sources import SOURCES, ArraySource, Source
from sd_jax.errors import UserError

log = logging.getLogger(__name__)

# Steps the MapDataset spans (it is lazy: nothing is materialised), far beyond any run.
MAX_STEPS = 2**40


def check_divisible(global_batch_size: int, process_count: int) -> None:
    """UserError unless the global batch splits evenly over the processes."""
    if global_batch_size % process_count:
        raise UserError(
            f"train.batch_size={global_batch_size} is not divisible by the number of processes "
            f"({process_count}); use a multiple of {process_count}")


def hide_accelerators(worker_index: int, worker_count: int) -> None:
    """grain worker init: the workers decode images on the CPU and must never take a GPU or TPU.

    Nothing in a worker uses JAX or TensorFlow, but grain imports jax and a source may import TF;
    this keeps either from opening a device if anything ever started one.
    """
    del worker_index, worker_count
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # TensorFlow and CUDA.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "jax" in sys.modules:  # Imported already (by grain): its backends start on first use.
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def release_shared_memory(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies a batch out of the workers' shared memory and unlinks each block now.

    grain hands worker batches over as arrays backed by shared memory, each unlinked (on a
    thread) when grain's array object is freed. That moment is not ours to choose: the trainer
    holds the last batch until training returns, on CPU `jax.device_put` may alias it, and grain
    keeps the last batch of each worker's reader thread in the frame of the StopIteration that
    ended it, a reference cycle freed only by the garbage collector, so a process that exits
    soon after can leave the unlink to the interpreter's exit, where the resource tracker
    reports the block as leaked. A host copy decouples the two lifetimes, and unlinking the
    name right after it (the mapping stays valid until grain's object closes it) makes the
    release immediate wherever grain's object ends up; grain's object is then told not to
    unlink again (`_unlink_on_del`, grain's own flag; another grain layout without it keeps
    the old behaviour).
    """
    copy = {key: np.array(value, copy=True) for key, value in batch.items()}
    for value in batch.values():
        shm = getattr(value, "shm", None)
        if shm is not None and getattr(value, "_unlink_on_del", False):
            value._unlink_on_del = False
            shm.unlink()
    return copy


def wait_for_shared_memory_release() -> None:
    """Waits until grain's deletion thread has unlinked every block freed so far.

    grain unlinks a freed worker batch on a one-thread pool (`SharedMemoryArray.enable_async_del`),
    which is not joined at exit: a process that ends right after training (launch.py does) would
    leave the blocks to the resource tracker. A no-op task queued behind them returns once they
    are done. The pool is a private attribute of grain; without it there is nothing to wait for.
    """
    try:
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    except ImportError:  # Another grain layout: nothing known to wait for.
        return
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply(int)


class Loader:
    """One process's batches (see the module docstring for the contract).

    `num_workers` grain worker processes decode and resize for `iterate`; 0 reads in this
    process (on one background thread). `get_batch` always reads in the calling thread.
    Corrupt records are replaced by deterministic substitutes and counted in `num_bad_records`.
    """

    def __init__(self, source: Source, *, image_size: int, global_batch_size: int, seed: int,
                 random_flip: bool = True, num_workers: int = 8, process_index: int = 0,
                 process_count: int = 1, prefetch: int = 2) -> None:
        check_divisible(global_batch_size, process_count)
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if len(source) == 0:
            raise UserError("the dataset is empty; check data.source / data.split")
        self.source = source
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.num_workers = max(0, int(num_workers))
        self.prefetch = max(1, int(prefetch))
        self.num_bad_records = 0
        if isinstance(source, ArraySource):  # In memory: resize once, not at every visit.
            source = source.resized(image_size)
        self.read = ReadExample(
            source, image_size=image_size, seed=seed, global_batch_size=global_batch_size,
            local_batch_size=self.local_batch_size, process_index=process_index,
            random_flip=random_flip, num_classes=source.num_classes)
        self.batches = (grain.MapDataset.range(MAX_STEPS * self.local_batch_size)
                        .map(self.read).batch(self.local_batch_size, drop_remainder=True))
        self._iterators: set = set()

    @property
    def num_classes(self) -> int:
        """Number of classes of the source (0: unconditional, labels are all 0)."""
        return int(self.source.num_classes)

    def global_indices(self, step: int) -> np.ndarray:
        """Source indices of all `global_batch_size` rows at `step` (every process agrees)."""
        positions = step * self.global_batch_size + np.arange(self.global_batch_size)
        return self.read.order.indices(positions)

    def local_rows(self) -> slice:
        """This process's rows of the global batch."""
        start = self.process_index * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def _finish(self, step: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Counts (and reports) the substituted records and drops that field from the batch."""
        skipped = int(np.sum(batch.pop("skipped")))
        if skipped:
            self.num_bad_records += skipped
            log.warning("step %d: %d unreadable records replaced by substitutes; %d so far "
                        "(data.source files are damaged?)", step, skipped, self.num_bad_records)
        return batch

    def get_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global batch at `step`, read in the calling thread."""
        return self._finish(step, self.batches[step])

    def iterate(self, start_step: int = 0, end_step: int | None = None
                ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (step, get_batch(step)) for start_step, start_step + 1, ... (< end_step),
        read ahead by the worker processes (a few batches each)."""
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; no absl app here
            flags.FLAGS.mark_as_parsed()  # (tests, notebooks, scripts): use their defaults.
        ds = self.batches[start_step:end_step]
        if self.num_workers:  # One reader thread per worker: the workers are the parallelism.
            ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=self.num_workers, per_worker_buffer_size=self.prefetch),
                worker_init_fn=hide_accelerators)
        else:
            ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                      prefetch_buffer_size=self.prefetch))
        it = iter(ds)
        self._iterators.add(it)
        try:
            for step, batch in zip(itertools.count(start_step), it):
                if self.num_workers:
                    batch = release_shared_memory(batch)
                yield step, self._finish(step, batch)
        finally:
            self._iterators.discard(it)
            it.close()
            # Yielded batches are unlinked already (release_shared_memory); batches the reader
            # threads opened but nobody read (after a `break`) sit in reference cycles:
            # collecting them now unlinks theirs, which otherwise may wait for the exit.
            gc.collect()
            wait_for_shared_memory_release()

    def close(self) -> None:
        """Stops the worker processes of iterators still open (one left by a `break`)."""
        if not self._iterators:  # Each finished `iterate` has released its own blocks.
            return
        for it in list(self._iterators):
            it.close()
        self._iterators.clear()
        gc.collect()
        wait_for_shared_memory_release()


def build_source(data_cfg: ml_collections.ConfigDict, image_size: int) -> Source:
    """The source named by `data_cfg.source` (a key of `sources.SOURCES`) for images of
    `image_size` (`model.image_size`)."""
    return SOURCES[data_cfg.source](data_cfg, image_size)


def build_loader(config: ml_collections.ConfigDict, process_index: int | None = None,
                 process_count: int | None = None, source: Source | None = None) -> Loader:
    """The training loader for this process (`source` overrides `config.data`, e.g. in tests)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    batch = config.train.batch_size
    check_divisible(batch, process_count)  # Before building the source, which can be slow.
    source = build_source(config.data, config.model.image_size) if source is None else source
    model_classes = config.model.num_classes
    if model_classes and source.num_classes == 0:
        raise UserError(f"the dataset has no class labels (e.g. a flat image folder) but "
                        f"model.num_classes={model_classes}; train it unconditionally with "
                        "--config.model.num_classes=0")
    if model_classes and source.num_classes > model_classes:
        raise UserError(f"the dataset has {source.num_classes} classes but model.num_classes="
                        f"{model_classes}; set --config.model.num_classes={source.num_classes}")
    return Loader(source, image_size=config.model.image_size, global_batch_size=batch,
                  seed=config.seed, random_flip=config.data.random_flip,
                  num_workers=config.data.num_workers, process_index=process_index,
                  process_count=process_count)
