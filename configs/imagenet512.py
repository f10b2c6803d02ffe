"""ImageNet 512x512, the paper's ~2B-parameter U-ViT (docs/recipe.md sections 5-8).

configs/base.py already holds this recipe: 5/3 DWT level 2 input (128x128x48), conv levels
128 / 256 / 512 channels at 128 / 64 / 32, 36 transformer blocks of width 2048 (4 heads) at
16x16, dropout 0.2 at 16x16, v-prediction with v-MSE, multiscale loss, shifted cosine with
noise_d = 64 (paper text). Train set: 1,281,167 images, so 500k steps x 2048 is ~800 epochs.
`python launch.py --config=configs/imagenet512.py --mode=inspect` prints params and FLOPs.
"""

import ml_collections

from sd_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    """Returns the ImageNet 512 config (the base recipe, stated explicitly)."""
    c = base.get_config()
    c.model.image_size = 512  # ImageNet 512 U-ViT (same as base).
    c.data.name = "imagenet2012"  # tfds ImageNet-1k; images resized to model.image_size.
    return c
