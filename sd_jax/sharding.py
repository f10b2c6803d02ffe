"""Device mesh and logical-axis sharding rules (data parallel + FSDP).

The mesh has two axes, `('data', 'fsdp')`. The batch is split over both; parameters and optimizer
state are split over `fsdp` along the dim the rules in `config.mesh.logical_axis_rules` pick, and
replicated over `data`. With `fsdp = 1` (the default) this is plain data parallelism.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sd_jax.errors import UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def from_process_zero(value: int) -> int:
    """Process 0's `value` on every process: one small broadcast on multi-host (a collective:
    every process calls it), `value` itself on one process."""
    if jax.process_count() == 1:
        return int(value)
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the `('data', 'fsdp')` mesh; one axis may be -1 (all devices left over)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(_device_grid(mesh_sizes(mesh_cfg, len(devices)), devices), MESH_AXES)


def mesh_sizes(mesh_cfg: ml_collections.ConfigDict, n: int) -> list[int]:
    """`[data, fsdp]` for `n` devices, with a -1 resolved; raises UserError if they do not fit."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp)]
    if sizes.count(-1) > 1:
        raise UserError("at most one of config.mesh.data / config.mesh.fsdp may be -1")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if known <= 0 or n % known:
            raise UserError(f"mesh sizes {sizes} do not fit {n} devices (not divisible)")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n or min(sizes) < 1:
        raise UserError(
            f"config.mesh data={sizes[0]} x fsdp={sizes[1]} must multiply to the {n} devices"
        )
    return sizes


def _device_grid(sizes: Sequence[int], devices: Sequence[Any]) -> np.ndarray:
    """TPU: topology-aware order. Elsewhere: process-major order, so each process's devices hold
    one contiguous slice of the batch (the slice its data loader reads)."""
    if devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        try:
            return mesh_utils.create_device_mesh(sizes, devices)
        except (ValueError, NotImplementedError, AssertionError):
            pass
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return np.asarray(ordered).reshape(sizes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch-major array: rows split over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding (scalars, rng keys, metrics)."""
    return NamedSharding(mesh, PartitionSpec())


def _axis_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_to_mesh_spec(
    logical: PartitionSpec, shape: Sequence[int], rules: Sequence[tuple[str, Any]], mesh: Mesh
) -> PartitionSpec:
    """Maps one array's logical axis names to mesh axes.

    Like `flax.linen.logical_to_mesh_axes` (rules in priority order, each mesh axis used once per
    array), but a rule only applies where the dim divides by the mesh axes' size, so e.g. a conv
    kernel with 3 output channels shards its input channels instead; dims no rule fits stay
    replicated.
    """
    names = tuple(logical) + (None,) * (len(shape) - len(logical))
    result: list[Any] = [None] * len(shape)
    used: set[str] = set()
    for name, mesh_axes in rules:
        if name not in names or mesh_axes is None:
            continue
        pos = names.index(name)
        axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        size = _axis_size(mesh, axes)
        if result[pos] is not None or used & set(axes) or size == 1 or shape[pos] % size:
            continue
        result[pos] = mesh_axes
        used |= set(axes)
    return PartitionSpec(*result)


def tree_shardings(
    abstract_boxed: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]
) -> Any:
    """Shardings for a pytree whose leaves may be `nn.LogicallyPartitioned` boxes.

    Returns a tree shaped like `nn.meta.unbox(abstract_boxed)` of `NamedSharding`s.
    """
    logical = nn.get_partition_spec(abstract_boxed)
    shapes = nn.meta.unbox(abstract_boxed)
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, logical_to_mesh_spec(spec, x.shape, rules, mesh)),
        logical,
        shapes,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def rules_from_config(config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
    """The logical axis rules as a tuple of (name, mesh axes) pairs."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                 for name, axes in config.mesh.logical_axis_rules)


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "config.train.batch_size"
                          ) -> int:
    """Returns the per-process batch; raises UserError unless it splits over processes/devices."""
    num_devices, num_processes = mesh.devices.size, jax.process_count()
    if batch_size <= 0 or batch_size % num_devices or batch_size % num_processes:
        raise UserError(
            f"{what}={batch_size} is not divisible by the {num_devices} devices "
            f"({num_processes} processes); use a multiple of {num_devices}"
        )
    return batch_size // num_processes


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles per-process numpy batches into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)

    def to_global(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return {k: to_global(v) for k, v in local_batch.items()}
