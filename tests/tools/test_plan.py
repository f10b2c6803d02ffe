"""`--mode=plan`: per-device bytes by component, the layouts that fit, and the estimate against
XLA's memory analysis of the compiled train step on 8 fake CPU devices (within 20%).

Budget: ~60 s on 2 cores (in-process traces of a tiny model; one child compiling two steps with
unoptimised XLA code, which leaves the memory analysis unchanged; one launch.py child).
"""

from __future__ import annotations

import json

import pytest
from utils import (
    FAST_COMPILE,
    assert_one_line_error,
    config_args,
    run_launch,
    run_python,
    tiny_config,
)

from sd_jax.errors import UserError
from sd_jax.models.spec import REMAT
from sd_jax.tools import plan


def planned(**overrides) -> dict:
    config = tiny_config(**{"plan.devices": 8, "train.batch_size": 32, **overrides})
    return plan.plan(config)


@pytest.fixture(scope="module")
def roomy():
    return planned(**{"plan.device_memory_gb": 1.0, "plan.show": 1000})


def test_components_add_up_and_state_splits_over_fsdp(roomy):
    by_fsdp = {}
    for r in roomy["fitting"]:
        b = r["bytes"]
        assert set(b) == {*plan.COMPONENTS, "total"} and b["total"] == sum(
            b[k] for k in plan.COMPONENTS)
        assert b["ema"] == b["params"]
        # Adam's two moments, plus two int32 step counts (Adam's and the learning-rate schedule's).
        assert b["optimizer"] == 2 * b["params"] + 8
        by_fsdp.setdefault(r["fsdp"], b["params"])
        accumulating = r["microbatch"] < roomy["per_device_batch"]
        assert b["gradients"] == (2 if accumulating else 1) * b["params"]
        assert (b["recompute"] > 0) == (r["remat"] != "none")
    assert sorted(by_fsdp) == [1, 2, 4, 8]  # Every divisor of the 8 devices fits in 1 GiB.
    full, kept = by_fsdp[1], norm_bytes(tiny_config())  # Norms and the output head: replicated.
    assert 0 < kept < full / 2
    for fsdp, params in by_fsdp.items():  # Dims that do not divide stay replicated too.
        split = (full - kept) / fsdp
        assert split + kept <= params <= split * 1.1 + kept, (fsdp, params, full, kept)


def test_bytes_at_another_batch_are_that_batchs_plan():
    """`Planner.bytes(layout, per_device_batch=b)` of a planner built for one batch gives what a
    planner built for batch b plans (the traces are per example)."""
    big, small = (plan.Planner(tiny_config(**{"train.batch_size": b}), 2) for b in (16, 4))
    for remat in REMAT:
        for micro in (1, 2):
            layout = plan.Layout(1, micro, remat)
            assert big.bytes(layout, per_device_batch=2) == small.bytes(layout)
    with pytest.raises(UserError, match="does not divide"):
        big.bytes(plan.Layout(1, 2, "none"), per_device_batch=3)


def norm_bytes(config) -> int:
    """float32 bytes of the weights on the logical axis 'norm', which every device holds whole."""
    import flax.linen as nn
    import jax

    from sd_jax import models
    from sd_jax.models.init import init_params
    from sd_jax.models.layers import NORM_AXIS

    model = models.build_model(config.model)
    boxed = jax.eval_shape(lambda: init_params(model, config.model, jax.random.key(0)))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    return sum(4 * x.value.size for x in leaves
               if isinstance(x, nn.LogicallyPartitioned) and NORM_AXIS in x.names)


def test_activations_per_micro_batch_and_remat(roomy):
    act = {(r["fsdp"], r["microbatch"], r["remat"]): r["bytes"]["activations"]
           for r in roomy["fitting"]}
    for remat in REMAT:
        assert act[(1, 4, remat)] == 4 * act[(1, 1, remat)]  # Linear in the micro-batch.
    assert act[(1, 4, "all")] < act[(1, 4, "transformer")] < act[(1, 4, "none")]


def test_fitting_layouts_fit_and_are_ranked(roomy):
    totals = sorted(r["bytes"]["total"] for r in roomy["fitting"])
    median = totals[len(totals) // 2]  # Half of the layouts fit in this much memory.
    tight = planned(**{"plan.device_memory_gb": median / plan.GIB, "plan.show": 1000})
    memory = tight["device_memory_bytes"]
    assert 0 < tight["num_fitting"] < roomy["num_fitting"]
    assert all(r["bytes"]["total"] <= memory for r in tight["fitting"])
    current = tight["current"]  # fsdp 1, no accumulation, no remat: above the median.
    assert current["bytes"]["total"] > memory and not current["fits"]
    ranks = [(r["accumulation_steps"], REMAT.index(r["remat"]), r["fsdp"] > 1,
              r["bytes"]["total"]) for r in tight["fitting"]]
    assert ranks == sorted(ranks)
    unfit = [r for r in roomy["fitting"] if r["bytes"]["total"] > memory]
    assert len(unfit) == roomy["num_fitting"] - tight["num_fitting"]
    best = tight["fitting"][0]
    assert (f"--config.mesh.fsdp={best['fsdp']} --config.train.microbatch_size="
            f"{0 if best['accumulation_steps'] == 1 else best['microbatch'] * 8}") in best[
        "overrides"]


def test_nothing_fits_and_bad_device_count():
    assert planned(**{"plan.device_memory_gb": 1e-6})["fitting"] == []  # 1 KiB.
    with pytest.raises(UserError, match="not divisible by 3 devices"):
        planned(**{"plan.devices": 3, "plan.device_memory_gb": 1.0})


def test_launch_plan_mode_prints_json_and_refuses_without_memory():
    config = tiny_config(**{"plan.devices": 8, "train.batch_size": 32,
                            "plan.device_memory_gb": 0.05})
    proc = run_launch([*config_args(config), "--mode=plan"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert any(x.startswith("suggested: --config.mesh.data=") for x in lines)
    result = json.loads(lines[-1])
    assert result["devices"] == 8 and result["per_device_batch"] == 4
    no_memory = run_launch([*config_args(tiny_config()), "--mode=plan"])
    assert_one_line_error(no_memory, "--config.plan.device_memory_gb")


@pytest.mark.slow
def test_plan_within_20_percent_of_compiled_memory():
    """The ImageNet 512 recipe's structure (5/3 wavelet level 2, conv levels, transformer,
    multiscale loss, dropout), shrunk, in float32 without remat: the two things XLA:CPU compiles
    as an accelerator would (docs/training.md, plan mode)."""
    code = """
        import json
        from configs import imagenet512
        from benchmarks import plan_check
        c = imagenet512.get_config()
        m = c.model
        m.image_size, m.base_channels, m.channel_multipliers = 64, 16, (1, 4)
        m.transformer_depth, m.num_heads, m.emb_dim, m.dtype = 1, 2, 32, "float32"
        for fsdp, per_device in ((1, 2), (8, 8)):
            c.mesh.data, c.mesh.fsdp, c.train.batch_size = 8 // fsdp, fsdp, 8 * per_device
            r = plan_check.check(c)
            print(json.dumps([fsdp, per_device, r["planned"]["total"], r["compiled"]]))
    """
    flags = f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}"
    proc = run_python(code, 8, env_extra={"XLA_FLAGS": flags})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("[")]
    assert len(rows) == 2
    for fsdp, per_device, planned_bytes, compiled in rows:
        assert abs(planned_bytes / compiled - 1) <= 0.2, (fsdp, per_device, planned_bytes,
                                                           compiled)
