"""Paper ablation (docs/recipe.md section 8): noise schedule at 128.

cosine 2.96/3.38, shifted noise_d=64 2.41/3.03, shifted noise_d=32 2.26/2.88 (FID train/eval).
"""

from scripts.sweep_lib import concat, grid


def get_sweep() -> dict:
    """Cosine vs the shifted cosine with base resolution 64 and 32."""
    return {
        "base_config": "configs/imagenet128.py",
        "points": concat(
            grid(**{"diffusion.schedule": ["cosine"]}),
            grid(**{"diffusion.schedule": ["shifted_cosine"], "diffusion.noise_d": [64, 32]}),
        ),
    }
