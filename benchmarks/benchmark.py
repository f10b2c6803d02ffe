"""Benchmark of the real train step and sampler on synthetic on-device batches (not a test).

    python benchmarks/benchmark.py --config=configs/quickstart.py --per_device_batch=64 --steps=10
    python benchmarks/benchmark.py --config=configs/imagenet512.py \\
        --config.model.remat=transformer --per_device_batch=8,16,32 --per_device_microbatch=0,8 \\
        --profile=/tmp/trace --compilation_cache=/tmp/jax_cache        # docs/performance.md

For every (per-device batch, per-device micro-batch) point of the sweep it compiles the train
step, times it, and prints a summary and one JSON line with every figure:

- MFU (model FLOPs utilisation) from an analytic count: 3 x the forward FLOPs per image that
  `--mode=inspect` reports (forward + backward, no recomputation), times the per-device batch,
  over the median step time and the device's peak bf16 FLOP/s.
- HFU (hardware FLOPs utilisation), separately: XLA's cost analysis of the compiled per-device
  step, which also counts remat recomputation, the optimizer and EMA.
- Compile time (with `--compilation_cache=DIR`, JAX's persistent cache, so a rerun skips it),
  XLA's memory analysis of the step and `--mode=plan`'s estimate for the same layout, peak
  memory, and the bytes of each collective per step from the optimised HLO (`xla_stats`).
- Sampling images/s, measured: the real sampler (`generate.Sampler`, guidance included) compiled
  with `--sample_timed_steps` steps and timed, then scaled to `sample.num_steps` steps, at
  `--sample_batch` rows and each `--sample_guidance` scale.
- With `--profile=DIR`, a `jax.profiler` trace of a few steps, and its costliest device ops
  (`profile_summary.top_ops`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import profile_summary, xla_stats  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_list("per_device_batch", ["8"], "Train batch per device; a comma list sweeps.")
flags.DEFINE_list("per_device_microbatch", ["0"],
                  "Micro-batch per device for gradient accumulation (0: none); a comma list "
                  "sweeps. Sets config.train.microbatch_size = this x the device count.")
flags.DEFINE_integer("steps", 10, "Timed steps (after compile and warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after the compile.")
flags.DEFINE_float("peak_flops", None, "Peak FLOP/s per device (default: table by device kind).")
flags.DEFINE_integer("sample_steps", None, "Sampler steps to scale to (default: config.sample).")
flags.DEFINE_integer("sample_timed_steps", 4, "Sampler steps actually run and timed (0: skip).")
flags.DEFINE_integer("sample_batch", 0, "Global sampling batch (0: the train step's global batch).")
flags.DEFINE_list("sample_guidance", [], "Guidance scales to time the sampler at, each a point "
                  "(default: config.sample.guidance_scale); 1 is one network pass per step.")
flags.DEFINE_string("profile", None, "Write a jax.profiler trace of --profile_steps steps here.")
flags.DEFINE_integer("profile_steps", 3, "Steps inside the profiler trace.")
flags.DEFINE_integer("profile_top", 10, "Costliest device ops of the trace to report.")
flags.DEFINE_string("compilation_cache", None, "Enable JAX's persistent compilation cache here.")
flags.DEFINE_bool("plan", True, "Also report --mode=plan's per-device estimate (traces the model).")
FLAGS = flags.FLAGS

# Peak dense bf16 FLOP/s per device (vendor datasheets; SXM parts for NVIDIA). Matched in order
# against `device_kind` (lower case), so more specific names come first.
PEAK_BF16_FLOPS = (
    ("h100", 989e12),
    ("h200", 989e12),
    ("v6 lite", 918e12),  # TPU v6e (Trillium).
    ("v6e", 918e12),
    ("v5 lite", 197e12),  # TPU v5e.
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("v5", 459e12),
    ("v4", 275e12),
)


def peak_flops_for(device: Any) -> float | None:
    """Peak bf16 FLOP/s of one device from the table, or None (CPU, unknown kind)."""
    kind = device.device_kind.lower()
    if device.platform == "cpu":
        return None
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in kind), None)


def peak_memory_bytes(devices: list[Any]) -> tuple[int | None, str]:
    """Peak device memory (max over devices) where the backend reports it, else process max RSS."""
    peaks = []
    for d in devices:
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    if peaks:
        return max(peaks), "device peak_bytes_in_use (max over devices)"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux.
    return int(rss_kib) * 1024, "process max RSS (host; no device memory stats; whole run so far)"


def time_calls(fn: Any, n: int) -> list[float]:
    """Wall times of n calls of fn(), each waited for."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def synthetic_batch(config: Any, batch_size: int, mesh: Any) -> dict[str, jax.Array]:
    """Random uint8 images, flips and labels (the train step's batch contract), created
    directly in their batch sharding."""
    from sd_jax import sharding

    m = config.model
    shape = (batch_size, m.image_size, m.image_size, m.image_channels)
    rng_image, rng_flip, rng_label = jax.random.split(jax.random.PRNGKey(1), 3)
    data = sharding.batch_sharding(mesh)
    make = jax.jit(
        lambda: {
            "image": jax.random.randint(rng_image, shape, 0, 256).astype(jnp.uint8),
            "flip": jax.random.bernoulli(rng_flip, 0.5, (batch_size,)),
            "label": jax.random.randint(rng_label, (batch_size,), 0, max(m.num_classes, 1)),
        },
        out_shardings={"image": data, "flip": data, "label": data},
    )
    return make()


