"""Memory of the train step without running it: XLA's memory analysis of the compiled step.

    python benchmarks/step_memory.py --config=configs/folder_small.py --batch_sizes=16,32

Compiles `sd_jax.train.step.make_train_step` for the local devices on abstract inputs
(`jax.eval_shape` state, no parameters allocated) and prints, per global batch size, the bytes
of the arguments (params, EMA, Adam moments: donated, so the outputs reuse them) and of the
temporaries (activations kept for the backward pass, gradients, workspace). Temporaries grow
linearly with the batch, so two sizes give the per-image cost. The figures are for the backend
it runs on: a CPU compile fuses differently from a GPU one, so read CPU figures as an estimate.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_jax import models, sharding  # noqa: E402
from sd_jax.train import state as train_state  # noqa: E402
from sd_jax.train.step import make_train_step  # noqa: E402

GIB = 2.0**30


def step_memory(config, batch_size: int) -> dict[str, float]:
    """GiB of arguments, temporaries and outputs of the train step compiled at `batch_size`."""
    config = config.copy_and_resolve_references()
    config.train.batch_size = batch_size
    mesh = sharding.make_mesh(config.mesh)
    model = models.build_model(config.model)
    tx = train_state.make_optimizer(config.optimizer)
    abstract, shardings = train_state.state_shardings(model, tx, config, mesh)
    step = make_train_step(model, tx, config, mesh, shardings)
    s = config.model.image_size
    batch = {"image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.uint8),
             "flip": jax.ShapeDtypeStruct((batch_size,), bool),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    m = step.lower(abstract, batch, rng).compile().memory_analysis()
    return {"arguments": m.argument_size_in_bytes / GIB, "temporaries": m.temp_size_in_bytes / GIB,
            "outputs": m.output_size_in_bytes / GIB}


_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (overrides as usual).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["16", "32"], "Global batch sizes to compile.")


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    print(f"{jax.device_count()} x {jax.devices()[0].platform}; model.dtype "
          f"{config.model.dtype}, remat {config.model.remat}")
    for b in map(int, _BATCH_SIZES.value):
        start = time.perf_counter()
        mem = step_memory(config, b)
        print(f"batch {b}: arguments {mem['arguments']:.2f} GiB, temporaries "
              f"{mem['temporaries']:.2f} GiB ({mem['temporaries'] / b * 1024:.0f} MiB per image), "
              f"outputs {mem['outputs']:.2f} GiB; compiled in {time.perf_counter() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
