"""Head-to-head with the public PyTorch port (experiments/peer/README.md): sd-jax's photo recipe
(configs/photos.py, 64 px) and the U-ViT of `denoising-diffusion-pytorch`'s `simple_diffusion`
train on the same batches of photo crops, with the same batch, optimiser and schedule, for the
same wall-clock budget, back to back; both are scored with the photo metrics.

    python experiments/peer/peer.py --out=/tmp/peer --seconds=300 \
        --python=/tmp/peer_venv/bin/python

Steps: (1) dump the batches sd-jax's loader gives at steps 0, 1, ... (flips applied) to
OUT/batches.npy; (2) train sd-jax on them in a child process (its jitted train step, the
trainer's lagged metric read); (3) train the port in the torch environment
(`port_train.py`); (4) score both sample sets against the held-out photos and write
OUT/table.md. `uptime` is recorded before and after each side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

MATCH = 0.2  # Params and FLOPs per image must agree within 20%.


def photos_config(batch_size: int, sample_steps: int):
    """configs/photos.py at 64 px with this comparison's batch and sampler steps."""
    from sd_jax.configs import photos

    config = photos.get_config("64")
    config.train.batch_size = batch_size
    config.sample.num_steps = sample_steps
    return config


def dump_batches(path: Path, config, steps: int) -> None:
    """The loader's batches at steps 0 .. steps - 1, flips applied, as uint8 [steps, B, S, S, 3]."""
    from sd_jax.data import build_loader

    loader = build_loader(config, process_index=0, process_count=1)
    size, batch = config.model.image_size, config.train.batch_size
    out = np.lib.format.open_memmap(path, "w+", np.uint8, (steps, batch, size, size, 3))
    for step in range(steps):
        b = loader.get_batch(step)
        out[step] = np.where(b["flip"][:, None, None, None], b["image"][:, :, ::-1], b["image"])
    out.flush()


def train_jax(args: argparse.Namespace) -> dict:
    """sd-jax's side: the jitted train step on the dumped batches for `args.seconds` after the
    first (compiling) step, then `args.num_samples` EMA samples."""
    import jax

    from experiments.miniature.common import model_cost
    from sd_jax import models, sharding
    from sd_jax.io import images
    from sd_jax.sample.generate import Sampler
    from sd_jax.train import state as train_state
    from sd_jax.train.step import make_train_step

    config = photos_config(args.batch_size, args.sample_steps)
    batches = np.load(args.out / "batches.npy", mmap_mode="r", allow_pickle=False)
    mesh = sharding.make_mesh(config.mesh)
    model = models.build_model(config.model)
    tx = train_state.make_optimizer(config.optimizer)
    state, shardings = train_state.create_train_state(model, tx, config, mesh)
    step_fn = make_train_step(model, tx, config, mesh, shardings)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    zeros = np.zeros(args.batch_size, np.int32)
    start, first_s, steps, pending, losses = None, 0.0, 0, None, []
    t0 = time.time()
    while steps < len(batches):
        batch = {"image": np.array(batches[steps]), "flip": zeros.astype(bool), "label": zeros}
        state, metrics = step_fn(state, sharding.global_batch(batch, mesh), rng)
        if pending is not None:  # Read the previous step's loss after dispatching this one.
            losses.append(float(pending["loss"]))
        pending, steps = metrics, steps + 1
        if start is None:
            losses.append(float(metrics["loss"]))  # Waits for the compiled first step.
            pending, start, first_s = None, time.time(), time.time() - t0
        elif time.time() - start >= args.seconds:
            break
    jax.block_until_ready(state.params)
    train_s = time.time() - start
    t1 = time.time()
    sampler = Sampler.from_config(config, mesh)
    samples = sampler.generate(state.ema_params, jax.random.PRNGKey(args.seed),
                               np.zeros(args.num_samples, np.int32))
    sample_s = time.time() - t1
    np.save(args.out / "jax" / "samples.npy", images.to_uint8(samples))
    cost = model_cost(config)
    return {"name": "sd-jax configs/photos.py", "params": cost["params"],
            "flops": cost["mflop_per_image"] * 1e6, "steps": steps, "first_step_s": first_s,
            "train_s": train_s, "images_per_s": (steps - 1) * args.batch_size / train_s,
            "sample_s": sample_s, "final_loss": float(np.mean(losses[-20:])),
            "jax": jax.__version__}


