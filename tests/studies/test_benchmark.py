"""benchmarks/benchmark.py end to end (sweep, profile, compile cache, every JSON field) and the
collective byte counter of benchmarks/xla_stats.py, on HLO text and on a compiled program with a
known answer.

Budget: ~60 s on 2 cores (one benchmark child on 2 fake devices compiling three tiny steps and a
sampler; one child compiling a small sharded program).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from utils import FAST_COMPILE, REPO, child_env, config_args, run_python, tiny_config

from benchmarks import xla_stats

FIELDS = {
    "device", "host", "num_params", "dtype", "remat", "fsdp", "global_batch", "per_device_batch",
    "per_device_microbatch", "microbatch_size", "accumulation_steps", "compile_s",
    "compilation_cache", "step_time_s", "step_time_min_s", "step_time_max_s",
    "train_images_per_s", "forward_flops_per_image", "model_flops_per_step_per_device",
    "achieved_model_flops_per_s_per_device", "peak_flops_per_device", "mfu",
    "hardware_flops_per_step_per_device", "hfu", "peak_memory_bytes", "peak_memory_source",
    "compiled_memory_bytes", "plan_bytes", "all_gather_bytes_per_step",
    "collective_bytes_per_step", "sampling", "profile_dir", "profile_top_ops", "load_average",
}
SAMPLING_FIELDS = {"batch", "guidance_scale", "timed_steps", "steps", "compile_s", "loop_s",
                   "images_per_s"}

# A while loop (trip count 3) with an async bf16 all-gather in its body, a conditional with an
# all-to-all in each branch, an all-reduce, and an all-gather of a bf16 value that the backend
# widened to f32 (as XLA:CPU does).
HLO = """HloModule m, entry_computation_layout={()->f32[10]{0}}

%body (p: (s32[], bf16[1,4])) -> (s32[], bf16[1,4]) {
  %p = (s32[], bf16[1,4]{1,0}) parameter(0)
  %x = bf16[1,4]{1,0} get-tuple-element(%p), index=1
  %ags = (bf16[1,4]{1,0}, bf16[8,4]{1,0}) all-gather-start(%x), dimensions={0}
  %agd = bf16[8,4]{1,0} all-gather-done(%ags)
  ROOT %t = (s32[], bf16[1,4]{1,0}) tuple(%i, %x)
}

%cond (q: (s32[], bf16[1,4])) -> pred[] {
  %q = (s32[], bf16[1,4]{1,0}) parameter(0)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}

%branch_a (a: s32[4]) -> s32[4] {
  %a = s32[4]{0} parameter(0)
  ROOT %ata = s32[4]{0} all-to-all(%a), dimensions={0}
}

%branch_b (b: s32[4]) -> s32[4] {
  %b = s32[4]{0} parameter(0)
  ROOT %atb = s32[4]{0} all-to-all(%b), dimensions={0}
}

%widen (w: bf16[1,4]) -> f32[1,4] {
  %w = bf16[1,4]{1,0} parameter(0)
  ROOT %cw = f32[1,4]{1,0} convert(%w)
}

