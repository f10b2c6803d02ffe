"""The paper's ablations in miniature: digits at 64 (or 128) px on a CPU, scored by FD-digits.

    # the full reproduction:
    nice -n 10 python experiments/miniature/miniature.py --out=/tmp/miniature
    python experiments/miniature/miniature.py --out=/tmp/mini128 --size=128 --ablations=schedule
    # seconds (the test):
    python experiments/miniature/miniature.py --out=/tmp/mini_tiny --tiny

Ablations (every arm of one ablation has the same model size and compute; the table lists
params and forward MFLOP per image to show it):
  schedule    the quickstart's 16 px schedule (shifted cosine, noise_d 32 at 16 px) reused
              unshifted (noise_d = 2 x size), the same shifted by 2 log(16/size) (noise_d 32,
              the recipe), the plain cosine
  multiscale  multiscale loss off (recipe) / on (scales 8 .. size, weights 1/s)
  transform   Haar DWT-2 (recipe) / 5/3 DWT-2 / 4x4 patch / none (conv levels from full
              resolution, widths chosen for about the same FLOPs)
  dropout     none (recipe) / 0.1 at every level / 0.1 only at 8x8 and below

Each run trains in this process (`sd_jax.train.loop.train`, checkpoints at `--eval_points` evenly
spaced steps), then samples every checkpoint (`--num_samples` class-conditional samples, labels
cycled, the config's sampler with `--sample_steps`) and scores them with the digits classifier
(`sd_jax.eval.digits_eval`): FD-digits, class accuracy, HF-energy ratio, colour noise. Arms shared
by several ablations (the recipe) run once per seed. Outputs in --out: `table.md`,
`results.json`, `fd_vs_step.png`, `grids/<arm>.png` (final samples of the first seed) and one
workdir per run, all rewritten after every run. Re-running reuses finished runs (their
`scores.json`). Seeds: every `--seeds` for the ablations in `--multi_seed` (default: schedule,
whose arms the paper separates by the least), the first seed for the others.

Budget (default, 64 px): 12 runs of 1,250 steps x batch 32 plus 3 x 100 samples x 32 sampler
steps each, sized from the measured idle 64 px rate (~225 training images/s, ~2.2 min per run
at 500 steps) to about 50 minutes on 2 idle cores;
docs/results.md, "Miniature ablations", gives the measured wall time and the load it ran under.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import pil_plot  # noqa: E402
from scripts import checkpoint_samples, sweep_lib  # noqa: E402
from sd_jax.errors import UserError  # noqa: E402
from sd_jax.io import images  # noqa: E402

RECIPE = "recipe"
# The full reproduction: within 60 minutes on 2 idle cores (docs/results.md).
DEFAULTS = {64: {"steps": 1250, "seeds": "0,1"}, 128: {"steps": 1250, "seeds": "0"}}


def arms(size: int) -> dict[str, list[tuple[str, dict]]]:
    """Ablation -> [(arm name, config overrides on the recipe)]; the recipe arm is {}."""
    none_levels = {  # Conv levels from full resolution with about the recipe's FLOPs.
        16: ("1,2", 8), 64: ("1,2,4,4,16", 8), 128: ("1,1,2,4,4,16", 8)}[size]
    transform = [(RECIPE, {}),
                 ("5/3 DWT-2", {"model.input_transform": "dwt53_2"}),
                 ("patch 4x4", {"model.input_transform": "patch", "model.patch_size": 4}),
                 ("none", {"model.input_transform": "none",
                           "model.channel_multipliers": none_levels[0],
                           "model.base_channels": none_levels[1]})]
    return {
        "schedule": [(RECIPE, {}),  # First: an interrupted run still has the recipe.
                     ("16px schedule unshifted", {"diffusion.noise_d": 2 * size}),
                     ("cosine", {"diffusion.schedule": "cosine"})],
        "multiscale": [(RECIPE, {}),
                       ("multiscale on", {"diffusion.multiscale": True,
                                          "diffusion.multiscale_min_size": min(8, size)})],
        "transform": transform,
        "dropout": [(RECIPE, {}),
                    ("0.1 everywhere", {"model.dropout": 0.1,
                                        "model.dropout_max_resolution": size}),
                    ("0.1 at <= 8x8", {"model.dropout": 0.1, "model.dropout_max_resolution": 8})],
    }


def base_flags(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Config file and overrides every run shares."""
    steps, every = args.steps, -(-args.steps // args.eval_points)  # Ceil: the last is the end.
    flags = {"train.num_steps": steps, "train.checkpoint_every": every,
             "train.keep_checkpoints": args.eval_points + 1, "train.sample_every": 0,
             "train.tensorboard": False, "train.log_every": max(1, min(50, steps // 4)),
             "train.batch_size": args.batch_size,
             "sample.num_steps": args.sample_steps}
    if args.tiny:  # Tiny widths (tests/utils.py tiny_config's): compiles and steps in seconds.
        flags.update({"model.image_size": 16, "model.input_transform": "dwt2",
                      "model.num_res_blocks": 0, "model.base_channels": 8,
                      "model.channel_multipliers": "1,2", "model.transformer_depth": 1,
                      "model.num_heads": 2, "model.emb_dim": 16, "train.batch_size": 8,
                      "optimizer.warmup_steps": 1, "sample.batch_size": args.num_samples})
        return "configs/quickstart.py", sweep_lib.override_flags(flags)
    return f"configs/digits_hires.py:{args.size}", sweep_lib.override_flags(flags)


def run_name(arm: str, seed: int) -> str:
    safe = "".join(c if c.isalnum() else "_" for c in arm).strip("_")
    return f"{safe}-seed{seed}"


def score_run(config, workdir: Path, num_samples: int) -> list[dict]:
    """FD-digits etc. of every checkpoint of a finished run."""
    from sd_jax.eval import digits_eval, digits_net

    variables, _ = digits_net.load_or_build()
    reference, _ = digits_net.digits_data(config.model.image_size)
    labels = np.arange(num_samples) % config.model.num_classes
    rows = []
    for step in checkpoint_samples.checkpoint_steps(workdir):
        _, params, mesh, _ = checkpoint_samples.restore_at(workdir, config, step)
        samples = checkpoint_samples.draw(params, config, mesh, labels)
        rows.append({"step": step,
                     **digits_eval.digits_metrics(samples, labels, variables, reference)})
    # The last checkpoint's samples, 2 per class: a small PNG.
    images.save_png(images.make_grid(samples[:20], ncols=10), workdir / "final_samples.png")
    return rows


def model_cost(config) -> dict:
    """Params and forward FLOPs per image (XLA cost analysis, nothing allocated)."""
    from sd_jax.models import init, summary

    shapes = init.param_shapes(config.model)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    return {"params": params, "mflop_per_image": summary.forward_flops(config.model,
                                                                       shapes) / 1e6}


def images_per_second(workdir: Path) -> float | None:
    """Median training images/s from metrics.jsonl (the first record includes compilation)."""
    rates = [r["images_per_sec"] for r in map(json.loads, (workdir / "metrics.jsonl")
                                               .read_text().splitlines()) if "images_per_sec" in r]
    return statistics.median(rates[1:] or rates) if rates else None


def run_one(config_file: str, flags: list[str], overrides: dict, seed: int, workdir: Path,
            num_samples: int) -> dict:
    """Trains and scores one run, or explains why it was skipped; cached in scores.json."""
    from sd_jax.train import loop as trainer

    cached = workdir / "scores.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    try:
        config = sweep_lib.load_config(config_file, [
            *flags, *sweep_lib.override_flags({**overrides, "seed": seed})])
        cost = model_cost(config)
    except (UserError, ValueError, KeyError) as e:  # E.g. a transform this version lacks.
        return {"skipped": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
    start = time.time()
    trainer.train(config, workdir)
    train_s = time.time() - start
    if max(checkpoint_samples.checkpoint_steps(workdir)) < config.train.num_steps:
        # The trainer stops early, after saving, on SIGTERM: leave the run unscored (re-running
        # the command resumes it) rather than cache a shorter run as finished.
        raise SystemExit(f"{workdir}: training stopped before step {config.train.num_steps}")
    scores = score_run(config, workdir, num_samples)
    result = {**cost, "seed": seed, "train_s": train_s, "eval_s": time.time() - start - train_s,
              "images_per_s": images_per_second(workdir), "scores": scores}
    cached.write_text(json.dumps(result, indent=1) + "\n")
    return result


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(ablations: dict, results: dict) -> str:
    """Markdown: one row per (ablation, arm), final-checkpoint scores as mean ± sd over the
    ablation's seeds that have finished."""
    lines = ["| ablation | arm | seeds | params | MFLOP/img | FD-digits | class acc | HF ratio | "
             "colour noise | train img/s |", "|" + "---|" * 10]
    for ablation, arm_list in ablations.items():
        for arm, _ in arm_list:
            runs = results.get((ablation, arm), [])
            done = [r for r in runs if "scores" in r]
            skipped = [r["skipped"] for r in runs if "skipped" in r]
            if not done:
                note = f"skipped: {skipped[0]}" if skipped else "not run yet"
                lines.append(f"| {ablation} | {arm} | {note} |" + " |" * 7)
                continue
            final = [r["scores"][-1] for r in done]
            lines.append("| " + " | ".join([
                ablation, arm, str(len(done)), f"{done[0]['params']:,}",
                f"{done[0]['mflop_per_image']:.1f}",
                mean_sd([f["fd_digits"] for f in final]),
                mean_sd([f.get("class_accuracy") for f in final]),
                mean_sd([f["hf_ratio"] for f in final]),
                mean_sd([f["colour_noise"] for f in final]),
                mean_sd([r["images_per_s"] for r in done])]) + " |")
    return "\n".join(lines)


def figure(ablations: dict, results: dict, path: Path) -> None:
    """FD-digits against training step: one panel per ablation, one line per arm (mean over
    its finished seeds)."""
    panels = []
    for ablation, arm_list in ablations.items():
        series = []
        for arm, _ in arm_list:
            done = [r["scores"] for r in results.get((ablation, arm), []) if "scores" in r]
            if done:
                steps = [s["step"] for s in done[0]]
                fd = [statistics.mean(run[i]["fd_digits"] for run in done)
                      for i in range(len(steps))]
                series.append((arm, steps, fd))
        panels.append((ablation, series))
    pil_plot.line_panels(panels, path, "training step", "FD-digits")


def write_outputs(args: argparse.Namespace, ablations: dict, results: dict, size: int,
                  start: float, finished: bool) -> str:
    """table.md, results.json, fd_vs_step.png and grids/ from the runs so far (rewritten after
    every run, so an interrupted reproduction still leaves its partial table)."""
    for (_, arm), runs in results.items():
        grid = args.out / "runs" / run_name(arm, args.seeds[0]) / "final_samples.png"
        if any("scores" in r for r in runs) and grid.is_file():
            (args.out / "grids").mkdir(parents=True, exist_ok=True)
            (args.out / "grids" / f"{run_name(arm, args.seeds[0])}.png").write_bytes(
                grid.read_bytes())
    figure(ablations, results, args.out / "fd_vs_step.png")
    wall = time.time() - start
    state = "wall time" if finished else "partial, so far"
    text = (f"{table(ablations, results)}\n\nsize {size} px, {args.steps} steps x batch "
            f"{args.batch_size} per run, seeds {args.seeds} ({args.multi_seed or 'no'} "
            f"ablations; the others seed {args.seeds[0]}), {args.num_samples} samples x "
            f"{args.sample_steps} sampler steps; {state} {wall / 60:.1f} min\n")
    (args.out / "table.md").write_text(text)
    serial = {f"{ablation} / {arm}": runs for (ablation, arm), runs in results.items()}
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "wall_s": wall,
         "finished": finished, "results": serial}, indent=1) + "\n")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", type=int, default=64, choices=(64, 128))
    parser.add_argument("--ablations", default="schedule,multiscale,transform,dropout")
    parser.add_argument("--steps", type=int, help="training steps per run (default: budget)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: budget)")
    parser.add_argument("--multi_seed", default="schedule",
                        help="ablations run with every seed (the others: the first seed)")
    parser.add_argument("--batch_size", type=int, default=32, help="training batch per run")
    parser.add_argument("--eval_points", type=int, default=3, help="checkpoints scored per run")
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--sample_steps", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="test mode: tiny model, 16 px")
    args = parser.parse_args(argv)
    defaults = {"steps": 2, "seeds": "0"} if args.tiny else DEFAULTS[args.size]
    args.steps = args.steps or defaults["steps"]
    args.seeds = [int(s) for s in (args.seeds or defaults["seeds"]).split(",")]
    return args


def seeds_for(args: argparse.Namespace, ablation: str) -> list[int]:
    """All seeds for the ablations named in --multi_seed (arms close enough to need them),
    the first seed for the others."""
    return args.seeds if ablation in args.multi_seed.split(",") else args.seeds[:1]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.time()
    size = 16 if args.tiny else args.size
    ablations = {k: v for k, v in arms(size).items() if k in args.ablations.split(",")}
    config_file, flags = base_flags(args)
    results: dict[tuple[str, str], list[dict]] = {}
    for ablation, arm_list in ablations.items():
        for arm, overrides in arm_list:
            runs = results.setdefault((ablation, arm), [])
            for seed in seeds_for(args, ablation):
                workdir = args.out / "runs" / run_name(arm, seed)  # Shared arms run once.
                print(f"== {ablation}: {arm} seed {seed} -> {workdir}", flush=True)
                runs.append(run_one(config_file, flags, overrides, seed, workdir,
                                    args.num_samples))
                if "skipped" in runs[-1]:
                    print(f"   skipped: {runs[-1]['skipped']}", flush=True)
                    break
                write_outputs(args, ablations, results, size, start, finished=False)
    print(write_outputs(args, ablations, results, size, start, finished=True), flush=True)
    return results


if __name__ == "__main__":
    main()
