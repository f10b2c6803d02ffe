"""The paper's Figure 3 argument on a real photo: pooling a noisy image raises its SNR by s^2.

    python experiments/snr_figure/snr_figure.py [--out=/tmp/sd_jax/snr_figure.png]

A 512 x 512 photo (scikit-image's astronaut) is noised at 512 and average-pooled to 64
(s = 8), and compared with the 64 x 64 version noised directly with the same schedule value.
Pooling averages s^2 independent noise values per pixel, so the pooled image's noise variance
is sigma^2 / s^2 and its SNR is s^2 times higher: the 512 model sees an easier problem at the
coarse scale. The shifted schedule (`logsnr_shifted_cosine(t, 512, noise_d=64)`) removes the
factor: pooled to 64 it has the base schedule's SNR.

SNR is measured as variance of the signal part over variance of the noise part of an image
(the noise part is known since we drew eps); the prediction is `v * alpha^2 / sigma^2` times
s^2 (pooled, unshifted) or 1 (direct, and pooled with the shifted schedule), with `v` the
variance of the 64 x 64 photo (the schedule's SNR is defined for unit-variance data).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sd_jax.diffusion import schedules  # noqa: E402
from sd_jax.io import images  # noqa: E402

IMAGE_D, BASE_D = 512, 64
TIMES = (0.3, 0.5, 0.7, 0.85)
TILE = 192  # Display size of every panel tile (nearest-neighbour, so noise is not smoothed).


def load_photo(size: int = IMAGE_D) -> np.ndarray:
    """skimage's astronaut as float32 [size, size, 3] in [-1, 1] (centre crop, then resize)."""
    from PIL import Image
    from skimage import data

    img = data.astronaut()
    h, w = img.shape[:2]
    side = min(h, w)
    img = img[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    if side != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return img.astype(np.float32) / 127.5 - 1.0


def avg_pool(x_hwc: np.ndarray, factor: int) -> np.ndarray:
    """Average pooling by `factor` in both spatial dimensions."""
    h, w, c = x_hwc.shape
    return x_hwc.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def snr(signal: np.ndarray, noise: np.ndarray) -> float:
    """Measured SNR: variance of the signal part over variance of the noise part."""
    return float(np.var(signal) / np.var(noise))


def alpha_sigma_at(logsnr: float) -> tuple[float, float]:
    """(alpha, sigma) of a scalar logSNR, as Python floats."""
    alpha, sigma = schedules.alpha_sigma(logsnr)
    return float(alpha), float(sigma)


def measure(t: float, x512: np.ndarray, rng: np.random.Generator, draws: int = 8) -> dict:
    """Measured and predicted SNRs at time t (noise variance over `draws` noise draws), plus
    the images of the panel row (first draw)."""
    s = IMAGE_D // BASE_D
    x64 = avg_pool(x512, s)
    v = float(np.var(x64))
    logsnr = float(schedules.logsnr_cosine(t))
    logsnr_shift = float(schedules.logsnr_shifted_cosine(t, IMAGE_D, noise_d=BASE_D))
    a, sg = alpha_sigma_at(logsnr)
    a_sh, sg_sh = alpha_sigma_at(logsnr_shift)
    eps512 = rng.standard_normal((draws, *x512.shape), dtype=np.float32)
    eps64 = rng.standard_normal((draws, *x64.shape), dtype=np.float32)
    pooled_eps = np.stack([avg_pool(e, s) for e in eps512])
    base_snr = a**2 / sg**2
    # Pooled images are rescaled to alpha^2 + noise variance = 1, like a directly noised image,
    # so the panel compares like with like; the rescale does not change the SNR.
    pooled = avg_pool(a * x512 + sg * eps512[0], s) / np.sqrt(a**2 + sg**2 / s**2)
    shifted = avg_pool(a_sh * x512 + sg_sh * eps512[0], s) / np.sqrt(a_sh**2 + sg_sh**2 / s**2)
    return {
        "t": t,
        "logsnr": logsnr,
        "signal_var": v,
        "direct_measured": snr(a * x64, sg * eps64),
        "direct_predicted": v * base_snr,
        "pooled_measured": snr(a * x64, sg * pooled_eps),
        "pooled_predicted": v * s**2 * base_snr,
        "shifted_measured": snr(a_sh * x64, sg_sh * pooled_eps),
        "shifted_predicted": v * base_snr,
        "z512": a * x512 + sg * eps512[0],
        "z64": a * x64 + sg * eps64[0],
        "z512_pooled": pooled,
        "z512_shifted_pooled": shifted,
    }


def _tile(x_hwc: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resize to TILE x TILE uint8 (no smoothing of the noise)."""
    from PIL import Image

    u8 = images.to_uint8(x_hwc)
    return np.asarray(Image.fromarray(u8).resize((TILE, TILE), Image.NEAREST))


def build_panel(rows: list[dict]) -> np.ndarray:
    """Rows: t values. Columns: z at 512 | z at 64 | 512 pooled to 64 | shifted 512 pooled."""
    from PIL import Image, ImageDraw

    columns = ("z512", "z64", "z512_pooled", "z512_shifted_pooled")
    tiles = np.stack([_tile(row[c]) for row in rows for c in columns])
    grid = images.make_grid(tiles, ncols=len(columns), pad=4)
    header = Image.new("RGB", (grid.shape[1], 36), "white")
    draw = ImageDraw.Draw(header)
    titles = ("noised at 512", "noised at 64", "512 -> pool 64", "shifted 512 -> pool 64")
    for i, title in enumerate(titles):
        draw.text((4 + i * (TILE + 4) + 4, 4), title, fill="black")
    draw.text((8, 20), "rows: t = " + ", ".join(f"{r['t']:g}" for r in rows), fill="black")
    return np.concatenate([np.asarray(header), grid], axis=0)


def report(rows: list[dict]) -> str:
    """A markdown table of measured vs predicted SNRs."""
    s2 = (IMAGE_D // BASE_D) ** 2
    lines = [
        f"photo variance at {BASE_D}x{BASE_D}: v = {rows[0]['signal_var']:.4f}; s^2 = {s2}",
        "| t | logSNR | SNR 64 direct (meas / pred) | SNR 512->64 (meas / pred) "
        "| ratio pooled/direct (pred s^2) | SNR shifted 512->64 (meas / pred) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["pooled_measured"] / r["direct_measured"]
        lines.append(
            f"| {r['t']:g} | {r['logsnr']:+.2f} "
            f"| {r['direct_measured']:.4g} / {r['direct_predicted']:.4g} "
            f"| {r['pooled_measured']:.4g} / {r['pooled_predicted']:.4g} "
            f"| {ratio:.2f} ({s2}) "
            f"| {r['shifted_measured']:.4g} / {r['shifted_predicted']:.4g} |"
        )
    return "\n".join(lines)


def run(out: str | Path, seed: int = 0, times: tuple[float, ...] = TIMES) -> list[dict]:
    """Measures every t, saves the panel PNG at `out`, prints the table; returns the rows."""
    rng = np.random.default_rng(seed)
    x512 = load_photo()
    rows = [measure(t, x512, rng) for t in times]
    path = images.save_png(build_panel(rows), out)
    print(report(rows))
    print(f"panel: {path}")
    return rows


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/sd_jax/snr_figure.png", help="Panel PNG path.")
    parser.add_argument("--seed", type=int, default=0, help="Noise seed.")
    args = parser.parse_args()
    run(args.out, args.seed)


if __name__ == "__main__":
    main()
