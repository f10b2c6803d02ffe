"""`--mode=sample` end to end (sd_jax/sample/mode.py) on a tiny quickstart run: the .npz, its
determinism across device counts, resuming after a kill, and restoring only the params.

Budget: ~100 s on 2 CPU cores (one 2-step training run; sample-mode runs on 1 and 8 devices,
on two processes, and three for the kill and resume; all share one compilation cache).
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
from utils import (
    REPO,
    TWO_STEP_RUN,
    child_env,
    config_args,
    fast_env,
    free_port,
    run_launch,
    tiny_config,
)

from configs import quickstart
from sd_jax import models, sharding
from sd_jax.checkpoints import checkpointer as checkpointing
from sd_jax.errors import UserError
from sd_jax.io import shards as sample_shards
from sd_jax.sample import mode as sample_mode
from sd_jax.sample import restore
from sd_jax.train import state as train_state

TINY = config_args(tiny_config(**TWO_STEP_RUN))
SAMPLE_SETTINGS = {
    "sample.num_samples": 12,  # Two batches of 8, the second one padded.
    "sample.batch_size": 8,  # Divides by 1, 4 and 8 devices.
    "sample.num_steps": 3,
    "sample.guidance_scale": 2.0,
}
SAMPLE = ["--mode=sample", *config_args(tiny_config(**TWO_STEP_RUN, **SAMPLE_SETTINGS))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One persistent compilation cache for every child of this file (see `fast_env`)."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cache) -> Path:
    """A workdir trained for 2 steps with a tiny quickstart config."""
    wd = tmp_path_factory.mktemp("run")
    proc = run_launch([*TINY, f"--workdir={wd}"], env_extra=fast_env(cache, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd


def _sample(workdir: Path, num_devices: int, cache: Path
            ) -> tuple[Path, dict[str, np.ndarray]]:
    proc = run_launch([*SAMPLE, f"--workdir={workdir}"], num_devices=num_devices,
                      env_extra=fast_env(cache, num_devices))
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])  # The last stdout line is the .npz path.
    assert path.is_file() and path.parent == workdir / "samples" and path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as npz:
        return path, {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def one_device(workdir, cache) -> tuple[Path, dict[str, np.ndarray]]:
    """The .npz path and arrays of a sample-mode run on one device."""
    return _sample(workdir, 1, cache)


def _same_up_to_reduction_order(a: np.ndarray, b: np.ndarray) -> None:
    """uint8 images from two device counts: the float reductions run in another order, which
    moves a few pixels across a rounding boundary of the uint8 conversion."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_sample_mode_adm_npz_deterministic_across_device_counts(workdir, one_device, cache):
    path, first = one_device
    assert sorted(first) == ["arr_0", "arr_1"]
    assert first["arr_0"].dtype == np.uint8 and first["arr_0"].shape == (12, 16, 16, 3)
    np.testing.assert_array_equal(first["arr_1"], np.arange(12) % 10)  # quickstart labels cycled
    assert path.with_suffix(".png").is_file() and path.with_suffix(".json").is_file()
    assert first["arr_0"].std() > 0
    # A second run on 8 devices: same seed, same images (so also run to run), up to the float
    # reduction order (a rerun on 1 device would cost another ~8 s of the budget).
    _, eight = _sample(workdir, 8, cache)
    _same_up_to_reduction_order(eight["arr_0"], first["arr_0"])
    np.testing.assert_array_equal(eight["arr_1"], first["arr_1"])


