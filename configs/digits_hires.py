"""The quickstart recipe at 64 or 128 px: the embedded digits upsampled, DWT-2 input, on a CPU.

`python launch.py --config=configs/digits_hires.py --workdir=/tmp/d64` (64 px) or
`--config=configs/digits_hires.py:128`. The digits are rendered at `model.image_size` by the
loader (bicubic from 8x8). Everything not set here is configs/quickstart.py; docs/resolution.md
explains the choices and measures the samples (experiments/miniature/miniature.py runs the ablations).
"""

import ml_collections

from sd_jax.configs import quickstart

# Conv levels (channels @ size) per resolution, after DWT-2 (64 -> 16x16x48, 128 -> 32x32x48):
# the first level 48 wide (the transformed input's channels, see ModelSpec.level_width), then
# 32 wide down to the quickstart's transformer (128 wide at 4x4).
MULTIPLIERS = {64: (3, 2, 8), 128: (3, 2, 2, 8)}  # x base 16: 48@16, 32@8, 128@4 (64 px).


def get_config(size: str = "64") -> ml_collections.ConfigDict:
    """Returns the 64 px (default) or 128 px digits config."""
    size = int(size)
    if size not in MULTIPLIERS:
        raise ValueError(f"configs/digits_hires.py supports sizes {sorted(MULTIPLIERS)}, got {size}")
    c = quickstart.get_config()

    m = c.model
    m.image_size = size  # Digits upsampled 8x or 16x (bicubic, data loader).
    m.input_transform = "dwt2"  # Haar DWT-2: 16x the channels at 1/4 the size (paper: 512 px).
    m.base_channels = 16  # Level widths are base x multipliers.
    m.channel_multipliers = MULTIPLIERS[size]  # First level 48 = the 48 DWT-2 channels of RGB.
    m.num_res_blocks = 0  # Down path: none; up path: one per level. Keeps the cost near 2x the
    # 16 px quickstart's (paper: "few blocks at full resolution").
    m.prediction = "x0"  # Upsampled digits leave 47 of the 48 DWT-2 channels without signal:
    # an x0 output is right there at zero, a v output must copy their noise with gain
    # alpha / sigma and leaves it in the samples (docs/resolution.md; paper: v).
    m.colour_transform = "opponent"  # Grey data: the 32 colour channels are exactly zero.

    d = c.diffusion
    d.noise_d = 32  # The quickstart's schedule (noise_d 32 at 16 px) shifted by 2 log(16/size).
    d.multiscale = False  # Off as in the quickstart (experiments/miniature/miniature.py ablates it).
    d.logsnr_max = 7.5  # The v-loss weighs an x0 output's error by 1 / sigma^2 = 1 + SNR: clip
    # the clean end (before the shift) so no step dominates (paper: 15, with v outputs).

    if size != 64:  # The quickstart's dpmpp_2m_sde at 32 steps is measured at 64 px only (500
        # samples of a 1,500-step run: FD-digits 14.8 / 108.6 unguided / guidance 3, against
        # DDPM's 14.6 / 109.1 at 256 steps; experiments/nfe/README.md). Elsewhere DDPM:
        c.sample.sampler, c.sample.num_steps = "ddpm", 128
    return c
