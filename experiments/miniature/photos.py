"""The photo miniature (`miniature.py --data=photos`): the paper's recipe (configs/photos.py) on
crops of the embedded photos, scored by the photo metrics against the held-out photos.

Ablations (every arm of one ablation has the recipe's model unless it says otherwise; the table
lists params and forward MFLOP per image):
  noise_d     the shifted cosine's base resolution: 8, 16, 32, 64 (the recipe: the paper's text)
              and 128. The paper's claim: the best noise_d stays put as the image grows, i.e.
              the best shift moves by 2 ln 2 per doubling of the side.
  output      v (recipe) / x0, each with the recipe's first level and with it twice as wide.
  endpoint    logsnr_max 15 before the shift (recipe) / 7.5 before it (configs/digits_hires.py's
              clip) / 15 after it (where the shift is not 0).
  transform   LeGall 5/3 DWT-2 (recipe) / Haar DWT-2 / 4x4 patch / none (conv levels from full
              resolution, narrowed to about the recipe's FLOPs).
  multiscale  off (recipe) / on (scales 8 .. size, weights 1/s).
  sid2        SiD2's residual U-ViT with the sigmoid weighting (bias 0 at 128 px, as SiD2;
              +1 per halving below, a choice).

Scores of every checkpoint: SWD per level, power ratio per octave and saturation ratio against
crops of the held-out photos (`photo_metrics`, as `--mode=eval`), the power and saturation
ratios against fresh crops of the training photos too, and the model as a one-step denoiser of
held-out crops at fixed logSNRs with fixed noise (no sampling noise): its v-MSE and the power per
octave of its x0 estimate over the clean crops'.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.miniature.common import RECIPE, mean_ci
from scripts import checkpoint_samples
from sd_jax.data import preprocess
from sd_jax.data.photos import PhotoSource
from sd_jax.diffusion import process
from sd_jax.eval import photo_eval, photo_metrics
from sd_jax.io import images
from sd_jax.models import build_model
from sd_jax.specs import diffusion_spec

NOISE_DS = (8, 16, 32, 64, 128)
HELD_OUT_LOGSNRS = (-9.0, -6.0, -3.0, 0.0, 3.0, 6.0, 9.0)  # v-MSE of held-out crops at these.
HELD_OUT_IMAGES = 64
TRAIN_SEED = 7  # Crop seed of the fresh training-photo crops (the training source uses 0).
TARGET_POWER, TARGET_SATURATION = (0.67, 1.5), (0.8, 1.25)  # The target for v at 64 px.
# Conv levels from full resolution (transform 'none') with about the recipe's FLOPs.
NONE_LEVELS = {16: ("1,2,8", 16), 32: ("1,2,8,16", 16), 64: ("1,2,8,16,32", 8),
               128: ("1,1,2,8,16,32", 8)}


def config_file(size: int) -> str:
    """The recipe's config at `size` (the tiny test mode runs the 32 px one at 16 px)."""
    return f"configs/photos.py:{max(size, 32)}"


def arms(size: int) -> dict[str, list[tuple[str, dict]]]:
    """Ablation -> [(arm name, config overrides on the recipe)]; the recipe arm is {}."""
    shift = 2 * math.log(64 / size)  # The recipe's shift (noise_d 64) at this size.
    from sd_jax.configs import photos

    multipliers = photos.LEVELS.get(size, photos.LEVELS[32])[1]
    wide = ",".join(str(2 * m if i == 0 else m) for i, m in enumerate(multipliers))
    none_mults, none_base = NONE_LEVELS[size]
    endpoint = [(RECIPE, {}), ("logsnr_max 7.5 before the shift", {"diffusion.logsnr_max": 7.5})]
    if abs(shift) > 1e-9:
        endpoint.append(("logsnr_max 15 after the shift",
                         {"diffusion.logsnr_max": round(15.0 - shift, 4)}))
    return {
        "noise_d": [(RECIPE if d == 64 else f"noise_d {d}",
                     {} if d == 64 else {"diffusion.noise_d": d}) for d in NOISE_DS],
        "output": [(RECIPE, {}), ("x0", {"model.prediction": "x0"}),
                   ("v, first level x2", {"model.channel_multipliers": wide}),
                   ("x0, first level x2", {"model.prediction": "x0",
                                           "model.channel_multipliers": wide})],
        "endpoint": endpoint,
        "transform": [(RECIPE, {}), ("Haar DWT-2", {"model.input_transform": "dwt2"}),
                      ("patch 4x4", {"model.input_transform": "patch", "model.patch_size": 4}),
                      ("none", {"model.input_transform": "none",
                                "model.channel_multipliers": none_mults,
                                "model.base_channels": none_base})],
        "multiscale": [(RECIPE, {}),
                       ("multiscale on", {"diffusion.multiscale": True,
                                          "diffusion.multiscale_min_size": min(8, size)})],
        "sid2": [(RECIPE, {}),
                 ("SiD2: residual U-ViT + sigmoid", {
                     "model.arch": "residual_uvit", "diffusion.loss_weighting": "sigmoid",
                     "diffusion.sigmoid_bias": math.log2(128 / size)})],
    }