class Bench:
    """The model, optimizer, mesh and one train state, shared by every point of a sweep."""

    def __init__(self, config: Any):
        from clu.parameter_overview import count_parameters

        from sd_jax import sharding
        from sd_jax.models import build_model, init, summary
        from sd_jax.train import state as train_state

        self.config, self.devices = config, jax.devices()
        self.mesh = sharding.make_mesh(config.mesh)
        self.model = build_model(config.model)
        self.tx = train_state.make_optimizer(config.optimizer)
        self.state, self.shardings = train_state.create_train_state(
            self.model, self.tx, config, self.mesh)
        self.num_params = int(count_parameters(self.state.params))
        self.forward_flops = summary.forward_flops(config.model, init.param_shapes(config.model))
        self.samplers: dict[int, dict[str, Any]] = {}

    def sampling(self, batch: int, timed_steps: int, full_steps: int, guidance: float
                 ) -> dict[str, Any]:
        """Times the real sampler for `timed_steps` steps at `batch` rows and guidance scale
        `guidance` (once per pair)."""
        key = (batch, guidance)
        if key not in self.samplers:
            from sd_jax.sample.generate import Sampler

            config = self.config.copy_and_resolve_references()
            config.sample.num_steps = timed_steps
            labels = [i % max(config.model.num_classes, 1) for i in range(batch)]
            rng = jax.random.PRNGKey(2)
            sampler = Sampler.from_config(config, self.mesh).replace(guidance_scale=guidance)
            params = sampler.prepare(self.state.ema_params)  # Cast once, as sample mode does.

            def call() -> Any:
                return sampler.generate(params, rng, labels)

            point = {"batch": batch, "guidance_scale": guidance, "timed_steps": timed_steps,
                     "steps": full_steps}
            start = time.perf_counter()
            try:
                call()  # Compile.
                compile_s = time.perf_counter() - start
                loop_s = statistics.median(time_calls(call, 3))
            except jax.errors.JaxRuntimeError as e:  # E.g. out of memory: keep the train figures.
                self.samplers[key] = {**point, "error": str(e).strip().splitlines()[0][:300]}
                return self.samplers[key]
            self.samplers[key] = {**point, "compile_s": round(compile_s, 2), "loop_s": loop_s,
                                  "images_per_s": batch * timed_steps / (loop_s * full_steps)}
        return self.samplers[key]