ENTRY %main () -> f32[10] {
  %loop = (s32[], bf16[1,4]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %c = s32[4]{0} conditional(%k, %v, %v), branch_computations={%branch_a, %branch_b}
  %f = f32[1,4]{1,0} fusion(%xb), kind=kLoop, calls=%widen
  %agw = f32[8,4]{1,0} all-gather(%f), dimensions={0}
  ROOT %ar = f32[10]{0} all-reduce(%y), to_apply=%add
}
"""  # noqa: E501


def test_collective_bytes_of_hlo_text():
    result = xla_stats.collective_bytes(HLO)
    assert result["all-gather"] == 3 * 8 * 4 * 2 + 8 * 4 * 2  # Loop x bf16[8,4] + widened one.
    assert result["widened_bytes"] == 8 * 4 * 2  # f32 instead of bf16.
    assert result["all-to-all"] == 2 * 4 * 4  # Both branches (an upper bound).
    assert result["all-reduce"] == 10 * 4
    assert result["ops"] == 5 and result["unknown_trip_counts"] == 0
    # HLO from before the backend's widening: a convert before a collective is the program's own.
    own = xla_stats.collective_bytes(HLO, undo_widening=False)
    assert own["all-gather"] == 3 * 8 * 4 * 2 + 8 * 4 * 4 and own["widened_bytes"] == 0
    no_count = HLO.replace(', backend_config={"known_trip_count":{"n":"3"}}', "")
    assert xla_stats.collective_bytes(no_count)["unknown_trip_counts"] == 1


def test_all_gather_bytes_of_a_compiled_sharded_program():
    """Gathers of f32[64,16] and bf16[32,8] arrays split over 8 devices, and of a loop-carried
    f32[16,4] in each of 5 scan iterations: 4096 + 512 + 5 x 256 bytes per device."""
    code = """
        import json, jax, jax.numpy as jnp
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        from benchmarks import xla_stats
        mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
        split, whole = NamedSharding(mesh, P("x")), NamedSharding(mesh, P())

        def f(a, b, c):
            def body(c, _):
                total = jnp.sum(jax.lax.with_sharding_constraint(c, whole))
                return jax.lax.with_sharding_constraint(c * 1.5 + total, split), None

            c, _ = jax.lax.scan(body, c, None, length=5)
            gathered = [jax.lax.with_sharding_constraint(x, whole) for x in (a, b)]
            return gathered[0] * 2, gathered[1], c

        args = [jax.ShapeDtypeStruct(s, d, sharding=split) for s, d in
                (((64, 16), jnp.float32), ((32, 8), jnp.bfloat16), ((16, 4), jnp.float32))]
        compiled = jax.jit(f, out_shardings=(whole, whole, split)).lower(*args).compile()
        print(json.dumps(xla_stats.collective_bytes(compiled.as_text())))

        # A bf16 array gathered: XLA:CPU widens the gather to f32 in the final program; the
        # HLO compile_for_collectives reads on CPU is from before that and still moves bf16.
        gather = jax.jit(lambda b: jax.lax.with_sharding_constraint(b, whole) * 2,
                         out_shardings=whole).lower(args[1])
        final, text, source = xla_stats.compile_for_collectives(gather)
        print(json.dumps({"before": xla_stats.collective_bytes(text, undo_widening=False),
                          "final": xla_stats.collective_bytes(final.as_text(), undo_widening=False),
                          "source": source}))
    """
    proc = run_python(code, 8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result, cast = (json.loads(x) for x in proc.stdout.strip().splitlines()[-2:])
    assert result["all-gather"] == 64 * 16 * 4 + 32 * 8 * 2 + 5 * 16 * 4 * 4
    assert cast["source"] == "before XLA:CPU's bf16 widening"
    assert cast["before"]["all-gather"] == 32 * 8 * 2
    assert cast["final"]["all-gather"] == 32 * 8 * 4  # Widened: why the earlier HLO is read.
    assert result["unknown_trip_counts"] == 0


@pytest.mark.slow
def test_benchmark_sweep_profile_cache_and_fields(tmp_path):
    config = tiny_config(**{"mesh.fsdp": 2})
    args = [*config_args(config), "--per_device_batch=2,4", "--per_device_microbatch=0,2",
            "--steps=1", "--warmup=0", "--sample_timed_steps=2", "--sample_steps=40",
            "--sample_batch=6", "--sample_guidance=1,2.5",
            f"--profile={tmp_path / 'trace'}", "--profile_steps=1",
            f"--compilation_cache={tmp_path / 'cache'}", "--peak_flops=1e12"]
    env = child_env(2)
    env["XLA_FLAGS"] += f" {FAST_COMPILE}"
    proc = subprocess.run([sys.executable, "benchmarks/benchmark.py", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [(r["per_device_batch"], r["accumulation_steps"]) for r in rows] == [
        (2, 1), (4, 1), (4, 2)]  # (2, micro 2) is the same point as (2, no micro-batch).
    assert rows[2]["microbatch_size"] == 2 * 2 and rows[1]["microbatch_size"] == 0

    from sd_jax.models import init, summary

    forward = summary.forward_flops(config.model, init.param_shapes(config.model))
    for r in rows:
        assert set(r) == FIELDS, set(r) ^ FIELDS
        assert r["forward_flops_per_image"] == forward
        model_flops = 3 * forward * r["per_device_batch"]
        assert r["model_flops_per_step_per_device"] == model_flops
        assert r["mfu"] == pytest.approx(model_flops / r["step_time_s"] / 1e12, rel=1e-12)
        assert r["hfu"] == pytest.approx(
            r["hardware_flops_per_step_per_device"] / r["step_time_s"] / 1e12, rel=1e-12)
        assert r["all_gather_bytes_per_step"] > 0  # fsdp=2: weights are gathered.
        assert r["compiled_memory_bytes"] > 0 and r["plan_bytes"] > 0
        assert [(s["batch"], s["guidance_scale"]) for s in r["sampling"]] == [(6, 1), (6, 2.5)]
        for s in r["sampling"]:
            assert set(s) == SAMPLING_FIELDS and s["timed_steps"] == 2 and s["steps"] == 40
            assert s["images_per_s"] == pytest.approx(6 * 2 / (s["loop_s"] * 40), rel=1e-12)
        assert list((tmp_path / "trace").glob(f"batch{r['per_device_batch']}_micro"
                                              f"{r['per_device_microbatch']}/**/*.xplane.pb"))
        ops = r["profile_top_ops"]  # XLA:CPU's ops, each run once per traced step at least.
        assert 0 < len(ops) <= 10 and all(op["count"] >= 1 and op["ms_per_step"] > 0 for op in ops)
        assert [op["share"] for op in ops] == sorted((op["share"] for op in ops), reverse=True)
        assert 0 < sum(op["share"] for op in ops) <= 1 + 1e-9
    assert any((tmp_path / "cache").iterdir())
