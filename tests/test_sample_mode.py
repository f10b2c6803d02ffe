"""`--mode=sample` end to end (sd_jax/sample_mode.py) on a tiny quickstart run: the .npz, its
determinism across device counts, resuming after a kill, and restoring only the params.

Budget: ~90 s on 2 CPU cores (one 2-step training run, sampling runs on 1 and 8 devices, three
runs for the kill and resume, sharing one compilation cache).
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_train_e2e import fast_env
from utils import REPO, TWO_STEP_RUN, child_env, config_args, run_launch, tiny_config

from configs import quickstart
from sd_jax import checkpointing, models, sample_mode, sample_shards, sharding, train_state
from sd_jax.errors import UserError

TINY = config_args(tiny_config(**TWO_STEP_RUN))
SAMPLE = [
    "--mode=sample",
    *config_args(tiny_config(**TWO_STEP_RUN, **{
        "sample.num_samples": 12,  # Two batches of 8, the second one padded.
        "sample.batch_size": 8,  # Divides by 1 and 8 devices.
        "sample.num_steps": 3,
        "sample.guidance_scale": 2.0,
    })),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A workdir trained for 2 steps with a tiny quickstart config."""
    wd = tmp_path_factory.mktemp("run")
    proc = run_launch([*TINY, f"--workdir={wd}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


def _sample(workdir: Path, num_devices: int) -> tuple[Path, dict[str, np.ndarray]]:
    proc = run_launch([*SAMPLE, f"--workdir={workdir}"], num_devices=num_devices)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])  # The last stdout line is the .npz path.
    assert path.is_file() and path.parent == workdir / "samples" and path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as npz:
        return path, {k: npz[k] for k in npz.files}


