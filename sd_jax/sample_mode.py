"""`--mode=sample`: many samples from the newest checkpoint into an ADM-format .npz.

    python launch.py --config=configs/imagenet512.py --workdir=DIR --mode=sample \
        --config.sample.num_samples=50000 --config.sample.guidance_scale=1.1

Writes <workdir>/samples/<name>.npz (`arr_0` uint8 NHWC, `arr_1` int labels when the model is
class-conditional; streamed, so 50k x 512^2 never sits in host memory), <name>.png (a grid of the
first images) and <name>.json (step, sampler settings). The .npz path is the last stdout line.
Batch i uses the noise key `fold_in(fold_in(key(seed), SAMPLE_MODE_RNG), i)`, so the images depend
on the seed and the batch size, not on the number of devices or processes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from sd_jax import checkpoint_integrity as integrity
from sd_jax import checkpointing, images, models, paths, sharding
from sd_jax.errors import UserError
from sd_jax.eval import npz_io
from sd_jax.generate import generate

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


def iter_samples(model: Any, params: Any, config: ml_collections.ConfigDict, mesh: Mesh,
                 labels: np.ndarray) -> Iterator[np.ndarray]:
    """Yields uint8 images [b, H, W, C] for `labels` in batches of `config.sample.batch_size`
    (the last one shorter); identical on every process."""
    batch_size = config.sample.batch_size
    sharding.check_batch_divisible(batch_size, mesh, "config.sample.batch_size")
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), SAMPLE_MODE_RNG)
    for index, start in enumerate(range(0, len(labels), batch_size)):
        labels_b = labels[start:start + batch_size]
        padded = np.resize(labels_b, batch_size)  # Same shapes every batch: one compilation.
        x_bhwc = generate(model, params, jax.random.fold_in(key, index), padded, config, mesh)
        yield images.to_uint8(x_bhwc[:len(labels_b)])


def samples_name(config: ml_collections.ConfigDict, step: int) -> str:
    """File stem that tells runs apart: step, count, resolution, guidance, sampler, seed."""
    s = config.sample
    return (f"samples_step{step}_{s.num_samples}x{config.model.image_size}_gs{s.guidance_scale:g}"
            f"_{s.sampler}{s.num_steps}_seed{config.seed}")


def write_samples(model: Any, params: Any, config: ml_collections.ConfigDict, mesh: Mesh,
                  step: int, workdir: str | os.PathLike) -> epath.Path:
    """Samples `config.sample.num_samples` images into <workdir>/samples/<name>.{npz,png,json}
    (process 0 writes). Returns the .npz path."""
    s, m = config.sample, config.model
    path = paths.as_path(workdir) / "samples" / f"{samples_name(config, step)}.npz"
    primary = jax.process_index() == 0
    shape = (s.num_samples, m.image_size, m.image_size, m.image_channels)
    labels = sample_labels(config, s.num_samples)  # Fail on bad labels before writing anything.
    writer = npz_io.NpzStreamWriter(path, shape) if primary else None
    done = 0
    with writer or contextlib.nullcontext():
        for images_b in iter_samples(model, params, config, mesh, labels):
            if primary:
                writer.write(images_b)
                if done == 0:
                    grid = images.make_grid(images_b[:GRID_IMAGES])
                    images.save_png(grid, path.with_suffix(".png"))
            done += len(images_b)
            print(f"sampled {done}/{s.num_samples}", flush=True)
        if primary:
            writer.close(**({"arr_1": labels.astype(np.int64)} if m.num_classes else {}))
    if primary:
        meta = {"step": step, "num_samples": s.num_samples, "guidance_scale": s.guidance_scale,
                "guidance_logsnr_min": s.guidance_logsnr_min,
                "guidance_logsnr_max": s.guidance_logsnr_max, "sampler": s.sampler,
                "num_steps": s.num_steps, "noise_param": s.noise_param, "seed": config.seed,
                "use_ema": s.use_ema, "labels": s.labels,
                "model": integrity.model_record(m)}  # Eval refuses samples of another model.
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_for_sampling(config: ml_collections.ConfigDict, workdir: str | os.PathLike
                      ) -> tuple[Any, Any, Mesh, int]:
    """(model, params, mesh, step) of the newest checkpoint (EMA params per sample.use_ema)."""
    mesh = sharding.make_mesh(config.mesh)
    params, step = checkpointing.restore_inference_params(
        workdir, config, mesh, use_ema=config.sample.use_ema)
    return models.build_model(config.model), params, mesh, step


def with_overrides(config: ml_collections.ConfigDict, **sample: Any) -> ml_collections.ConfigDict:
    """A copy of `config` with `config.sample` fields replaced (a new object, so the sampler is
    recompiled for it: `generate` caches one compiled function per config object)."""
    config = copy.deepcopy(config)
    for key, value in sample.items():
        config.sample[key] = value
    return config


def run(config: ml_collections.ConfigDict, workdir: str) -> epath.Path:
    """`--mode=sample`: restores, samples, writes; prints the .npz path as the last line."""
    model, params, mesh, step = load_for_sampling(config, workdir)
    path = write_samples(model, params, config, mesh, step, workdir)
    if jax.process_index() == 0:
        print(path, flush=True)
    return path
