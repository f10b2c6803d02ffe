"""`--mode=plan`: the memory one device needs for a training layout, and the layouts that fit.

For a config, a device count (`config.plan.devices`) and the memory of one device
(`config.plan.device_memory_gb`) it prints, per device: params, EMA params, optimizer state and
gradients (the real shardings of `sd_jax.sharding` on an abstract mesh of that many devices), the
input batch, the weights kept for the backward pass, and the activations of one micro-batch. It
then lists the layouts (`mesh.fsdp`, `train.microbatch_size`, `model.remat`) that fit, best first.

Nothing is allocated and nothing is compiled. Activations are the residuals of the backward pass:
the leaves of the `jax.vjp` closure of the training loss, traced by `jax.make_jaxpr` at two batch
sizes (the difference is the per-example part), so the remat policy is honoured. XLA fuses some
of them away: on CPU the compiled step took 88 to 90% of the planned bytes without remat
(docs/training.md, plan mode), so the estimate errs on the safe side. With remat, the backward
pass also recomputes one block at a time; the largest such block (its residuals without remat,
plus its weights) is added.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.extend.core import Literal
from jax.sharding import AbstractMesh

from sd_jax import sharding, specs
from sd_jax.errors import UserError
from sd_jax.models import build_model
from sd_jax.models.init import param_shapes
from sd_jax.models.layers import cast_params
from sd_jax.models.spec import REMAT
from sd_jax.train import state as train_state
from sd_jax.train import step as train_step

GIB = 2**30
TRACE_BATCHES = (2, 4)  # Two batch sizes; the residuals' growth between them is per example.
COMPONENTS = ("params", "ema", "optimizer", "gradients", "batch", "weights", "activations",
              "recompute")


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way to run the global batch: FSDP degree, micro-batch per device, remat mode."""

    fsdp: int
    microbatch: int  # Per device; equal to the per-device batch means no accumulation.
    remat: str


@dataclasses.dataclass(frozen=True)
class Residuals:
    """What the backward pass keeps under one remat mode, from the vjp closure's leaves."""

    per_example: dict[str, int]  # Top-level module -> bytes per example.
    weights: int  # Batch-independent residuals computed from params (e.g. compute-dtype casts).
    param_modules: frozenset[str]  # Modules whose float32 params are themselves residuals.


def _nbytes(aval: Any) -> int:
    return math.prod(aval.shape) * jnp.dtype(aval.dtype).itemsize


def _module_of(eqn: Any, modules: set[str]) -> str:
    """The top-level module (a key of the params tree) an equation belongs to, from its name stack
    (e.g. 'jvp(UViT)/UViT.middle/transformer3/attn/qkv' -> 'transformer3')."""
    for part in str(eqn.source_info.name_stack).split("/"):
        if part in modules:
            return part
    return "other"


def _residual_jaxpr(config: ml_collections.ConfigDict, params: Any, batch: int) -> Any:
    """Jaxpr whose outputs are the residuals, w.r.t. the params, of the train step's own forward
    (`train_step.microbatch_loss` on one micro-batch of `batch` rows, params cast as the step
    casts them)."""
    m = config.model
    model, spec = build_model(m), specs.diffusion_spec(config)

    def residuals(p, image, flip, label, step_key):
        raw = {"image": image, "flip": flip, "label": label}
        mb = jax.tree.map(lambda x: x[0], train_step.microbatches(raw, step_key, 1, config))

        def loss(q):
            return train_step.microbatch_loss(
                cast_params(q, m.dtype), mb, train_step.dropout_key(step_key), model=model,
                spec=spec, batch_size=batch)[0]

        return jax.vjp(loss, p)[1]

    image = jax.ShapeDtypeStruct((batch, m.image_size, m.image_size, m.image_channels), jnp.uint8)
    flip = jax.ShapeDtypeStruct((batch,), jnp.bool_)
    label = jax.ShapeDtypeStruct((batch,), jnp.int32)
    step_key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return jax.make_jaxpr(residuals)(params, image, flip, label, step_key).jaxpr


