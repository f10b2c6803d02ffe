"""`--mode=plan` against XLA's memory analysis of the compiled train step (not a test).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/plan_check.py \\
        --config=configs/imagenet512.py --config.model.image_size=128 ... \\
        --per_device_batch=2,4 --fsdp=1,8                                   # docs/training.md

For each point it lowers and compiles (never runs) the real train step on abstract inputs over
all local devices and prints one markdown row: the plan's per-device bytes, the compiled step's
(arguments + outputs - donated + temporaries, from `compiled.memory_analysis()`) and their ratio.
On CPU only `model.remat=none` is comparable: XLA:CPU's scheduler runs the recomputation of a
rematerialised block early, so remat saves no memory there (docs/training.md, plan mode).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.xla_stats import compiled_memory_bytes  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).", lock_config=True)
flags.DEFINE_list("per_device_batch", ["2"], "Per-device batch; a comma list sweeps.")
flags.DEFINE_list("fsdp", ["1"], "mesh.fsdp; a comma list sweeps (mesh.data = the rest).")
FLAGS = flags.FLAGS


def compiled_step_bytes(config: Any) -> int:
    """Per-device bytes of the compiled train step for `config` on all local devices."""
    from sd_jax import sharding
    from sd_jax.models import build_model
    from sd_jax.train import state as train_state
    from sd_jax.train import step as train_step

    mesh = sharding.make_mesh(config.mesh)
    model, tx = build_model(config.model), train_state.make_optimizer(config.optimizer)
    abstract, shardings = train_state.state_shardings(model, tx, config, mesh)
    step = train_step.make_train_step(model, tx, config, mesh, shardings)
    m, b, data = config.model, config.train.batch_size, sharding.batch_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct((b, m.image_size, m.image_size, m.image_channels),
                                           jnp.uint8, sharding=data),
             "flip": jax.ShapeDtypeStruct((b,), bool, sharding=data),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data)}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    return compiled_memory_bytes(step.lower(abstract, batch, rng).compile())


def check(config: Any) -> dict[str, Any]:
    """Planned and compiled per-device bytes of `config`'s own layout on the local devices."""
    from sd_jax.tools import plan

    n = jax.device_count()
    planner = plan.Planner(config, n)
    planned = planner.bytes(plan.current_layout(config, n))
    compiled = compiled_step_bytes(config)
    return {"planned": planned, "compiled": compiled, "ratio": planned["total"] / compiled}


def main(argv: list[str]) -> None:
    del argv
    config, n = FLAGS.config, jax.device_count()
    print("| fsdp | batch/device | remat | dtype | plan MiB | compiled MiB | plan / compiled |")
    print("|---|---|---|---|---|---|---|")
    for fsdp in map(int, FLAGS.fsdp):
        for per_device_batch in map(int, FLAGS.per_device_batch):
            config.mesh.data, config.mesh.fsdp = n // fsdp, fsdp
            config.train.batch_size, config.train.microbatch_size = per_device_batch * n, 0
            r = check(config)
            print(f"| {fsdp} | {per_device_batch} | {config.model.remat} | {config.model.dtype} "
                  f"| {r['planned']['total'] / 2**20:.2f} | {r['compiled'] / 2**20:.2f} "
                  f"| {r['ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
