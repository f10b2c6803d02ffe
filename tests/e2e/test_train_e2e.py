"""End-to-end training on fake CPU devices: exact resume, 1 vs 8 devices (data / FSDP), sample
grids, restore across device counts, two processes as one job, SIGTERM and JAX's preemption
sync point (one process and two), NaN, a second training of one workdir, a resume past
train.num_steps.

All children share one persistent compilation cache, so a program compiled once (the 1-device
train step, say) is not compiled again by the resumed or preempted runs.
"""

import io
import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from utils import (
    PRELUDE,
    REPO,
    assert_one_line_error,
    check,
    child_env,
    config_args,
    fast_env,
    free_port,
    jax_cache_dir,
    run_launch,
    run_python,
    start_launch,
    tiny_config,
)

pytestmark = pytest.mark.slow





@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return jax_cache_dir(tmp_path_factory)  # The session's, shared with the other tiny runs.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


def losses(path) -> dict[int, float]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def steps_on_disk(path) -> list[int]:
    return sorted(int(p.name) for p in (path / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def one_device_runs(workdir, cache_dir):
    """6 steps straight; 3 steps, then a restart to 6; a NaN run. One device."""
    code = PRELUDE.format(workdir=str(workdir)) + """
straight = trainer.train(tiny_config(), W + "/straight")
trainer.train(tiny_config(**{"train.num_steps": 3}), W + "/resumed")
resumed = trainer.train(tiny_config(), W + "/resumed")
np.savez(W + "/straight.npz", **flat(straight.params))
np.savez(W + "/resumed.npz", **flat(resumed.params))
np.savez(W + "/straight_ema.npz", **flat(straight.ema_params))
from sd_jax.errors import UserError
try:
    trainer.train(tiny_config(**{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 0,
                                 "train.checkpoint_every": 1}), W + "/nan")
except UserError as e:
    print("NAN_ERROR", e)
# JAX's preemption sync point, as if a notice had reached the job and step 2 had been agreed on.
from jax.experimental import multihost_utils
real_sync_point, asked = multihost_utils.reached_preemption_sync_point, []
def sync_point(step):
    asked.append(step)
    return step == 2
multihost_utils.reached_preemption_sync_point = sync_point
trainer.train(tiny_config(), W + "/sync_point")
print("ASKED", asked)
multihost_utils.reached_preemption_sync_point = real_sync_point
trainer.train(tiny_config(), W + "/sync_point")  # The restart continues from step 2.
"""
    return check(run_python(code, 1, env_extra=fast_env(cache_dir, 1)))


def test_exact_resume(one_device_runs, workdir):
    straight, resumed = losses(workdir / "straight"), losses(workdir / "resumed")
    assert sorted(straight) == [1, 2, 3, 4, 5, 6]
    assert straight == resumed  # Bitwise-equal floats, step by step.
    a = np.load(workdir / "straight.npz", allow_pickle=False)
    b = np.load(workdir / "resumed.npz", allow_pickle=False)
    assert a.files == b.files and len(a.files) > 5
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert steps_on_disk(workdir / "resumed") == [3, 6]


def test_preemption_sync_point_saves_stops_and_resumes_exactly(one_device_runs, workdir):
    asked = json.loads(one_device_runs.split("ASKED ")[1].splitlines()[0])
    # Asked after every step until it said stop (orbax asks again while saving that step).
    assert asked[:2] == [1, 2] and set(asked) == {1, 2}, asked
    assert "stopped at the preemption sync point at step 2; checkpoint 2 saved: " in one_device_runs
    assert steps_on_disk(workdir / "sync_point") == [2, 3, 6]
    assert losses(workdir / "sync_point") == losses(workdir / "straight")  # Bitwise.


def test_nan_loss_stops_naming_the_step(one_device_runs, workdir):
    line = next(x for x in one_device_runs.splitlines() if x.startswith("NAN_ERROR"))
    bad_step = int(line.split(" at step ")[1].split(";")[0].split()[0])
    saved = steps_on_disk(workdir / "nan")
    assert saved and max(saved) < bad_step, (line, saved)
    records = losses(workdir / "nan")
    assert all(np.isfinite(v) for v in records.values()) and max(records) < bad_step


def test_eight_devices_data_and_fsdp_match_one_and_restore_across_counts(
        one_device_runs, workdir, cache_dir):
    code = PRELUDE.format(workdir=str(workdir)) + """
from jax.sharding import PartitionSpec as P
for name, data, fsdp in (("dp8", -1, 1), ("fsdp4", 2, 4)):
    cfg = tiny_config(**{"train.num_steps": 2, "mesh.data": data, "mesh.fsdp": fsdp,
                         "train.sample_every": 2 if name == "dp8" else 0,
                         "train.sample_grid_size": 10})
    state = trainer.train(cfg, W + "/" + name)
specs = [x.sharding.spec for x in jax.tree.leaves(state.opt_state) if x.ndim]
assert any("fsdp" in s for s in specs), specs
np.savez(W + "/fsdp4.npz", **flat(state.params))
# 1 -> 8: the one-device checkpoint onto the 8-device FSDP mesh.
cfg = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4})
restored, meta = restore(W + "/straight", cfg, jax.devices())
assert meta["step"] == 6 and meta["seed"] == cfg.seed, meta
assert len(restored.params["stem"]["kernel"].sharding.device_set) == 8
# Checksums of the arrays split over 8 devices equal those saved from one device.
from sd_jax.checkpoints import integrity as checkpoint_integrity
saved = {k: v for k, v in meta["checksums"].items() if k.startswith("params/")}
assert checkpoint_integrity.fingerprints({"params": restored.params}) == saved
ref = np.load(W + "/straight.npz", allow_pickle=False)
for k, v in flat(restored.params).items():
    np.testing.assert_array_equal(v, ref[k], err_msg=k)
mesh8 = sharding.make_mesh(cfg.mesh)
ema, step = sample_restore.restore_inference_params(W + "/straight", cfg, mesh8)
ref = np.load(W + "/straight_ema.npz", allow_pickle=False)
assert step == 6
for k, v in flat(ema).items():
    np.testing.assert_array_equal(v, ref[k], err_msg=k)
# 8 -> 1: the FSDP checkpoint onto one device.
one = tiny_config(**{"mesh.data": 1})
restored, _ = restore(W + "/fsdp4", one, jax.devices()[:1])
ref = np.load(W + "/fsdp4.npz", allow_pickle=False)
for k, v in flat(restored.params).items():
    np.testing.assert_array_equal(v, ref[k], err_msg=k)
print("RESHARD_OK")
"""
    assert "RESHARD_OK" in check(run_python(code, 8, env_extra=fast_env(cache_dir, 8)))
    grid = workdir / "dp8" / "samples" / "step_00000002.png"
    assert Image.open(grid).size == (10 * (8 + 2) + 2, 8 + 2 + 2)  # 10 classes in one row.
    one = losses(workdir / "straight")
    for name in ("dp8", "fsdp4"):
        many = losses(workdir / name)
        assert sorted(many) == [1, 2]
        for step, loss in many.items():
            assert loss == pytest.approx(one[step], rel=1e-3), (name, step)


def test_two_processes_train_as_one_job(workdir, cache_dir):
    args = config_args(tiny_config(**{"train.num_steps": 2, "train.checkpoint_every": 2}))
    env = child_env(2) | fast_env(cache_dir, 2)
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "launch.py"), *args, f"--workdir={workdir / 'multi'}",
             f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={i}"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    single = run_launch([*args, f"--workdir={workdir / 'single'}"], 4,
                        env_extra=fast_env(cache_dir, 4))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-5000:]
    assert "process 1/2: 2 local cpu devices of 4" in outs[1][0]
    check(single)
    assert steps_on_disk(workdir / "multi") == [2]
    multi, ref = losses(workdir / "multi"), losses(workdir / "single")
    assert sorted(multi) == [1, 2]
    for step in multi:
        assert multi[step] == pytest.approx(ref[step], rel=1e-5)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_sync_point(workdir, cache_dir):
    """jax.distributed's preemption service owns SIGTERM: a signal to process 1 alone makes
    both processes save the same step and exit cleanly."""
    path = workdir / "multi_preempted"
    long_run = tiny_config(**{"train.num_steps": 100_000, "train.checkpoint_every": 100_000})
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "launch.py"), *config_args(long_run), f"--workdir={path}",
             f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={i}"],
            cwd=REPO, env=child_env(2) | fast_env(cache_dir, 2), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for line in procs[0].stdout:  # Only process 0 logs steps.
        if line.startswith("step 3:"):
            procs[1].send_signal(signal.SIGTERM)
            break
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-5000:]
    stopped = int(outs[0][0].split("stopped at the preemption sync point at step ")[1]
                  .split(";")[0])
    assert 3 <= stopped < 100_000 and steps_on_disk(path) == [stopped]