def _classify(jaxpr: Any, params: Any) -> list[tuple[str, str, int]]:
    """(kind, module, bytes) per residual: kind 'param' (a param leaf itself), 'input' (the batch
    or key), 'computed'."""
    modules = set(params)
    paths = [path[0].key for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    invars = {v: i for i, v in enumerate(jaxpr.invars)}
    producer = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    result = []
    for var in jaxpr.outvars:
        if isinstance(var, Literal):
            continue
        if var in invars:
            i = invars[var]
            kind, module = ("param", paths[i]) if i < len(paths) else ("input", "")
        elif var in producer:
            kind, module = "computed", _module_of(producer[var], modules)
        else:  # A constant the trace captured (e.g. wavelet filters).
            kind, module = "computed", "other"
        result.append((kind, module, _nbytes(var.aval)))
    return result


def residuals(config: ml_collections.ConfigDict, remat: str) -> Residuals:
    """The residual profile of `config`'s training loss under `remat` (traced, not allocated)."""
    config = config.copy_and_resolve_references()
    config.model.remat = remat
    params = param_shapes(config.model)
    small, large = (_classify(_residual_jaxpr(config, params, b), params) for b in TRACE_BATCHES)
    if [(k, m) for k, m, _ in small] != [(k, m) for k, m, _ in large]:
        raise RuntimeError("residuals differ in structure between batch sizes; cannot plan")
    per_example: dict[str, int] = {}
    weights, param_modules = 0, set()
    steps = TRACE_BATCHES[1] - TRACE_BATCHES[0]
    for (kind, module, lo), (_, _, hi) in zip(small, large, strict=True):
        if kind == "param":
            param_modules.add(module)
        elif kind == "computed" and hi == lo:
            weights += lo
        elif kind == "computed":
            per_example[module] = per_example.get(module, 0) + (hi - lo) // steps
    return Residuals(per_example, weights, frozenset(param_modules))


class Planner:
    """Per-device bytes of any layout of one config on `devices` devices; traces are cached."""

    def __init__(self, config: ml_collections.ConfigDict, devices: int):
        batch = int(config.train.batch_size)
        if devices < 1 or batch % devices:
            raise UserError(f"config.train.batch_size={batch} is not divisible by "
                            f"{devices} devices; plan for a device count that divides it")
        self.config, self.devices = config, devices
        self.per_device_batch = batch // devices
        self.params = param_shapes(config.model)
        self.module_param_bytes = {k: sum(_nbytes(x) for x in jax.tree.leaves(v))
                                   for k, v in self.params.items()}

    @functools.cache  # noqa: B019 - one planner per run; the cache dies with it.
    def residuals(self, remat: str) -> Residuals:
        return residuals(self.config, remat)

    @functools.cache  # noqa: B019
    def state_bytes(self, fsdp: int) -> dict[str, int]:
        """Per-device bytes of params, EMA and optimizer state under the real sharding rules."""
        mesh = AbstractMesh((self.devices // fsdp, fsdp), sharding.MESH_AXES)
        model = build_model(self.config.model)
        tx = train_state.make_optimizer(self.config.optimizer)
        abstract, shardings = train_state.state_shardings(model, tx, self.config, mesh)

        def shard_bytes(tree, tree_shardings):
            return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                       for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(tree_shardings),
                                       strict=True))

        return {"params": shard_bytes(abstract.params, shardings.params),
                "ema": shard_bytes(abstract.ema_params, shardings.ema_params),
                "optimizer": shard_bytes(abstract.opt_state, shardings.opt_state)}

    def bytes(self, layout: Layout, per_device_batch: int | None = None) -> dict[str, int]:
        """Per-device bytes by component (COMPONENTS) and their 'total', at the config's batch
        or `per_device_batch` images per device (the traces serve any batch)."""
        batch = self.per_device_batch if per_device_batch is None else per_device_batch
        if self.devices % layout.fsdp or batch % layout.microbatch:
            raise UserError(f"layout {layout} does not divide {self.devices} devices / "
                            f"{batch} images per device")
        out = dict(self.state_bytes(layout.fsdp))
        accumulating = layout.microbatch < batch
        out["gradients"] = out["params"] * (2 if accumulating else 1)  # + the accumulator.
        m = self.config.model
        out["batch"] = batch * (m.image_size**2 * m.image_channels + 1) * 4
        base, mine = self.residuals("none"), self.residuals(layout.remat)
        rematted = {k for k, v in base.per_example.items() if mine.per_example.get(k, 0) != v}
        # Params a non-rematted op reads in the backward pass stay gathered under FSDP; rematted
        # blocks gather theirs again when they are recomputed.
        gathered = sum(self.module_param_bytes.get(k, 0) for k in mine.param_modules - rematted)
        out["weights"] = mine.weights + (gathered if layout.fsdp > 1 else 0)
        out["activations"] = layout.microbatch * sum(mine.per_example.values())
        out["recompute"] = max(
            (layout.microbatch * (base.per_example[k] - mine.per_example.get(k, 0))
             + self.module_param_bytes.get(k, 0) for k in rematted), default=0)
        out["total"] = sum(out[k] for k in COMPONENTS)
        return out

    def layouts(self) -> list[Layout]:
        """Every layout of this batch on these devices: fsdp | devices, micro-batch | batch."""
        def divisors(n: int) -> list[int]:
            return [d for d in range(1, n + 1) if n % d == 0]

        return [Layout(f, mb, r) for f in divisors(self.devices)
                for mb in divisors(self.per_device_batch) for r in REMAT]


def rank_key(planner: Planner, layout: Layout) -> tuple[int, int, bool, int]:
    """Best first: fewest accumulation steps (every micro-step gathers the FSDP weights again and
    runs smaller kernels), then the least remat (fewest FLOPs), then plain data parallelism
    (fsdp=1: one all-reduce of the gradients, about 2x the params' bytes per device, against
    about 3x for FSDP's gathers and reduce-scatter), then the most memory to spare (FSDP moves
    about the same bytes per device for any fsdp >= 2)."""
    return (planner.per_device_batch // layout.microbatch, REMAT.index(layout.remat),
            layout.fsdp > 1, planner.bytes(layout)["total"])


def overrides(planner: Planner, layout: Layout) -> str:
    """The command-line overrides that select `layout`."""
    microbatch = 0 if layout.microbatch == planner.per_device_batch else (
        layout.microbatch * planner.devices)
    return (f"--config.mesh.data={planner.devices // layout.fsdp} "
            f"--config.mesh.fsdp={layout.fsdp} --config.train.microbatch_size={microbatch} "
            f"--config.model.remat={layout.remat}")


def current_layout(config: ml_collections.ConfigDict, devices: int) -> Layout:
    """The layout `config` asks for, on `devices` devices."""
    _, fsdp = sharding.mesh_sizes(config.mesh, devices)
    batch, micro = int(config.train.batch_size), int(config.train.microbatch_size)
    if micro and (batch % micro or micro % devices):
        raise UserError(f"config.train.microbatch_size={micro} must divide train.batch_size="
                        f"{batch} and be divisible by the {devices} devices")
    return Layout(fsdp, (micro or batch) // devices, config.model.remat)


def device_memory_bytes(config: ml_collections.ConfigDict) -> int:
    """`plan.device_memory_gb` in bytes, or the memory the first device reports."""
    if config.plan.device_memory_gb > 0:
        return int(config.plan.device_memory_gb * GIB)
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        raise UserError(f"{jax.devices()[0].platform} devices report no memory size; pass "
                        "--config.plan.device_memory_gb=N (GiB one device may use)")
    return int(stats["bytes_limit"])


def plan(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The plan as a dict (what `run` prints as its last line)."""
    devices = int(config.plan.devices) or jax.device_count()
    memory = device_memory_bytes(config)
    planner = Planner(config, devices)
    current = current_layout(config, devices)
    fits = sorted((lay for lay in planner.layouts() if planner.bytes(lay)["total"] <= memory),
                  key=lambda lay: rank_key(planner, lay))

    def record(layout: Layout) -> dict[str, Any]:
        b = planner.bytes(layout)
        return {**dataclasses.asdict(layout), "data": devices // layout.fsdp,
                "accumulation_steps": planner.per_device_batch // layout.microbatch,
                "bytes": b, "fits": b["total"] <= memory,
                "overrides": overrides(planner, layout)}

    return {"devices": devices, "device_memory_bytes": memory,
            "global_batch": int(config.train.batch_size),
            "per_device_batch": planner.per_device_batch,
            "current": record(current),
            "fitting": [record(lay) for lay in fits[: int(config.plan.show)]],
            "num_fitting": len(fits)}


def format_plan(result: dict[str, Any]) -> str:
    """Human-readable lines: the config's layout by component, then the fitting layouts."""
    memory, cur = result["device_memory_bytes"], result["current"]
    unit, scale = ("GiB", GIB) if memory >= GIB else ("MiB", 2**20)

    def size(n: int) -> str:
        return f"{n / scale:.2f}"

    lines = [f"plan: global batch {result['global_batch']} on {result['devices']} devices "
             f"({result['per_device_batch']} per device), {size(memory)} {unit} per device",
             f"config's layout: fsdp={cur['fsdp']}, micro-batch {cur['microbatch']} per device, "
             f"remat={cur['remat']}: {size(cur['bytes']['total'])} {unit} per device -> "
             + ("fits" if cur["fits"] else "does NOT fit")]
    lines += [f"  {name:<12} {size(cur['bytes'][name]):>9} {unit}" for name in COMPONENTS]
    lines += ["", f"{result['num_fitting']} layouts fit; best first (fewest accumulation steps, "
              "then least remat, then fsdp=1, then most memory to spare); " + unit + ":",
              "| fsdp | data | micro-batch per device | accumulation | remat | total | "
              "of memory | " + " | ".join(COMPONENTS) + " |",
              "|" + "---|" * (7 + len(COMPONENTS))]
    for r in result["fitting"]:
        b = r["bytes"]
        lines.append(f"| {r['fsdp']} | {r['data']} | {r['microbatch']} | "
                     f"{r['accumulation_steps']} | {r['remat']} | {size(b['total'])} | "
                     f"{b['total'] / memory:.0%} | "
                     + " | ".join(size(b[k]) for k in COMPONENTS) + " |")
    if result["fitting"]:
        lines.append(f"suggested: {result['fitting'][0]['overrides']}")
    else:
        lines.append("nothing fits: use more devices (or devices with more memory)")
    return "\n".join(lines)


# Where to go when a config does not fit on a CPU, by data source.
SMALLER_CONFIGS = {
    "folder": "--config=configs/folder_cpu.py (your own images at 64 px, sized for a CPU)",
    "digits": "--config=configs/quickstart.py (sized for a CPU)",
}


def host_memory_bytes() -> int:
    """This machine's memory: physical, or a smaller cgroup (v2) limit of this container."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


def check_fits_host(config: ml_collections.ConfigDict) -> None:
    """On a CPU, a UserError (one line) when plan mode says training `config` needs more than
    this machine's memory, naming a smaller config; on an accelerator, nothing (XLA reports its
    own out-of-memory at the first step). Traces the step, allocates nothing."""
    if jax.default_backend() != "cpu":
        return
    devices = jax.local_device_count()  # Fake CPU devices share the host's memory.
    need = Planner(config, devices).bytes(current_layout(config, devices))["total"] * devices
    have = host_memory_bytes()
    if need > have:
        instead = SMALLER_CONFIGS.get(config.data.source, "a smaller model or batch")
        raise UserError(
            f"training this config on this CPU needs about {need / GIB:.1f} GiB (--mode=plan), "
            f"more than this machine's {have / GIB:.1f} GiB: use {instead}, or a GPU "
            "(--mode=plan --config.plan.device_memory_gb=N lists the layouts that fit N GiB)")


def run(config: ml_collections.ConfigDict) -> None:
    """Prints the plan, then one JSON line with the same figures."""
    result = plan(config)
    print(format_plan(result))
    print(json.dumps(result))
