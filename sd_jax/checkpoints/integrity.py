"""What a checkpoint must match before it is trusted: per-array checksums and the model's tree.

Checksums: `fingerprints(tree)` maps every leaf to a 32-bit integer computed on the devices,

    fp(x) = sum_i bits(x)_i * m(i)  mod 2^32,   m(i) = (i * 0x9E3779B1 mod 2^32) | 1,

where `bits` reinterprets the values as uint32 words and `i` is the flat index. Wrap-around integer
addition is associative and commutative, so the value does not depend on how the array is sharded
or on the number of devices or hosts (nothing is gathered); every multiplier is odd, hence
invertible mod 2^32, so a change of any single element always changes the fingerprint (other
damage goes unnoticed with probability about 2^-32 per array), and position-dependent weights
catch swapped elements. The trainer records the fingerprints of the state it
saves and compares them with those of the restored state.

Model check: a checkpoint's stored tree (shapes from orbax's metadata, read without restoring) is
compared with the abstract state of the configured model, so a different architecture fails in
one line naming the first differing parameter and the `config.model` fields that differ.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from sd_jax.errors import UserError

_GOLDEN = 0x9E3779B1  # 2^32 / golden ratio: spreads consecutive indices over the whole word.


def leaf_name(path: tuple) -> str:
    """'params/stem/kernel' for a key path (dict keys, attributes and indices alike)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{leaf name: shape} of a tree of arrays, ShapeDtypeStructs or orbax array metadata."""
    return {leaf_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _words(x: jax.Array) -> jax.Array:
    """The values' bits as uint32 words (8-byte types give a trailing dim of 2 words)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size < 4:
        return lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)
    return lax.bitcast_convert_type(x, jnp.uint32)


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    words = _words(x)
    shape, index, stride = words.shape, jnp.zeros(words.shape, jnp.uint32), 1
    for dim in reversed(range(len(shape))):  # Flat index from iotas: no reshape of sharded arrays.
        index = index + lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride % 2**32)
        stride *= shape[dim]
    multiplier = (index * jnp.uint32(_GOLDEN)) | jnp.uint32(1)
    return jnp.sum(words * multiplier, dtype=jnp.uint32)


@functools.lru_cache(maxsize=8)
def _fingerprint_fn(out_sharding: NamedSharding | None) -> Any:
    fn = lambda leaves: [_leaf_fingerprint(x) for x in leaves]
    return jax.jit(fn, out_shardings=out_sharding)


def fingerprints(tree: Any) -> dict[str, int]:
    """{leaf name: 32-bit fingerprint} of a tree of (possibly sharded, multi-host) arrays.

    Collective on multi-process runs: every process must call it with the same tree.
    """
    named = jax.tree_util.tree_leaves_with_path(tree)
    leaves = [x for _, x in named]
    first = getattr(leaves[0], "sharding", None) if leaves else None
    # Replicated scalars out, so every process can read them (no cross-host gather of the data).
    out = NamedSharding(first.mesh, PartitionSpec()) if isinstance(first, NamedSharding) else None
    values = jax.device_get(_fingerprint_fn(out)(leaves))
    return {leaf_name(p): int(v) for (p, _), v in zip(named, values, strict=True)}


def first_mismatch(tree: Any, expected: dict[str, int]) -> str | None:
    """Name of the first leaf of `tree` whose fingerprint is not `expected[name]`, else None."""
    for name, value in fingerprints(tree).items():
        if expected.get(name) != value:
            return name
    return None


def model_record(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config.model` as JSON values (stored in every checkpoint's meta item)."""
    return json.loads(json.dumps(model_cfg.to_dict()))


def config_differences(saved: dict[str, Any] | None,
                       model_cfg: ml_collections.ConfigDict | None,
                       ignore: tuple[str, ...] = ()) -> list[str]:
    """['transformer_depth 4 -> 2', ...]: fields of `config.model` that differ from `saved`."""
    if not saved or model_cfg is None:
        return []
    now = model_record(model_cfg)
    return [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted({*saved, *now})
            if k not in ignore and saved.get(k) != now.get(k)]


def first_tree_difference(saved: dict[str, tuple[int, ...]],
                          wanted: dict[str, tuple[int, ...]]) -> str | None:
    """The first leaf (in the model's order) that is missing, extra or of another shape."""
    for name, shape in wanted.items():
        if name not in saved:
            return f"{name} is not in the checkpoint"
        if tuple(saved[name]) != tuple(shape):
            return f"{name} has shape {tuple(saved[name])} there and {tuple(shape)} in this model"
    extra = [name for name in saved if name not in wanted]
    return f"{extra[0]} is in the checkpoint but not in this model" if extra else None


def check_same_model(where: str, saved_tree: Any, target: Any,
                     saved_model: dict[str, Any] | None,
                     model_cfg: ml_collections.ConfigDict | None, partial: bool = False) -> None:
    """Raises UserError (one line) unless the checkpoint's tree fits `target` exactly.

    `partial`: `target` is a subset of the saved top-level entries (e.g. only `ema_params`);
    the other entries of the checkpoint are not compared.
    """
    saved, wanted = leaf_shapes(saved_tree), leaf_shapes(target)
    if partial:
        tops = {name.split("/")[0] for name in wanted}
        saved = {name: s for name, s in saved.items() if name.split("/")[0] in tops}
    difference = first_tree_difference(saved, wanted)
    if difference is None:
        return
    fields = config_differences(saved_model, model_cfg)
    changed = (f"config.model fields that differ (checkpoint -> now): {', '.join(fields)}"
               if fields else "the checkpoint records no config.model field that differs")
    raise UserError(f"checkpoint {where} was written by a different model: {difference}; "
                    f"{changed}. Use the config it was trained with, or a new --workdir")
