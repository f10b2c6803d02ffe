"""FID of a sampling job from its shards, as they complete (`--config.eval.from_shards=True`).

    python launch.py --config=configs/imagenet512.py --workdir=DIR --mode=eval \
        --config.eval.from_shards=True [--config.eval.poll_secs=60] \
        --config.eval.inception_weights=inception_fid.npz \
        --config.eval.reference_npz=VIRTUAL_imagenet512.npz

`--mode=sample` keeps each batch as a shard in `samples/<name>.shards-<hash>/` until the .npz
is assembled (`sd_jax.io.shards`). This scores the newest such folder (or the one of the
samples named by `eval.samples_npz`): the shards present, in order, go through Inception once
each into streamed statistics (`fid.StatsAccumulator`), and the FID / sFID / IS of the images so
far are printed with their count. With `eval.poll_secs > 0` it waits for the next shards and
prints again until the job's last one is scored, also when the job finishes meanwhile (the rest
is then read from the published .npz). A killed sampling job so still yields a partial FID, and
a finished one its full FID without reading any image twice.

Results: <workdir>/eval_<name>.json when every image is scored (as eval of the .npz writes,
with its metrics.jsonl line), else <workdir>/eval_<name>.partial.json with `partial: true`,
`num_samples` (scored) and `expected_samples`. Inception statistics only: FD-digits and the
photo metrics need every image at once (evaluate the .npz for them).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from etils import epath

from sd_jax.errors import UserError
from sd_jax.eval import fid
from sd_jax.eval import mode as eval_mode
from sd_jax.io import npz, paths, shards


def find_folder(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> epath.Path:
    """The shard folder to score: of `eval.samples_npz`'s name if set, else the newest one in
    <workdir>/samples; a UserError naming what exists when there is none."""
    samples = paths.as_path(workdir) / "samples"
    pattern = "*.shards-*"
    if config.eval.samples_npz:
        named = paths.as_path(config.eval.samples_npz)
        samples, pattern = named.parent, f"{named.stem}.shards-*"
    found = sorted(samples.glob(pattern), key=lambda p: (p.stat().mtime, p.name))
    if not found:
        raise UserError(f"eval.from_shards: no sampling shards ({pattern}) in {samples}: they "
                        "exist only while --mode=sample runs or after it was stopped; evaluate "
                        "a finished job's .npz with eval.from_shards=False")
    return found[-1]


class ShardStream:
    """The images of one sampling job in order, from its shards or, once the job has
    published its .npz and removed the folder, from the .npz."""

    def __init__(self, folder: epath.Path):
        settings_file = folder / shards.SETTINGS_FILE
        if not settings_file.exists():
            raise UserError(f"{folder} has no {shards.SETTINGS_FILE}: not a sampling shard folder")
        self.settings = json.loads(settings_file.read_text())
        self.npz_path = folder.parent / (folder.name.rsplit(".shards-", 1)[0] + ".npz")
        self.shards = shards.ShardFolder(self.npz_path, self.settings)
        self.total = int(self.settings["num_samples"])
        self.num_shards = math.ceil(self.total / int(self.settings["batch_size"]))
        self.read_shards = 0  # Shards consumed so far.
        self.read_images = 0

    def new_images(self) -> Iterator[np.ndarray]:
        """The images not read yet that exist now, one shard (or .npz batch) at a time."""
        for index in range(self.read_shards, self.shards.completed(self.num_shards)):
            try:
                images = self.shards.read(index)
            except FileNotFoundError:  # The job has just published its .npz and removed them.
                break
            self.read_shards = index + 1
            yield self._take(images)
        if self.done or self.shards.path.exists() or not self.npz_path.exists():
            return
        # The folder is removed only once the .npz is published: its batch i is shard i.
        rows = npz.iter_rows(self.npz_path, "arr_0", int(self.settings["batch_size"]))
        for index, images in enumerate(rows):
            if index >= self.read_shards:
                self.read_shards = index + 1
                yield self._take(images)

    def _take(self, images: np.ndarray) -> np.ndarray:
        images = images[:self.total - self.read_images]
        self.read_images += len(images)
        return images

    @property
    def done(self) -> bool:
        return self.read_images >= self.total


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Scores the shards of a sampling job (see the module docstring); returns the results."""
    stream = ShardStream(find_folder(config, workdir))
    eval_mode.check_samples_model(stream.shards.path, stream.settings, config)
    eval_mode.check_reference(config.eval.reference_npz)  # Inputs first, then any network.
    extract_fn, batch_size = eval_mode.build_extractor(config.eval)
    reference = eval_mode.reference_stats(config.eval.reference_npz, extract_fn, batch_size,
                                          config.eval.sfid)
    stats = fid.StatsAccumulator(extract_fn, batch_size, config.eval.sfid)
    name, start, results = stream.npz_path.stem, time.time(), {}
    while True:
        before = stats.count
        for images in stream.new_images():
            eval_mode.check_image_array(images.shape, images.dtype,
                                        f"a shard in {stream.shards.path}")
            stats.add(images)
        if stats.count > before or not results:
            results = partial_results(stats, reference, config.eval, stream, start)
            report(results, stream)
        if stream.done or config.eval.poll_secs <= 0:
            break
        time.sleep(config.eval.poll_secs)
    if stream.done:
        eval_mode.write_results(workdir, name, results,
                                eval_mode.metrics_step(workdir, stream.settings.get("step"), name))
    else:
        eval_mode.write_results(workdir, f"{name}.partial", results, None)
    return results


def partial_results(stats: fid.StatsAccumulator, reference: dict[str, np.ndarray],
                    eval_cfg: ml_collections.ConfigDict, stream: ShardStream,
                    start: float) -> dict:
    """The metrics of the images scored so far, with their count and the job's total."""
    if stats.count < 2:
        raise UserError(f"{stream.shards.path}: {stats.count} image(s) sampled so far; an FID "
                        "needs at least 2 (wait for more shards, or set eval.poll_secs)")
    measured = fid.metrics(stats.result(), reference, eval_cfg.is_splits, eval_cfg.fid_method)
    return {**stream.settings, **measured, "num_samples": stats.count,
            "expected_samples": stream.total, "partial": not stream.done,
            "samples": str(stream.npz_path), "reference": str(eval_cfg.reference_npz),
            "seconds": round(time.time() - start, 1)}


def report(results: dict, stream: ShardStream) -> None:
    """One line per update (process 0)."""
    if jax.process_index() != 0:
        return
    shown = ", ".join(f"{k}={results[k]:.4g}" for k in eval_mode.SHOWN_KEYS if k in results)
    state = "partial, " if results["partial"] else ""
    print(f"eval {stream.npz_path.name} ({state}{results['num_samples']} of "
          f"{results['expected_samples']} images): {shown}", flush=True)
