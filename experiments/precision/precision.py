"""bf16 model: the transformer residual stream in float32 (kept) or bfloat16, measured.

    python experiments/precision/precision.py [--depth 36] [--width 256] [--batch 4]

A U-ViT with the ImageNet-512 layout at the transformer (16 x 16 tokens, `--depth` blocks of
width `--width`, 4 heads) and a single small conv level (32 x 32 images), so the transformer
dominates as it does at 512 and it runs on a CPU. For each residual-stream
dtype of the bfloat16 model it reports:
- the error of the output against the float32 model on the same params (relative L2 over a
  batch of noisy images at logSNR 0), with params as after some training (every layer non-zero:
  lecun-scaled kernels, unit-ish norm scales);
- the bytes the train step's loss and gradient access, from XLA's cost analysis of the lowered
  program (before fusion, per op: an upper bound on memory traffic, with dtypes as written; the
  CPU compiler widens bf16 to f32 afterwards, so a compiled CPU program would not show them);
- the bytes the backward pass keeps from the forward (the leaves of `jax.vjp`'s closure).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=36)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    return parser.parse_args(argv)


def model_config(depth: int, width: int, dtype: str):
    from sd_jax.configs import base

    m = base.get_config().model
    m.image_size, m.input_transform, m.base_channels = 32, "none", width // 4
    m.channel_multipliers, m.num_res_blocks = (1, 4), 1  # One conv level at 32 x 32.
    m.transformer_depth, m.num_heads, m.emb_dim, m.dropout = depth, 4, width, 0.0
    m.dtype, m.num_classes = dtype, 10
    return m


def trained_like(params, seed: int = 0):
    """Params with no zero layer: kernels ~ N(0, 1 / fan_in), scales ~ 1, the rest small."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = path[-1].key
        if name in ("kernel", "embedding", "pos_embed"):
            std = 1.0 / np.sqrt(np.prod(x.shape[:-1])) if name == "kernel" else 0.5
        else:
            std = 0.05
        return jnp.asarray(rng.normal(0.0, std, x.shape) + (name == "scale"), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, params)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sd_jax.models import UViT, build_model
    from sd_jax.models.layers import cast_params

    class UViTBf16Stream(UViT):
        residual_dtype = "bfloat16"

    cfg32 = model_config(args.depth, args.width, "float32")
    cfg16 = model_config(args.depth, args.width, "bfloat16")
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (args.batch, 32, 32, 3)).astype(np.float32)
    z = jnp.asarray((x0 + rng.normal(size=x0.shape)) / np.sqrt(2.0), jnp.float32)  # logSNR 0.
    logsnr = jnp.zeros((args.batch,), jnp.float32)
    labels = jnp.arange(args.batch, dtype=jnp.int32) % 10
    model32 = build_model(cfg32)
    params = trained_like(nn.meta.unbox(jax.eval_shape(
        model32.init, jax.random.key(0), z, logsnr, labels))["params"])
    ref = jax.jit(model32.apply)({"params": params}, z, logsnr, labels)

    print(f"U-ViT transformer depth {args.depth}, width {args.width}, 16 x 16 tokens, batch "
          f"{args.batch}; bf16 model, params cast once")
    print("| residual stream | output error vs float32 model | bytes accessed, loss + grad "
          "(lowered) | saved for backward |")
    print("|---|---|---|---|")
    for name, cls in (("float32", UViT), ("bfloat16", UViTBf16Stream)):
        model = cls(build_model(cfg16).spec)
        out = jax.jit(model.apply)({"params": cast_params(params, "bfloat16")}, z, logsnr,
                                   labels)
        error = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))

        def loss(p, m=model):
            out = m.apply({"params": cast_params(p, "bfloat16")}, z, logsnr, labels)
            return jnp.mean(jnp.square(out - z))

        cost = jax.jit(jax.value_and_grad(loss)).lower(params).cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        # The vjp closure's leaves are what the backward pass keeps (params included).
        saved = jax.eval_shape(lambda p, f=loss: jax.tree.leaves(jax.vjp(f, p)[1]), params)
        saved_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in saved)
        print(f"| {name} | {error:.2e} | {cost['bytes accessed'] / 1e6:,.0f} MB | "
              f"{saved_bytes / 1e6:,.1f} MB |")


if __name__ == "__main__":
    main()
