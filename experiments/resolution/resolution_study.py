"""Why do 64 px samples keep pixel noise? Measurements behind docs/resolution.md (not a test).

    python experiments/resolution/resolution_study.py filters          # digits upsampling
    python experiments/resolution/resolution_study.py schedule         # logSNR end points
    python experiments/resolution/resolution_study.py exact --size=64  # exact-denoiser sampler
    python experiments/resolution/resolution_study.py denoise --workdir=DIR [--step=S] \
        [--config.x=y ...]
        # what the trained network removes of the noise, per logSNR and DWT-2 band
    python experiments/resolution/resolution_study.py run --workdir=DIR [--step=S] \
        [--config.x=y ...]
        # samples a trained run; prints HF ratio, colour noise, per-band energies, the energy
        # outside the output head's range, and the last sampler step (x0 vs its input z)

Every number is on images in [0, 1] unless said otherwise; the metrics are
`sd_jax.eval.sample_quality`. `run` reads the config the run was trained with from
`--config=` (default configs/quickstart.py) plus the same `--config.*` overrides.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from scripts import checkpoint_samples, sweep_lib  # noqa: E402
from sd_jax.data import digits_source  # noqa: E402
from sd_jax.diffusion import process, samplers, schedules  # noqa: E402
from sd_jax.eval import digits_eval, digits_net, sample_quality  # noqa: E402
from sd_jax.io import images  # noqa: E402
from sd_jax.models import transforms  # noqa: E402
from sd_jax.specs import diffusion_spec, sampling_spec  # noqa: E402

# The sampler this study was measured with (the quickstart's until it moved to dpmpp_2m_sde, 32
# steps); a later --config.sample.* override still wins.
STUDY_SAMPLER = ["--config.sample.sampler=ddpm", "--config.sample.num_steps=128"]


def digits_at(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as the loader renders them at `size` (uint8 [N, size, size, 3]), labels."""
    source = digits_source().resized(size)
    return source.images, source.labels


def haar2(x_bhwc) -> np.ndarray:
    """Haar DWT-2 of images (the analysis basis of this study, whatever the model's input)."""
    return np.asarray(transforms.haar_dwt(transforms.haar_dwt(jnp.asarray(x_bhwc))), np.float64)


def band_energy(images_u8: np.ndarray) -> dict[str, np.ndarray]:
    """Mean square of each DWT-2 band ([-1, 1] scale), split into grey and colour parts.

    Bands are the 16 Haar wavelet-packet channels per RGB channel (band 0 = LL of LL). The grey
    part is the band's mean over RGB, the colour part its deviation from that mean.
    """
    x = images_u8.astype(np.float32) / 127.5 - 1.0
    y = haar2(x)
    y = y.reshape(*y.shape[:3], 16, 3)  # Channel layout: band major, RGB minor.
    grey = y.mean(axis=-1, keepdims=True)
    return {"grey": np.mean(grey[..., 0] ** 2, axis=(0, 1, 2)),
            "colour": np.mean(np.sum((y - grey) ** 2, axis=-1), axis=(0, 1, 2))}


