"""Paper ablation (docs/recipe.md section 8): blocks at 16x16, at 128.

More is better but slower: "4+5" blocks FID 2.98 at 100% speed, "12+13" blocks 2.41 at 62%.
We read "N+(N+1)" as the blocks of a U-Net level at 16x16: N on the way down plus N + 1 on the
way up (a U-Net's up path has one block more, for the skip from the level's input). This U-ViT has
no down/up split at 16x16: the whole level is one stack of `model.transformer_depth` transformer
blocks with residual connections only, so the same number of blocks is 4 + 5 = 9 and
12 + 13 = 25; 17 ("8+9") sits in between. A transformer block is not a ResBlock (different
parameters and FLOPs), so this is the U-ViT analogue of the ablation, not a replica; the U-Net
here sets `num_res_blocks` for all its levels at once and cannot vary 16x16 alone.
"""

from scripts.sweep_lib import grid


def get_sweep() -> dict:
    """Transformer depth 9 / 17 / 25 at 16x16 ("4+5", "8+9", "12+13" blocks)."""
    return {
        "base_config": "configs/imagenet128.py",
        "points": grid(**{"model.transformer_depth": [9, 17, 25]}),
    }
