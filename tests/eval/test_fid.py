"""FID / IS maths and batching (sd_jax/eval/fid.py, npz_io.py). Budget: ~3 s, numpy only."""

import numpy as np
import pytest

from sd_jax.eval import fid
from sd_jax.io import npz as npz_io


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def _reference_fid(mu1, s1, mu2, s2) -> float:
    """Independent route: tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))), sqrt via eigh."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sum(np.sqrt(np.clip(inner, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def test_frechet_distance_matches_eigen_route():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    got = fid.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_reference_fid(mu1, s1, mu2, s2), rel=1e-8)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # Pure mean shift: FID is the squared distance of the means.
    assert fid.frechet_distance(mu1, s1, mu1 + 0.5, s1) == pytest.approx(0.25 * d, rel=1e-6)
    # The fast 'eigh' route agrees with pytorch-fid's sqrtm recipe.
    assert fid.frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(got, rel=1e-8)


def test_frechet_distance_matches_scipy_reference():
    """The textbook formula with scipy.linalg.sqrtm of S1 S2, written here independently."""
    from scipy import linalg

    rng = np.random.default_rng(3)
    d = 48
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    for method in ("sqrtm", "eigh"):
        assert fid.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(
            expected, rel=1e-7)


def test_frechet_distance_singular_covariances_are_finite():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))  # Rank 4 covariances in 20-d.
    value = fid.frechet_distance(*fid.statistics(x), *fid.statistics(y))
    assert np.isfinite(value) and value > 0
    fast = fid.frechet_distance(*fid.statistics(x), *fid.statistics(y), method="eigh")
    assert fast == pytest.approx(value, rel=1e-4)
    assert fid.frechet_distance(*fid.statistics(x), *fid.statistics(x)) == pytest.approx(
        0.0, abs=1e-4)


def test_inception_score_closed_forms():
    num_classes, splits = 7, 10
    # Every split holds each class once, predicted with certainty: IS = number of classes.
    labels = np.tile(np.arange(num_classes), splits)
    confident = 60.0 * np.eye(num_classes)[labels]
    mean, std = fid.inception_score(confident, splits)
    assert mean == pytest.approx(num_classes, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    # Identical predictions: p(y|x) = p(y), KL = 0, IS = 1.
    same = np.tile(np.random.default_rng(2).normal(size=(1, 1008)), (100, 1))
    assert fid.inception_score(same, splits)[0] == pytest.approx(1.0, abs=1e-9)
    # Two classes, each split one certain-0 and one certain-1 row: IS = 2; float32 accepted.
    two = (40.0 * np.eye(2)[np.tile([0, 1], splits)]).astype(np.float32)
    assert fid.inception_score(two, splits)[0] == pytest.approx(2.0, rel=1e-6)


def test_running_stats_match_numpy():
    rng = np.random.default_rng(3)
    x = 1000.0 + rng.normal(size=(57, 9)).astype(np.float32)  # Large offset: one-pass accuracy.
    stats = fid.RunningStats()
    for chunk in np.array_split(x, 5):
        stats.update(chunk)
    mu, sigma = stats.finalize()
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), atol=1e-9)


def _fake_extract(images: np.ndarray) -> dict[str, np.ndarray]:
    """Cheap deterministic stand-in for Inception: per-image features and logits, in float64
    and unsaturated (a well-conditioned covariance), so batching changes nothing but rounding at
    1e-16 and the FIDs below are exact to ~1e-12."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    proj = np.random.default_rng(0).normal(size=(x.shape[1], 24)) / np.sqrt(x.shape[1])
    feats = np.tanh(x @ proj - 0.5 * proj.sum(0))
    return {"pool": feats[:, :12], "spatial": feats[:, 12:], "logits": 3 * feats[:, :10]}


def test_stats_and_fid_independent_of_batch_size():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (53, 6, 6, 3), dtype=np.uint8)
    ref = fid.compute_image_stats(images[::-1].copy(), _fake_extract, 16)
    reference = {"mu": ref.mu, "sigma": ref.sigma, "mu_s": ref.mu_s, "sigma_s": ref.sigma_s}
    results = []
    for batch_size in (1, 7, 16, 100):
        stats = fid.compute_image_stats(images, _fake_extract, batch_size)
        assert stats.count == 53 and stats.logits.shape == (53, 10)
        results.append(fid.metrics(stats, reference, num_splits=5))
    for other in results[1:]:
        for key in ("fid", "sfid", "inception_score"):
            assert other[key] == pytest.approx(results[0][key], rel=1e-10, abs=1e-10)
    # The same images in another order (reference) give FID ~0.
    assert results[0]["fid"] == pytest.approx(0.0, abs=1e-10)
    # Chunked input (e.g. generated batches) counts every image too.
    chunked = fid.compute_image_stats(np.array_split(images, 3), _fake_extract, 16)
    np.testing.assert_allclose(chunked.sigma, ref.sigma, atol=1e-6)


def test_npz_stream_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
    labels = np.arange(10)
    path = tmp_path / "s.npz"
    with npz_io.NpzStreamWriter(path, images.shape) as writer:
        writer.write(images[:4])
        writer.write(images[4:])
        writer.close(arr_1=labels)
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["arr_0"], images)
        np.testing.assert_array_equal(npz["arr_1"], labels)
    assert npz_io.keys(path) == ["arr_0", "arr_1"]
    assert npz_io.array_shape(path) == images.shape
    np.testing.assert_array_equal(np.concatenate(list(npz_io.iter_rows(path, "arr_0", 3))), images)
    np.savez(tmp_path / "plain.npz", images)  # np.savez files (ADM references) stream too.
    assert sum(len(b) for b in npz_io.iter_rows(tmp_path / "plain.npz", "arr_0", 4)) == 10
    with pytest.raises(ValueError), npz_io.NpzStreamWriter(tmp_path / "bad.npz", (3, 1)) as w:
        w.close()
    assert not list(tmp_path.glob("bad.npz*"))