def test_sigterm_saves_and_restart_continues(one_device_runs, workdir, cache_dir):
    path = workdir / "preempted"
    long_run = tiny_config(**{"train.num_steps": 100_000, "train.checkpoint_every": 100_000})
    proc = start_launch([*config_args(long_run), f"--workdir={path}"],
                        env_extra=fast_env(cache_dir, 1))
    for line in proc.stdout:
        if line.startswith("step 3:"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:] + err[-5000:]
    stopped = int(out.split("stopped by signal at step ")[1].split(";")[0])
    assert 3 <= stopped < 100_000 and steps_on_disk(path) == [stopped]
    resume = tiny_config(**{"train.num_steps": stopped + 2, "train.checkpoint_every": 100_000})
    out = check(run_launch([*config_args(resume), f"--workdir={path}"], 1,
                           env_extra=fast_env(cache_dir, 1)))
    assert f"resuming from step {stopped}" in out
    assert steps_on_disk(path) == [stopped, stopped + 2]
    assert sorted(losses(path))[-2:] == [stopped + 1, stopped + 2]


PYTHON_INFO = re.compile(r"^I\d{4} [\d:.]+ +\d+ \S+\.py:\d+\]", re.MULTILINE)  # absl's format.


def test_launch_is_quiet_one_line_per_log_step_and_profiles(workdir, cache_dir):
    """Default: stdout is the devices line, the parameter table, one line per log step and one
    per committed checkpoint; no Python INFO log line. A profiler trace of the configured steps.
    --verbosity=1: orbax's INFO lines (its checkpoint manager's) appear."""
    path = workdir / "quiet"
    cfg = tiny_config(**{"train.num_steps": 4, "train.log_every": 2, "train.checkpoint_every": 2,
                         "train.profile_start_step": 1, "train.profile_num_steps": 2,
                         "train.sample_every": 4, "train.tensorboard": True})
    proc = run_launch([*config_args(cfg), f"--workdir={path}"], 1,
                      env_extra=fast_env(cache_dir, 1))
    lines = check(proc).splitlines()
    table = [line for line in lines if line[:1] in "+|"]
    assert lines[0] == "process 0/1: 1 local cpu devices of 1"
    assert lines[1:1 + len(table)] == table and "| total" in table[-2], lines
    rest = lines[1 + len(table):]
    steps = [line for line in rest if not line.startswith("checkpoint ")]
    assert [line.split(":")[0] for line in steps] == ["step 2", "step 4"], lines
    saved = [line for line in rest if line.startswith("checkpoint ")]  # When committed.
    assert saved == [f"checkpoint {n} saved: {path / 'checkpoints' / str(n)}" for n in (2, 4)]
    assert "100.0% (4/4), ETA: 0m" in steps[1]  # clu's ReportProgress note.
    assert not PYTHON_INFO.search(proc.stderr), proc.stderr[-3000:]
    assert list((path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    # TensorBoard holds the sample grid as an image, the same pixels as the PNG file.
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.util import tensor_util

    (events,) = (path / "tensorboard").glob("events.out.tfevents.*")
    pngs = [tensor_util.make_ndarray(v.tensor)[2] for e in
            event_file_loader.EventFileLoader(str(events)).Load()
            for v in e.summary.value if v.tag == "samples" and e.step == 4]
    board = np.asarray(Image.open(io.BytesIO(pngs[0])))
    assert np.array_equal(board, np.asarray(Image.open(path / "samples" / "step_00000004.png")))

    more = tiny_config(**{"train.num_steps": 5, "train.log_every": 2, "train.checkpoint_every": 2})
    proc = run_launch([*config_args(more), f"--workdir={path}", "--verbosity=1"], 1,
                      env_extra=fast_env(cache_dir, 1))
    assert "resuming from step 4" in check(proc)
    orbax = [m for m in PYTHON_INFO.finditer(proc.stderr) if "checkpoint_manager.py" in m[0]]
    assert orbax, proc.stderr[-3000:]


def test_resuming_at_or_past_num_steps_says_so_and_exits_0(one_device_runs, workdir, cache_dir):
    path = workdir / "straight"  # Trained to step 6.
    before = (path / "metrics.jsonl").read_text()
    cfg = tiny_config(**{"train.num_steps": 2})
    proc = run_launch([*config_args(cfg), f"--workdir={path}"], 1,
                      env_extra=fast_env(cache_dir, 1))
    last = check(proc).strip().splitlines()[-1]
    assert last == (f"nothing to train: {path} holds step 6, at or past train.num_steps=2; "
                    "raise --config.train.num_steps to train on"), last
    assert (path / "metrics.jsonl").read_text() == before and steps_on_disk(path) == [3, 6]


def test_a_second_training_of_a_workdir_is_refused_and_a_killed_ones_lock_taken_over(
        workdir, cache_dir):
    path = workdir / "locked"
    long_run = tiny_config(**{"train.num_steps": 100_000, "train.checkpoint_every": 100_000})
    first = start_launch([*config_args(long_run), f"--workdir={path}"],
                         env_extra=fast_env(cache_dir, 1), stderr=subprocess.DEVNULL)
    try:
        for line in first.stdout:
            if line.startswith("step 2:"):
                break
        second = run_launch([*config_args(tiny_config()), f"--workdir={path}"], 1,
                            env_extra=fast_env(cache_dir, 1))
    finally:
        first.kill()  # SIGKILL: the lock file stays behind, as after a crash.
        first.communicate()
    assert_one_line_error(second, f"{path} is in use by a train run (pid {first.pid} on ")
    assert (path / "train.lock").exists()
    third = run_launch([*config_args(tiny_config(**{"train.num_steps": 2})), f"--workdir={path}"],
                       1, env_extra=fast_env(cache_dir, 1))
    assert "step 2: loss" in check(third)
    assert third.stderr.startswith(f"warning: taking over {path / 'train.lock'} from a train "
                                   f"run (pid {first.pid} on "), third.stderr[:2000]
    assert not (path / "train.lock").exists()  # Released at the end.
