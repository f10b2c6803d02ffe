"""ImageNet 256x256 with SiD2's recipe: configs/imagenet512_sid2.py at 256 with no patching
("UViT/1", FID 1.38 in SiD2), so the same conv levels (256 -> 128 -> 64 -> 32) and transformer
at 16x16 see the pixels directly. Unverified values: see configs/imagenet512_sid2.py.

    python launch.py --config=configs/imagenet256_sid2.py --mode=inspect   # params, FLOPs
"""

import ml_collections

from sd_jax.configs import imagenet512_sid2


def get_config() -> ml_collections.ConfigDict:
    """Returns the ImageNet 256 SiD2 config."""
    c = imagenet512_sid2.get_config()
    m = c.model
    m.image_size = 256  # ImageNet 256.
    m.input_transform = "none"  # SiD2: UViT/1 at 256 (no patching: 256x256x3 into the first conv level).
    m.patch_size = 1  # SiD2: UViT/1.

    d = c.diffusion
    d.sigmoid_bias = -1.0  # SiD2 bias at 256 (via a summary, unverified).
    d.noise_d = 32  # Unverified: simple diffusion's best shift at 256 (schedule ablation: 32 beat 64 and 128).
    return c
