"""`--mode=inspect`: parameter overview and forward FLOPs of a config's model, nothing allocated.

Parameters come from `jax.eval_shape(model.init, ...)` and are counted by `clu.parameter_overview`;
FLOPs from XLA's cost analysis of the lowered (not compiled) forward pass at batch 1
(`sd_jax.models.summary`), so the 2B ImageNet-512 U-ViT is inspected on a laptop CPU in seconds.
The last stdout line is one JSON object:
`{"params": int, "flops_per_image": float, "gflops_per_image": float, ...}`.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from clu import parameter_overview

from sd_jax.models.init import param_shapes
from sd_jax.models.summary import forward_flops, parameter_table


def inspect(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Returns the summary dict that `run` prints as its last line (plus the table)."""
    params = param_shapes(config.model)
    total = int(parameter_overview.count_parameters(params))
    flops = forward_flops(config.model, params)
    return {
        "arch": config.model.arch,
        "image_size": int(config.model.image_size),
        "params": total,
        "flops_per_image": flops,
        "gflops_per_image": round(flops / 1e9, 2),
        "table": parameter_table(params),
    }


def run(config: ml_collections.ConfigDict) -> None:
    """Prints the per-module parameter table, then one JSON line (params, flops_per_image)."""
    summary = inspect(config)
    print(f"model: {summary['arch']} at {summary['image_size']}px, "
          f"dtype {config.model.dtype}, remat {config.model.remat}")
    print(summary.pop("table"))
    print(f"forward: {summary['gflops_per_image']:,} GFLOP per image (XLA cost analysis, batch 1)")
    print(json.dumps(summary))
