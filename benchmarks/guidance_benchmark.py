"""Guidance cost: one forward on 2B rows vs two on B, and what to run outside the SiD2 interval.

    python benchmarks/guidance_benchmark.py --config=configs/quickstart.py --batch=32 \
        --num_steps=32 --repeats=5

Times the whole sampler (one jitted `samplers.sample` call of `--num_steps` steps on
`--batch` images, guidance scale `--guidance_scale`) for three ways of guiding, with the interval
set to cover all, half or a quarter of the steps (a middle range of the noise levels, as SiD2):

- `sequential`: the conditional pass, then inside the interval the unconditional one, two
  forwards on B rows (what `samplers.guided_output` did before it was batched);
- `batched_cond`: inside the interval one forward on 2B rows, outside it a `lax.cond` to one
  forward on B rows (`samplers.guided_output` now);
- `batched_always`: one forward on 2B rows at every step, the unconditional half dropped
  outside the interval (no `lax.cond`).

Prints the median seconds per sampler call over `--repeats` calls after the compile (the
variants take turns), images/s and the load average; the last line is the same as JSON.
Not a test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from sd_jax import models, specs  # noqa: E402
from sd_jax.diffusion import samplers  # noqa: E402
from sd_jax.diffusion.spec import SamplingSpec  # noqa: E402
from sd_jax.models.init import init_params  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_integer("batch", 32, "Images per sampler call (B).")
flags.DEFINE_integer("num_steps", 32, "Sampler steps.")
flags.DEFINE_integer("repeats", 5, "Timed sampler calls after the compile.")
flags.DEFINE_float("guidance_scale", 2.0, "Guidance scale 1 + w.")
FLAGS = flags.FLAGS

FRACTIONS = (1.0, 0.5, 0.25)  # Share of the steps inside the guidance interval.


def sequential(denoise_fn, z_bhwc, logsnr_b, labels_b, *, guidance_scale, guidance_logsnr_min,
               guidance_logsnr_max, null_label):
    """Guidance as before: conditional pass, then the unconditional one inside the interval."""
    out_cond = denoise_fn(z_bhwc, logsnr_b, labels_b).astype(jnp.float32)
    w, logsnr = guidance_scale - 1.0, logsnr_b[0]

    def guided(out_cond):
        null_b = jnp.full_like(labels_b, null_label)
        return (1.0 + w) * out_cond - w * denoise_fn(z_bhwc, logsnr_b, null_b)

    inside = (logsnr >= guidance_logsnr_min) & (logsnr <= guidance_logsnr_max)
    return jax.lax.cond(inside, guided, lambda out: out, out_cond)


def batched_always(denoise_fn, z_bhwc, logsnr_b, labels_b, *, guidance_scale,
                   guidance_logsnr_min, guidance_logsnr_max, null_label):
    """One forward on 2B rows at every step; outside the interval only its conditional half."""
    pairs = lambda a, b: jnp.stack([a, b], axis=1).reshape(-1, *a.shape[1:])
    null_b = jnp.full_like(labels_b, null_label)
    out = denoise_fn(pairs(z_bhwc, z_bhwc), pairs(logsnr_b, logsnr_b), pairs(labels_b, null_b))
    out = out.astype(jnp.float32).reshape(-1, 2, *out.shape[1:])
    w, logsnr = guidance_scale - 1.0, logsnr_b[0]
    inside = (logsnr >= guidance_logsnr_min) & (logsnr <= guidance_logsnr_max)
    return jnp.where(inside, (1.0 + w) * out[:, 0] - w * out[:, 1], out[:, 0])


VARIANTS = {"sequential": sequential, "batched_cond": samplers.guided_output,
            "batched_always": batched_always}


def middle_interval(spec: SamplingSpec, fraction: float) -> tuple[float, float]:
    """logSNR bounds that hold the middle `fraction` of the sampler's noise levels."""
    if fraction >= 1.0:
        return -1e9, 1e9
    grid = np.sort(np.asarray(spec.diffusion.logsnr_fn()(jnp.arange(1, spec.num_steps + 1)
                                                / spec.num_steps)))
    count = max(1, round(fraction * len(grid)))
    first = (len(grid) - count) // 2
    return float(grid[first]), float(grid[first + count - 1])


def compile_variant(name: str, spec: SamplingSpec, model: nn.Module, params, labels):
    """The sampler compiled with `VARIANTS[name]` as the guidance: a function of the rng."""
    original, samplers.guided_output = samplers.guided_output, VARIANTS[name]
    try:  # A new function object: traced afresh with this guidance.
        run = jax.jit(lambda p, rng, y: samplers.sample(
            lambda z, snr, c: model.apply({"params": p}, z, snr, c, train=False), rng, y, spec))
        run(params, jax.random.key(0), labels).block_until_ready()  # Compile.
    finally:
        samplers.guided_output = original
    return lambda rng: run(params, rng, labels).block_until_ready()


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config
    config.sample.num_steps, config.sample.guidance_scale = FLAGS.num_steps, FLAGS.guidance_scale
    spec = specs.sampling_spec(config)
    model = models.build_model(config.model)
    params = nn.meta.unbox(init_params(model, config.model, jax.random.key(0)))
    labels = jnp.arange(FLAGS.batch) % max(config.model.num_classes, 1)
    load_before = os.getloadavg()
    runs = {}
    for fraction in FRACTIONS:
        lo, hi = middle_interval(spec, fraction)
        guided = spec.replace(guidance_logsnr_min=lo, guidance_logsnr_max=hi)
        for name in VARIANTS:
            runs[fraction, name] = compile_variant(name, guided, model, params, labels)
    rows = []
    for (fraction, name), seconds in median_seconds(runs, FLAGS.repeats).items():
        rows.append({"guided_fraction": fraction, "variant": name, "seconds": seconds,
                     "images_per_s": FLAGS.batch / seconds})
        print(f"guided {fraction:4.0%} of steps  {name:15s} {seconds:7.3f} s per call  "
              f"{FLAGS.batch / seconds:7.2f} images/s", flush=True)
    result = {"device": jax.devices()[0].device_kind, "batch": FLAGS.batch,
              "num_steps": FLAGS.num_steps, "repeats": FLAGS.repeats,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "rows": rows}
    print(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
