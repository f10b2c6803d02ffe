"""Sampling speed of every sampler at equal network evaluations (NFE): what a step costs beyond
the network (not a test).

    python benchmarks/sampler_benchmark.py --config=configs/quickstart.py --batch=32 --nfe=32 \
        --repeats=7

Times the whole sampler (one jitted `samplers.sample` call of `--batch` images, the config's
model with random weights, no guidance) for each sampler at the step count that spends `--nfe`
evaluations (`samplers.steps_for_nfe`; Heun 2 per step). The samplers take turns, so a change
in the machine's load falls on all alike; prints the median seconds per call, images/s, the
ratio to DDIM's time, the load average, and the same as JSON on the last line.
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
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from sd_jax import models, specs  # noqa: E402
from sd_jax.diffusion import samplers  # noqa: E402
from sd_jax.models.init import init_params  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_integer("batch", 32, "Images per sampler call.")
flags.DEFINE_integer("nfe", 32, "Network evaluations per image.")
flags.DEFINE_integer("repeats", 7, "Timed sampler calls after the compile.")
flags.DEFINE_string("samplers", "", "Comma-separated samplers (default: every one).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config
    config.sample.guidance_scale = 1.0
    model = models.build_model(config.model)
    params = nn.meta.unbox(init_params(model, config.model, jax.random.key(0)))
    params = jax.tree.map(lambda x: x + 0.01, params)  # No zero layer: a real forward each step.
    labels = jnp.arange(FLAGS.batch) % max(config.model.num_classes, 1)
    names = FLAGS.samplers.split(",") if FLAGS.samplers else list(samplers.SAMPLERS)
    runs, nfes = {}, {}
    for name in names:
        config.sample.sampler = name
        config.sample.num_steps = samplers.steps_for_nfe(name, FLAGS.nfe)
        spec = specs.sampling_spec(config)
        nfes[name] = samplers.nfe(spec)
        run = jax.jit(lambda p, rng, y, spec=spec: samplers.sample(
            lambda z, snr, c: model.apply({"params": p}, z, snr, c, train=False), rng, y, spec))
        run(params, jax.random.key(0), labels).block_until_ready()  # Compile.
        runs[name] = lambda rng, run=run: run(params, rng, labels).block_until_ready()
    load_before = os.getloadavg()
    seconds = median_seconds(runs, FLAGS.repeats)
    base = seconds.get("ddim")
    rows = [{"sampler": name, "nfe": nfes[name], "seconds": t, "images_per_s": FLAGS.batch / t,
             "time_vs_ddim": t / base if base else None} for name, t in seconds.items()]
    for r in rows:
        ratio = f"{r['time_vs_ddim']:.3f}x DDIM's time" if base else ""
        print(f"{r['sampler']:13s} NFE {r['nfe']:4d}  {r['seconds']:7.3f} s per call  "
              f"{r['images_per_s']:7.2f} images/s  {ratio}", flush=True)
    print(f"load average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
    print(json.dumps({"device": jax.devices()[0].device_kind, "batch": FLAGS.batch,
                      "repeats": FLAGS.repeats, "load_average_before": load_before,
                      "load_average_after": os.getloadavg(), "rows": rows}))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
