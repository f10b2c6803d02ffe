"""ImageNet 1024x1024 U-ViT: 5/3 DWT level 2 plus one more conv level (docs/recipe.md section 8).

The paper trains at 1024 but this layout is our extrapolation from the 512 model: DWT-2 maps
1024x1024x3 to 256x256x48; conv levels 128 / 128 / 256 / 512 channels at 256 / 128 / 64 / 32,
then the 512 model's 2048-wide transformer at 16x16.
"""

import ml_collections

from sd_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    """Returns the ImageNet 1024 config."""
    c = base.get_config()
    m = c.model
    m.image_size = 1024  # ImageNet 1024.
    m.channel_multipliers = (1, 1, 2, 4, 16)  # Choice: one more conv level (128 ch @256) keeps the transformer at 16x16.

    d = c.diffusion
    d.noise_d = 64  # Paper text: base resolution 64 (the paper has no schedule ablation at 1024).
    d.multiscale = True  # Paper: the multiscale loss helped at 512 and 1024.
    d.sigmoid_bias = -4.0  # SiD2 sigmoid bias at 1024 (SiD2, unverified; used if loss_weighting='sigmoid').

    c.data.name = "imagenet2012"  # tfds ImageNet-1k; images resized to model.image_size.
    return c
