"""Benchmark of the real train step and denoiser on synthetic on-device batches (not a test).

    python experiments/benchmark.py --config=configs/quickstart.py --per_device_batch=64 --steps=10
    python experiments/benchmark.py --config=configs/imagenet512.py \
        --config.model.remat=transformer --per_device_batch=8 --steps=20  # README: Benchmark

Reports train images/s, step time (median over --steps after compile and --warmup steps), peak
memory, MFU and sampling images/s; the last stdout line is the same as JSON.

MFU = (XLA's FLOP count of one compiled train step, per device) / (median step time) / (the
device's peak dense bf16 FLOP/s). XLA's cost analysis counts the per-device SPMD program, i.e.
the work of one device (a multiply-add is 2 FLOPs); it includes the backward pass, optimizer
update and EMA, and recomputation under remat (so remat raises the FLOP count it is credited).
"""

from __future__ import annotations

import json
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

config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_integer("per_device_batch", 8, "Train (and denoiser) batch per device.")
flags.DEFINE_integer("steps", 10, "Timed steps (after compile and warm-up).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after the compile.")
flags.DEFINE_float("peak_flops", None, "Peak FLOP/s per device (default: table by device kind).")
flags.DEFINE_integer("sample_steps", None, "Sampler steps for images/s (default: config.sample).")
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


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled function (per device), from XLA's cost analysis."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # Some backends do not implement it.
        return None
    if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


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
    return int(rss_kib) * 1024, "process max RSS (host; no device memory stats)"


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


def benchmark(config: Any, per_device_batch: int, steps: int, warmup: int = 2,
              peak_flops: float | None = None, sample_steps: int | None = None) -> dict[str, Any]:
    """Compiles and times the real train step and the denoiser; returns the figures."""
    from sd_jax import sharding, train_state, train_step
    from sd_jax.models import build_model

    devices = jax.devices()
    mesh = sharding.make_mesh(config.mesh)
    batch_size = per_device_batch * len(devices)
    config.train.batch_size = batch_size
    model = build_model(config.model)
    tx = train_state.make_optimizer(config.optimizer)
    state, shardings = train_state.create_train_state(model, tx, config, mesh)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    step_fn = train_step.make_train_step(model, tx, config, mesh, shardings)
    batch = synthetic_batch(config, batch_size, mesh)
    rng = jax.random.PRNGKey(config.seed)

    start = time.perf_counter()
    compiled = step_fn.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    flops = compiled_flops(compiled)

    holder = {"state": state}

    def one_step() -> Any:
        holder["state"], metrics = compiled(holder["state"], batch, rng)
        return metrics

    time_calls(one_step, warmup)
    step_s = statistics.median(time_calls(one_step, steps))

    denoise = jax.jit(lambda p, z, lg, lb: model.apply({"params": p}, z, lg, lb, train=False))
    logsnr = jnp.zeros((batch_size,), jnp.float32)
    z = train_step.device_images(batch["image"], batch["flip"])
    args = (holder["state"].ema_params, z, logsnr, batch["label"])
    time_calls(lambda: denoise(*args), 1 + warmup)
    denoise_s = statistics.median(time_calls(lambda: denoise(*args), steps))
    num_sample_steps = sample_steps or config.sample.num_steps
    passes = 1 if config.sample.guidance_scale == 1.0 else 2  # Guidance: cond + uncond pass.

    peak_bytes, memory_source = peak_memory_bytes(devices)
    peak = peak_flops if peak_flops is not None else peak_flops_for(devices[0])
    return {
        "device": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
        "host": platform.node(),
        "num_params": int(num_params),
        "global_batch": batch_size,
        "per_device_batch": per_device_batch,
        "compile_s": round(compile_s, 2),
        "step_time_s": step_s,
        "train_images_per_s": batch_size / step_s,
        "flops_per_step_per_device": flops,
        "flops_per_step_total": flops * len(devices) if flops else None,
        "achieved_flops_per_s_per_device": flops / step_s if flops else None,
        "peak_flops_per_device": peak,
        "mfu": flops / step_s / peak if flops and peak else None,
        "peak_memory_bytes": peak_bytes,
        "peak_memory_source": memory_source,
        "denoiser_time_s": denoise_s,
        "sample_steps": num_sample_steps,
        "denoiser_passes_per_step": passes,
        "sample_images_per_s": batch_size / (denoise_s * num_sample_steps * passes),
    }


def summary(r: dict[str, Any]) -> str:
    """Human-readable lines."""
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "N/A (no peak FLOP/s for device)"
    flops = r["flops_per_step_per_device"]
    return "\n".join([
        f"device:           {r['device']}",
        f"params:           {r['num_params']:,}",
        f"global batch:     {r['global_batch']} ({r['per_device_batch']} per device)",
        f"compile:          {r['compile_s']:.1f} s",
        f"train step:       {1e3 * r['step_time_s']:.1f} ms median -> "
        f"{r['train_images_per_s']:.1f} images/s",
        f"FLOPs/step:       {flops:.3e} per device (XLA cost analysis) -> "
        f"{flops / r['step_time_s'] / 1e12:.4f} TFLOP/s per device" if flops else
        "FLOPs/step:       unavailable",
        f"MFU:              {mfu}",
        f"peak memory:      {r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['peak_memory_source']})",
        f"denoiser call:    {1e3 * r['denoiser_time_s']:.1f} ms (batch {r['global_batch']})",
        f"sampling:         {r['sample_images_per_s']:.2f} images/s "
        f"({r['sample_steps']} steps x {r['denoiser_passes_per_step']} passes)",
    ])


def main(argv: list[str]) -> None:
    del argv
    result = benchmark(FLAGS.config, FLAGS.per_device_batch, FLAGS.steps, FLAGS.warmup,
                       FLAGS.peak_flops, FLAGS.sample_steps)
    print(summary(result))
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
