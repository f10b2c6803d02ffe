"""launch.py on bad input: one clear line on stderr, exit status 1, no traceback (~75 s: ~25
launch.py runs that stop before any work)."""

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest
from utils import (
    REPO,
    assert_one_line_error,
    child_env,
    config_args,
    free_port,
    run_launch,
    tiny_config,
)


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


def _silent_server() -> socket.socket:
    """A TCP port that accepts connections (into its backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def _issue_22_cases(tmp) -> dict:
    """Issue 22's bad inputs, each -> (launch.py arguments, environment, words of the error)."""
    tiny, workdir = config_args(tiny_config()), f"--workdir={tmp / 'run'}"
    (tmp / "returns_none.py").write_text("def get_config():\n    return None\n")
    (tmp / "no_get_config.py").write_text("NUM_STEPS = 10\n")
    closed = free_port()
    return {
        "data.folder under the digits": (
            [*tiny, workdir, f"--config.data.folder={tmp}/images"], {},
            ["config.data.folder=", "only data.source='folder'"]),
        "eval.reference_npz in digits eval": (
            [*tiny, workdir, "--mode=eval", f"--config.eval.reference_npz={tmp}/ref.npz"], {},
            ["config.eval.reference_npz=", "Inception metrics"]),
        "model.image_size=0": ([*tiny, workdir, "--config.model.image_size=0"], {},
                               ["config.model.image_size=0"]),
        "seed=-1": ([*tiny, workdir, "--config.seed=-1"], {}, ["config.seed=-1"]),
        "model.num_heads=0": ([*tiny, workdir, "--config.model.num_heads=0"], {},
                              ["config.model.num_heads=0"]),
        "get_config returns None": ([f"--config={tmp}/returns_none.py", workdir], {},
                                    ["returns_none.py", "get_config() returned NoneType"]),
        "no get_config": ([f"--config={tmp}/no_get_config.py", workdir], {},
                          ["no_get_config.py", "defines no get_config()"]),
        "gs:// endpoint refuses": (
            [*tiny, "--workdir=gs://bucket/run"],
            {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{closed}"},
            ["gs://bucket/run: no answer from", "within 4 s"]),
        "gs:// endpoint never answers": (
            [*tiny, "--workdir=gs://bucket/run"], {"STORAGE_EMULATOR_HOST": "SILENT"},
            ["gs://bucket/run: no answer from", "within 4 s", "timed out"]),
    }


ISSUE_22_CASES = ["data.folder under the digits", "eval.reference_npz in digits eval",
                  "model.image_size=0", "seed=-1", "model.num_heads=0", "get_config returns None",
                  "no get_config", "gs:// endpoint refuses", "gs:// endpoint never answers"]


@pytest.mark.parametrize("case", ISSUE_22_CASES)
def test_issue_22_inputs_fail_in_one_line_naming_the_field(case, tmp_path):
    """Each bad input of issue 22 that used to train anyway, print a traceback or hang, through
    launch.py: exit 1, no traceback, one line naming what to fix, before any work (nothing in
    the workdir). The issue's other cases have tests of their own: an empty --workdir below;
    two trainings and a resume past num_steps in e2e/test_train_e2e.py; a full disk and
    "checkpoint saved" in checkpoints/test_durable_saves.py; sampling twice in
    sample/test_sample_mode.py; folder_small on a CPU in e2e/test_folder_small.py; the
    installed command in test_packaging.py."""
    args, env, words = _issue_22_cases(tmp_path)[case]
    with contextlib.ExitStack() as stack:
        if env.get("STORAGE_EMULATOR_HOST") == "SILENT":
            server = stack.enter_context(_silent_server())
            env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{server.getsockname()[1]}"}
        start = time.monotonic()
        proc = run_launch(args, env_extra=env, timeout=120)
        seconds = time.monotonic() - start
    assert_one_line_error(proc, *words)
    assert "_sd_jax_config_check" not in proc.stderr and "cli.py" not in proc.stderr
    assert not (tmp_path / "run").exists()
    assert seconds < 60  # A bucket that cannot be reached: seconds, not minutes of retries.


def test_empty_workdir_is_refused_and_nothing_is_written(tmp_path):
    # `--workdir=$WORKDIR` with WORKDIR unset: it used to train into the current directory.
    args = [a.replace("configs/", f"{REPO}/configs/") for a in config_args(tiny_config())]
    for mode in ("train", "sample", "eval"):
        proc = subprocess.run([sys.executable, str(REPO / "launch.py"), *args, "--workdir=",
                               f"--mode={mode}"], cwd=tmp_path, env=child_env(1),
                              capture_output=True, text=True, timeout=300)
        assert_one_line_error(proc, "--workdir is empty", f"--mode={mode}")
    assert not list(tmp_path.iterdir())
