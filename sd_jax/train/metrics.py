"""What the train step reports: the loss per logSNR bucket (sums and counts that add up over
micro-batches and devices), and the NaN / Inf check of every step's loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sd_jax.diffusion.spec import DiffusionSpec
from sd_jax.errors import UserError

DIVERGENCE_ADVICE = ("the last checkpoint is intact; lower config.optimizer.learning_rate or "
                     "check the data")


def check_finite(step: int, loss: float, advice: str = DIVERGENCE_ADVICE) -> None:
    """Raises UserError naming the step when the loss is NaN or Inf; `advice` ends the line."""
    if not math.isfinite(loss):
        raise UserError(f"loss is {loss} at step {step}; stopping without saving this state: "
                        f"{advice}")


def drop_empty_buckets(metrics: dict[str, float]) -> dict[str, float]:
    """The step's metrics without the bucket counts, and without the loss of a logSNR bucket no
    example fell in (missing rather than 0: `logsnr_bucket_metrics`)."""
    counts = {k[len(BUCKET_COUNT) + 1:]: v for k, v in metrics.items()
              if k.startswith(BUCKET_COUNT + "/")}
    return {k: v for k, v in metrics.items() if not k.startswith(BUCKET_COUNT + "/")
            and not (k.startswith(BUCKET_LOSS + "/") and counts.get(k[len(BUCKET_LOSS) + 1:]) == 0)}


LOGSNR_BUCKETS = 8  # Bins of the loss-per-logSNR metric.
BUCKET_LOSS, BUCKET_COUNT = "loss_logsnr", "count_logsnr"  # Metric name prefixes.


def logsnr_bucket_edges(spec: DiffusionSpec, num: int = LOGSNR_BUCKETS) -> np.ndarray:
    """`num + 1` fixed float64 edges splitting the schedule's logSNR range [lambda(1), lambda(0)]
    evenly, so the per-bucket curves of one run are comparable across steps."""
    low, high = spec.logsnr_range()
    return np.linspace(low, high, num + 1)


def logsnr_bucket_sums(
    logsnr_b: jax.Array, values_b: jax.Array, edges: np.ndarray
) -> tuple[jax.Array, jax.Array]:
    """Per-bucket sum of `values_b` and example count: float32 [K] each, K = len(edges) - 1.

    Buckets are [edges[k], edges[k + 1]) (the last one closed); a logSNR outside the edges
    counts in the nearest end bucket. Sums and counts add up over micro-batches and devices;
    `logsnr_bucket_metrics` turns the totals into means.
    """
    inner = jnp.asarray(np.asarray(edges, np.float32)[1:-1])
    index_b = jnp.searchsorted(inner, logsnr_b.astype(jnp.float32), side="right")
    one_hot_bk = jax.nn.one_hot(index_b, len(edges) - 1, dtype=jnp.float32)
    return one_hot_bk.T @ values_b.astype(jnp.float32), jnp.sum(one_hot_bk, axis=0)


def logsnr_bucket_names(edges: np.ndarray) -> list[str]:
    """One name per bucket, its index and range: '3:[-3.8,0.0)'."""
    pairs = zip(edges[:-1], edges[1:], strict=True)
    return [f"{k}:[{lo:.1f},{hi:.1f})" for k, (lo, hi) in enumerate(pairs)]


def logsnr_bucket_metrics(
    sums: jax.Array, counts: jax.Array, edges: np.ndarray
) -> dict[str, jax.Array]:
    """`loss_logsnr/<bucket>`: mean per bucket (0 for an empty one, whose `count_logsnr/<bucket>`
    is 0: the logger reports it as missing), never NaN."""
    means = sums / jnp.maximum(counts, 1.0)
    metrics = {}
    for k, name in enumerate(logsnr_bucket_names(edges)):
        metrics[f"{BUCKET_LOSS}/{name}"] = means[k]
        metrics[f"{BUCKET_COUNT}/{name}"] = counts[k]
    return metrics
