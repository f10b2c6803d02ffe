"""benchmarks/accelerator.py: its choice of points from plan mode, the trace summary on a GPU's
trace layout, the loss-curve comparison, and the whole `--tiny` run on the CPU with TensorFlow
unimportable (as on the GPU machine), its table and figures checked against what they derive
from.

Budget: ~5 s for the unit tests; the tiny run is about a dozen child processes (three benchmark
steps, three trainings at once, the quickstart's train, sample and eval): ~2 min on 2 cores.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import math
import subprocess
import sys

import pytest
from utils import FAST_COMPILE, REPO, child_env, jax_cache_dir

from benchmarks import accelerator, accelerator_report, profile_summary
from benchmarks.accelerator_scale import TINY
from sd_jax.tools import plan


def done(value):
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


def plans(none, transformer, all_):
    """Futures of {batch: bytes} per remat, fitting every power of two up to the given one."""
    return {remat: done({2**i: 1 for i in range(largest.bit_length())} if largest else {})
            for remat, largest in (("none", none), ("transformer", transformer), ("all", all_))}


def test_choice_of_remat_and_batch():
    fits = plans(8, 16, 64)
    assert accelerator.choose(fits, min_batch=8) == ("none", 8)
    assert accelerator.extra_point(fits, ("none", 8)) == ("transformer", 16)  # The next, 2x.
    fits = plans(8, 8, 32)  # Transformer remat buys nothing: all's 4x is the extra.
    assert accelerator.extra_point(fits, ("none", 8)) == ("all", 32)
    assert accelerator.extra_point(plans(8, 8, 8), ("none", 8)) is None
    assert accelerator.choose(plans(4, 8, 64), min_batch=8) == ("transformer", 8)
    assert accelerator.choose(plans(1, 4, 4), min_batch=8) == ("transformer", 4)  # Best of all.
    assert accelerator.choose(plans(0, 0, 0), min_batch=8) is None


def test_fitting_batches_are_the_plans_that_fit():
    config = accelerator.config_with("imagenet512", {**TINY.train_overrides("imagenet512"),
                                                     "train.batch_size": 1})
    planner = plan.Planner(config, 1)
    totals = {b: planner.bytes(plan.Layout(1, b, "all"), per_device_batch=b)["total"]
              for b in (1, 2, 4, 8)}
    fits = accelerator.fitting_batches(planner, "all", [1, 2, 4, 8], totals[4])
    assert fits == {b: totals[b] for b in (1, 2, 4)}


def test_top_ops_counts_the_streams_of_a_gpu_trace(tmp_path):
    """On a device process only the stream lines count (the 'XLA Ops' line repeats them); host
    events never count."""
    meta = [("process_name", 1, None, "/host:CPU"), ("process_name", 2, None, "/device:GPU:0"),
            ("thread_name", 2, 7, "Stream #7(Compute)"), ("thread_name", 2, 9, "XLA Ops"),
            ("thread_name", 1, 3, "python")]
    events = [{"ph": "M", "name": kind, "pid": pid, **({"tid": tid} if tid else {}),
               "args": {"name": name}} for kind, pid, tid, name in meta]

    def x(pid, tid, name, dur, **args):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": 0, "dur": dur, "args": args}

    events += [x(2, 7, "gemm", 600.0, hlo_op="dot.1"), x(2, 7, "gemm", 600.0),
               x(2, 7, "fusion.3", 300.0), x(2, 9, "dot.1", 1200.0), x(1, 3, "python", 9e6)]
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    ops = profile_summary.top_ops(tmp_path, steps=3)
    assert [(o["name"], o["count"], o["hlo_op"]) for o in ops] == [
        ("gemm", 2, "dot.1"), ("fusion.3", 1, None)]
    assert ops[0]["ms_per_step"] == pytest.approx(1.2 / 3) and ops[0]["share"] == 0.8


def test_agreement_of_window_means():
    f32 = [4.0, 2.0, 3.0, 1.0, 2.0]
    curves = {"f32_seed0": f32, "bf16_seed0": [4.0, 2.2, 3.0, 1.0, 9.0],
              "f32_seed1": [3.0, 2.0, 3.0, 2.0, 2.0]}
    result = accelerator_report.agreement(curves, window=2)  # Windows (1, 2), (3, 4); 5 dropped.
    assert result["window_means"]["bf16_seed0"] == pytest.approx([3.1, 2.0])
    assert result["bf16_vs_f32"] == pytest.approx(0.1) and result["seed_vs_seed"] == 0.5
    assert result["agree"] is True
    assert accelerator_report.agreement({**curves, "f32_seed1": None}, 2)["agree"] is None


def no_tensorflow(folder):
    """A PYTHONPATH entry where `import tensorflow` (and tfds) fails, as on the GPU machine."""
    for name in ("tensorflow", "tensorflow_datasets"):
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    return str(folder)


@pytest.mark.slow
def test_tiny_run_table_and_figures(tmp_path, tmp_path_factory):
    out = tmp_path / "out"
    env = child_env(1)
    env["PYTHONPATH"] = no_tensorflow(tmp_path / "no_tf") + ":" + env["PYTHONPATH"]
    env["XLA_FLAGS"] += f" {FAST_COMPILE}"
    cmd = [sys.executable, "benchmarks/accelerator.py", "--tiny", f"--out={out}",
           "--peak_flops=1e12", "--budget_s=1500",
           f"--compilation_cache={jax_cache_dir(tmp_path_factory)}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (out / "table.md").read_text().strip()
    assert proc.stdout.strip().endswith(table)  # Printed last.
    results = json.loads((out / "results.json").read_text())
    check_train(results)
    check_precision(results["precision"])
    quick = results["quickstart"]
    assert [quick[m]["status"] for m in ("train", "sample", "eval")] == ["ok"] * 3
    assert math.isfinite(quick["eval_results"]["fd_digits"])
    train_log = (out / "logs" / "quickstart_train.log").read_text()
    assert "no TensorBoard logs" in train_log  # Trained with TensorFlow unimportable.
    for part in table.split("\n\n")[1:]:  # Every markdown row as wide as its header.
        rows = [line for line in part.splitlines() if line.startswith("|")]
        assert len({line.count("|") for line in rows}) == 1, part


def check_train(results):
    from sd_jax.models import init, summary

    rows = results["train"]
    assert [r["config"] for r in rows] == list(accelerator.TRAIN_CONFIGS)
    for r in rows:
        assert r["status"] == "ok" and r["dtype"] == "bfloat16", r
        config = accelerator.config_with(r["config"], TINY.train_overrides(r["config"]))
        forward = summary.forward_flops(config.model, init.param_shapes(config.model))
        flops = 3 * forward * r["per_device_batch"]
        assert r["model_flops_per_step_per_device"] == flops
        assert r["mfu"] == pytest.approx(flops / (r["step_time_s"] * 1e12), rel=1e-12)
        assert r["hfu"] == pytest.approx(
            r["hardware_flops_per_step_per_device"] / (r["step_time_s"] * 1e12), rel=1e-12)
        assert r["train_images_per_s"] == pytest.approx(r["global_batch"] / r["step_time_s"])
        # The largest tried batch that plan mode fits in the memory planned for, and its plan.
        config.train.batch_size = 1
        planned = plan.Planner(config, 1).bytes(plan.Layout(1, r["per_device_batch"], r["remat"]),
                                                per_device_batch=r["per_device_batch"])["total"]
        assert r["plan_bytes"] == planned <= results["device_memory_bytes"]
        assert r["per_device_batch"] == TINY.max_batch and r["peak_memory_bytes"] > 0
    sampled = [r for r in rows if r["sampling"]]
    assert [r["config"] for r in sampled] == [accelerator.SAMPLED]
    sampling = sampled[0]["sampling"]
    assert [s["guidance_scale"] for s in sampling] == list(accelerator.GUIDANCE.values())
    for s in sampling:
        assert s["batch"] == 2 and s["images_per_s"] == pytest.approx(
            s["batch"] * s["timed_steps"] / (s["loop_s"] * s["steps"]), rel=1e-12)


def check_precision(p):
    assert p["steps"] == TINY.precision_steps
    curves = p["curves"]
    assert set(curves) == set(accelerator_report.PRECISION_RUNS)
    assert all(len(c) == p["steps"] and all(map(math.isfinite, c)) for c in curves.values())
    assert curves["bf16_seed0"] != curves["f32_seed0"] != curves["f32_seed1"]
    again = accelerator_report.agreement(curves, p["window"])
    assert (p["bf16_vs_f32"], p["seed_vs_seed"], p["agree"]) == (
        again["bf16_vs_f32"], again["seed_vs_seed"], again["agree"])


def test_scale_overrides():
    args = accelerator.parse_args(["--out=x", "--tiny", "--scale=precision_steps=100",
                                   "--scale=cpu_memory_gb=0.5"])
    scale = accelerator.run_scale(args)
    assert (scale.precision_steps, scale.cpu_memory_gb, scale.steps) == (100, 0.5, TINY.steps)
    with pytest.raises(SystemExit, match="not a number of Scale"):
        accelerator.run_scale(accelerator.parse_args(["--out=x", "--scale=tiny=1"]))
