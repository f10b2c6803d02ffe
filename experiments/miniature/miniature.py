"""The paper's ablations in miniature on a CPU: digits at 64 (or 128) px scored by FD-digits
(`--data=digits`, the default), or the embedded photos at 32, 64 or 128 px scored by the photo
metrics (`--data=photos`).

    # the digits reproduction:
    nice -n 10 python experiments/miniature/miniature.py --out=/tmp/miniature
    python experiments/miniature/miniature.py --out=/tmp/mini128 --size=128 --ablations=schedule
    # the photo miniature: the noise_d sweep at 32 px, then every ablation at 64 px
    python experiments/miniature/miniature.py --data=photos --size=32 --ablations=noise_d \
        --out=/tmp/photos32
    python experiments/miniature/miniature.py --data=photos --out=/tmp/photos64
    # seconds (the tests):
    python experiments/miniature/miniature.py --out=/tmp/mini_tiny --tiny [--data=photos]

The ablations and scores of each mode: `digits.py` and `photos.py` here. Each run trains in
this process (`sd_jax.train.loop.train`, checkpoints at `--eval_points` evenly spaced steps),
then samples every checkpoint (`--num_samples` samples, the config's sampler with
`--sample_steps`) and scores them. Arms shared by several ablations (the recipe) run once per
seed. Outputs in --out: `table.md`, `results.json`, `fd_vs_step.png` (digits) or
`swd_vs_step.png` (photos), `grids/<arm>.png` (final samples of the first seed) and one workdir
per run, all rewritten after every run. Re-running reuses finished runs (their
`scores.json`). Seeds: every `--seeds` for the ablations in `--multi_seed` (default: the digits'
schedule, the photos' noise_d: the claims that rest on them), the first seed for the others.

Budget (digits, default, 64 px): 12 runs of 1,250 steps x batch 32 plus 3 x 100 samples x 32
sampler steps each, about 50 minutes on 2 idle cores; docs/results.md gives the measured wall
times of both modes and the load they ran under.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments import pil_plot  # noqa: E402
from experiments.miniature import digits, photos  # noqa: E402
from experiments.miniature.common import (  # noqa: E402
    images_per_second,
    model_cost,
    run_name,
)
from scripts import checkpoint_samples, sweep_lib  # noqa: E402
from sd_jax.errors import UserError  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Study:
    """What a data mode contributes: its recipe config, arms, scoring and table."""

    config_file: Callable[[int], str]
    arms: Callable[[int], dict[str, list[tuple[str, dict]]]]
    score_run: Callable[[object, Path, int], list[dict]]
    table: Callable[[dict, dict, int], str]
    metric: str  # The score the figure draws against training step.
    defaults: dict  # size -> {"steps", "seeds"}; the tiny mode runs 16 px.
    multi_seed: str  # Ablations run with every seed by default.
    note: Callable[[int, int], str] | None = None  # An extra line under the table.


STUDIES = {
    # The full digits reproduction: within 60 minutes on 2 idle cores (docs/results.md).
    "digits": Study(digits.config_file, digits.arms, digits.score_run, digits.table, "fd_digits",
                    {64: {"steps": 1250, "seeds": "0,1"}, 128: {"steps": 1250, "seeds": "0"}},
                    "schedule"),
    "photos": Study(photos.config_file, photos.arms, photos.score_run, photos.table, "swd_avg",
                    {32: {"steps": 1000, "seeds": "0,1,2"}, 64: {"steps": 1000, "seeds": "0,1,2"},
                     128: {"steps": 1000, "seeds": "0"}},
                    "noise_d", photos.floor_note),
}


def base_flags(args: argparse.Namespace) -> tuple[str, list[str]]:
    """Config file and overrides every run shares."""
    steps, every = args.steps, -(-args.steps // args.eval_points)  # Ceil: the last is the end.
    flags = {"train.num_steps": steps, "train.checkpoint_every": every,
             "train.keep_checkpoints": args.eval_points + 1, "train.sample_every": 0,
             "train.tensorboard": False, "train.log_every": max(1, min(50, steps // 4)),
             "train.batch_size": args.batch_size,
             "sample.sampler": "ddpm",  # The sampler of the documented results.
             "sample.num_steps": args.sample_steps}
    if args.tiny:  # Tiny widths (tests/utils.py tiny_config's): compiles and steps in seconds.
        flags.update({"model.image_size": 16, "model.input_transform": "dwt2",
                      "model.num_res_blocks": 0, "model.base_channels": 8,
                      "model.channel_multipliers": "1,2", "model.transformer_depth": 1,
                      "model.num_heads": 2, "model.emb_dim": 16, "train.batch_size": 8,
                      "optimizer.warmup_steps": 1, "sample.batch_size": args.num_samples})
    return STUDIES[args.data].config_file(args.size), sweep_lib.override_flags(flags)


SCORES = "scores.json"  # A run's cached result, scored with the default sampler steps.
DEFAULT_SAMPLE_STEPS = 32


def scores_file(workdir: Path, sample_steps: int) -> Path:
    """The run's cached result for `sample_steps` sampler steps (scores.json for the default)."""
    name = SCORES if sample_steps == DEFAULT_SAMPLE_STEPS else f"scores_{sample_steps}steps.json"
    return workdir / name


