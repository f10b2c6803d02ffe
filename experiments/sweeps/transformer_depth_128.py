"""Paper ablation (REFERENCE section 6): blocks at 16x16, at 128.

More is better but slower: 4+5 blocks FID 2.98 at 100% speed, 12+13 blocks 2.41 at 62%. In the
U-ViT all 16x16 blocks are one transformer stack, so "4+5" is transformer_depth 9 and "12+13"
is 25; 17 sits in between.
"""

from experiments.sweep_lib import grid


def get_sweep() -> dict:
    """Transformer depth 9 / 17 / 25 at 16x16."""
    return {
        "base_config": "configs/imagenet128.py",
        "points": grid(**{"model.transformer_depth": [9, 17, 25]}),
    }
