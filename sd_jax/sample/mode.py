"""`--mode=sample`: many samples from the newest checkpoint into an ADM-format .npz.

Before sampling it prints the job's cost (`cost.py`: network evaluations, FLOPs and, on a chip
whose peak is known, hours).

    python launch.py --config=configs/imagenet512.py --workdir=DIR --mode=sample \
        --config.sample.num_samples=50000 --config.sample.guidance_scale=1.1

Writes <workdir>/samples/<name>.npz (`arr_0` uint8 NHWC, `arr_1` int labels when the model is
class-conditional; streamed, so 50k x 512^2 never sits in host memory), <name>.png (a grid of the
first images) and <name>.json (every setting that decides the images: `settings`). The name
encodes them (`samples_name`), so sampling again with any of them changed writes a new file
beside the old one. The .npz path is the last stdout line.
Batch i uses the noise key `fold_in(fold_in(key(seed), SAMPLE_MODE_RNG), i)`, so the images depend
on the seed and the batch size, not on the number of devices or processes (up to the order of
float reductions), nor on the batches before: each batch is kept as a shard as soon as it is
drawn (`shards`), and a rerun after a kill or preemption continues from the first missing
one, giving the .npz an uninterrupted run would have written.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from sd_jax import sharding, specs
from sd_jax.checkpoints import integrity
from sd_jax.errors import UserError
from sd_jax.io import images, lock, npz, paths, shards
from sd_jax.sample import cost, restore
from sd_jax.sample.generate import Sampler

SAMPLE_MODE_RNG = 3  # fold_in tag (trainer: 1 = train noise, 2 = periodic sample grids).
GRID_IMAGES = 64  # Images in the PNG grid next to the .npz.


def sample_labels(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray:
    """Class labels: `config.sample.labels` cycled, else uniform from the seed; zeros if
    unconditional."""
    num_classes = config.model.num_classes
    if not num_classes:
        return np.zeros(num_samples, np.int32)
    if config.sample.labels and str(config.sample.labels).lower() != "none":
        try:
            given = np.array([int(v) for v in str(config.sample.labels).split(",") if v.strip()])
        except ValueError as e:
            raise UserError(f"config.sample.labels={config.sample.labels!r}: use comma-separated "
                            "class ids, e.g. '1,7,207'") from e
        if not len(given) or given.min() < 0 or given.max() > num_classes:
            raise UserError(f"config.sample.labels must be ids in [0, {num_classes}] "
                            f"({num_classes} = unconditional), got {config.sample.labels!r}")
        return np.resize(given, num_samples).astype(np.int32)
    rng = np.random.default_rng([config.seed, SAMPLE_MODE_RNG])
    return rng.integers(0, num_classes, num_samples).astype(np.int32)


def iter_samples(params: Any, config: ml_collections.ConfigDict, mesh: Mesh, labels: np.ndarray,
                 start: int = 0) -> Iterator[np.ndarray]:
    """Yields uint8 images [b, H, W, C] for `labels` in batches of `config.sample.batch_size`
    (the last one shorter), from batch `start` on; identical on every process. Bad settings
    raise UserError at the call, before anything is drawn.

    Batch i's noise is `fold_in(key, i)`: it does not depend on the batches before it, so a run
    that starts at batch i draws the images an uninterrupted run draws there.
    """
    batch_size, sampler = config.sample.batch_size, Sampler.from_config(config, mesh)
    sharding.check_batch_divisible(batch_size, mesh, "config.sample.batch_size")
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), SAMPLE_MODE_RNG)
    params = sampler.prepare(params)  # Cast to the compute dtype once for every batch.

    def batches() -> Iterator[np.ndarray]:
        for index in range(start, num_batches(config)):
            labels_b = labels[index * batch_size:(index + 1) * batch_size]
            padded = np.resize(labels_b, batch_size)  # Same shapes every batch: one compile.
            x_bhwc = sampler.generate(params, jax.random.fold_in(key, index), padded)
            yield images.to_uint8(x_bhwc[:len(labels_b)])

    return batches()


def num_batches(config: ml_collections.ConfigDict) -> int:
    """Batches of `sample.batch_size` that make `sample.num_samples` (the last may be short)."""
    return -(-config.sample.num_samples // config.sample.batch_size)


def samples_name(config: ml_collections.ConfigDict, step: int) -> str:
    """File stem that tells runs apart: the main settings readable (step, count x resolution,
    EMA or raw params, sampler and steps, guidance scale, seed), then 8 hex digits of the hash
    of every setting that changes the images (`settings`: labels, guidance interval, noise,
    batch size, model...), so samples of other settings never overwrite each other."""
    s = config.sample
    params = "ema" if s.use_ema else "raw"
    digest = shards.settings_hash(settings(config, step))[:8]
    return (f"samples_step{step}_{s.num_samples}x{config.model.image_size}_{params}_"
            f"{s.sampler}{s.num_steps}_gs{s.guidance_scale:g}_seed{config.seed}_{digest}")


def settings(config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
    """Everything that decides the images (the .json next to the .npz; hashed for resuming)."""
    s = config.sample
    return {"step": step, "num_samples": s.num_samples, "guidance_scale": s.guidance_scale,
            "guidance_logsnr_min": s.guidance_logsnr_min,
            "guidance_logsnr_max": s.guidance_logsnr_max, "sampler": s.sampler,
            "num_steps": s.num_steps, "noise_param": s.noise_param, "seed": config.seed,
            "use_ema": s.use_ema, "labels": s.labels, "batch_size": s.batch_size,
            "sampling_spec": dataclasses.asdict(specs.sampling_spec(config)),
            "model": integrity.model_record(config.model)}  # Eval refuses samples of another model.


def write_samples(params: Any, config: ml_collections.ConfigDict, mesh: Mesh, step: int,
                  workdir: str | os.PathLike) -> epath.Path:
    """Samples `config.sample.num_samples` images into <workdir>/samples/<name>.{npz,png,json}
    (process 0 writes); continues a killed run with the same settings. Returns the .npz path.

    Each batch goes to a shard in the working folder (`shards`) as soon as it is drawn;
    when all exist, the .npz is assembled from them (streamed), published, and only then the
    folder removed. Prints one line per batch with the rate and the time left. Process 0 holds
    `<name>.lock` meanwhile (`sd_jax.io.lock`).
    """
    path = paths.as_path(workdir) / "samples" / f"{samples_name(config, step)}.npz"
    primary = jax.process_index() == 0
    if primary:
        path.parent.mkdir(parents=True, exist_ok=True)
    # One run per samples name: a second one with the same settings stops, naming this one.
    with lock.hold(path.with_suffix(".lock"), "sample", primary, sharding.from_process_zero):
        return _write_samples(params, config, mesh, step, path)


def _write_samples(params: Any, config: ml_collections.ConfigDict, mesh: Mesh, step: int,
                   path: epath.Path) -> epath.Path:
    s, m = config.sample, config.model
    primary = jax.process_index() == 0
    labels = sample_labels(config, s.num_samples)  # Fail on bad labels before writing anything.
    meta = settings(config, step)
    folder, total = shards.ShardFolder(path, meta), num_batches(config)
    start = sharding.from_process_zero(folder.completed(total) if primary else 0)
    batches = iter_samples(params, config, mesh, labels, start)  # Checks settings first.
    if primary:
        folder.open()
        for other in folder.others():
            print(f"note: {other} holds samples of other settings; not used", flush=True)
        if start:
            print(f"resuming from {folder.path}: batches 1-{start} of {total} already sampled",
                  flush=True)
    eta = _Eta(total)
    for index, images_b in enumerate(batches, start):
        if primary:
            folder.write(index, images_b)
            done = min((index + 1) * s.batch_size, s.num_samples)
            print(f"sampled {done}/{s.num_samples} (batch {index + 1}/{total}), "
                  f"{eta.update(index + 1, done - start * s.batch_size)}", flush=True)
    if primary:
        shape = (s.num_samples, m.image_size, m.image_size, m.image_channels)
        with npz.NpzStreamWriter(path, shape) as writer:
            for index, images_b in enumerate(folder.iter_shards(total)):
                writer.write(images_b)
                if index == 0:
                    images.save_png(images.make_grid(images_b[:GRID_IMAGES]),
                                    path.with_suffix(".png"))
            writer.close(**({"arr_1": labels.astype(np.int64)} if m.num_classes else {}))
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
        folder.remove()  # Only now: the .npz is published.
    return path


class _Eta:
    """Rate and time left, from the batches drawn by this run after its first one (which also
    pays for compilation)."""

    def __init__(self, total_batches: int):
        self.total = total_batches
        self.first: tuple[float, int, int] | None = None  # (time, batches, images) at batch 1.

    def update(self, batches: int, images_drawn: int) -> str:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, batches, images_drawn)
            return "first batch (includes compilation)"
        t0, b0, n0 = self.first
        seconds = now - t0
        left = (self.total - batches) * seconds / (batches - b0)
        return (f"{(images_drawn - n0) / seconds:.2f} images/s, "
                f"ETA {datetime.timedelta(seconds=round(left))}")


def load_for_sampling(config: ml_collections.ConfigDict, workdir: str | os.PathLike
                      ) -> tuple[Any, Mesh, int]:
    """(params, mesh, step): only the EMA (or raw, per sample.use_ema) params of the newest
    checkpoint, sharded for the configured mesh."""
    mesh = sharding.make_mesh(config.mesh)
    params, step = restore.restore_inference_params(
        workdir, config, mesh, use_ema=config.sample.use_ema)
    return params, mesh, step


def with_overrides(config: ml_collections.ConfigDict, **sample: Any) -> ml_collections.ConfigDict:
    """A copy of `config` with `config.sample` fields replaced (the sampler is compiled once per
    distinct setting: `generate` keys its programs by value)."""
    config = copy.deepcopy(config)
    for key, value in sample.items():
        config.sample[key] = value
    return config


def run(config: ml_collections.ConfigDict, workdir: str) -> epath.Path:
    """`--mode=sample`: restores, samples (continuing a killed run), writes; prints the .npz path
    as the last line."""
    params, mesh, step = load_for_sampling(config, workdir)
    if jax.process_index() == 0:  # Before any sampling: what the job will cost.
        print(cost.job_cost(config, jax.device_count(), jax.devices()[0].device_kind).line(),
              flush=True)
    path = write_samples(params, config, mesh, step, workdir)
    if jax.process_index() == 0:
        print(path, flush=True)
    return path
