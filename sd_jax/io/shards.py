"""The working folder of a resumable sampling run: one .npy shard per batch, written atomically.

    samples/<name>.npz                      the final file, assembled when every shard exists
    samples/<name>.shards-<hash>/           the working folder while sampling
        settings.json                       what is being sampled (the hash is of this)
        000000.npy, 000001.npy, ...         batch i as uint8 [b, H, W, C]

A shard appears only whole (`paths.write_atomic`: locally a temporary name renamed when complete,
in a bucket an upload published when complete), so the run's position is the number of
consecutive shards from 0: a killed run leaves at most a temporary file, which the next run
overwrites. The folder name carries a hash of every setting that changes the images (sampler,
steps, guidance, seed, batch size, labels, step, model), so a run with other settings never
continues someone else's shards. Paths go through
`sd_jax.io.paths`, so a gs:// workdir works as a local one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from etils import epath

from sd_jax.io import paths

SETTINGS_FILE = "settings.json"


def settings_hash(settings: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of `settings` as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class ShardFolder:
    """Shards of one sampling run next to its final file `npz_path`."""

    def __init__(self, npz_path: str | epath.Path, settings: dict[str, Any]):
        npz_path = paths.as_path(npz_path)
        self.settings = settings
        self.path = npz_path.parent / f"{npz_path.stem}.shards-{settings_hash(settings)}"

    def others(self) -> list[epath.Path]:
        """Working folders of the same samples name with other settings (left alone)."""
        stem = self.path.name.rsplit(".shards-", 1)[0]
        return sorted(p for p in self.path.parent.glob(f"{stem}.shards-*") if p != self.path)

    def shard(self, index: int) -> epath.Path:
        return self.path / f"{index:06d}.npy"

    def open(self) -> None:
        """Creates the folder (and its settings.json) if it does not exist yet."""
        self.path.mkdir(parents=True, exist_ok=True)
        settings = self.path / SETTINGS_FILE
        if not settings.exists():
            settings.write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n")

    def completed(self, num_shards: int) -> int:
        """How many shards, from 0 on, are already written (the batch to continue from)."""
        # One listing rather than a request per shard (a bucket has thousands of them).
        names = {p.name for p in self.path.iterdir()} if self.path.exists() else set()
        done = 0
        while done < num_shards and self.shard(done).name in names:
            done += 1
        return done

    def write(self, index: int, images: np.ndarray) -> None:
        """Writes shard `index`, which appears only whole (`paths.write_atomic`)."""
        with paths.write_atomic(self.shard(index)) as f:
            np.save(f, np.ascontiguousarray(images), allow_pickle=False)

    def read(self, index: int) -> np.ndarray:
        with self.shard(index).open("rb") as f:
            return np.load(f, allow_pickle=False)

    def iter_shards(self, num_shards: int) -> Iterator[np.ndarray]:
        """The shards in order, one at a time (never more than one batch in memory)."""
        for index in range(num_shards):
            yield self.read(index)

    def remove(self) -> None:
        self.path.rmtree()
