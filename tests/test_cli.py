"""launch.py on bad input: one clear line on stderr, exit status 1, no traceback (~30 s)."""

import pytest
from utils import config_args, run_launch, tiny_config


def assert_one_line_error(proc, *words):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]


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
