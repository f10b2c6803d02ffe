"""ImageNet 256x256 U-ViT: the 512 model with a DWT level 1 input (REFERENCE.md sections 3-6).

DWT-1 maps 256x256x3 to 128x128x12, so the conv levels (128 / 64 / 32) and the 2048-wide
transformer at 16x16 are exactly those of the 512 model (the paper's 2B U-ViT at 256).
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
    """Returns the ImageNet 256 config."""
    c = base.get_config()
    m = c.model
    m.image_size = 256  # REFERENCE 4/6: ImageNet 256.
    m.input_transform = "dwt1"  # REFERENCE 4: DWT level 1 at 256 (transformer stays at 16x16).

    d = c.diffusion
    d.noise_d = 32  # REFERENCE 6 ablation at 256: shift 32 (FID 3.76) beats 64 (3.94), 128.
    d.multiscale = False  # REFERENCE 3: multiscale loss slightly hurt at 256.
    d.sigmoid_bias = -1.0  # REFERENCE 3: SiD2 sigmoid bias at 256 (unverified; used if sigmoid).

    c.data.name = "imagenet2012"  # tfds ImageNet-1k; images resized to model.image_size.
    return c