def uptime() -> str:
    """The load averages, as `uptime` prints them."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_side(name: str, command: list[str], out: Path) -> dict:
    """Runs one side in a child process; its result.json plus the load before and after."""
    (out / name).mkdir(parents=True, exist_ok=True)
    before = uptime()
    print(f"== {name}: {' '.join(command)}\n   {before}", flush=True)
    subprocess.run(command, check=True, cwd=REPO)
    result = json.loads((out / name / "result.json").read_text())
    result.update({"uptime_before": before, "uptime_after": uptime()})
    return result


def score(out: Path, results: dict, num_samples: int) -> str:
    """Photo metrics of both sample sets against the held-out photos; the markdown table."""
    from experiments.miniature import photos as photo_study

    refs = photo_study.references(64, num_samples)
    rows = ["| | params | GFLOP/img | steps in budget | train img/s | SWD avg | SWD 64 / 32 / 16 "
            "| power vs train (2-4 ... 32+ px) | saturation vs train | loss (last 20) |",
            "|" + "---|" * 10]
    for name, r in results.items():
        samples = np.load(out / name / "samples.npy", allow_pickle=False)
        s = photo_study.score_sets(samples, refs)
        r["scores"] = s
        powers = " ".join(f"{v:.2f}" for k, v in s.items() if k.startswith("train_power_ratio_"))
        rows.append(f"| {r['name']} | {r['params']:,} | {r['flops'] / 1e9:.3f} | {r['steps']} | "
                    f"{r['images_per_s']:.1f} | {s['swd_avg']:.1f} | {s['swd_64']:.0f} / "
                    f"{s['swd_32']:.0f} / {s['swd_16']:.0f} | {powers} | "
                    f"{s['train_saturation_ratio']:.2f} | {r['final_loss']:.4f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--python", required=True, help="the torch environment's python")
    parser.add_argument("--seconds", type=float, default=300, help="training budget per side")
    parser.add_argument("--max_steps", type=int, default=1500, help="batches dumped")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--sample_steps", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side", choices=("jax",), help=argparse.SUPPRESS)  # The child.
    args = parser.parse_args(argv)
    if args.side == "jax":
        (args.out / "jax" / "result.json").write_text(json.dumps(train_jax(args), indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    batches = args.out / "batches.npy"
    if not batches.is_file():
        dump_batches(batches, photos_config(args.batch_size, args.sample_steps), args.max_steps)
    common = [f"--seconds={args.seconds}", f"--num_samples={args.num_samples}",
              f"--sample_steps={args.sample_steps}", f"--seed={args.seed}"]
    results = {
        "jax": run_side("jax", [sys.executable, __file__, f"--out={args.out}", "--side=jax",
                                f"--python={args.python}", *common,
                                f"--batch_size={args.batch_size}"], args.out),
        "port": run_side("port", [args.python, str(Path(__file__).with_name("port_train.py")),
                                  f"--batches={batches}", f"--out={args.out / 'port'}",
                                  *common], args.out),
    }
    jax_r, port_r = results["jax"], results["port"]
    for key in ("params", "flops"):
        ratio = port_r[key] / jax_r[key]
        if abs(ratio - 1) > MATCH:
            raise SystemExit(f"{key} differ by {ratio:.2f}x (> {MATCH:.0%}): not a matched pair")
    text = (f"{score(args.out, results, args.num_samples)}\n\nimages/s sd-jax / port: "
            f"{jax_r['images_per_s'] / port_r['images_per_s']:.2f}; budget {args.seconds:.0f} s "
            f"per side after the first step (first step: sd-jax {jax_r['first_step_s']:.0f} s, "
            f"port {port_r['first_step_s']:.1f} s); load: sd-jax {jax_r['uptime_before']} -> "
            f"{jax_r['uptime_after']}; port {port_r['uptime_before']} -> "
            f"{port_r['uptime_after']}\n")
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