def test_sampling_again_with_one_setting_changed_keeps_both_files(workdir, one_device, cache):
    """The raw params instead of the EMA: another file beside the first, which is untouched;
    the sidecars differ in that setting alone."""
    first, arrays = one_device
    proc = run_launch([*SAMPLE, "--config.sample.use_ema=False", f"--workdir={workdir}"],
                      env_extra=fast_env(cache, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = Path(proc.stdout.strip().splitlines()[-1])
    assert second.parent == first.parent and second != first
    assert "_ema_" in first.name and "_raw_" in second.name
    with np.load(first, allow_pickle=False) as npz:  # The first run's file, as it wrote it.
        np.testing.assert_array_equal(npz["arr_0"], arrays["arr_0"])
    with np.load(second, allow_pickle=False) as npz:
        assert not np.array_equal(npz["arr_0"], arrays["arr_0"])
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (first, second))
    assert {k for k in a if a[k] != b[k]} == {"use_ema"} and b["use_ema"] is False
    assert not list(first.parent.glob("*.lock"))  # Each run released its samples lock.


def test_two_processes_sample_and_resume_as_one_job(workdir, one_device, cache, tmp_path):
    """Two processes with 2 devices each on a copy of the run whose working folder already holds
    batch 1 (the 1-device run's): process 0 reads the folder and tells the other, both draw only
    batch 2, gathered across processes. The .npz holds batch 1 bitwise and batch 2 as one
    device draws it, up to the order of float reductions."""
    copy = tmp_path / "run"
    shutil.copytree(workdir / "checkpoints", copy / "checkpoints")
    config = tiny_config(**TWO_STEP_RUN, **SAMPLE_SETTINGS)
    path = copy / "samples" / f"{sample_mode.samples_name(config, 2)}.npz"
    folder = sample_shards.ShardFolder(path, sample_mode.settings(config, 2))
    folder.open()
    folder.write(0, one_device[1]["arr_0"][:8])
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, str(REPO / "launch.py"), *SAMPLE, f"--workdir={copy}",
         f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={i}"],
        cwd=REPO, env=child_env(2) | fast_env(cache, 2), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "batches 1-1 of 2 already sampled" in outs[0][0], outs[0][0]
    assert outs[0][0].strip().splitlines()[-1] == str(path)
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["arr_0"][:8], one_device[1]["arr_0"][:8])
        _same_up_to_reduction_order(npz["arr_0"][8:], one_device[1]["arr_0"][8:])
        np.testing.assert_array_equal(npz["arr_1"], one_device[1]["arr_1"])
    assert not folder.path.exists()


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


# 5 batches of 8, the last one short (4 images); 128 steps make a batch take ~0.3 s on 2 idle
# cores (1 s when busy), against a 20 ms poll: the kill lands with batches still to draw.
RESUME = {"sample.num_samples": 36, "sample.batch_size": 8, "sample.num_steps": 128,
          "sample.guidance_scale": 2.0, "sample.guidance_logsnr_max": 5.0}


def test_sample_mode_resumes_after_kill_bitwise(workdir, cache):
    """An uninterrupted run; a run killed (SIGKILL) once two shards exist, plus a partial shard
    as a kill during a write leaves it; the rerun continues at the third batch and writes
    exactly the same .npz (arr_0 and arr_1), then removes its working folder."""
    args = ["--mode=sample", *config_args(tiny_config(**TWO_STEP_RUN, **RESUME)),
            f"--workdir={workdir}"]
    env = fast_env(cache, 1)  # Compiled once, by the first of the three runs.
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
    assert f"batches 1-{len(done)} of 5 already sampled" in resumed.stdout, resumed.stdout
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


def test_samples_name_tells_every_setting_apart():
    """Every setting that changes the images changes the file name (its readable part or the
    hash of all of them), so no sampling run overwrites another's .npz."""
    config = tiny_config()
    assert sample_mode.samples_name(config, 6) == sample_mode.samples_name(tiny_config(), 6)
    assert sample_mode.samples_name(config, 6).startswith("samples_step6_8x8_ema_ddpm4_gs3_seed0_")
    changes = {"sample.noise_param": 0.5, "sample.guidance_logsnr_min": -3.0,
               "sample.guidance_logsnr_max": 3.0, "sample.guidance_scale": 1.5,
               "sample.num_steps": 8, "sample.sampler": "ddim", "sample.batch_size": 16,
               "sample.labels": "1,2", "sample.use_ema": False, "sample.num_samples": 16,
               "seed": 1, "diffusion.noise_d": 16, "model.num_heads": 4}
    names = {sample_mode.samples_name(config, 6), sample_mode.samples_name(config, 7)}
    for field, value in changes.items():
        names.add(sample_mode.samples_name(tiny_config(**{field: value}), 6))
    assert len(names) == len(changes) + 2


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
        params, step = restore.restore_inference_params(workdir, config, mesh, use_ema)
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
                restore.restore_inference_params(copy, config, mesh)
            params, _ = restore.restore_inference_params(copy, config, mesh, use_ema=False)
        else:
            params, _ = restore.restore_inference_params(copy, config, mesh)
        assert jax.tree.leaves(params)
