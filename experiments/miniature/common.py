"""What the digits and photo miniatures share: run names, model cost, training rate, mean and
spread over seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import jax
import numpy as np
from scipy import stats

RECIPE = "recipe"


def run_name(arm: str, seed: int) -> str:
    """The run's folder name: the arm's letters and digits, and the seed."""
    safe = "".join(c if c.isalnum() else "_" for c in arm).strip("_")
    return f"{safe}-seed{seed}"


def model_cost(config) -> dict:
    """Params and forward FLOPs per image (XLA cost analysis, nothing allocated)."""
    from sd_jax.models import init, summary

    shapes = init.param_shapes(config.model)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    return {"params": params, "mflop_per_image": summary.forward_flops(config.model,
                                                                       shapes) / 1e6}


def images_per_second(workdir: Path) -> float | None:
    """Median training images/s from metrics.jsonl (the first record includes compilation)."""
    rates = [r["images_per_sec"] for r in map(json.loads, (workdir / "metrics.jsonl")
                                               .read_text().splitlines()) if "images_per_sec" in r]
    return statistics.median(rates[1:] or rates) if rates else None


def mean_sd(values: list[float]) -> str:
    """'mean ± sample std' of the values given (None skipped), one value as is, '-' for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def mean_ci(values: list[float], digits: str = ".3g") -> str:
    """'mean ± half-width of the 95% t confidence interval' over seeds; one value as is."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], digits)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{format(statistics.mean(values), digits)} ± {half:.2g}"
