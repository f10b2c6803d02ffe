"""launch.py on bad input: one clear line on stderr, exit status 1, no traceback (~30 s)."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest
from utils import REPO, assert_one_line_error, child_env, config_args, run_launch, tiny_config


def test_unknown_config_key(tmp_path):
    proc = run_launch(["--config=configs/quickstart.py", "--config.train.bogus_field=1",
                       f"--workdir={tmp_path}"])
    assert_one_line_error(proc, "bogus_field", "--config.train.bogus_field")


def test_missing_config_file(tmp_path):
    proc = run_launch(["--config=configs/no_such_config.py", f"--workdir={tmp_path}"])
    assert_one_line_error(proc, "configs/no_such_config.py")


@pytest.mark.slow
def test_batch_not_divisible_by_devices(tmp_path):
    proc = run_launch([*config_args(tiny_config()), f"--workdir={tmp_path}"], num_devices=3)
    assert_one_line_error(proc, "divisible", "batch_size=8")


@pytest.mark.slow
def test_sample_without_checkpoint(tmp_path):
    proc = run_launch([*config_args(tiny_config()), f"--workdir={tmp_path}", "--mode=sample"])
    assert_one_line_error(proc, "checkpoint")


def test_near_miss_key_gets_a_suggestion(tmp_path):
    proc = run_launch(["--config=configs/quickstart.py", "--config.model.dropoutt=0.1",
                       f"--workdir={tmp_path}"])
    assert_one_line_error(proc, "'dropoutt'", 'Did you mean "dropout"')


def test_periodic_fid_without_weights_fails_before_training(tmp_path):
    proc = run_launch([*config_args(tiny_config()), f"--workdir={tmp_path}",
                       "--config.eval.fid_every=2",
                       f"--config.eval.inception_weights={tmp_path}/missing_inception.npz"])
    assert_one_line_error(proc, "missing_inception.npz")
    assert not (tmp_path / "checkpoints").exists()  # Failed fast: nothing was trained.


def test_workdir_that_is_a_file(tmp_path):
    afile = tmp_path / "run.txt"
    afile.write_text("not a directory")
    proc = run_launch([*config_args(tiny_config()), f"--workdir={afile}"])
    assert_one_line_error(proc, "is a file", str(afile))


def _run_launch_read_only(args: list[str], workdir) -> subprocess.CompletedProcess:
    """launch.py with `workdir` read-only: chmod for a normal user; root ignores permission bits,
    so as root the workdir is bind-mounted read-only in a private mount namespace (unshare)."""
    if os.geteuid() != 0:
        workdir.chmod(0o555)
        return run_launch(args)
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"]).returncode:
        pytest.skip("running as root without unshare: cannot make a read-only directory")
    mount = f"mount --bind {workdir} {workdir} && mount -o remount,bind,ro {workdir}"
    command = f"{mount} && exec {shlex.quote(sys.executable)} launch.py {shlex.join(args)}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", command], cwd=REPO, env=child_env(1),
                          capture_output=True, text=True, timeout=600)


def test_read_only_workdir(tmp_path):
    workdir = tmp_path / "ro"
    workdir.mkdir()
    proc = _run_launch_read_only([*config_args(tiny_config()), f"--workdir={workdir}"], workdir)
    assert_one_line_error(proc, "not writable", str(workdir))


def test_name_error_inside_the_config_file(tmp_path):
    config = tmp_path / "my_config.py"
    config.write_text("from configs import quickstart\n\n\ndef get_config():\n"
                      "    c = quickstart.get_config()\n    c.train.num_steps = NUM_STEPS\n"
                      "    return c\n")
    proc = run_launch([f"--config={config}", f"--workdir={tmp_path}"])
    assert_one_line_error(proc, "NameError", "'NUM_STEPS'", f"{config}:6")


def test_float8_dtype_stops_before_any_work(tmp_path):
    proc = run_launch(["--config=configs/quickstart.py", "--config.model.dtype=float8",
                       f"--workdir={tmp_path / 'run'}"])
    assert_one_line_error(proc, "model.dtype='float8'", "bfloat16")
    assert not (tmp_path / "run").exists()