def heldout_denoising(params, config, images_u8: np.ndarray) -> dict[str, dict]:
    """The model as a one-step denoiser of `images_u8` at each of HELD_OUT_LOGSNRS (fixed
    noise): `heldout_vmse` (v-MSE) and `denoised_power` (power per octave of its x0 estimate
    over the clean images', finest octave first: above 1, noise passed through; below 1, blur)."""
    model = build_model(config.model)
    x0 = jnp.asarray(preprocess.to_float(images_u8))
    eps = jnp.asarray(np.random.default_rng(TRAIN_SEED).standard_normal(x0.shape), jnp.float32)
    labels = jnp.zeros(len(x0), jnp.int32)
    prediction = config.model.prediction

    @jax.jit
    def denoise(logsnr: jax.Array) -> tuple[jax.Array, jax.Array]:
        logsnr_b = jnp.full((len(x0),), logsnr, jnp.float32)
        z = process.diffuse(x0, eps, logsnr_b)
        out = model.apply({"params": params}, z, logsnr_b, labels, train=False)
        out = out.astype(jnp.float32)
        v_hat = process.convert_output(z, out, logsnr_b, prediction, "v")
        x0_hat = process.convert_output(z, out, logsnr_b, prediction, "x0")
        return jnp.mean(jnp.square(process.from_x0_eps(x0, eps, logsnr_b, "v") - v_hat)), x0_hat

    clean = photo_metrics.octave_power((np.asarray(x0) + 1) / 2)
    out: dict[str, dict] = {"heldout_vmse": {}, "denoised_power": {}}
    for lam in HELD_OUT_LOGSNRS:
        vmse, x0_hat = denoise(jnp.float32(lam))
        power = photo_metrics.octave_power((np.clip(np.asarray(x0_hat), -1, 1) + 1) / 2)
        out["heldout_vmse"][f"{lam:g}"] = float(vmse)
        out["denoised_power"][f"{lam:g}"] = [float(r) for r in power / clean]
    return out


def last_logsnr(config) -> float:
    """logSNR of the sampler's last network call (t = 1 / steps), after shift and clip."""
    return float(diffusion_spec(config).logsnr_fn()(jnp.float32(1.0 / config.sample.num_steps)))


def within_target(scores: dict) -> bool:
    """Every octave's power ratio in TARGET_POWER and saturation in TARGET_SATURATION."""
    powers = [v for k, v in scores.items() if k.startswith("power_ratio_")]
    return (all(TARGET_POWER[0] <= p <= TARGET_POWER[1] for p in powers)
            and TARGET_SATURATION[0] <= scores["saturation_ratio"] <= TARGET_SATURATION[1])


def references(size: int, count: int) -> dict[str, np.ndarray]:
    """The held-out reference (as eval mode's), fresh training-photo crops and held-out crops
    for the v-MSE."""
    return {"held_out": PhotoSource(size, "test", seed=photo_eval.REFERENCE_SEED).images(count),
            "train": PhotoSource(size, "train", seed=TRAIN_SEED).images(count),
            "loss": PhotoSource(size, "test", seed=TRAIN_SEED).images(HELD_OUT_IMAGES)}


def score_sets(samples: np.ndarray, refs: dict[str, np.ndarray]) -> dict:
    """Photo metrics against the held-out photos, and the power / saturation ratios against
    the training photos (`train_` keys)."""
    scores = photo_metrics.photo_metrics(samples, refs["held_out"])
    ratios = photo_metrics.octave_power(samples) / photo_metrics.octave_power(refs["train"])
    bands = photo_metrics.octave_bands(samples.shape[1])
    scores.update({f"train_power_ratio_{b}": float(r) for b, r in zip(bands, ratios, strict=True)})
    scores["train_saturation_ratio"] = (photo_metrics.saturation(samples)
                                        / photo_metrics.saturation(refs["train"]))
    scores["num_samples"] = len(samples)
    return scores


def data_floor(size: int, count: int) -> dict:
    """What fresh crops of the training photos score in place of samples (the data's own
    distance from the held-out photos)."""
    refs = references(size, count)
    crops = PhotoSource(size, "train", seed=TRAIN_SEED + 1).images(count)
    return score_sets(crops, refs)


