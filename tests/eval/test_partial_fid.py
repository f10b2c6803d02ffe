"""FID from a sampling job's shards (sd_jax/eval/partial.py): the statistics of the shards so far
equal those of the same images scored at once, a job finishing meanwhile is followed into its
.npz, and the settings that need it are checked up front.

The Inception network is replaced by a fixed random projection (6 features, 10 logits): what is
tested here is which images reach the statistics, in which order and how many; the network and
the Frechet distance have their own tests (test_inception.py, test_fid.py).
"""

import json
import threading

import numpy as np
import pytest

from configs import quickstart
from sd_jax.errors import UserError
from sd_jax.eval import fid, partial
from sd_jax.eval import mode as eval_mode
from sd_jax.io import npz, shards
from sd_jax.sample import mode as sample_mode
from sd_jax.validate import validate

TOTAL, BATCH, STEP = 10, 4, 7  # Three shards: 4, 4 and 2 images.
PROJECTION = np.random.default_rng(0).standard_normal((16 * 16 * 3, 16))


def fake_extract(images: np.ndarray) -> dict[str, np.ndarray]:
    features = images.reshape(len(images), -1).astype(np.float64) / 255 @ PROJECTION
    return {"pool": features[:, :6], "logits": features[:, 6:]}


@pytest.fixture
def job(tmp_path, monkeypatch):
    """(config, workdir, images, folder): a sampling job's settings and its shard folder, empty."""
    monkeypatch.setattr(eval_mode, "build_extractor", lambda _: (fake_extract, 3))
    config = quickstart.get_config()
    config.sample.num_samples, config.sample.batch_size = TOTAL, BATCH
    config.eval.inception_weights = "unused.npz"  # build_extractor is replaced.
    config.eval.sfid, config.eval.is_splits, config.eval.from_shards = False, 2, True
    images = np.random.default_rng(1).integers(0, 256, (TOTAL, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images[::-1][:7])
    config.eval.reference_npz = str(tmp_path / "ref.npz")
    workdir = tmp_path / "wd"
    npz_path = workdir / "samples" / f"{sample_mode.samples_name(config, STEP)}.npz"
    npz_path.parent.mkdir(parents=True)
    folder = shards.ShardFolder(npz_path, sample_mode.settings(config, STEP))
    folder.open()
    return config, workdir, images, folder


def expected(images: np.ndarray, config) -> dict:
    """The metrics of `images` scored at once, as eval of an .npz does."""
    reference = eval_mode.reference_stats(config.eval.reference_npz, fake_extract, 3, False)
    stats = fid.compute_image_stats(images, fake_extract, 3, False)
    return fid.metrics(stats, reference, config.eval.is_splits, config.eval.fid_method)


def write(folder: shards.ShardFolder, images: np.ndarray, index: int) -> None:
    folder.write(index, images[index * BATCH:(index + 1) * BATCH])


def test_a_killed_job_gives_the_fid_of_its_shards(job, capsys):
    config, workdir, images, folder = job
    for index in (0, 1):  # Killed after two of its three batches.
        write(folder, images, index)
    results = partial.run(config, str(workdir))
    want = expected(images[:8], config)
    assert results["partial"] and results["num_samples"] == 8
    assert results["expected_samples"] == TOTAL and results["step"] == STEP
    for key in ("fid", "inception_score"):
        np.testing.assert_allclose(results[key], want[key], rtol=1e-12)
    assert abs(results["fid"] - expected(images, config)["fid"]) > 1e-6  # 8 images, not 10.
    name = folder.path.name.split(".shards-")[0]
    saved = json.loads((workdir / f"eval_{name}.partial.json").read_text())
    assert saved["fid"] == results["fid"] and not (workdir / "metrics.jsonl").exists()
    assert f"(partial, 8 of {TOTAL} images): fid=" in capsys.readouterr().out


def test_polling_follows_the_job_to_its_last_shard(job, capsys):
    config, workdir, images, folder = job
    write(folder, images, 0)
    config.eval.poll_secs = 0.05
    timer = threading.Timer(0.3, lambda: [write(folder, images, i) for i in (1, 2)])
    timer.start()
    try:
        results = partial.run(config, str(workdir))
    finally:
        timer.join()
    want = expected(images, config)
    assert not results["partial"] and results["num_samples"] == TOTAL
    np.testing.assert_allclose(results["fid"], want["fid"], rtol=1e-12)
    out = capsys.readouterr().out
    assert f"(partial, 4 of {TOTAL} images)" in out and f"({TOTAL} of {TOTAL} images)" in out
    line = json.loads((workdir / "metrics.jsonl").read_text())
    assert line["step"] == STEP and line["eval/fid"] == results["fid"]


def test_a_job_that_finishes_meanwhile_is_read_on_from_its_npz(job):
    config, _, images, folder = job
    for index in (0, 1):
        write(folder, images, index)
    stream = partial.ShardStream(folder.path)
    first = np.concatenate(list(stream.new_images()))
    write(folder, images, 2)  # The job ends: its .npz is published, then the folder removed.
    with npz.NpzStreamWriter(stream.npz_path, images.shape) as writer:
        writer.write(images)
        writer.close()
    folder.remove()
    rest = np.concatenate(list(stream.new_images()))
    np.testing.assert_array_equal(np.concatenate([first, rest]), images)
    assert stream.done and list(stream.new_images()) == []


def test_errors_before_any_work(job, tmp_path):
    config, workdir, _, folder = job
    with pytest.raises(UserError, match="no sampling shards"):
        partial.run(config, str(tmp_path / "empty"))
    with pytest.raises(UserError, match="0 image"):  # A folder without shards yet.
        partial.run(config, str(workdir))
    config.eval.inception_weights = None
    with pytest.raises(UserError, match="from_shards=True streams Inception statistics"):
        validate(config, "eval")
    config.eval.from_shards = False
    with pytest.raises(UserError, match="poll_secs=0.0 would be ignored: only --mode=eval with"):
        validate(config, "eval", overridden=["eval.poll_secs"])
