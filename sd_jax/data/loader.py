"""Deterministic, resumable batches: `Loader.get_batch(step)` depends only on (seed, step, process).

Order: the global batch at step k holds positions k*B .. k*B+B-1 of an endless stream; position p
is example `perm(seed, epoch)[p % N]` with epoch = p // N, a fresh permutation per epoch. Each
process takes its own contiguous slice of the B rows, so the processes partition the global
batch and a restart at step k continues with exactly the batch it would have seen.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import ml_collections
import numpy as np

from sd_jax.data import preprocess
from sd_jax.data.sources import ArraySource, FolderSource, Source, digits_source
from sd_jax.errors import UserError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 16  # A row whose record and 15 substitutes all fail is a data problem, not bad luck.


def check_divisible(global_batch_size: int, process_count: int) -> None:
    """UserError unless the global batch splits evenly over the processes."""
    if global_batch_size % process_count:
        raise UserError(
            f"train.batch_size={global_batch_size} is not divisible by the number of processes "
            f"({process_count}); use a multiple of {process_count}")


class Loader:
    """One process's batches: {"image": uint8 [b, S, S, 3] (not flipped), "flip": bool [b],
    "label": int32 [b]}; the train step normalises to [-1, 1] and flips on the device
    (`sd_jax.train_step.device_images`, bitwise `preprocess.to_float(image, flip)`).

    Decoding and resizing run on `num_workers` threads (PIL releases the GIL); `num_workers=0`
    loads in the calling thread. Corrupt records are replaced by a deterministic substitute
    index and counted in `num_bad_records`, with a warning each time.
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
        self.image_size = int(image_size)
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // process_count
        self.seed = int(seed)
        self.random_flip = bool(random_flip)
        self.process_index = process_index
        self.process_count = process_count
        self.prefetch = max(1, int(prefetch))
        self.num_bad_records = 0
        self._lock = threading.Lock()
        self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._pool = ThreadPoolExecutor(num_workers, "sd_jax_data") if num_workers > 0 else None
        # In-memory sources are resized once up front and gathered a batch at a time.
        self._array = source.resized(image_size) if isinstance(source, ArraySource) else None

    @property
    def num_classes(self) -> int:
        """Number of classes of the source (0: unconditional, labels are all 0)."""
        return int(self.source.num_classes)

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
                self._perms[epoch] = perm
                while len(self._perms) > 3:  # A batch spans at most a few epochs.
                    self._perms.popitem(last=False)
            return perm

    def global_indices(self, step: int) -> np.ndarray:
        """Source indices of all `global_batch_size` rows at `step` (every process agrees)."""
        n = len(self.source)
        positions = step * self.global_batch_size + np.arange(self.global_batch_size)
        epochs, offsets = np.divmod(positions, n)
        indices = np.empty(self.global_batch_size, np.int64)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            indices[rows] = self._permutation(int(epoch))[offsets[rows]]
        return indices

    def local_rows(self) -> slice:
        """This process's rows of the global batch."""
        start = self.process_index * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        """Decoded, cropped, resized uint8 image and label; substitutes for corrupt records."""
        first = index
        for attempt in range(MAX_ATTEMPTS):
            try:
                image, label = self.source[index]
                return preprocess.crop_resize(image, self.image_size), label
            except Exception as e:  # noqa: BLE001 - one bad JPEG must not end a long run.
                with self._lock:
                    self.num_bad_records += 1
                    count = self.num_bad_records
                log.warning("skipping unreadable record %d (%s: %s); %d skipped so far",
                            index, type(e).__name__, e, count)
                rng = np.random.default_rng([self.seed, first, attempt, 0xBAD])
                index = int(rng.integers(len(self.source)))
        raise UserError(f"record {first} and {MAX_ATTEMPTS - 1} substitutes could not be read; "
                        "check that the dataset files are intact and readable")

    def _fill(self, out: dict[str, np.ndarray], row: int, index: int) -> None:
        image, label = self._load(index)
        out["image"][row] = image
        out["label"][row] = label if self.num_classes else 0

    def _start(self, step: int) -> tuple[dict[str, np.ndarray], list[Future]]:
        indices = self.global_indices(step)[self.local_rows()]
        flips = preprocess.flip_mask(self.seed, step, self.global_batch_size)[self.local_rows()]
        flips &= self.random_flip
        if self._array is not None:
            labels = self._array.labels[indices] if self.num_classes else 0 * indices
            return {"image": self._array.images[indices], "flip": flips,
                    "label": labels.astype(np.int32)}, []
        s = self.image_size
        out = {"image": np.empty((len(indices), s, s, 3), np.uint8), "flip": flips,
               "label": np.empty(len(indices), np.int32)}
        futures = []
        for row, index in enumerate(indices):
            if self._pool is None:
                self._fill(out, row, int(index))
            else:
                futures.append(self._pool.submit(self._fill, out, row, int(index)))
        return out, futures

    @staticmethod
    def _finish(pending: tuple[dict[str, np.ndarray], list[Future]]) -> dict[str, np.ndarray]:
        out, futures = pending
        for f in futures:
            f.result()  # Re-raises a worker's exception (e.g. the UserError above).
        return out

    def get_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the global batch at `step` (a pure function of seed and step)."""
        return self._finish(self._start(step))

    def iterate(self, start_step: int = 0, end_step: int | None = None
                ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (step, get_batch(step)) for start_step, start_step + 1, ... (< end_step),
        loading the next `prefetch` batches in the background."""
        queue: collections.deque = collections.deque()
        step = start_step
        try:
            while True:
                while len(queue) <= self.prefetch and (end_step is None or step < end_step):
                    queue.append((step, self._start(step)))
                    step += 1
                if not queue:
                    return
                s, pending = queue.popleft()
                yield s, self._finish(pending)
        finally:
            for _, (_, futures) in queue:
                for f in futures:
                    f.cancel()

    def close(self) -> None:
        """Stops the worker threads (pending work is cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def build_source(data_cfg: ml_collections.ConfigDict) -> Source:
    """The source named by `data_cfg.source`: 'digits', 'folder' or 'tfds'."""
    if data_cfg.source == "digits":
        return digits_source()
    if data_cfg.source == "folder":
        if not data_cfg.folder:
            raise UserError("data.source='folder' needs --config.data.folder=/path/to/images")
        return FolderSource(data_cfg.folder)
    if data_cfg.source == "tfds":
        from sd_jax.data.tfds_source import TfdsSource

        return TfdsSource(data_cfg.name, split=data_cfg.split, data_dir=data_cfg.data_dir,
                          manual_dir=data_cfg.manual_dir)
    raise UserError(f"unknown data.source={data_cfg.source!r}; use 'tfds', 'folder' or 'digits'")


def build_loader(config: ml_collections.ConfigDict, process_index: int | None = None,
                 process_count: int | None = None, source: Source | None = None) -> Loader:
    """The training loader for this process (`source` overrides `config.data`, e.g. in tests)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    batch = config.train.batch_size
    check_divisible(batch, process_count)  # Before building the source, which can be slow.
    source = build_source(config.data) if source is None else source
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

