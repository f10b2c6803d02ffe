"""Checkpoints written before the sub-package layout (issue 18) still restore, sample and resume.

tests/fixtures/pre_layout_run/ holds a tiny run (checkpoint 4, written by sd-jax a3c0f1b) and
the samples that code drew from it with the same flags (README.json). Restoring verifies every
array against the checksums saved with it, so "restores" means bit for bit. The samples are
compared within one uint8 level: the sampler runs in float32, and XLA's CPU kernels may round
differently on another CPU; an error far below 1/255 of the [-1, 1] range can still move a
pixel across a truncation boundary, by one level, on a few pixels (on the machine that wrote the
fixture the samples were bitwise equal).
"""

import json
import shutil

import numpy as np
import pytest
from utils import REPO, run_launch

FIXTURE = REPO / "tests" / "fixtures" / "pre_layout_run"
ARGS = json.loads((FIXTURE / "README.json").read_text())["launch_args"]


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(FIXTURE / "checkpoints", tmp_path / "checkpoints")
    return tmp_path


def test_an_old_checkpoint_samples_what_the_old_code_sampled(workdir):
    proc = run_launch([*ARGS, f"--workdir={workdir}", "--mode=sample"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = np.load(proc.stdout.strip().splitlines()[-1], allow_pickle=False)["arr_0"]
    expected = np.load(FIXTURE / "expected_samples.npz", allow_pickle=False)["arr_0"]
    assert samples.shape == expected.shape == (8, 8, 8, 3)
    diff = np.abs(samples.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1 and np.mean(diff > 0) <= 0.01, (diff.max(), np.mean(diff > 0))


def test_an_old_checkpoint_resumes_training(workdir):
    more = [a for a in ARGS if not a.startswith("--config.train.num_steps=")]
    proc = run_launch([*more, "--config.train.num_steps=6", "--config.train.checkpoint_every=2",
                       f"--workdir={workdir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from step 4" in proc.stdout
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [5, 6]
    assert (workdir / "checkpoints" / "6").is_dir()
