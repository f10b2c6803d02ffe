"""First figures on one accelerator, in one command of under 8 minutes (not a test).

    python benchmarks/accelerator.py --out=/tmp/accelerator [--profile]   # one H100 / H200
    python benchmarks/accelerator.py --tiny --out=/tmp/accelerator_tiny    # CPU, shrunk

Runs, each in its own child process (so each train step's device peak memory is its own), logs
in `OUT/logs/`, every figure in `OUT/results.json`, and prints the table last (`OUT/table.md`;
its format: docs/performance.md, "On a GPU"):

1. the ImageNet 512, 256 and 128 U-ViT train steps (`configs/imagenet{512,256,128}.py`: bf16
   compute, float32 master weights) through `benchmarks/benchmark.py`: step time, images/s, MFU
   (3 x `sd_jax.models.summary.forward_flops` per image over the step time and the peak bf16
   FLOP/s: 989e12 on H100 SXM and H200), HFU, compile time, the device's peak memory against
   plan mode's estimate. The per-device batch and remat come from plan mode for the memory the
   device reports: the largest power of two that fits with the least remat, and also the next
   remat where it fits at least twice the batch (last, within the time budget); a point the
   device cannot hold is recorded (OOM) and retried at half the batch;
2. sampling images/s of the 512 model at 1 and 2 network passes per step (guidance 1 and 3,
   every step guided), in the sampler's batch (`sample.batch_size`);
3. a shrunk 512 config trained 200 steps on the embedded digits (at 512 px) by `launch.py` in
   bf16 and in float32 from seed 0, and in float32 from seed 1 (the three at once): the window
   means of the loss curves, bf16 against float32 next to float32 seed 1 against seed 0;
4. the quickstart end to end (`launch.py` train, sample, eval), wall time.

The parent process plans on the CPU (it never opens the accelerator); children that do not fit
the time budget (`--budget_s`) are skipped or stopped, and say so in the table.

On the lent GPU machine (Python 3.12, with jax, flax, optax, orbax, numpy, scipy, scikit-learn,
pillow, etils, cloudpickle, protobuf, psutil, PyYAML, wrapt and tensorstore already there; no
network) the five missing packages travel as wheels (4.5 MB). Here, in the repository root,
once:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 ml_collections==1.1.0 clu==0.0.12

Their other requirements are all on the machine. TensorFlow and tfds are not needed (nor could
TensorFlow's wheel, hundreds of MB, travel in the 64 MiB a call carries): training imports
TensorFlow only for TensorBoard, which it then skips with a warning, and these runs read the
embedded digits. Then, on the machine, with `.whl` carried (device tool: carry [".whl"],
timeout 600 s):

    bash benchmarks/accelerator.sh --profile

which installs the wheels (`pip install --no-index --no-deps --target /tmp/site .whl/*.whl`,
PYTHONPATH=/tmp/site), runs this script into /tmp/accelerator and copies results.json,
table.md, logs.tgz and the trace's Perfetto file into $OUT.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accelerator_report as report  # noqa: E402
from benchmarks.accelerator_scale import GPU, TINY, Scale  # noqa: E402
from benchmarks.child_runs import Children  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = ("imagenet512", "imagenet256", "imagenet128")  # The headline first.
SAMPLED = "imagenet512"
GUIDANCE = {1: 1.0, 2: 3.0}  # Network passes per sampler step -> guidance scale.
PROBE = """
import json, jax
d = jax.devices()[0]
stats = d.memory_stats() or {}
print(json.dumps({"platform": d.platform, "device_kind": d.device_kind,
                  "device_count": jax.device_count(), "bytes_limit": stats.get("bytes_limit")}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for logs, results.json, table.md")
    parser.add_argument("--tiny", action="store_true", help="shrunk configs, a few steps (CPU)")
    parser.add_argument("--profile", action="store_true",
                        help="trace the 512 step and list its costliest device ops")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="wall-clock budget (default: 450 s, --tiny 300 s)")
    parser.add_argument("--device_memory_gb", type=float, default=0.0,
                        help="memory one device may use, GiB (0: what it reports; CPU: 1)")
    parser.add_argument("--peak_flops", type=float, default=None,
                        help="peak FLOP/s per device (default: benchmark.py's table)")
    parser.add_argument("--compilation_cache", default=None, help="JAX persistent cache folder")
    parser.add_argument("--scale", action="append", default=[], metavar="FIELD=NUMBER",
                        help="override a number of the run's size (accelerator_scale.Scale), "
                        "e.g. --scale=precision_steps=100; repeatable")
    return parser.parse_args(argv)


def run_scale(args: argparse.Namespace) -> Scale:
    """GPU or TINY with the `--scale` overrides."""
    scale = TINY if args.tiny else GPU
    numbers = {f.name: f.type for f in dataclasses.fields(Scale) if f.type in ("int", "float")}
    changes = {}
    for item in args.scale:
        key, _, value = item.partition("=")
        if key not in numbers:
            raise SystemExit(f"--scale={item}: not a number of Scale ({', '.join(numbers)})")
        changes[key] = int(value) if numbers[key] == "int" else float(value)
    return dataclasses.replace(scale, **changes)


def config_with(name: str, overrides: dict[str, Any]) -> Any:
    """`configs/<name>.py` with dotted overrides applied."""
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    config.update_from_flattened_dict(overrides)
    return config


def override_flags(overrides: dict[str, Any]) -> list[str]:
    """`--config.a.b=value` flags of `launch.py` and `benchmark.py` for dotted overrides."""
    def text(value: Any) -> str:
        return "(" + ",".join(map(str, value)) + ")" if isinstance(value, tuple) else str(value)

    return [f"--config.{key}={text(value)}" for key, value in overrides.items()]


def fitting_batches(planner: Any, remat: str, batches: list[int], memory: int
                    ) -> dict[int, int]:
    """Plan mode's per-device total for each per-device batch in `batches` (ascending) that fits
    in `memory` under `remat` (data parallel, no accumulation)."""
    from sd_jax.tools import plan

    fits = {}
    for batch in batches:
        total = planner.bytes(plan.Layout(1, batch, remat), per_device_batch=batch)["total"]
        if total > memory:
            break
        fits[batch] = total
    return fits


def choose(fits: dict[str, concurrent.futures.Future], min_batch: int
           ) -> tuple[str, int] | None:
    """(remat, per-device batch): the least remat whose largest fitting batch is at least
    `min_batch`, else the largest batch of any remat (None if nothing fits). Waits only for the
    plans it needs."""
    from sd_jax.models.spec import REMAT

    for remat in REMAT:
        if max(fits[remat].result(), default=0) >= min_batch:
            return remat, max(fits[remat].result())
    best = {r: max(fits[r].result(), default=0) for r in REMAT}
    remat = max(REMAT, key=best.get)
    return (remat, best[remat]) if best[remat] else None


def extra_point(fits: dict[str, concurrent.futures.Future], primary: tuple[str, int]
                ) -> tuple[str, int] | None:
    """The next remat after the primary point's that fits at least twice its batch, if any."""
    from sd_jax.models.spec import REMAT

    remat, batch = primary
    for later in REMAT[REMAT.index(remat) + 1:]:
        if max(fits[later].result(), default=0) >= 2 * batch:
            return later, max(fits[later].result())
    return None


def train_point(kids: Children, args: argparse.Namespace, scale: Scale, name: str, remat: str,
                batch: int, plan_bytes: int, sample: bool) -> list[dict[str, Any]]:
    """Benchmarks one train step (halving the batch after an out-of-memory); one row per try."""
    rows = []
    while batch >= 1:
        cmd = [sys.executable, "benchmarks/benchmark.py", f"--config=configs/{name}.py",
               *override_flags({**scale.train_overrides(name), "model.remat": remat}),
               f"--per_device_batch={batch}", f"--steps={scale.steps}",
               f"--warmup={scale.warmup}", "--noplan"]
        if sample:  # In the sampler's own batch.
            sample_batch = config_with(name, scale.train_overrides(name)).sample.batch_size
            cmd += [f"--sample_batch={sample_batch}",
                    f"--sample_timed_steps={scale.sample_timed_steps}",
                    "--sample_guidance=" + ",".join(str(g) for g in GUIDANCE.values())]
        else:
            cmd += ["--sample_timed_steps=0"]
        if args.profile and sample:
            cmd += [f"--profile={kids.out / 'profile'}", "--profile_steps=3"]
        for flag in ("peak_flops", "compilation_cache"):
            if getattr(args, flag) is not None:
                cmd.append(f"--{flag}={getattr(args, flag)}")
        run = kids.run(f"train_{name}_{remat}_b{batch}", cmd)
        row = {**(run.last_json() or {}), "config": name, "remat": remat,
               "per_device_batch": batch, "plan_bytes": plan_bytes, **run.summary()}
        rows.append(row)
        if run.status != "OOM":
            break
        batch //= 2
        plan_bytes = None  # Halved below the plan's choice: no estimate was made for it.
    return rows


def plan_all(scale: Scale, devices: int, memory: int
             ) -> dict[str, dict[str, concurrent.futures.Future]]:
    """Plans every train config under every remat on one background thread, in the order they
    are needed (the children run meanwhile); one planner per config shares its traces."""
    from sd_jax.models.spec import REMAT
    from sd_jax.tools import plan

    planners: dict[str, Any] = {}

    def fits(name: str, remat: str) -> dict[int, int]:
        if name not in planners:  # The batch is given per layout; 1 per device to build it.
            config = config_with(name, {**scale.train_overrides(name),
                                        "train.batch_size": devices, "train.microbatch_size": 0})
            planners[name] = plan.Planner(config, devices)
        return fitting_batches(planners[name], remat, scale.batches(), memory)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    futures = {name: {r: pool.submit(fits, name, r) for r in REMAT} for name in TRAIN_CONFIGS}
    pool.shutdown(wait=False)
    return futures


def train_section(kids: Children, args: argparse.Namespace, scale: Scale,
                  futures: dict[str, dict[str, concurrent.futures.Future]],
                  extras: bool) -> list[dict[str, Any]]:
    """The primary point of every config (the sampled one with sampling), or with `extras` the
    next remat's point where it fits at least twice the batch."""
    rows = []
    for name in TRAIN_CONFIGS:
        primary = choose(futures[name], scale.min_batch)
        point = extra_point(futures[name], primary) if primary and extras else primary
        if point is None:
            if not extras:
                rows.append({"config": name, "status": "nothing fits"})
            continue
        plan_bytes = futures[name][point[0]].result()[point[1]]
        rows += train_point(kids, args, scale, name, *point, plan_bytes,
                            sample=name == SAMPLED and not extras)
    return rows


def precision_section(kids: Children, scale: Scale) -> dict[str, Any]:
    """The shrunk 512 config in bf16 and float32 (seed 0) and float32 (seed 1), at once."""
    runs = {"bf16_seed0": ("bfloat16", 0), "f32_seed0": ("float32", 0), "f32_seed1": ("float32", 1)}
    jobs = {}
    for label, (dtype, seed) in runs.items():
        workdir = kids.fresh_dir(f"precision_{label}")
        overrides = {**scale.precision_overrides(), "model.dtype": dtype, "seed": seed}
        jobs[label] = [sys.executable, "launch.py", "--config=configs/imagenet512.py",
                       f"--workdir={workdir}", *override_flags(overrides)]
    done = kids.run_together(jobs, share=len(jobs))
    curves = {label: report.losses(kids.out / f"precision_{label}") for label in runs}
    return {"steps": scale.precision_steps, "runs": {k: r.summary() for k, r in done.items()},
            "curves": curves, **report.agreement(curves, scale.precision_window())}


def quickstart_section(kids: Children, scale: Scale) -> dict[str, Any]:
    """`launch.py` train, sample and eval of configs/quickstart.py in one fresh workdir."""
    workdir = kids.fresh_dir("quickstart")
    base = [sys.executable, "launch.py", "--config=configs/quickstart.py", f"--workdir={workdir}",
            *override_flags(scale.quickstart_overrides)]
    out: dict[str, Any] = {"workdir": str(workdir)}
    for mode in ("train", "sample", "eval"):
        run = kids.run(f"quickstart_{mode}", [*base, f"--mode={mode}"])
        out[mode] = run.summary()
        if run.status != "ok":
            break
    evals = sorted(workdir.glob("eval_*.json"))
    out["eval_results"] = json.loads(evals[-1].read_text()) if evals else None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    scale = run_scale(args)
    budget = args.budget_s or scale.budget_s
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    kids = Children(out, REPO, time.monotonic() + budget)
    if args.compilation_cache:  # launch.py's children read it from the environment.
        kids.env.update(JAX_COMPILATION_CACHE_DIR=args.compilation_cache,
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    os.environ["JAX_PLATFORMS"] = "cpu"  # This process plans; only children use the device.
    probe = kids.run("probe", [sys.executable, "-c", PROBE])
    device = probe.last_json() or {}
    memory = int(args.device_memory_gb * 2**30) or device.get("bytes_limit") or (
        int(scale.cpu_memory_gb * 2**30))
    results: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "tiny": args.tiny, "budget_s": budget, "device": device, "device_memory_bytes": memory,
        "load_average_before": os.getloadavg()[0],
    }
    futures = plan_all(scale, device.get("device_count", 1), memory)
    rows = train_section(kids, args, scale, futures, extras=False)
    results["precision"] = precision_section(kids, scale)
    results["quickstart"] = quickstart_section(kids, scale)
    # Last, within what is left of the budget: the remat points that fit twice the batch.
    results["train"] = rows + train_section(kids, args, scale, futures, extras=True)
    results["load_average_after"] = os.getloadavg()[0]
    results["wall_s"] = round(kids.elapsed(), 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = report.table(results)
    (out / "table.md").write_text(table + "\n")
    print(table, flush=True)
    return results


if __name__ == "__main__":
    main()