def plan_bytes(config: Any, num_devices: int, fsdp: int, per_device_micro: int) -> int:
    """`--mode=plan`'s per-device estimate for this layout."""
    from sd_jax.tools import plan

    planner = plan.Planner(config, num_devices)
    return planner.bytes(plan.Layout(fsdp, per_device_micro, config.model.remat))["total"]


def run_point(bench: Bench, per_device_batch: int, per_device_micro: int) -> dict[str, Any]:
    """Compiles and times the train step at one point of the sweep; returns its figures."""
    from sd_jax.train import step as train_step

    config, devices, n = bench.config, bench.devices, len(bench.devices)
    micro = per_device_micro if 0 < per_device_micro < per_device_batch else per_device_batch
    batch_size = per_device_batch * n
    config.train.batch_size = batch_size
    config.train.microbatch_size = 0 if micro == per_device_batch else micro * n
    load_before = os.getloadavg()[0]
    step_fn = train_step.make_train_step(bench.model, bench.tx, config, bench.mesh, bench.shardings)
    batch = synthetic_batch(config, batch_size, bench.mesh)
    rng = jax.random.PRNGKey(config.seed)

    start = time.perf_counter()
    # On CPU this also writes one HLO dump to read the collectives from (xla_stats).
    compiled, collective_hlo, hlo_source = xla_stats.compile_for_collectives(
        step_fn.lower(bench.state, batch, rng))
    compile_s = time.perf_counter() - start

    def one_step() -> Any:
        bench.state, metrics = compiled(bench.state, batch, rng)
        return metrics

    time_calls(one_step, FLAGS.warmup)
    times = time_calls(one_step, FLAGS.steps)
    step_s = statistics.median(times)
    profile_dir, top_ops = None, None
    if FLAGS.profile:
        profile_dir = os.path.join(FLAGS.profile, f"batch{per_device_batch}_micro{micro}")
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            time_calls(one_step, FLAGS.profile_steps)
        top_ops = profile_summary.top_ops(profile_dir, FLAGS.profile_steps, FLAGS.profile_top)

    hardware = xla_stats.compiled_flops(compiled)
    model = 3 * bench.forward_flops * per_device_batch  # Forward + backward, per device.
    peak = FLAGS.peak_flops if FLAGS.peak_flops is not None else peak_flops_for(devices[0])
    widened = hlo_source == "final"  # Only the final CPU program has widened collectives.
    collectives = {**xla_stats.collective_bytes(collective_hlo, undo_widening=widened),
                   "hlo": hlo_source}
    peak_bytes, memory_source = peak_memory_bytes(devices)
    fsdp = int(bench.mesh.shape["fsdp"])
    sample_steps = FLAGS.sample_steps or config.sample.num_steps
    guidance = FLAGS.sample_guidance or [config.sample.guidance_scale]
    sampling = [bench.sampling(FLAGS.sample_batch or batch_size, FLAGS.sample_timed_steps,
                               sample_steps, float(g))
                for g in guidance] if FLAGS.sample_timed_steps > 0 else []
    return {
        "device": f"{n} x {devices[0].device_kind} ({devices[0].platform})",
        "host": platform.node(),
        "num_params": int(bench.num_params),
        "dtype": config.model.dtype, "remat": config.model.remat, "fsdp": fsdp,
        "global_batch": batch_size,
        "per_device_batch": per_device_batch,
        "per_device_microbatch": micro,
        "microbatch_size": int(config.train.microbatch_size),
        "accumulation_steps": per_device_batch // micro,
        "compile_s": round(compile_s, 2),
        "compilation_cache": FLAGS.compilation_cache,
        "step_time_s": step_s, "step_time_min_s": min(times), "step_time_max_s": max(times),
        "train_images_per_s": batch_size / step_s,
        "forward_flops_per_image": bench.forward_flops,
        "model_flops_per_step_per_device": model,
        "achieved_model_flops_per_s_per_device": model / step_s,
        "peak_flops_per_device": peak,
        "mfu": model / step_s / peak if peak else None,
        "hardware_flops_per_step_per_device": hardware,
        "hfu": hardware / step_s / peak if hardware and peak else None,
        "peak_memory_bytes": peak_bytes,
        "peak_memory_source": memory_source,
        "compiled_memory_bytes": xla_stats.compiled_memory_bytes(compiled),
        "plan_bytes": plan_bytes(config, n, fsdp, micro) if FLAGS.plan else None,
        "all_gather_bytes_per_step": collectives["all-gather"],
        "collective_bytes_per_step": collectives,
        "sampling": sampling,
        "profile_dir": profile_dir,
        "profile_top_ops": top_ops,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _gib(n: float | None) -> str:
    return f"{n / 2**30:.3f} GiB" if n is not None else "N/A"


def _percent(x: float | None, why: str) -> str:
    return f"{100 * x:.1f}%" if x is not None else f"N/A ({why})"


def summary(r: dict[str, Any]) -> str:
    """Human-readable lines for one point."""
    hardware = r["hardware_flops_per_step_per_device"]
    sampled = [f"batch {s['batch']}, guidance {s['guidance_scale']:g}: " + (
        f"{s['images_per_s']:.3f} images/s ({s['timed_steps']}-step loop in {s['loop_s']:.3f} s, "
        f"scaled to {s['steps']} steps)" if "error" not in s else f"failed: {s['error']}")
        for s in r["sampling"]] or ["skipped"]
    return "\n".join([
        f"device:           {r['device']}, load average {r['load_average']}",
        f"model:            {r['num_params']:,} params, {r['dtype']}, remat {r['remat']}, "
        f"fsdp {r['fsdp']}",
        f"global batch:     {r['global_batch']} ({r['per_device_batch']} per device, micro-batch "
        f"{r['per_device_microbatch']} x {r['accumulation_steps']})",
        f"compile:          {r['compile_s']:.1f} s (persistent cache: "
        f"{r['compilation_cache'] or 'off'})",
        f"train step:       {1e3 * r['step_time_s']:.1f} ms median "
        f"({1e3 * r['step_time_min_s']:.1f} to {1e3 * r['step_time_max_s']:.1f}) -> "
        f"{r['train_images_per_s']:.1f} images/s",
        f"model FLOPs:      {r['model_flops_per_step_per_device']:.3e} per device per step "
        f"(3 x {r['forward_flops_per_image']:.3e} forward per image)",
        f"MFU:              {_percent(r['mfu'], 'no peak FLOP/s for this device')}",
        f"hardware FLOPs:   {hardware:.3e} per device per step (XLA cost analysis)" if hardware
        else "hardware FLOPs:   unavailable",
        f"HFU:              {_percent(r['hfu'], 'no peak FLOP/s or cost analysis')}",
        f"memory:           peak {_gib(r['peak_memory_bytes'])} ({r['peak_memory_source']}); "
        f"compiled {_gib(r['compiled_memory_bytes'])}; plan {_gib(r['plan_bytes'])} per device",
        f"all-gather:       {r['all_gather_bytes_per_step'] / 2**20:.2f} MiB per device per step",
        *(f"sampling:         {line}" for line in sampled),
    ] + ([f"profile:          {r['profile_dir']}"] if r["profile_dir"] else [])
      + [f"  {op['share']:6.1%} {op['ms_per_step']:9.3f} ms/step  {op['name']}"
         for op in r["profile_top_ops"] or []])


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    bench = Bench(FLAGS.config)
    points = []  # (batch, micro-batch) per device; 0 and the batch itself both mean "none".
    for per_device_batch in map(int, FLAGS.per_device_batch):
        for micro in map(int, FLAGS.per_device_microbatch):
            if micro and per_device_batch % micro:
                print(f"skipping per-device batch {per_device_batch} with micro-batch {micro} "
                      "(does not divide)")
            elif (per_device_batch, micro or per_device_batch) not in points:
                points.append((per_device_batch, micro or per_device_batch))
    for per_device_batch, micro in points:
        result = run_point(bench, per_device_batch, micro)
        print(summary(result))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
