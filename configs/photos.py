"""Natural images on a CPU: the paper's recipe on the embedded photos at 64 px (`:32`, `:128`).

    python launch.py --config=configs/photos.py --workdir=/tmp/photos64
    python launch.py --config=configs/photos.py --workdir=/tmp/photos64 --mode=sample
    python launch.py --config=configs/photos.py --workdir=/tmp/photos64 --mode=eval

Unconditional, on random multi-scale crops of the photos scikit-learn and scikit-image ship
(`data.source='photos'`, nothing downloaded; docs/training.md, "Embedded photos"); eval mode
scores the samples against crops of the held-out photos (SWD, power per octave, saturation).
The paper's recipe unchanged where it applies: v output and v-MSE, RGB, the LeGall 5/3 DWT
level 2 in front of the U-ViT, logSNR clipped at +-15, the schedule shifted to the base
resolution 64 (at 64 px the plain cosine). Sized for about 11 minutes on 2 CPU cores;
docs/results.md ("Photo miniature") measures it.
"""

import ml_collections

from sd_jax.configs import quickstart

# Per size: (input transform, channel multipliers x base 32, training steps). As the paper's
# U-ViT (DWT-1 at 256, DWT-2 at 512), the wavelet brings 32 and 64 px to the same 16x16 first
# conv level (16x16x12, 16x16x48); 128 px (32x32x48) gets one more conv level. Then the
# transformer at 4x4 (16 tokens).
LEVELS = {32: ("dwt53_1", (2, 4, 8), 2_000), 64: ("dwt53_2", (2, 4, 8), 2_000),
          128: ("dwt53_2", (2, 2, 4, 8), 1_500)}


def get_config(size: str = "64") -> ml_collections.ConfigDict:
    """Returns the 64 px (default), 32 px or 128 px photos config."""
    size = int(size)
    if size not in LEVELS:
        raise ValueError(f"configs/photos.py supports sizes {sorted(LEVELS)}, got {size}")
    transform, multipliers, steps = LEVELS[size]
    c = quickstart.get_config()

    m = c.model
    m.image_size = size  # Crops rendered at this size by the loader.
    m.input_transform = transform  # Paper: LeGall 5/3 DWT, level 1 at 256, level 2 at 512.
    m.base_channels = 32  # Level widths are base x multipliers.
    m.channel_multipliers = multipliers  # 96 @16x16 (twice the 48 DWT channels), 128 @8x8, 256-wide transformer @4x4 (64 px).
    m.num_res_blocks = 0  # Down path: none; up path: one per level (base: 2).
    m.transformer_depth = 2  # Transformer blocks at 4x4 (base: 36): 16 tokens need few.
    m.num_heads = 4  # Head dim 64.
    m.emb_dim = 256  # Conditioning embedding width (base: 1024).
    m.num_classes = 0  # Unconditional: the photos have no labels.
    m.prediction = "v"  # Paper: v.
    m.colour_transform = "none"  # Paper: RGB.

    d = c.diffusion
    d.noise_d = 64  # Paper text: the schedule shifted to base resolution 64 (at 64 px: the cosine).
    d.logsnr_min, d.logsnr_max = -15.0, 15.0  # Paper: clip +-15 (before the shift).
    d.multiscale = False  # Paper: multiscale loss only at 512 and 1024.

    t = c.train
    t.num_steps = steps  # 64 px: 11 min 24 s wall on 2 idle CPU cores (docs/results.md).
    t.batch_size = 32  # CPU-sized batch (paper: 2048).
    t.checkpoint_every = steps // 2  # Two checkpoints.
    t.sample_every = steps  # One grid at the end.
    t.sample_grid_size = 36  # 6x6 grid.
    t.label_dropout = 0.0  # Unconditional: nothing to drop.
    t.ema_decay = 0.995  # Averages the last ~200 steps (paper: 0.9999 over 500k steps).

    o = c.optimizer
    o.learning_rate = 1e-3  # As the quickstart: small model, short run (paper: 1e-4).
    o.warmup_steps = 100  # Short warm-up (paper: 10k).

    s = c.sample
    s.num_samples = 100  # --mode=sample: enough for the photo metrics.
    s.sampler = "ddpm"  # The photo miniature's (the quickstart's dpmpp_2m_sde is measured on digits only).
    s.num_steps = 128  # Sampler steps (base: 512); the photo miniature scores with 128 (docs/results.md).
    s.guidance_scale = 1.0  # Unconditional: no guidance.
    s.labels = None  # Unconditional.
    s.batch_size = 50  # Divisible by 1, 2, 5 or 10 devices.

    dd = c.data
    dd.source = "photos"  # Embedded photos, crops at model.image_size.
    dd.split = "train"  # The training photos ('test': the held-out ones).
    dd.random_flip = True  # Mirrored photos are photos.
    dd.num_workers = 0  # A crop costs ~1 ms: cheaper than a worker process on 2 cores.
    return c
