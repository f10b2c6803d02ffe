"""ImageNet 128x128 U-ViT: the 512 model without an input transform (REFERENCE.md 3-6).

128x128x3 goes straight into the conv stem; conv levels 128 / 64 / 32 and the 2048-wide
transformer at 16x16 match the 512 model (the paper's 2B U-ViT at 128).
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """Returns the ImageNet 128 config."""
    c = base.get_config()
    m = c.model
    m.image_size = 128  # REFERENCE 4/6: ImageNet 128.
    m.input_transform = "none"  # REFERENCE 4: no input transform at 128.
    m.dropout_max_resolution = 64  # REFERENCE 6 at 128: dropout from 64 down 2.27, from 16: 2.41.

    d = c.diffusion
    d.noise_d = 32  # REFERENCE 6 ablation at 128: shift 32 (FID 2.26) beats 64 (2.41), cosine.
    d.multiscale = False  # REFERENCE 3: multiscale loss only at 512 and 1024.
    d.sigmoid_bias = 0.0  # REFERENCE 3: SiD2 sigmoid bias at 128 (unverified; used if sigmoid).

    c.data.name = "imagenet2012"  # tfds ImageNet-1k; images resized to model.image_size.
    return c
