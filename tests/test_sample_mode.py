"""`--mode=sample` end to end (sd_jax/sample_mode.py) on a tiny quickstart run.

Budget: ~45 s on 2 CPU cores (one 2-step training run, sampling runs on 1 and 8 devices).
"""

from pathlib import Path

import numpy as np
import pytest
from utils import TWO_STEP_RUN, config_args, run_launch, tiny_config

from configs import quickstart
from sd_jax import sample_mode
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
