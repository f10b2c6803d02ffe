"""FD-digits classifier (sd_jax/eval/digits_net.py) and eval mode on digit samples.

Budget: ~60 s on 2 CPU cores: the classifier is trained once per session (~20 s, into the
session cache of conftest.py), one 2-step training run, sampling and eval in child processes.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from utils import REPO, TWO_STEP_RUN, config_args, run_launch, tiny_config

from sd_jax.errors import UserError
from sd_jax.eval import digits_eval, digits_net, fid


@pytest.fixture(scope="module")
def classifier():
    """(variables, test accuracy, path) of the session's classifier, built on first use."""
    variables, accuracy = digits_net.load_or_build()
    return variables, accuracy, Path(digits_net.default_path())


def _fd(variables, a, b):
    extract = digits_net.make_extractor(variables)
    sa = fid.compute_image_stats(a, extract, 500, with_spatial=False)
    sb = fid.compute_image_stats(b, extract, 500, with_spatial=False)
    return fid.frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)


def test_classifier_is_accurate_at_every_resolution_and_cached(classifier):
    variables, accuracy, path = classifier
    assert accuracy >= 0.97
    mtime = path.stat().st_mtime_ns
    _, again = digits_net.load_or_build()  # Cached: loaded, not retrained.
    assert path.stat().st_mtime_ns == mtime and again == accuracy
    _, test_idx = digits_net.split_indices(1797)
    for size in (16, 32, 64, 128):  # The held-out digits as the loader renders them.
        images, labels = digits_net.digits_data(size)
        acc = digits_net.classify_accuracy(variables, images[test_idx], labels[test_idx])
        assert acc >= 0.97, (size, acc)


def test_to_input_is_exact_block_mean_when_shrinking():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    grey = images.astype(np.float64).mean(axis=-1) / 127.5 - 1.0
    expected = grey.reshape(3, 16, 4, 16, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(digits_net.to_input(images)[..., 0], expected, atol=1e-5)
    small = digits_net.to_input(images[:, ::8, ::8])  # 8 px: bicubic upsampling to 16.
    assert small.shape == (3, 16, 16, 1)


def test_fd_digits_zero_on_the_data_and_growing_with_noise(classifier):
    variables = classifier[0]
    data, labels = digits_net.digits_data(64)
    assert abs(_fd(variables, data, data)) < 1e-6
    train_idx, test_idx = digits_net.split_indices(len(data))
    halves = _fd(variables, data[train_idx], data[test_idx])  # Sampling error of 360 images.
    rng = np.random.default_rng(1)
    noisy = [_fd(variables, np.clip(data + rng.normal(0, s, data.shape), 0, 255).astype(np.uint8),
                 data) for s in (48.0, 96.0, 160.0)]  # Pixel noise std on the 0..255 scale.
    assert halves < noisy[0] < noisy[1] < noisy[2], (halves, noisy)
    result = digits_eval.digits_metrics(data, labels, variables, data)
    assert result["class_accuracy"] >= 0.97 and abs(result["fd_digits"]) < 1e-6
    assert result["hf_ratio"] == 1.0 and result["colour_noise"] < 1e-15


def test_bad_classifier_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="python -m sd_jax.eval.digits_net"):
        digits_net.load_weights(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(UserError, match="not a digits classifier"):
        digits_net.load_weights(tmp_path / "other.npz")


def quickstart_commands() -> list[list[str]]:
    """launch.py's arguments in the README's quickstart command and in the sample and eval
    commands that docs/getting_started.md runs after it, as written there."""
    quickstart = "python launch.py --config=configs/quickstart.py --workdir=/tmp/sd_quickstart"
    readme = (REPO / "README.md").read_text()
    guide = (REPO / "docs" / "getting_started.md").read_text()
    train = next(line for line in readme.splitlines() if line.endswith(quickstart))
    after = [line.strip() for line in guide.splitlines() if line.startswith(quickstart + " ")]
    commands = [train[train.index(quickstart):], *after]
    assert [c.split("--mode=")[-1] if "--mode=" in c else "train" for c in commands] == [
        "train", "sample", "eval"], commands
    return [c.split()[2:] for c in commands]


def test_the_documented_quickstart_trains_samples_and_evaluates(classifier, tmp_path):
    """The README's quickstart command, then sample and eval mode as docs/getting_started.md
    runs them, as written there (a tiny model for 2 steps, in a temporary workdir)."""
    tiny = config_args(tiny_config(**TWO_STEP_RUN))[1:]  # The overrides; the config is the docs'.
    train, sample, evaluate = ([a.replace("/tmp/sd_quickstart", str(tmp_path)) for a in c] + tiny
                               for c in quickstart_commands())
    proc = run_launch(train)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_launch(sample)
    assert proc.returncode == 0, proc.stderr[-3000:]
    npz = Path(proc.stdout.strip().splitlines()[-1])
    proc = run_launch(evaluate)  # No Inception weights.
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"eval {npz.name} (8 images): fd_digits=") and "class_accuracy=" in last
    results = json.loads((tmp_path / f"eval_{npz.stem}.json").read_text())
    with np.load(npz, allow_pickle=False) as f:
        expected = digits_eval.digits_metrics(f["arr_0"], f["arr_1"], classifier[0],
                                              digits_net.digits_data(16)[0])
    for key in ("fd_digits", "class_accuracy", "hf_ratio", "colour_noise"):
        assert results[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert results["classifier_test_accuracy"] == classifier[1] and "fid" not in results
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 2 and line["eval/fd_digits"] == results["fd_digits"]