def head_range_split(kernel: np.ndarray, y_bhwc: np.ndarray, iters: int = 400
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Splits `y` (the output head's space, [B, h, w, C_out]) into (in range, orthogonal).

    The head is a 3x3 SAME conv from C_in < C_out channels, so its range is a subspace of at
    most h*w*C_in dimensions. Least squares by conjugate gradients on the normal equations.
    """
    k = jnp.asarray(kernel, jnp.float32)

    def conv(h):
        return jax.lax.conv_general_dilated(h, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision="highest")

    y = jnp.asarray(y_bhwc, jnp.float32)
    h0 = jnp.zeros(y.shape[:3] + (k.shape[2],), jnp.float32)
    conv_t = jax.linear_transpose(conv, h0)
    normal = jax.jit(lambda h: conv_t(conv(h))[0])
    rhs = conv_t(y)[0]
    h, _ = jax.scipy.sparse.linalg.cg(normal, rhs, maxiter=iters, tol=1e-7)
    inside = np.asarray(conv(h), np.float64)
    return inside, np.asarray(y, np.float64) - inside


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()]
        print("| " + " | ".join(cells) + " |")


def filter_report() -> None:
    """What the upsampling filter of the digits changes: HF energy, high-band energy, and how
    much of the variance survives average pooling back to 8x8 (the SNR gain of the paper's
    argument is exactly s^2 only if all of it does)."""
    from PIL import Image

    digits = digits_source().images
    x8 = digits.astype(np.float64) / 255.0
    rows = []
    for size in (16, 64, 128):
        for name in ("NEAREST", "BILINEAR", "BICUBIC", "LANCZOS"):
            method = getattr(Image.Resampling, name)
            up = np.stack([np.asarray(Image.fromarray(im).resize((size, size), method))
                           for im in digits])
            x = up.astype(np.float64) / 255.0
            k = size // 8
            pooled = x.reshape(len(x), 8, k, 8, k, 3).mean(axis=(2, 4))
            centred = x - x.mean(axis=(1, 2, 3), keepdims=True)
            pooled_c = pooled - pooled.mean(axis=(1, 2, 3), keepdims=True)
            bands = band_energy(up)
            rows.append({"size": size, "filter": name.lower(),
                         "hf_energy": sample_quality.hf_energy(up),
                         "high_band_frac": float(bands["grey"][1:].sum() / bands["grey"].sum()),
                         "var_kept_8x8": float(np.mean(pooled_c ** 2) / np.mean(centred ** 2)),
                         "mean_abs_vs_8x8": float(np.mean(np.abs(pooled - x8)))})
    print_table("digits upsampled from 8x8", rows)


def schedule_report() -> None:
    """logSNR and sigma (pixel noise std, [-1, 1] scale) at t = 1/n, the last sampler step."""
    rows = []
    for name, size, noise_d in [("shifted_cosine", 16, 32), ("shifted_cosine", 64, 32),
                                ("shifted_cosine", 64, 8), ("cosine", 64, 0),
                                ("shifted_cosine", 128, 32)]:
        cfg = sweep_lib.load_config("configs/quickstart.py", [
            f"--config.diffusion.schedule={name}", f"--config.diffusion.noise_d={noise_d or 32}",
            f"--config.model.image_size={size}"])
        fn = diffusion_spec(cfg).logsnr_fn()
        for n in (128,):
            logsnr = float(fn(1.0 / n))
            _, sigma = schedules.alpha_sigma(logsnr)
            rows.append({"schedule": name, "size": size, "noise_d": noise_d or "-", "steps": n,
                         "logsnr(1/n)": logsnr, "logsnr(0)": float(fn(0.0)),
                         "sigma(1/n)": float(sigma)})
    print_table("schedule end points", rows)


def exact_denoiser(data_x: jnp.ndarray, data_labels: jnp.ndarray, null_label: int):
    """x0-prediction of the empirical data distribution (the exact posterior mean), per class.

    For the null label the whole set is used, so classifier-free guidance works as with a model.
    """
    flat = data_x.reshape(data_x.shape[0], -1)
    sq = jnp.sum(flat ** 2, axis=1)

    def denoise(z_bhwc, logsnr_b, labels_b):
        alpha, sigma = schedules.alpha_sigma(logsnr_b[0])
        zf = z_bhwc.reshape(z_bhwc.shape[0], -1)
        # log N(z; alpha x_i, sigma^2) up to a constant per z.
        logits = (alpha * zf @ flat.T - 0.5 * alpha ** 2 * sq[None]) / sigma ** 2
        allowed = (labels_b[:, None] == data_labels[None]) | (labels_b[:, None] == null_label)
        weights = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), axis=1)
        return (weights @ flat).reshape(z_bhwc.shape)

    return denoise


def exact_report(size: int, num: int, guidance: float, sampler: str) -> dict:
    """Samples the empirical digits distribution with the exact denoiser and the quickstart
    sampler settings at `size`: any noise left is the sampler's / schedule's, not a model's."""
    data_u8, labels = digits_at(size)
    cfg = sweep_lib.load_config("configs/quickstart.py",
                                [*STUDY_SAMPLER, f"--config.model.image_size={size}"])
    data_x = jnp.asarray(data_u8, jnp.float32) / 127.5 - 1.0
    denoise = exact_denoiser(data_x, jnp.asarray(labels), cfg.model.num_classes)
    sample_labels = jnp.arange(num) % 10
    cfg.model.prediction = "x0"  # The exact denoiser's output.
    spec = sampling_spec(cfg).replace(sampler=sampler, guidance_scale=guidance,
                                      guidance_logsnr_min=-1e9, guidance_logsnr_max=1e9)
    fn = jax.jit(lambda rng: samplers.sample(denoise, rng, sample_labels, spec))
    out = images.to_uint8(np.asarray(fn(jax.random.PRNGKey(0))))
    return {"size": size, "sampler": sampler, "guidance": guidance,
            **sample_quality.quality_metrics(out, data_u8)}


def last_step_passthrough(denoise_fn, logsnr_last: float, prediction: str):
    """Denoiser whose prediction at the last step is x0 = z: the sampler then returns its input."""
    def fn(z, logsnr_b, labels_b):
        out = denoise_fn(z, logsnr_b, labels_b)
        ident = process.convert_output(z, z, logsnr_b, "x0", prediction)
        return jnp.where(jnp.abs(logsnr_b[0] - logsnr_last) < 1e-4, ident, out)
    return fn


def run_report(workdir: Path, config, step: int | None, num: int) -> dict:
    """Samples a trained run (config.sample settings) and measures the noise it leaves."""
    model, params, _, step = checkpoint_samples.restore_at(workdir, config, step)
    size = config.model.image_size
    data_u8, _ = digits_at(size)
    labels = jnp.arange(num) % 10
    spec = sampling_spec(config)
    logsnr_last = float(spec.diffusion.logsnr_fn()(1.0 / config.sample.num_steps))

    def denoise(z, logsnr_b, labels_b):
        return model.apply({"params": params}, z, logsnr_b, labels_b, train=False)

    def draw(fn):
        run_fn = jax.jit(lambda rng: samplers.sample(fn, rng, labels, spec))
        return images.to_uint8(np.asarray(run_fn(jax.random.PRNGKey(1))))

    samples = draw(denoise)
    z_last = draw(last_step_passthrough(denoise, logsnr_last, config.model.prediction))
    variables, _ = digits_net.load_or_build()
    scores = digits_eval.digits_metrics(samples, np.asarray(labels), variables, data_u8)
    result = {"step": step, "fd_digits": scores["fd_digits"],
              "class_accuracy": scores["class_accuracy"],
              **sample_quality.quality_metrics(samples, data_u8),
              "hf_ratio_last_z": sample_quality.hf_energy(z_last)
              / sample_quality.hf_energy(data_u8),
              "colour_noise_last_z": sample_quality.colour_noise(z_last)}
    bands_s, bands_d = band_energy(samples), band_energy(data_u8)
    print_table(f"{workdir} step {step}: DWT-2 band energy, samples vs data ([-1, 1] scale)", [
        {"band": b, "grey samples": bands_s["grey"][b], "grey data": bands_d["grey"][b],
         "colour samples": bands_s["colour"][b], "colour data": bands_d["colour"][b]}
        for b in range(16)])
    kernel = np.asarray(params["out_conv"]["kernel"])
    if config.model.input_transform == "dwt2" and kernel.shape[2] < kernel.shape[3]:
        result.update(head_split_report(kernel, samples, data_u8[:num]))
    images.save_png(images.make_grid(samples[:50]), workdir / f"study_step{step}.png")
    return result


def denoise_report(workdir: Path, config, step: int | None, num: int) -> list[dict]:
    """How much of the noise the trained network removes, per noise level and DWT-2 band.

    For data x0, z = alpha x0 + sigma eps and the network's x0 estimate, the ratio
    E|x0_hat - x0|^2 / E|z / alpha - x0|^2 per band (grey and colour parts): 1 means the band's
    noise is passed through untouched, 0 means it is removed exactly.
    """
    model, params, _, step = checkpoint_samples.restore_at(workdir, config, step)
    data_u8, labels = digits_at(config.model.image_size)
    rng = np.random.default_rng(0)
    rows_idx = rng.choice(len(data_u8), num, replace=False)
    x0 = jnp.asarray(data_u8[rows_idx], jnp.float32) / 127.5 - 1.0
    eps = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    apply = jax.jit(lambda z, logsnr, y: model.apply({"params": params}, z, logsnr, y))

    def bands(x):  # [B, H, W, 3] -> grey [..., 16], colour [..., 16, 3] DWT-2 coefficients.
        y = haar2(x)
        y = y.reshape(*y.shape[:3], 16, 3)
        grey = y.mean(axis=-1, keepdims=True)
        return grey[..., 0], y - grey

    rows = []
    for logsnr in (0.0, 2.0, 4.0, 6.0, 8.0):
        logsnr_b = jnp.full((num,), logsnr, jnp.float32)
        alpha, sigma = schedules.alpha_sigma(logsnr)
        z = alpha * x0 + sigma * eps
        out = apply(z, logsnr_b, jnp.asarray(labels[rows_idx], jnp.int32))
        x0_hat, _ = process.x0_eps_from_output(z, out, logsnr_b, config.model.prediction)
        g_err, c_err = bands(x0_hat - x0)
        g_noop, c_noop = bands(z / alpha - x0)
        g = np.mean(g_err ** 2, axis=(0, 1, 2)) / np.mean(g_noop ** 2, axis=(0, 1, 2))
        c = (np.mean(np.sum(c_err ** 2, -1), axis=(0, 1, 2))
             / np.mean(np.sum(c_noop ** 2, -1), axis=(0, 1, 2)))
        rows.append({"logsnr": logsnr, "grey LL": g[0], "grey high (mean)": float(g[1:].mean()),
                     "colour LL": c[0], "colour high (mean)": float(c[1:].mean())})
    print_table(f"{workdir} step {step}: error of x0_hat / error of z/alpha (1 = no denoising)",
                rows)
    return rows


def head_split_report(kernel: np.ndarray, samples_u8: np.ndarray, data_u8: np.ndarray) -> dict:
    """Energy per dimension inside / outside the output head's range, samples vs data."""
    out = {}
    for name, ims in (("samples", samples_u8), ("data", data_u8)):
        x = jnp.asarray(ims, jnp.float32) / 127.5 - 1.0
        y = haar2(x)
        inside, outside = head_range_split(kernel, y)
        dims = y[0].size
        dims_in = math.prod(y.shape[1:3]) * kernel.shape[2]
        out[f"in_range_{name}"] = float(np.sum(inside ** 2) / len(y) / dims_in)
        out[f"outside_{name}"] = float(np.sum(outside ** 2) / len(y) / (dims - dims_in))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("filters", "schedule", "exact", "run", "denoise"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--step", type=int)
    parser.add_argument("--config", default="configs/quickstart.py")
    args, overrides = parser.parse_known_args()
    if args.what == "filters":
        filter_report()
    elif args.what == "schedule":
        schedule_report()
    elif args.what == "exact":
        rows = [exact_report(args.size, args.num, g, s)
                for s, g in (("ddpm", 3.0), ("ddpm", 1.0), ("ddim", 1.0))]
        print_table(f"exact denoiser of the digits at {args.size} px", rows)
    elif args.what == "denoise":
        config = sweep_lib.load_config(args.config, [*STUDY_SAMPLER, *overrides])
        denoise_report(args.workdir, config, args.step, args.num)
    else:
        config = sweep_lib.load_config(args.config, [*STUDY_SAMPLER, *overrides])
        print(json.dumps(run_report(args.workdir, config, args.step, args.num)))


if __name__ == "__main__":
    main()
