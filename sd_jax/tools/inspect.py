"""`--mode=inspect`: parameter overview and forward FLOPs of a config's model, nothing allocated.

Parameters come from `jax.eval_shape(model.init, ...)` and are counted by `clu.parameter_overview`;
FLOPs from XLA's cost analysis of the lowered (not compiled) forward pass at batch 1, so the 2B
ImageNet-512 U-ViT is inspected on a laptop CPU in seconds. The last stdout line is one JSON object:
`{"params": int, "flops_per_image": float, "gflops_per_image": float, ...}`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from clu import parameter_overview

from sd_jax.models import build_model


def _input_structs(model_cfg: ml_collections.ConfigDict, batch: int) -> tuple:
    size, channels = model_cfg.image_size, model_cfg.image_channels
    return (jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.int32))


def param_shapes(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Parameter ShapeDtypeStructs of `build_model(model_cfg)` (unboxed), without allocating."""
    model = build_model(model_cfg)
    variables = jax.eval_shape(model.init, jax.random.key(0), *_input_structs(model_cfg, 1))
    return nn.unbox(variables)["params"]


def forward_flops(model_cfg: ml_collections.ConfigDict, params: Any, batch: int = 1) -> float:
    """FLOPs of one inference forward pass at `batch`, from XLA's cost analysis (lowered HLO)."""
    model = build_model(model_cfg)

    def forward(p, z, logsnr, labels):
        return model.apply({"params": p}, z, logsnr, labels, train=False)

    lowered = jax.jit(forward).lower(params, *_input_structs(model_cfg, batch))
    cost = lowered.cost_analysis()
    if isinstance(cost, list | tuple):  # Older jax returned one dict per computation.
        cost = cost[0]
    return float(cost["flops"])


def _module_order(name: str) -> tuple:
    """Sort key in data-flow order: cond, stem, down levels, middle, up levels (deep first), out."""
    level = re.match(r"(down|up)(\d+)_\D+(\d*)", name)
    if name in ("cond", "stem"):
        return (0, 0, name)
    if level:
        kind, idx, block = level.group(1), int(level.group(2)), level.group(3)
        if kind == "down":  # ResBlocks, then the downsampling conv.
            return (1, idx, int(block) if block else 1 << 30, name)
        return (3, -idx, int(block) if block else -1, name)  # Upsampling, then ResBlocks.
    if name.startswith("out"):
        return (4, 0, name)
    block = re.search(r"\d+$", name)
    return (2, int(block.group()) if block else -1, name)


@dataclasses.dataclass
class ModuleRow:
    """One row of `parameter_table`: a top-level module (numbered repeats merged)."""

    module: str
    blocks: int | str  # "" on the total row.
    params: int
    share: str


def module_rows(params: dict[str, Any]) -> list[ModuleRow]:
    """Rows per top-level module in data-flow order, numbered repeats (transformer0..N) merged;
    counts from `clu.parameter_overview.count_parameters`."""
    rows: dict[str, list[int]] = {}
    for name, sub in sorted(params.items(), key=lambda item: _module_order(item[0])):
        key = re.sub(r"^(transformer)\d+$", r"\1*", name)
        entry = rows.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += int(parameter_overview.count_parameters({name: sub}))
    total = max(sum(n for _, n in rows.values()), 1)
    return [ModuleRow(k, blocks, n, f"{n / total:.1%}") for k, (blocks, n) in rows.items()]


def parameter_table(params: dict[str, Any]) -> str:
    """Parameters per top-level module and in all, as a clu table (`make_table`); clu's table of
    every variable is logged at INFO (`--verbosity=0`). Arrays or ShapeDtypeStructs."""
    parameter_overview.log_parameter_overview(params, include_stats=False, jax_logging_process=0)
    total = int(parameter_overview.count_parameters(params))
    rows = module_rows(params) + [ModuleRow("total", "", total, "100.0%")]
    return parameter_overview.make_table(rows)


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