def test_sample_mode_adm_npz_deterministic_across_device_counts(workdir):
    path, first = _sample(workdir, 1)
    assert sorted(first) == ["arr_0", "arr_1"]
    assert first["arr_0"].dtype == np.uint8 and first["arr_0"].shape == (12, 16, 16, 3)
    np.testing.assert_array_equal(first["arr_1"], np.arange(12) % 10)  # quickstart labels cycled
    assert path.with_suffix(".png").is_file() and path.with_suffix(".json").is_file()
    assert first["arr_0"].std() > 0
    # A second run on 8 devices: same seed, same images (so also run to run), up to the float
    # reduction order (a rerun on 1 device would cost another ~8 s of the budget).
    _, eight = _sample(workdir, 8)
    diff = np.abs(eight["arr_0"].astype(int) - first["arr_0"].astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01  # Float reduction order only.
    np.testing.assert_array_equal(eight["arr_1"], first["arr_1"])


def test_sample_mode_without_checkpoint_fails_clearly(tmp_path):
    config = quickstart.get_config()
    with pytest.raises(UserError, match="checkpoint"):
        sample_mode.run(config, str(tmp_path))


def test_sample_labels():
    config = quickstart.get_config()
    config.sample.labels = None
    uniform = sample_mode.sample_labels(config, 1000)
    assert uniform.min() == 0 and uniform.max() == 9 and len(np.unique(uniform)) == 10
    np.testing.assert_array_equal(uniform, sample_mode.sample_labels(config, 1000))
    config.seed = 1
    assert not np.array_equal(uniform, sample_mode.sample_labels(config, 1000))
    config.sample.labels = "3, 7"
    np.testing.assert_array_equal(sample_mode.sample_labels(config, 5), [3, 7, 3, 7, 3])
    for bad in ("3,x", "11", "-1"):
        config.sample.labels = bad
        with pytest.raises(UserError, match="sample.labels"):
            sample_mode.sample_labels(config, 5)
    config.model.num_classes = 0  # Unconditional: all zeros, no arr_1 written.
    np.testing.assert_array_equal(sample_mode.sample_labels(config, 3), [0, 0, 0])


# 5 batches of 8, the last one short (4 images); 384 steps make a batch take ~0.5 s, long enough
# to kill the run between two of them.
RESUME = {"sample.num_samples": 36, "sample.batch_size": 8, "sample.num_steps": 384,
          "sample.guidance_scale": 2.0, "sample.guidance_logsnr_max": 5.0}


def test_sample_mode_resumes_after_kill_bitwise(workdir, tmp_path):
    """An uninterrupted run; a run killed (SIGKILL) once two shards exist, plus a partial shard
    as a kill during a write leaves it; the rerun continues at the third batch and writes
    exactly the same .npz (arr_0 and arr_1), then removes its working folder."""
    args = ["--mode=sample", *config_args(tiny_config(**TWO_STEP_RUN, **RESUME)),
            f"--workdir={workdir}"]
    env = fast_env(tmp_path / "cache", 1)  # Compiled once, by the first of the three runs.
    first = run_launch(args, env_extra=env)
    assert first.returncode == 0, first.stderr[-3000:]
    path = Path(first.stdout.strip().splitlines()[-1])
    with np.load(path, allow_pickle=False) as npz:
        straight = {k: npz[k] for k in npz.files}
    assert straight["arr_0"].shape == (36, 16, 16, 3) and sorted(straight) == ["arr_0", "arr_1"]
    assert "sampled 36/36 (batch 5/5)" in first.stdout and "ETA" in first.stdout
    assert not list(path.parent.glob("*.shards-*"))  # Removed once the .npz was published.
    path.unlink()

    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO,
                            env=child_env(1) | env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(path.parent.glob("*.shards-*/0*.npy"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no shards appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (folder,) = path.parent.glob("*.shards-*")
    done = sorted(p.name for p in folder.glob("0*.npy"))
    assert not path.exists() and 2 <= len(done) < 5, done  # Killed midway.
    (folder / f"{len(done):06d}.npy.tmp").write_bytes(b"partial")  # A write cut short.

    resumed = run_launch(args, env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at batch {len(done) + 1}/5" in resumed.stdout, resumed.stdout
    assert "sampled 8/36" not in resumed.stdout  # The batches on disk are not drawn again.
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
        for key in npz.files:
            np.testing.assert_array_equal(npz[key], straight[key], err_msg=key)
    assert not folder.exists()


def test_changed_settings_never_resume_other_shards():
    """The working folder is keyed by the samples name and a hash of every setting that
    changes the images, so a rerun with any of them changed starts its own folder."""
    config = tiny_config()
    folder = lambda cfg, step=6: sample_shards.ShardFolder(
        Path("/w/samples") / f"{sample_mode.samples_name(cfg, step)}.npz",
        sample_mode.settings(cfg, step)).path
    assert folder(config) == folder(tiny_config())  # Same settings, other config object.
    assert folder(config).name.startswith(sample_mode.samples_name(config, 6) + ".shards-")
    changes = {"sample.noise_param": 0.5, "sample.guidance_logsnr_max": 3.0,
               "sample.guidance_scale": 1.5, "sample.num_steps": 8, "sample.sampler": "ddim",
               "sample.batch_size": 16, "sample.labels": "1,2", "sample.use_ema": False,
               "sample.num_samples": 16, "seed": 1, "diffusion.noise_d": 16,
               "model.num_heads": 4}
    seen = {folder(config), folder(config, step=7)}
    for field, value in changes.items():
        seen.add(folder(tiny_config(**{field: value})))
    assert len(seen) == len(changes) + 2


def test_sampling_restores_only_the_params(workdir, monkeypatch):
    """No optimizer is built and no optimizer state is read: orbax is asked for the params
    alone (a quarter of the checkpoint: params, EMA, Adam's two moments), which equal those
    of a full restore."""
    config = tiny_config(**TWO_STEP_RUN)
    mesh = sharding.make_mesh(config.mesh)
    model, tx = models.build_model(config.model), train_state.make_optimizer(config.optimizer)
    abstract, _ = train_state.state_shardings(model, tx, config, mesh)
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    full, _ = ckpt.restore(abstract)
    ckpt.close()

    def refuse(*args, **kwargs):
        raise AssertionError("sampling built the optimizer or the train state")

    for name in ("make_optimizer", "state_shardings", "create_train_state"):
        monkeypatch.setattr(train_state, name, refuse)
    targets = []
    restore_state = checkpointing.Checkpointer._restore_state
    monkeypatch.setattr(checkpointing.Checkpointer, "_restore_state",
                        lambda self, step, target, partial: targets.append(target)
                        or restore_state(self, step, target, partial))
    num_params = sum(x.size for x in jax.tree.leaves(full.params))
    assert sum(x.size for x in jax.tree.leaves(full)) > 3.9 * num_params  # What is saved.
    for use_ema, key in ((True, "ema_params"), (False, "params")):
        params, step = checkpointing.restore_inference_params(workdir, config, mesh, use_ema)
        assert step == 2 and list(targets[-1]) == [key]
        assert sum(x.size for x in jax.tree.leaves(targets[-1])) == num_params  # What is read.
        expected = getattr(full, key)
        assert jax.tree.structure(params) == jax.tree.structure(expected)
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(got, want)


def test_params_only_restore_verifies_checksums(workdir, tmp_path):
    """The checksums of the params that are read are still compared (a wrong one refuses the
    only checkpoint); those of the optimizer state, which is not read, do not matter."""
    config = tiny_config(**TWO_STEP_RUN)
    mesh = sharding.make_mesh(config.mesh)
    for wrong in ("ema_params/", "opt_state/"):
        copy = tmp_path / wrong.strip("/")
        shutil.copytree(workdir / "checkpoints", copy / "checkpoints")
        meta_file = copy / "checkpoints" / "2" / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        name = next(n for n in meta["checksums"] if n.startswith(wrong))
        meta["checksums"][name] ^= 1
        meta_file.write_text(json.dumps(meta))
        if wrong == "ema_params/":
            with pytest.raises(UserError, match=f"every checkpoint is damaged.*{name}.*checksum"):
                checkpointing.restore_inference_params(copy, config, mesh)
            params, _ = checkpointing.restore_inference_params(copy, config, mesh, use_ema=False)
        else:
            params, _ = checkpointing.restore_inference_params(copy, config, mesh)
        assert jax.tree.leaves(params)
