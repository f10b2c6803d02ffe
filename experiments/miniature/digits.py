"""The digits miniature (`miniature.py`, the default `--data=digits`): configs/digits_hires.py
(digits upsampled to 64 or 128 px) scored by the digits classifier.

Ablations (every arm of one ablation has the same model size and compute; the table lists
params and forward MFLOP per image to show it):
  schedule    the quickstart's 16 px schedule (shifted cosine, noise_d 32 at 16 px) reused
              unshifted (noise_d = 2 x size), the same shifted by 2 log(16/size) (noise_d 32,
              the recipe), the plain cosine
  multiscale  multiscale loss off (recipe) / on (scales 8 .. size, weights 1/s)
  transform   Haar DWT-2 (recipe) / 5/3 DWT-2 / 4x4 patch / none (conv levels from full
              resolution, widths chosen for about the same FLOPs)
  dropout     none (recipe) / 0.1 at every level / 0.1 only at 8x8 and below

Scores of every checkpoint (`sd_jax.eval.digits_eval`): FD-digits, class accuracy, HF-energy
ratio, colour noise of `--num_samples` class-conditional samples (labels cycled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.miniature.common import RECIPE, mean_sd
from scripts import checkpoint_samples
from sd_jax.io import images


def config_file(size: int) -> str:
    """The recipe's config at `size` (the tiny test mode shrinks the quickstart instead)."""
    return "configs/quickstart.py" if size == 16 else f"configs/digits_hires.py:{size}"


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


def table(ablations: dict, results: dict, size: int) -> str:
    """Markdown: one row per (ablation, arm), final-checkpoint scores as mean ± sd over the
    ablation's seeds that have finished."""
    del size
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
