"""The train step: gradient accumulation, weights in the compute dtype, the dropout PRNG.

Budget: ~60 s on 2 cores (three child processes with 8 fake devices).
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from utils import run_python, tiny_config

from sd_jax import models
from sd_jax.models.init import init_params
from sd_jax.train import state as train_state
from sd_jax.train import step as train_step

# The bound for micro-batched vs full-batch results in float32. Both runs compute the
# same per-example terms from the same draws; only the order of float32 sums changes (the sum
# over examples, and XLA's blocking of reductions for the other shapes). The longest reordered
# sum here is a conv's weight gradient over B * H * W = 8 * 8 * 8 = 512 rows: worst case
# (n - 1) u = 3.0e-5 of its terms' magnitudes, typically sqrt(n) u = 1.3e-6; measured 2e-7 to
# 5e-7 (relative to the largest gradient entry, since a gradient that is exactly 0, e.g. a conv
# bias under GroupNorm, holds only rounding noise).
ACCUMULATION_RTOL = 1e-5


def random_params(model: nn.Module, cfg, seed: int = 5):
    """Init params plus noise, so that no layer is zero and every weight gets a gradient."""
    params = nn.meta.unbox(init_params(model, cfg.model, jax.random.PRNGKey(0)))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return tree.unflatten([x + 0.05 * jax.random.normal(k, x.shape)
                           for x, k in zip(leaves, keys, strict=True)])


def random_batch(batch_size: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch in the loader's contract: uint8 images, flips, int32 labels."""
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
            "flip": rng.random(batch_size) < 0.5,
            "label": rng.integers(0, 10, batch_size).astype(np.int32)}


def loss_and_grads(cfg, params, batch):
    """(metrics, grads) of the step's loss, jitted."""
    model = models.build_model(cfg.model)
    fn = jax.jit(functools.partial(train_step.loss_and_grads, model=model, config=cfg))
    return fn(params, batch, jax.random.PRNGKey(3))


def with_extra_metrics(aux, batch_size, *args):
    """The step's metrics plus two a user might add: a count and a per-bucket vector of sums."""
    buckets = jnp.minimum((aux["t_b"] * 3).astype(jnp.int32), 2)
    return {**real_microbatch_metrics(aux, batch_size, *args), "rows": jnp.float32(len(aux["t_b"])),
            "t_by_bucket": jnp.zeros(3).at[buckets].add(aux["t_b"])}


real_microbatch_metrics = train_step.microbatch_metrics


def max_relative_difference(a, b) -> float:
    """max |a - b| over all leaves, relative to max |b| over all leaves."""
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    return diff / max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))


@pytest.mark.parametrize("time_sampling", ["uniform", "stratified"])
def test_microbatches_give_the_full_batch_loss_and_gradients(time_sampling, monkeypatch):
    """t, noise and label drop are per global row, so only summation order changes; every
    metric of `microbatch_metrics` (here with two more) is summed over the micro-batches."""
    monkeypatch.setattr(train_step, "microbatch_metrics", with_extra_metrics)
    overrides = {"diffusion.time_sampling": time_sampling, "train.label_dropout": 0.5}
    full_cfg = tiny_config(**overrides)
    assert full_cfg.model.dropout == 0 and full_cfg.train.batch_size == 8
    params = random_params(models.build_model(full_cfg.model), full_cfg)
    batch = random_batch(8, full_cfg.model.image_size)
    metrics, grads = loss_and_grads(full_cfg, params, batch)
    loss = metrics["loss"]
    assert float(metrics["rows"]) == 8 and int(jnp.sum(metrics["t_by_bucket"] > 0)) >= 2
    assert float(loss) > 0.1 and float(jax.tree.reduce(jnp.add, jax.tree.map(
        lambda g: jnp.sum(jnp.abs(g)), grads))) > 0
    for micro in (4, 2, 1):
        cfg = tiny_config(**overrides, **{"train.microbatch_size": micro})
        micro_metrics, micro_grads = loss_and_grads(cfg, params, batch)
        assert float(micro_metrics["rows"]) == 8, micro
        np.testing.assert_allclose(micro_metrics["t_by_bucket"], metrics["t_by_bucket"],
                                   rtol=ACCUMULATION_RTOL)
        micro_loss = micro_metrics["loss"]
        assert abs(float(micro_loss) - float(loss)) <= ACCUMULATION_RTOL * float(loss), micro
        assert max_relative_difference(micro_grads, grads) <= ACCUMULATION_RTOL, micro
    # Another batch gives another loss: the comparison above can fail.
    other, _ = loss_and_grads(full_cfg, params, random_batch(8, full_cfg.model.image_size, 1))
    assert abs(float(other["loss"]) - float(loss)) > 1e-3 * float(loss)