def trained_before(workdir: Path) -> dict | None:
    """The training record (time, rate) of a run already scored with other sampler steps."""
    for path in sorted(workdir.glob("scores*.json")):
        result = json.loads(path.read_text())
        if "train_s" in result:
            return {k: result[k] for k in ("train_s", "images_per_s")}
    return None


def run_one(study: Study, config_file: str, flags: list[str], overrides: dict, seed: int,
            workdir: Path, num_samples: int, sample_steps: int) -> dict:
    """Trains and scores one run, or explains why it was skipped; cached per sampler step
    count (`scores_file`): a run trained before is only re-scored."""
    from sd_jax.train import loop as trainer

    cached = scores_file(workdir, sample_steps)
    if cached.is_file():
        return json.loads(cached.read_text())
    try:
        config = sweep_lib.load_config(config_file, [
            *flags, *sweep_lib.override_flags({**overrides, "seed": seed})])
        cost = model_cost(config)
    except (UserError, ValueError, KeyError) as e:  # E.g. a transform this version lacks.
        return {"skipped": f"{type(e).__name__}: {e}".splitlines()[0][:200]}
    start = time.time()
    trained = trained_before(workdir)
    if trained is None:
        trainer.train(config, workdir)
        trained = {"train_s": time.time() - start, "images_per_s": images_per_second(workdir)}
    if max(checkpoint_samples.checkpoint_steps(workdir)) < config.train.num_steps:
        # The trainer stops early, after saving, on SIGTERM: leave the run unscored (re-running
        # the command resumes it) rather than cache a shorter run as finished.
        raise SystemExit(f"{workdir}: training stopped before step {config.train.num_steps}")
    scoring = time.time()
    scores = study.score_run(config, workdir, num_samples)
    result = {**cost, "seed": seed, **trained, "eval_s": time.time() - scoring,
              "sample_steps": sample_steps, "scores": scores}
    cached.write_text(json.dumps(result, indent=1) + "\n")
    return result


def figure(ablations: dict, results: dict, path: Path, metric: str) -> None:
    """`metric` against training step: one panel per ablation, one line per arm (mean over
    its finished seeds)."""
    panels = []
    for ablation, arm_list in ablations.items():
        series = []
        for arm, _ in arm_list:
            done = [r["scores"] for r in results.get((ablation, arm), []) if "scores" in r]
            if done:
                steps = [s["step"] for s in done[0]]
                values = [statistics.mean(run[i][metric] for run in done)
                          for i in range(len(steps))]
                series.append((arm, steps, values))
        panels.append((ablation, series))
    pil_plot.line_panels(panels, path, "training step", metric)


