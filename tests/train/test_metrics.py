"""The loss per logSNR bucket (sd_jax/train/metrics.py) against NumPy in float64."""

import jax
import numpy as np
from utils import float32_sum_error

from configs.base import get_config
from sd_jax.diffusion.spec import DiffusionSpec
from sd_jax.specs import diffusion_spec
from sd_jax.train import metrics


def _spec(image_size, **overrides) -> DiffusionSpec:
    config = get_config()
    config.model.image_size = image_size
    config.diffusion.update(overrides)
    return diffusion_spec(config)


def _bucket_reference(logsnr, values, edges):
    """NumPy float64 reference: bucket k holds edges[k] <= logSNR < edges[k + 1] (ends clamped)."""
    index = np.clip(np.digitize(logsnr, edges[1:-1], right=False), 0, len(edges) - 2)
    sums = np.array([np.sum(values[index == k], dtype=np.float64) for k in range(len(edges) - 1)])
    return sums, np.bincount(index, minlength=len(edges) - 1)


def test_logsnr_buckets_match_numpy_and_add_up_over_micro_batches():
    edges = metrics.logsnr_bucket_edges(_spec(64, schedule="cosine"))
    # Fixed by the schedule's ends, which are float32 evaluations of -2 log tan(.) at t = 1, 0:
    # off by a few float32 ulps of 15 (ulp 9.5e-7), through tan's steep slope there.
    np.testing.assert_allclose(edges, np.linspace(-15.0, 15.0, 9), rtol=0, atol=1e-4)
    edges32 = edges.astype(np.float32).astype(np.float64)  # What the jitted code compares with.
    rng = np.random.default_rng(4)
    # Random logSNRs, every edge exactly, and values beyond both ends (clamped to the end buckets).
    logsnr = np.concatenate([rng.uniform(-15, 15, 500), edges32, [-40.0, 40.0]]).astype(np.float32)
    logsnr = rng.permutation(logsnr)
    values = rng.uniform(0, 2, logsnr.size).astype(np.float32)
    sums, counts = jax.jit(metrics.logsnr_bucket_sums, static_argnums=2)(
        logsnr, values, tuple(edges))
    ref_sums, ref_counts = _bucket_reference(logsnr.astype(np.float64), values, edges32)
    np.testing.assert_array_equal(counts, ref_counts)
    # float32 sums of at most `logsnr.size` positive terms against a float64 sum.
    np.testing.assert_allclose(sums, ref_sums, rtol=float32_sum_error(logsnr.size))
    # In range, the buckets are np.histogram's bins (left-closed, the last one closed).
    inside = np.abs(logsnr) <= 15
    hist, _ = np.histogram(logsnr[inside], bins=edges32, weights=values[inside])
    hist_counts, _ = np.histogram(logsnr[inside], bins=edges32)
    in_sums, in_counts = metrics.logsnr_bucket_sums(logsnr[inside], values[inside], edges)
    np.testing.assert_array_equal(in_counts, hist_counts)
    np.testing.assert_allclose(in_sums, hist, rtol=float32_sum_error(logsnr.size))
    # Micro-batches: the sums and counts of the parts add up to the whole batch's.
    parts = [metrics.logsnr_bucket_sums(logsnr[i::4], values[i::4], edges) for i in range(4)]
    np.testing.assert_array_equal(sum(p[1] for p in parts), counts)
    np.testing.assert_allclose(sum(p[0] for p in parts), ref_sums,
                               rtol=float32_sum_error(logsnr.size))


def test_logsnr_bucket_metrics_means_and_empty_buckets():
    edges = np.linspace(-4.0, 4.0, 5)
    logsnr = np.array([-3.0, -2.5, 3.5], np.float32)  # Buckets 1 and 2 are empty.
    sums, counts = metrics.logsnr_bucket_sums(logsnr, np.array([1.0, 2.0, 5.0], np.float32), edges)
    got = {k: float(v) for k, v in metrics.logsnr_bucket_metrics(sums, counts, edges).items()}
    names = metrics.logsnr_bucket_names(edges)
    assert names == ["0:[-4.0,-2.0)", "1:[-2.0,0.0)", "2:[0.0,2.0)", "3:[2.0,4.0)"]
    assert [got[f"loss_logsnr/{n}"] for n in names] == [1.5, 0.0, 0.0, 5.0]
    assert [got[f"count_logsnr/{n}"] for n in names] == [2.0, 0.0, 0.0, 1.0]


def test_logsnr_bucket_edges_follow_the_shifted_schedule():
    spec = _spec(512, schedule="shifted_cosine", noise_d=64)
    shift = 2 * np.log(64 / 512)
    edges = metrics.logsnr_bucket_edges(spec)
    # float32 schedule values at t = 1 and 0 (tolerance as above): the clip values, shifted.
    np.testing.assert_allclose(edges[[0, -1]], [-15 + shift, 15 + shift], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.diff(edges), 30 / metrics.LOGSNR_BUCKETS, rtol=0, atol=1e-4)