def score_run(config, workdir: Path, num_samples: int) -> list[dict]:
    """Photo metrics and held-out v-MSE of every checkpoint of a finished run."""
    size = config.model.image_size
    refs = references(size, num_samples)
    labels = np.zeros(num_samples, np.int32)
    rows = []
    for step in checkpoint_samples.checkpoint_steps(workdir):
        _, params, mesh, _ = checkpoint_samples.restore_at(workdir, config, step)
        samples = checkpoint_samples.draw(params, config, mesh, labels)
        rows.append({"step": step, **score_sets(samples, refs),
                     **heldout_denoising(params, config, refs["loss"]),
                     "last_logsnr": last_logsnr(config)})
    grid = samples[:36]
    images.save_png(images.make_grid(grid, ncols=int(math.sqrt(len(grid)))),
                    workdir / "final_samples.png")
    return rows


def _octaves(finals: list[dict], prefix: str) -> str:
    """Mean over seeds of each octave's ratio, finest first: '1.02 0.97 ...'."""
    keys = [k for k in finals[0] if k.startswith(prefix)]
    return " ".join(f"{np.mean([f[k] for f in finals]):.2f}" for k in keys)


def _row(ablation: str, arm: str, done: list[dict]) -> list[str]:
    final = [r["scores"][-1] for r in done]
    levels = [k for k in final[0] if k.startswith("swd_") and k != "swd_avg"]
    return [ablation, arm, str(len(done)), f"{done[0]['params']:,}",
            f"{done[0]['mflop_per_image']:.0f}", f"{final[0]['last_logsnr']:.1f}",
            mean_ci([f["swd_avg"] for f in final], ".1f"),
            " / ".join(f"{np.mean([f[k] for f in final]):.0f}" for k in levels),
            _octaves(final, "train_power_ratio_"),
            mean_ci([f["train_saturation_ratio"] for f in final], ".2f"),
            f"{sum(within_target({**f, **train_view(f)}) for f in final)}/{len(final)}",
            mean_ci([float(np.mean(list(f["heldout_vmse"].values()))) for f in final], ".4f"),
            mean_ci([r["images_per_s"] for r in done], ".0f")]


def train_view(scores: dict) -> dict:
    """The power and saturation ratios against the training photos, under the plain names."""
    return {k[len("train_"):]: v for k, v in scores.items() if k.startswith("train_")}


def table(ablations: dict, results: dict, size: int) -> str:
    """Markdown: one row per (ablation, arm), final-checkpoint scores as mean ± 95% CI over the
    seeds that have finished, and the data's own row (fresh training crops in place of
    samples)."""
    cols = ("ablation | arm | seeds | params | MFLOP/img | last logSNR | SWD avg | "
            f"SWD {' / '.join(str(s) for s in photo_metrics.swd_sizes(size))} | "
            f"power vs train ({' '.join(photo_metrics.octave_bands(size))}) | "
            "saturation vs train | in target | held-out v-MSE | train img/s")
    lines = [f"| {cols} |", "|" + "---|" * (cols.count("|") + 1)]
    for ablation, arm_list in ablations.items():
        for arm, _ in arm_list:
            runs = results.get((ablation, arm), [])
            done = [r for r in runs if "scores" in r]
            if done:
                lines.append("| " + " | ".join(_row(ablation, arm, done)) + " |")
            else:
                skipped = [r["skipped"] for r in runs if "skipped" in r]
                note = f"skipped: {skipped[0]}" if skipped else "not run yet"
                lines.append(f"| {ablation} | {arm} | {note} |" + " |" * (cols.count("|") - 2))
    return "\n".join(lines)


def floor_note(size: int, count: int) -> str:
    """A line under the table: the scores of fresh training-photo crops in place of samples."""
    floor = data_floor(size, count)
    levels = [k for k in floor if k.startswith("swd_") and k != "swd_avg"]
    held = " ".join(f"{v:.2f}" for k, v in floor.items() if k.startswith("power_ratio_"))
    return (f"Data floor ({count} fresh crops of the training photos in place of samples): SWD "
            f"avg {floor['swd_avg']:.1f} ({' / '.join(f'{floor[k]:.0f}' for k in levels)}), "
            f"power vs held-out {held}, saturation vs held-out "
            f"{floor['saturation_ratio']:.2f}; vs another draw of training crops: power "
            f"{_octaves([floor], 'train_power_ratio_')}, saturation "
            f"{floor['train_saturation_ratio']:.2f}.")