def test_memory_of_an_accumulated_step_is_that_of_its_microbatch():
    """XLA's buffer assignment: the activations of a 64-image step in micro-batches of 8 take
    what one 8-image step takes (plus the gradient accumulator), not 8 times that."""
    def temp_bytes(batch_size: int, micro: int) -> int:
        cfg = tiny_config(**{"train.batch_size": batch_size, "train.microbatch_size": micro})
        model = models.build_model(cfg.model)
        params = jax.eval_shape(lambda: random_params(model, cfg))
        size = cfg.model.image_size
        batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
                 "flip": jax.ShapeDtypeStruct((batch_size,), bool),
                 "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
        fn = jax.jit(functools.partial(train_step.loss_and_grads, model=model, config=cfg))
        compiled = fn.lower(params, batch, jax.ShapeDtypeStruct((2,), jnp.uint32)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    eight, sixty_four = temp_bytes(8, 0), temp_bytes(64, 0)
    accumulated = temp_bytes(64, 8)
    assert sixty_four > 4 * eight  # Activations do scale with the batch ...
    assert accumulated < 1.25 * eight, (accumulated, eight)  # ... and here with the micro-batch.


def test_microbatch_size_is_validated():
    from sd_jax import validate as config_validation
    from sd_jax.errors import UserError

    check = config_validation.check_microbatch
    for ok in (0, 8, 4):
        check(tiny_config(**{"train.microbatch_size": ok}).train, 4)
    with pytest.raises(UserError, match="must divide train.batch_size=8"):
        check(tiny_config(**{"train.microbatch_size": 3}).train, 1)
    with pytest.raises(UserError, match="divisible by the 8 devices"):
        check(tiny_config(**{"train.microbatch_size": 4}).train, 8)
    with pytest.raises(UserError, match=">= 0"):
        config_validation.validate(tiny_config(**{"train.microbatch_size": -2}), "train")


ACCUMULATION_8_DEVICES = """
import functools, sys
sys.path[:0] = ["tests", "tests/train"]
import jax, numpy as np
from test_train_step import ACCUMULATION_RTOL, max_relative_difference, random_batch, random_params
from utils import tiny_config
from sd_jax import models, sharding
from sd_jax.models.init import init_params
from sd_jax.train import state as train_state
from sd_jax.train import step as train_step

assert jax.device_count() == 8
batch = random_batch(16, 8)
results = {}
for micro in (0, 8):
    cfg = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4, "model.remat": "all",
                         "train.batch_size": 16, "train.microbatch_size": micro})
    mesh = sharding.make_mesh(cfg.mesh)
    model, tx = models.build_model(cfg.model), train_state.make_optimizer(cfg.optimizer)
    state, shardings = train_state.create_train_state(model, tx, cfg, mesh)
    params = jax.device_put(random_params(model, cfg), shardings.params)
    state = state.replace(params=params)
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(params))
    data = sharding.batch_sharding(mesh)
    global_batch = sharding.global_batch(batch, mesh)
    grads_fn = jax.jit(functools.partial(train_step.loss_and_grads, model=model, config=cfg,
                                         param_shardings=shardings.params),
                       in_shardings=(shardings.params, dict.fromkeys(batch, data), None),
                       out_shardings=(None, shardings.params))
    step_key = jax.random.fold_in(jax.random.PRNGKey(3), 0)  # The train step's at step 0.
    summed, grads = grads_fn(params, global_batch, step_key)
    loss = summed["loss"]
    step = train_step.make_train_step(model, tx, cfg, mesh, shardings)
    _, metrics = step(state, global_batch, jax.random.PRNGKey(3))
    results[micro] = (float(loss), jax.device_get(grads), jax.device_get(metrics))
(loss0, grads0, m0), (loss8, grads8, m8) = results[0], results[8]
assert abs(loss8 - loss0) <= ACCUMULATION_RTOL * loss0, (loss0, loss8)
assert max_relative_difference(grads8, grads0) <= ACCUMULATION_RTOL
for key in ("loss", "grad_norm"):  # The jitted step's metrics are the global batch's.
    assert abs(m8[key] - m0[key]) <= ACCUMULATION_RTOL * m0[key], (key, m0, m8)
assert abs(m0["loss"] - loss0) <= ACCUMULATION_RTOL * loss0
print("ACCUMULATION_OK")
"""


def test_accumulation_composes_with_fsdp_and_remat_on_8_devices():
    proc = run_python(ACCUMULATION_8_DEVICES, num_devices=8)
    assert "ACCUMULATION_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def collectives(hlo: str, op: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of every `op` (e.g. 'all-gather') result in an HLO module's text; a
    combined collective contributes one entry per tuple element."""
    found = []
    for match in re.finditer(rf"= (\([^=]*?\)|\S+) {op}(?:-start)?\(", hlo):
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
            found.append((dtype, tuple(int(d) for d in dims.split(",") if d)))
    return found


COMPUTE_DTYPE_8_DEVICES = """
import json, sys
sys.path.insert(0, "tests")
import jax, jax.numpy as jnp
from utils import tiny_config
from benchmarks import xla_stats
from sd_jax import models, sharding
from sd_jax.models.init import init_params
from sd_jax.train import state as train_state
from sd_jax.train import step as train_step

out = {}
for dtype in ("bfloat16", "float32"):
    cfg = tiny_config(**{"model.dtype": dtype, "mesh.data": 1, "mesh.fsdp": 8,
                         "train.batch_size": 16})
    mesh = sharding.make_mesh(cfg.mesh)
    model, tx = models.build_model(cfg.model), train_state.make_optimizer(cfg.optimizer)
    abstract, shardings = train_state.state_shardings(model, tx, cfg, mesh)
    size, data = cfg.model.image_size, sharding.batch_sharding(mesh)
    batch = {"image": jax.ShapeDtypeStruct((16, size, size, 3), jnp.uint8, sharding=data),
             "flip": jax.ShapeDtypeStruct((16,), bool, sharding=data),
             "label": jax.ShapeDtypeStruct((16,), jnp.int32, sharding=data)}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    lowered = train_step.make_train_step(model, tx, cfg, mesh, shardings).lower(
        abstract, batch, rng)
    compiled, before, source = xla_stats.compile_for_collectives(lowered)
    assert source == "before XLA:CPU's bf16 widening", source
    sharded = [list(x.shape) for x, s in zip(jax.tree.leaves(abstract.params),
                                             jax.tree.leaves(shardings.params))
               if not s.is_fully_replicated]
    out[dtype] = {"partitioned": before, "final": compiled.as_text(),
                  "sharded_weights": sharded}
print("HLO_JSON" + json.dumps(out))
"""


def test_weights_are_all_gathered_in_the_compute_dtype_with_fsdp():
    """bf16 model, fsdp=8: every float all-gather (so every FSDP weight gather) moves bf16, and
    the weights are gathered. The float32 model has no bf16 anywhere.

    Read from the program as XLA has partitioned and optimised it, just before the CPU backend's
    `float-normalization-bf16` pass: the CPU has no bf16 arithmetic and widens every bf16
    collective and dot to float32 there (in the final CPU HLO no all-gather is bf16), which GPUs
    and TPUs do not.
    """
    import json

    proc = run_python(COMPUTE_DTYPE_8_DEVICES, num_devices=8)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("HLO_JSON")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    hlo = json.loads(line[len("HLO_JSON"):])
    bf16 = hlo["bfloat16"]
    gathers = collectives(bf16["partitioned"], "all-gather")
    floats = [g for g in gathers if g[0] in ("f32", "bf16", "f16", "f64")]
    assert floats and all(dtype == "bf16" for dtype, _ in floats), floats
    gathered = {tuple(sorted(d for d in shape if d != 1)) for _, shape in floats}
    sharded = {tuple(sorted(d for d in shape if d != 1)) for shape in bf16["sharded_weights"]}
    # Weights are gathered (an embedding table need not be: its lookup is partitioned).
    assert len(sharded & gathered) >= 10, (sharded, gathered)
    # The master weights and the optimizer state stay float32 (the step's parameters).
    entry = bf16["final"][bf16["final"].index("ENTRY"):].split("\n")[0]
    assert "f32[" in entry and "bf16" not in entry, entry
    f32 = hlo["float32"]
    assert "bf16" not in f32["partitioned"] and "bf16" not in f32["final"]
    assert {dtype for dtype, _ in collectives(f32["partitioned"], "all-gather")} >= {"f32"}


def test_resumed_steps_draw_the_same_dropout_masks():
    """Exact resume with dropout on (threefry keys, kept: experiments/dropout_prng/): a step's
    masks depend only on (rng, step, micro-batch), so steps run after a host round trip of the
    state (what a checkpoint does) are bitwise those of the uninterrupted run."""
    from sd_jax import sharding

    batches = [random_batch(8, 8, seed) for seed in range(3)]
    rng = jax.random.PRNGKey(7)

    def runner(dropout: float):
        cfg = tiny_config(**{"model.dropout": dropout, "train.microbatch_size": 4})
        mesh = sharding.make_mesh(cfg.mesh)
        model, tx = models.build_model(cfg.model), train_state.make_optimizer(cfg.optimizer)
        _, shardings = train_state.create_train_state(model, tx, cfg, mesh)
        step = train_step.make_train_step(model, tx, cfg, mesh, shardings)

        def run(state, steps):
            state = state or train_state.create_train_state(model, tx, cfg, mesh)[0]
            losses = []
            for batch in steps:
                state, metrics = step(state, batch, rng)
                losses.append(float(metrics["loss"]))
            return state, losses

        return run

    run = runner(0.5)
    straight, straight_losses = run(None, batches)
    first, first_losses = run(None, batches[:1])
    saved = jax.device_get(first)  # The checkpoint: the state on the host, then back.
    resumed, resumed_losses = run(jax.device_put(saved), batches[1:])
    assert first_losses + resumed_losses == straight_losses
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
                 jax.device_get(straight.params))
    # The masks matter: without dropout the same steps give other losses (the first step's
    # output is 0 either way: the network is zero at init).
    _, no_dropout_losses = runner(0.0)(None, batches)
    assert no_dropout_losses[-1] != straight_losses[-1]
