"""Paper ablation (docs/recipe.md section 8): where dropout is applied, at 128.

none 3.74, everywhere 3.19, from 64 down 2.27, from 16 down 2.41 (FID). Dropout runs at
resolutions <= model.dropout_max_resolution (128 = every level) with configs/imagenet128.py's
rate (model.dropout).
"""

from scripts.sweep_lib import concat, grid


def get_sweep() -> dict:
    """No dropout; dropout everywhere, from 64 down and from 16 down."""
    return {
        "base_config": "configs/imagenet128.py",
        "points": concat(
            grid(**{"model.dropout": [0.0]}),
            grid(**{"model.dropout_max_resolution": [128, 64, 16]}),
        ),
    }
