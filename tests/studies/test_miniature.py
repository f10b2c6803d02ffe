"""experiments/miniature/miniature.py: the arms' schedules, and a tiny end-to-end run that writes
the table.

Budget: ~40 s on 2 CPU cores for the digits (four 2-step runs at 16 px with unoptimised XLA
compilation), ~25 s for the photos (two).
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from utils import REPO, child_env

from experiments.miniature import digits, photos
from experiments.miniature.common import RECIPE, run_name
from scripts import sweep_lib
from sd_jax.specs import diffusion_spec

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _logsnr(config_file: str, overrides: dict, t: np.ndarray) -> np.ndarray:
    config = sweep_lib.load_config(config_file, sweep_lib.override_flags(overrides))
    return np.asarray(diffusion_spec(config).logsnr_fn()(t))


def test_schedule_arms_are_the_16px_schedule_unshifted_and_shifted():
    t = np.linspace(0.05, 0.95, 7)
    for size in (64, 128):
        clip = {"diffusion.logsnr_max": sweep_lib.load_config(
            f"configs/digits_hires.py:{size}").diffusion.logsnr_max}  # Every arm's clip.
        at_16 = _logsnr("configs/quickstart.py", clip, t)  # The schedule tuned for 16 px.
        arms = dict(digits.arms(size)["schedule"])
        config_file = f"configs/digits_hires.py:{size}"
        unshifted = _logsnr(config_file, arms["16px schedule unshifted"], t)
        np.testing.assert_allclose(unshifted, at_16, rtol=0, atol=1e-5)
        shifted = _logsnr(config_file, arms[RECIPE], t)
        np.testing.assert_allclose(shifted, at_16 + 2 * math.log(16 / size), rtol=0, atol=1e-5)


def test_tiny_miniature_writes_table_figure_and_grids(tmp_path):
    env = child_env(1)
    env["XLA_FLAGS"] += " " + FAST_COMPILE
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "miniature" / "miniature.py"),
         f"--out={tmp_path}",
         "--tiny", "--ablations=transform", "--eval_points=2", "--num_samples=8",
         "--sample_steps=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    rows = {line.split(" | ")[1]: line for line in table.splitlines()
            if line.startswith("| transform")}
    assert set(rows) == {"recipe", "5/3 DWT-2", "patch 4x4", "none"}
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for arm in ("recipe", "5/3 DWT-2", "patch 4x4", "none"):
        run = results[f"transform / {arm}"][0]
        assert [s["step"] for s in run["scores"]] == [1, 2]
        final = run["scores"][-1]
        assert final["num_samples"] == 8 and 0 <= final["class_accuracy"] <= 1
        assert final["fd_digits"] > 0 and final["hf_ratio"] > 0
        assert f"{final['fd_digits']:.3g}" in rows[arm]
        assert (tmp_path / "grids" / f"{run_name(arm, 0)}.png").is_file()
    assert (tmp_path / "fd_vs_step.png").stat().st_size > 1000
    assert "wall time" in table and json.loads(
        (tmp_path / "results.json").read_text())["finished"]


def test_photo_arms_change_one_thing_each():
    for size in (32, 64, 128):
        arms = photos.arms(size)
        assert [dict(a)["diffusion.noise_d"] for n, a in arms["noise_d"] if a] == [8, 16, 32, 128]
        assert dict(arms["noise_d"])[RECIPE] == {}  # The recipe: noise_d 64, the paper's text.
        endpoint = dict(arms["endpoint"])
        after = endpoint.get("logsnr_max 15 after the shift")
        assert (after is None) == (size == 64)  # No shift at 64 px: before = after.
        if after:  # Clipped at 15 after the shift: the schedule ends at logSNR 15 exactly.
            config = sweep_lib.load_config(photos.config_file(size),
                                           sweep_lib.override_flags(after))
            assert float(diffusion_spec(config).logsnr_fn()(np.float32(0.0))) == \
                pytest.approx(15.0, abs=1e-3)


def test_tiny_photo_miniature_scores_photo_metrics(tmp_path):
    env = child_env(1)
    env["XLA_FLAGS"] += " " + FAST_COMPILE
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "miniature" / "miniature.py"),
         f"--out={tmp_path}", "--data=photos", "--tiny", "--ablations=multiscale",
         "--eval_points=2", "--num_samples=8", "--sample_steps=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    rows = {line.split(" | ")[1]: line for line in table.splitlines()
            if line.startswith("| multiscale")}
    assert set(rows) == {RECIPE, "multiscale on"}
    assert "Data floor" in table and "wall time" in table
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for arm in (RECIPE, "multiscale on"):
        final = results[f"multiscale / {arm}"][0]["scores"][-1]
        assert final["num_samples"] == 8 and final["swd_avg"] > 0
        assert set(final["heldout_vmse"]) == {f"{v:g}" for v in photos.HELD_OUT_LOGSNRS}
        assert all(len(p) == 3 and min(p) > 0 for p in final["denoised_power"].values())
        assert f"{final['swd_avg']:.1f}" in rows[arm]
        assert (tmp_path / "grids" / f"{run_name(arm, 0)}.png").is_file()
    assert (tmp_path / "swd_vs_step.png").stat().st_size > 1000
