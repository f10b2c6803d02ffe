"""Dropout masks from the `threefry2x32`, `rbg` and `unsafe_rbg` PRNG implementations.

    python experiments/dropout_prng/dropout_prng.py [--devices 8] [--repeats 7]

Times, per implementation (`jax.random.key(seed, impl=...)`), median over `--repeats` runs:
1. the masks alone: `jax.random.bernoulli(key, 0.8, [B, 256, D])`, the shape of one transformer
   dropout site of the U-ViT at 16 x 16, with the batch split over the devices;
2. forward + backward of a small U-ViT with dropout 0.2 at its 16 x 16 transformer
   (`model.apply(..., rngs={"dropout": key})`, as the train step calls it), and its compile time
   (threefry's hash is unrolled into many ops, XLA's RngBitGenerator is one).
Also reports whether, after SPMD partitioning, each device draws the random bits of the whole
batch or only of its own shard: XLA replicates `rng-bit-generator` (rbg, unsafe_rbg) unless the
TPU-only flag `--xla_tpu_spmd_rng_bit_generator_unsafe` is set; threefry is partitioned.
`--devices N` makes N fake CPU devices (set before JAX starts). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1, help="fake CPU devices")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--width", type=int, default=256, help="transformer width D")
    parser.add_argument("--depth", type=int, default=4, help="transformer blocks (model part)")
    return parser.parse_args(argv)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(seconds of the first call: compile + run, median seconds of `repeats` later calls)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def draws_global_bits(lowered, global_shape: tuple[int, ...]) -> bool:
    """Whether the partitioned program makes random bits of the global shape on each device
    (a u32 array of that shape after SPMD partitioning), rather than only its own shard."""
    dump = tempfile.mkdtemp(prefix="prng_hlo_")
    lowered.compile(compiler_options={"xla_dump_to": dump,
                                      "xla_dump_hlo_pass_re": "spmd-partitioning"})
    text = "".join(Path(p).read_text() for p in glob.glob(f"{dump}/*after_spmd-partitioning*"))
    return f"u32[{','.join(map(str, global_shape))}]" in text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={args.devices}")
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from sd_jax import models
    from sd_jax.configs import quickstart
    from sd_jax.models.init import init_params

    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    mask_shape = (args.batch, 256, args.width)

    cfg = quickstart.get_config()
    m = cfg.model
    m.image_size, m.base_channels, m.channel_multipliers = 32, args.width // 4, (1, 4)
    m.transformer_depth, m.num_heads, m.dropout, m.dropout_max_resolution = args.depth, 4, 0.2, 16
    model = models.build_model(m)
    params = nn.meta.unbox(init_params(model, cfg.model, jax.random.PRNGKey(0)))
    # Non-zero everywhere (the init zeroes the output conv and every residual branch's end).
    params = jax.tree.map(lambda x: x + 0.02, params)
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    z = jax.device_put(jnp.ones((args.batch, 32, 32, 3)), rows)
    logsnr = jax.device_put(jnp.zeros((args.batch,)), rows)
    labels = jax.device_put(jnp.zeros((args.batch,), jnp.int32), rows)

    print(f"devices: {args.devices} fake CPU device(s) of a {os.cpu_count()}-core machine; "
          f"load average {os.getloadavg()[0]:.1f}; median of {args.repeats}")
    print(f"| impl | masks {list(mask_shape)} (ms) | bits each device draws | "
          f"U-ViT fwd+bwd, dropout 0.2, depth {args.depth}, D {args.width} (ms) | "
          "its compile + first run (s) |")
    print("|---|---|---|---|---|")
    for impl in IMPLS:
        def masks(seed, impl=impl):
            key = jax.random.key(seed, impl=impl)
            return jax.random.bernoulli(key, 0.8, mask_shape)

        mask_fn = jax.jit(masks, out_shardings=rows)
        _, mask_s = timed(lambda f=mask_fn: f(1), args.repeats)
        where = ("whole batch" if draws_global_bits(mask_fn.lower(1), mask_shape)
                 else "own shard")

        def loss(p, seed, impl=impl):
            key = jax.random.key(seed, impl=impl)
            out = model.apply({"params": p}, z, logsnr, labels, train=True,
                              rngs={"dropout": key})
            return jnp.mean(out**2)

        grad_fn = jax.jit(jax.grad(loss))
        first_s, model_s = timed(lambda f=grad_fn: f(params, 1), args.repeats)
        print(f"| {impl} | {mask_s * 1e3:.2f} | {where} | {model_s * 1e3:.1f} | "
              f"{first_s:.1f} |")


if __name__ == "__main__":
    main()
