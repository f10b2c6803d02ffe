"""Batch-sharded sampling from a model's params: the trainer's sample grids and `--mode=sample`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sd_jax import sampling, sharding

_COMPILED: dict[tuple[int, int, Mesh], tuple[Any, Any, Callable]] = {}


def _sample(params: Any, rng: jax.Array, labels_b: jax.Array, *, model: nn.Module,
            config: ml_collections.ConfigDict) -> jax.Array:
    def denoise_fn(z_bhwc: jax.Array, logsnr_b: jax.Array, labels: jax.Array) -> jax.Array:
        return model.apply({"params": params}, z_bhwc, logsnr_b, labels, train=False)

    return sampling.sample_from_config(denoise_fn, rng, labels_b, config)


def _compiled(model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
    """One jitted sampler per (model, config, mesh); params keep whatever sharding they have."""
    key = (id(model), id(config), mesh)
    if key not in _COMPILED:  # The tuple keeps model and config alive, so ids stay unique.
        fn = jax.jit(
            functools.partial(_sample, model=model, config=config),
            in_shardings=(None, sharding.replicated(mesh), sharding.batch_sharding(mesh)),
            out_shardings=sharding.batch_sharding(mesh),
        )
        _COMPILED[key] = (model, config, fn)
    return _COMPILED[key][2]


def generate(
    model: nn.Module,
    params: Any,
    rng: jax.Array,
    labels_b: np.ndarray,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> np.ndarray:
    """Samples one image per label with `sampling.sample_from_config`, split over the mesh.

    `labels_b` (int, same on every process; `num_classes` is the null label) may have any length:
    it is padded to a multiple of the device count and the padding dropped. Deterministic for a
    given `rng`, labels and device count. Returns float32 [B, H, W, C] in [-1, 1] on every process.
    """
    labels_b = np.asarray(labels_b, np.int32)
    n, num_devices = len(labels_b), mesh.devices.size
    padded = np.resize(labels_b, -(-n // num_devices) * num_devices) if n else labels_b
    labels = jax.make_array_from_callback(
        padded.shape, sharding.batch_sharding(mesh), lambda index: padded[index]
    )
    rng = jax.device_put(rng, sharding.replicated(mesh))  # Same key on every process, committed.
    images = _compiled(model, config, mesh)(params, rng, labels)
    if jax.process_count() > 1:
        images = multihost_utils.process_allgather(images, tiled=True)
    return np.asarray(images, np.float32)[:n]