def write_outputs(args: argparse.Namespace, ablations: dict, results: dict, size: int,
                  start: float, finished: bool, note: str = "") -> str:
    """table.md, results.json, <metric>_vs_step.png and grids/ from the runs so far (rewritten
    after every run, so an interrupted reproduction still leaves its partial table)."""
    study = STUDIES[args.data]
    for (_, arm), runs in results.items():
        grid = args.out / "runs" / run_name(arm, args.seeds[0]) / "final_samples.png"
        if any("scores" in r for r in runs) and grid.is_file():
            (args.out / "grids").mkdir(parents=True, exist_ok=True)
            (args.out / "grids" / f"{run_name(arm, args.seeds[0])}.png").write_bytes(
                grid.read_bytes())
    figure(ablations, results, args.out / FIGURES[study.metric], study.metric)
    wall = time.time() - start
    state = "wall time" if finished else "partial, so far"
    text = (f"{study.table(ablations, results, size)}\n\n{note}\n\nsize {size} px, "
            f"{args.steps} steps x batch {args.batch_size} per run, seeds {args.seeds} "
            f"({args.multi_seed or 'no'} ablations; the others seed {args.seeds[0]}), "
            f"{args.num_samples} samples x {args.sample_steps} sampler steps; {state} "
            f"{wall / 60:.1f} min\n")
    (args.out / "table.md").write_text(text)
    serial = {f"{ablation} / {arm}": runs for (ablation, arm), runs in results.items()}
    (args.out / "results.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "wall_s": wall,
         "finished": finished, "results": serial, "note": note}, indent=1) + "\n")
    return text


FIGURES = {"fd_digits": "fd_vs_step.png", "swd_avg": "swd_vs_step.png"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", default="digits", choices=tuple(STUDIES))
    parser.add_argument("--size", type=int, default=64, choices=(32, 64, 128))
    parser.add_argument("--ablations", help="comma-separated (default: every one of --data)")
    parser.add_argument("--steps", type=int, help="training steps per run (default: budget)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: budget)")
    parser.add_argument("--multi_seed", help="ablations run with every seed (the others: the "
                        "first seed; default: schedule for digits, noise_d for photos)")
    parser.add_argument("--batch_size", type=int, default=32, help="training batch per run")
    parser.add_argument("--eval_points", type=int, default=3, help="checkpoints scored per run")
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--sample_steps", type=int, default=DEFAULT_SAMPLE_STEPS,
                        help="sampler steps; a finished run is re-scored, not retrained, "
                        "under another count")
    parser.add_argument("--tiny", action="store_true", help="test mode: tiny model, 16 px")
    args = parser.parse_args(argv)
    study = STUDIES[args.data]
    if args.tiny:
        args.size = 16
    elif args.size not in study.defaults:
        parser.error(f"--data={args.data} supports --size in {sorted(study.defaults)}")
    defaults = {"steps": 2, "seeds": "0"} if args.tiny else study.defaults[args.size]
    args.steps = args.steps or defaults["steps"]
    args.seeds = [int(s) for s in (args.seeds or defaults["seeds"]).split(",")]
    args.multi_seed = study.multi_seed if args.multi_seed is None else args.multi_seed
    args.ablations = args.ablations or ",".join(study.arms(args.size))
    return args


def seeds_for(args: argparse.Namespace, ablation: str) -> list[int]:
    """All seeds for the ablations named in --multi_seed (arms close enough to need them),
    the first seed for the others."""
    return args.seeds if ablation in args.multi_seed.split(",") else args.seeds[:1]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.time()
    study = STUDIES[args.data]
    ablations = {k: v for k, v in study.arms(args.size).items()
                 if k in args.ablations.split(",")}
    config_file, flags = base_flags(args)
    note = study.note(args.size, args.num_samples) if study.note else ""
    results: dict[tuple[str, str], list[dict]] = {}
    for ablation, arm_list in ablations.items():
        for arm, overrides in arm_list:
            runs = results.setdefault((ablation, arm), [])
            for seed in seeds_for(args, ablation):
                workdir = args.out / "runs" / run_name(arm, seed)  # Shared arms run once.
                print(f"== {ablation}: {arm} seed {seed} -> {workdir}", flush=True)
                runs.append(run_one(study, config_file, flags, overrides, seed, workdir,
                                    args.num_samples, args.sample_steps))
                if "skipped" in runs[-1]:
                    print(f"   skipped: {runs[-1]['skipped']}", flush=True)
                    break
                write_outputs(args, ablations, results, args.size, start, False, note)
    print(write_outputs(args, ablations, results, args.size, start, True, note), flush=True)
    return results


if __name__ == "__main__":
    main()
