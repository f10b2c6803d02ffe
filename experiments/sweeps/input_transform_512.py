"""Paper ablation (REFERENCE section 6): input downsampling at 512.

none 5.60, DWT-1 5.42, DWT-2 4.85, conv/patch 4x4 5.04 (FID). The transformer stays at 16x16,
so a weaker input transform needs more conv levels: extra levels at the base width (128) on top
of the 512 config's (1, 2, 4, 16).
"""

from experiments.sweep_lib import concat, grid, zip_


def get_sweep() -> dict:
    """No transform (512 -> 16 in 5 conv steps), DWT level 1, DWT level 2, 4x4 patches."""
    return {
        "base_config": "configs/imagenet512.py",
        "points": concat(
            zip_(**{
                "model.input_transform": ["none", "dwt1", "dwt2"],
                "model.channel_multipliers": [(1, 1, 1, 2, 4, 16), (1, 1, 2, 4, 16), (1, 2, 4, 16)],
            }),
            grid(**{"model.input_transform": ["patch"], "model.patch_size": [4],
                    "model.channel_multipliers": [(1, 2, 4, 16)]}),
        ),
    }
