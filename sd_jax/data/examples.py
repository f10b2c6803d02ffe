"""One example of the stream, as grain's map step computes it: position -> image, label, flip.

Order: the global batch at step k holds positions k*B .. k*B+B-1 of an endless stream; position p
is example `perm(seed, epoch)[p % N]` with epoch = p // N and
`perm(seed, epoch) = np.random.default_rng([seed, epoch]).permutation(N)`. Process `i` of `P`
reads rows i*b .. i*b+b-1 (b = B / P) of every global batch. Everything here runs in grain's
worker processes: it is pickled there, so it holds no threads, locks or open files.
"""

from __future__ import annotations

import logging

import grain
import numpy as np

from sd_jax.data import preprocess
from sd_jax.data.sources import Source
from sd_jax.errors import UserError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 16  # A row whose record and 15 substitutes all fail is a data problem, not bad luck.


class EpochOrder:
    """Stream position -> source index: a fresh permutation of the N examples per epoch."""

    def __init__(self, seed: int, num_examples: int) -> None:
        self.seed, self.num_examples = int(seed), int(num_examples)
        self._perms: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            # The newest three (a batch spans at most a few epochs); the dict is replaced, never
            # mutated, so grain's reader threads can share this object without a lock.
            self._perms = {**dict(list(self._perms.items())[-2:]), epoch: perm}
        return perm

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """Source indices (int64) at stream `positions`."""
        epochs, offsets = np.divmod(np.asarray(positions, np.int64), self.num_examples)
        out = np.empty(epochs.shape, np.int64)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            out[rows] = self._permutation(int(epoch))[offsets[rows]]
        return out

    def __getstate__(self) -> dict:
        return {"seed": self.seed, "num_examples": self.num_examples}  # Not the cache.

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["seed"], state["num_examples"])


class ReadExample(grain.transforms.Map):
    """grain map: local element j -> {"image": uint8 [S, S, 3] (unflipped), "label": int32,
    "flip": bool, "skipped": int32}, for row j % b of this process's slice at step j // b.

    "skipped" counts unreadable records replaced for this row: a corrupt record is replaced by
    the substitute index `default_rng([seed, index, attempt, 0xBAD])`, so the batch stays a
    function of (seed, step); each failure is also logged where it happens (a worker's stderr).
    """

    def __init__(self, source: Source, *, image_size: int, seed: int, global_batch_size: int,
                 local_batch_size: int, process_index: int, random_flip: bool,
                 num_classes: int) -> None:
        self.source = source
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = int(local_batch_size)
        self.first_row = int(process_index) * self.local_batch_size
        self.random_flip = bool(random_flip)
        self.num_classes = int(num_classes)
        self.order = EpochOrder(seed, len(source))
        self._flips: tuple[int, np.ndarray] | None = None  # (step, flip_mask) of the last step.

    def _flip(self, step: int, row: int) -> bool:
        if not self.random_flip:
            return False
        flips = self._flips  # Read once: a reader thread may replace it meanwhile.
        if flips is None or flips[0] != step:
            flips = (step, preprocess.flip_mask(self.seed, step, self.global_batch_size))
            self._flips = flips
        return bool(flips[1][row])

    def load(self, index: int) -> tuple[np.ndarray, int, int]:
        """(uint8 [S, S, 3] image, label, records skipped) of source `index` or its substitute."""
        first = index
        for attempt in range(MAX_ATTEMPTS):
            try:
                image, label = self.source[index]
                return preprocess.crop_resize(image, self.image_size), label, attempt
            except Exception as e:  # noqa: BLE001 - one bad JPEG must not end a long run.
                log.warning("skipping unreadable record %d (%s: %s)", index, type(e).__name__, e)
                rng = np.random.default_rng([self.seed, first, attempt, 0xBAD])
                index = int(rng.integers(len(self.source)))
        raise UserError(f"record {first} and {MAX_ATTEMPTS - 1} substitutes could not be read; "
                        "check that the dataset files are intact and readable")

    def map(self, element: int) -> dict[str, np.ndarray]:
        step, local_row = divmod(int(element), self.local_batch_size)
        row = self.first_row + local_row
        index = int(self.order.indices(step * self.global_batch_size + row))
        image, label, skipped = self.load(index)
        return {"image": image, "label": np.int32(label if self.num_classes else 0),
                "flip": np.bool_(self._flip(step, row)), "skipped": np.int32(skipped)}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_flips": None}
