"""experiments/nfe/nfe_study.py end to end (tiny), and the step count for an NFE budget."""

import json
import subprocess
import sys

import pytest
from utils import REPO, TWO_STEP_RUN, child_env, config_args, run_launch, tiny_config

from sd_jax import specs
from sd_jax.diffusion import samplers


@pytest.mark.parametrize("name", sorted(samplers.SAMPLERS))
def test_steps_for_spends_at_most_the_budget(name):
    config = tiny_config()
    for budget in (3, 8, 9, 16, 31, 32, 255, 256):
        config.sample.sampler, config.sample.num_steps = name, samplers.steps_for_nfe(name, budget)
        spent = samplers.nfe(specs.sampling_spec(config))
        config.sample.num_steps += 1
        more = samplers.nfe(specs.sampling_spec(config))
        assert spent <= budget < more, (name, budget, spent, more)


def test_a_tiny_study_writes_its_table_and_figure(tmp_path):
    args = config_args(tiny_config(**TWO_STEP_RUN))
    assert run_launch([*args, f"--workdir={tmp_path / 'run'}"]).returncode == 0
    proc = subprocess.run(
        [sys.executable, "experiments/nfe/nfe_study.py", *args, f"--workdir={tmp_path / 'run'}",
         f"--out={tmp_path / 'study'}", "--nfe=3,5", "--samplers=ddim,heun",
         "--guidance=1.0,2.0", "--num_samples=10"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "study" / "nfe_study.json").read_text())
    assert [(r["guidance_scale"], r["sampler"], r["nfe"]) for r in rows] == [
        (1.0, "ddim", 3), (1.0, "ddim", 5), (1.0, "heun", 3), (1.0, "heun", 5),
        (2.0, "ddim", 3), (2.0, "ddim", 5), (2.0, "heun", 3), (2.0, "heun", 5)]
    assert all(r["fd_digits"] > 0 and 0 <= r["class_accuracy"] <= 1 for r in rows)
    assert (tmp_path / "study" / "fd_vs_nfe.png").stat().st_size > 1000
    assert "| guidance_scale | sampler | nfe |" in (tmp_path / "study" / "nfe_study.md").read_text()
