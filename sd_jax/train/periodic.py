"""What the trainer samples while it trains: EMA sample grids (`train.sample_every`) and small
FIDs (`config.eval.fid_every`, `config.eval.fid_num_samples`).

The trainer calls, once before the loop, `periodic.check_config(config)` (fails fast on a missing
Inception weights file or reference batch), and after each step (all processes, same steps):

    periodic.save_sample_grid(state.ema_params, config, mesh, step, workdir, logger)  # some steps
    periodic.maybe_fid(step, state.ema_params, config, mesh, workdir)

It samples `fid_num_samples` images with the `config.sample` sampler (same noise every time, so
values over training are comparable), scores them against `config.eval.reference_npz`, appends
`{"step", "eval/fid", "eval/inception_score", ...}` to <workdir>/metrics.jsonl (process 0) and
returns the metrics (None on steps without FID). FID-5k is biased upwards vs FID-50k: use it to
compare checkpoints of one run, not against published numbers.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh

from sd_jax.eval import fid, inception
from sd_jax.eval import mode as evaluate
from sd_jax.io import images
from sd_jax.sample import mode as sample_mode
from sd_jax.sample.generate import Sampler
from sd_jax.train.logger import MetricsLogger

SAMPLE_RNG = 2  # fold_in tag of the seed's key for the sample grids (train/loop.py: 1).
_CACHE: dict[tuple, tuple[fid.ExtractFn, int, dict]] = {}


def save_sample_grid(
    params: Any, config: ml_collections.ConfigDict, mesh: Mesh, step: int, workdir: epath.Path,
    logger: MetricsLogger | None = None,
) -> epath.Path | None:
    """Samples `train.sample_grid_size` images (classes cycled) into samples/step_<step>.png
    and, given `logger`, TensorBoard's images as 'samples'."""
    n, num_classes = config.train.sample_grid_size, config.model.num_classes
    labels = np.arange(n) % num_classes if num_classes else np.zeros(n, np.int32)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), SAMPLE_RNG)  # Same noise each time.
    x_bhwc = Sampler.from_config(config, mesh).generate(params, rng, labels)
    if jax.process_index() != 0:
        return None
    grid = images.make_grid(images.to_uint8(x_bhwc), ncols=num_classes or None)
    if logger is not None:
        logger.write_images(step, {"samples": grid})
    return images.save_png(grid, workdir / "samples" / f"step_{step:08d}.png")


def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether periodic FID is on."""
    return int(config.eval.fid_every) > 0


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError now (not hours into training) if periodic FID cannot run."""
    if enabled(config):
        inception.load_weights(config.eval.inception_weights)
        evaluate.check_reference(config.eval.reference_npz)


def _setup(config: ml_collections.ConfigDict) -> tuple[fid.ExtractFn, int, dict]:
    """Extractor and reference statistics, built once per (weights, reference) pair."""
    e = config.eval
    key = (e.inception_weights, e.inception_preprocess, e.reference_npz, e.batch_size, e.sfid)
    if key not in _CACHE:
        extract_fn, batch_size = evaluate.build_extractor(e)
        reference = evaluate.reference_stats(e.reference_npz, extract_fn, batch_size, e.sfid)
        _CACHE[key] = (extract_fn, batch_size, reference)
    return _CACHE[key]


def maybe_fid(step: int, params: Any, config: ml_collections.ConfigDict, mesh: Mesh,
              workdir: str | os.PathLike) -> dict | None:
    """FID/IS of `fid_num_samples` samples from `params` when `step % fid_every == 0`."""
    if not enabled(config) or step % int(config.eval.fid_every) != 0:
        return None
    start = time.time()
    extract_fn, batch_size, reference = _setup(config)
    n = int(config.eval.fid_num_samples)
    labels = sample_mode.sample_labels(config, n)
    batches = sample_mode.iter_samples(params, config, mesh, labels)
    stats = fid.compute_image_stats(batches, extract_fn, batch_size, config.eval.sfid)
    results = fid.metrics(stats, reference, config.eval.is_splits, config.eval.fid_method)
    results["seconds"] = round(time.time() - start, 1)
    evaluate.write_results(workdir, None, results, step)
    if jax.process_index() == 0:
        print(f"step {step}: FID-{n} {results['fid']:.3f}, IS {results['inception_score']:.2f} "
              f"({results['seconds']:.0f} s)", flush=True)
    return results
