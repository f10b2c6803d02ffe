"""configs/folder_small.py, the own-images recipe: a 10-50M-parameter U-ViT that validates and
reads a folder; a real training run on a folder through launch.py with grain workers; and on a
CPU without the memory plan mode says it needs, a refusal before any work naming the smaller
config.

Budget: ~5 s for the config (eval_shape of the 30M model), ~40 s for the training run, ~15 s
for the refusal (plan mode traces the 30M model's step).
"""

import json
import re

import numpy as np
import pytest
from clu.parameter_overview import count_parameters
from PIL import Image
from utils import FAST_COMPILE, assert_one_line_error, config_args, run_launch, tiny_config

from configs import folder_small
from sd_jax.data import build_loader
from sd_jax.errors import UserError
from sd_jax.tools import plan
from sd_jax.tools.inspect import param_shapes
from sd_jax.validate import validate


def write_images(folder, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):  # Any size and aspect ratio: the loader crops and resizes.
        pixels = rng.integers(0, 256, (40 + 7 * i, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i}.jpg", quality=90)


def test_folder_small_is_a_small_uvit_for_any_folder(tmp_path):
    config = folder_small.get_config()
    assert 10e6 <= count_parameters(param_shapes(config.model)) <= 50e6
    assert config.model.arch == "uvit" and config.model.image_size in (64, 128)
    write_images(tmp_path)
    config.data.folder = str(tmp_path)
    validate(config, "train")
    config.train.batch_size = 8
    batch = build_loader(config, process_index=0, process_count=1).get_batch(0)
    assert batch["image"].shape == (8, 128, 128, 3) and batch["image"].dtype == np.uint8
    assert not batch["label"].any()  # A flat folder: unconditional.


def unreleased_shared_memory(stderr: str) -> int:
    """Shared-memory blocks still allocated when the run exited, from the resource tracker.

    At exit Python's resource tracker warns "There appear to be N leaked shared_memory
    objects" and unlinks each. A block the run already unlinked (Python < 3.13 also records
    blocks a process only attached to) fails that unlink with "No such file or directory";
    those were released, and the rest were real leaks.
    """
    reported = sum(int(n) for n in re.findall(r"There appear to be (\d+) leaked shared_memory",
                                               stderr))
    already_gone = len(re.findall(r"resource_tracker: '/psm_\w+': \[Errno 2\]", stderr))
    return reported - already_gone


@pytest.mark.slow
def test_training_on_a_folder_with_worker_processes(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    write_images(folder)
    config = tiny_config(**{"data.source": "folder", "data.folder": str(folder),
                            "data.num_workers": 2, "data.random_flip": True,
                            "model.num_classes": 0, "sample.guidance_scale": 1.0,
                            "train.num_steps": 3,
                            "train.checkpoint_every": 3})
    proc = run_launch([*config_args(config), f"--workdir={tmp_path / 'run'}"],
                      env_extra={"XLA_FLAGS": FAST_COMPILE})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert unreleased_shared_memory(proc.stderr) == 0  # The workers' batches were released.
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
               if x]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()


def test_a_config_too_big_for_this_cpu_is_refused_naming_a_smaller_one(monkeypatch):
    config = tiny_config()
    need = plan.Planner(config, 1).bytes(plan.current_layout(config, 1))["total"]
    monkeypatch.setattr(plan, "host_memory_bytes", lambda: need)
    plan.check_fits_host(config)  # Exactly enough.
    monkeypatch.setattr(plan, "host_memory_bytes", lambda: need - 1)
    with pytest.raises(UserError, match=r"needs about .* GiB \(--mode=plan\), more than this "
                       r"machine's .* GiB: use --config=configs/quickstart.py \(sized for a CPU\)"):
        plan.check_fits_host(config)
    config.data.source, config.data.folder = "folder", "/my/images"
    with pytest.raises(UserError, match=r"use --config=configs/folder_cpu.py \(your own images"):
        plan.check_fits_host(config)


@pytest.mark.slow
def test_folder_small_on_a_cpu_refuses_to_start_naming_the_smaller_config(tmp_path):
    # At batch 4096 plan mode asks ~850 GiB, more than any CPU machine running the tests; at its
    # own 128 it asks 26.6 GiB (the docstring), more than the 23.5 GiB VM this was written on.
    proc = run_launch(["--config=configs/folder_small.py", f"--workdir={tmp_path / 'run'}",
                       f"--config.data.folder={tmp_path}", "--config.train.batch_size=4096"])
    assert_one_line_error(proc, "training this config on this CPU needs about",
                          "use --config=configs/folder_cpu.py (your own images at 64 px")
    assert not (tmp_path / "run").exists()  # Before any work.
