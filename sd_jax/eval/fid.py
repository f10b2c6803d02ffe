"""FID / sFID / Inception Score from Inception activations (numpy + scipy, float64).

Formulas follow pytorch-fid (Frechet distance, including its handling of a singular product and
of small imaginary parts) and improved-GAN / the ADM evaluator (Inception Score). Statistics are
accumulated in float64 over batches; the last batch is padded and masked, never dropped, so the
results do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.special

ExtractFn = Callable[[np.ndarray], dict[str, np.ndarray]]
FID_METHODS = ("sqrtm", "eigh")  # config.eval.fid_method (see `frechet_distance`).


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, method: str = "sqrtm") -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) in float64.

    'sqrtm': pytorch-fid's recipe (scipy sqrtm of S1 S2; eps on the diagonals if that is not
    finite; small imaginary parts dropped). 'eigh': the same trace from symmetric eigensolves,
    tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), about 10x faster at 2048-d (periodic
    FID, tests); the two agree to ~1e-6 relative on well-conditioned statistics.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape} vs {mu2.shape}, "
                         f"{sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        w, v = np.linalg.eigh(sigma1)
        root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
        tr_covmean = float(np.sum(np.sqrt(np.clip(inner, 0.0, None))))
    elif method == "sqrtm":
        tr_covmean = _trace_sqrtm_product(sigma1, sigma2, eps)
    else:
        raise ValueError(f"unknown FID method {method!r}; use one of {FID_METHODS}")
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _trace_sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # Singular product: add eps to the diagonals.
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary part {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(np.trace(covmean))


def inception_score(logits: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """(mean, std) over splits of exp(E_x KL(p(y|x) || p(y))), p = softmax(logits) (improved-GAN:
    split i is rows [i*N//splits, (i+1)*N//splits))."""
    logits = np.asarray(logits, np.float64)
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    n = logp.shape[0]
    scores = []
    for i in range(num_splits):
        part = logp[i * n // num_splits:(i + 1) * n // num_splits]
        if len(part) == 0:
            continue
        log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
        kl = np.sum(np.exp(part) * (part - log_marginal[None]), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


@dataclass
class RunningStats:
    """Mean and covariance (np.cov, ddof=1) of feature rows, accumulated in float64."""

    count: int = 0
    total: np.ndarray | None = None
    outer: np.ndarray | None = None
    shift: np.ndarray | None = None  # First row seen: centring keeps one-pass sums accurate.

    def update(self, feats: np.ndarray) -> None:
        """Adds rows [n, d]."""
        x = np.asarray(feats, np.float64).reshape(len(feats), -1)
        if len(x) == 0:
            return
        if self.shift is None:
            self.shift = x[0].copy()
            self.total = np.zeros(x.shape[1])
            self.outer = np.zeros((x.shape[1], x.shape[1]))
        x = x - self.shift
        self.count += len(x)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (mu [d], sigma [d, d]) in float64."""
        if self.count < 2:
            raise ValueError(f"need at least 2 images for a covariance, got {self.count}")
        mean = self.total / self.count
        sigma = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return mean + self.shift, sigma


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a [n, d] activation array."""
    stats = RunningStats()
    stats.update(feats)
    return stats.finalize()


@dataclass
class ImageStats:
    """What one pass of Inception over a set of images yields."""

    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray | None = None  # Spatial (sFID) statistics.
    sigma_s: np.ndarray | None = None
    logits: np.ndarray | None = None  # [n, 1008] for the Inception Score.
    count: int = 0


def iterate_padded(images: np.ndarray, batch_size: int) -> Iterable[tuple[np.ndarray, int]]:
    """Yields (batch padded to `batch_size` with copies of the last row, number of real rows)."""
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size])
        valid = len(batch)
        if valid < batch_size:
            pad = np.repeat(batch[-1:], batch_size - valid, axis=0)
            batch = np.concatenate([batch, pad], axis=0)
        yield batch, valid


class StatsAccumulator:
    """Inception statistics of images added batch by batch: `add(images)` any number of times,
    `result()` whenever (a streamed FID of the images so far, e.g. of a sampling job's shards as
    they complete). The last batch of each `add` is padded and masked, never dropped."""

    def __init__(self, extract_fn: ExtractFn, batch_size: int, with_spatial: bool = True):
        self.extract_fn, self.batch_size, self.with_spatial = extract_fn, batch_size, with_spatial
        self.pool, self.spatial, self.logits = RunningStats(), RunningStats(), []

    @property
    def count(self) -> int:
        return self.pool.count

    def add(self, images: np.ndarray) -> None:
        """Runs `extract_fn` (uint8 [B,H,W,3] -> {'pool','logits','spatial'}) over `images`."""
        for batch, valid in iterate_padded(images, self.batch_size):
            out = self.extract_fn(batch)
            self.pool.update(out["pool"][:valid])
            if self.with_spatial and "spatial" in out:
                self.spatial.update(out["spatial"][:valid])
            if "logits" in out:
                self.logits.append(np.asarray(out["logits"][:valid], np.float32))

    def result(self) -> ImageStats:
        """The statistics of every image added so far."""
        mu, sigma = self.pool.finalize()
        mu_s, sigma_s = self.spatial.finalize() if self.spatial.count else (None, None)
        return ImageStats(mu, sigma, mu_s, sigma_s,
                          np.concatenate(self.logits) if self.logits else None, self.pool.count)


def compute_image_stats(images: np.ndarray | Iterable[np.ndarray], extract_fn: ExtractFn,
                        batch_size: int, with_spatial: bool = True) -> ImageStats:
    """Runs `extract_fn` (uint8 [B,H,W,3] -> {'pool','logits','spatial'}) over all images.

    `images` is one array or an iterable of arrays (e.g. generated batches); every image counts.
    """
    stats = StatsAccumulator(extract_fn, batch_size, with_spatial)
    for chunk in [images] if isinstance(images, np.ndarray) else images:
        stats.add(chunk)
    return stats.result()


def metrics(samples: ImageStats, reference: dict[str, np.ndarray], num_splits: int = 10,
            method: str = "sqrtm") -> dict[str, float]:
    """FID (and sFID when both sides have spatial statistics) against a reference with keys
    mu, sigma[, mu_s, sigma_s]; IS of the samples. `method`: see `frechet_distance`."""
    out = {"fid": frechet_distance(samples.mu, samples.sigma, reference["mu"], reference["sigma"],
                                   method=method),
           "num_samples": samples.count}
    if samples.mu_s is not None and reference.get("mu_s") is not None:
        out["sfid"] = frechet_distance(samples.mu_s, samples.sigma_s,
                                       reference["mu_s"], reference["sigma_s"], method=method)
    if samples.logits is not None:
        out["inception_score"], out["inception_score_std"] = inception_score(
            samples.logits, num_splits)
    return out
