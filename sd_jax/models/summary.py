"""What a network costs: parameters per module (a clu table) and forward FLOPs (XLA's analysis).

Both work on abstract parameters (`init.param_shapes`), so the 2B ImageNet-512 U-ViT is summarised
on a laptop CPU in seconds: the trainer prints `parameter_table` at start-up, `--mode=inspect`
prints it with the FLOPs, and the benchmarks compute MFU from `forward_flops`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import ml_collections
from clu import parameter_overview

from sd_jax.models.init import input_structs
from sd_jax.models.registry import build
from sd_jax.models.spec import ModelSpec


def forward_flops(model_cfg: ml_collections.ConfigDict, params: Any, batch: int = 1) -> float:
    """FLOPs of one inference forward pass at `batch`, from XLA's cost analysis (lowered HLO)."""
    model = build(ModelSpec.from_config(model_cfg))

    def forward(p, z, logsnr, labels):
        return model.apply({"params": p}, z, logsnr, labels, train=False)

    lowered = jax.jit(forward).lower(params, *input_structs(model_cfg, batch))
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
