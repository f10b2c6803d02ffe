"""Paper ablation (docs/recipe.md section 8): input downsampling at 512.

none 5.60, DWT-1 5.42, DWT-2 4.85, conv 4x4 5.04 (FID). The wavelet is the paper's LeGall 5/3
('dwt53_*'); "conv 4x4" is a learned 4x4 stride-4 conv at the input and a 4x4 stride-4
transposed conv at the output ('conv', model.patch_size 4). The transformer stays at 16x16, so
a transform that downsamples less needs more conv levels: extra levels at the base width (128)
on top of the 512 config's (1, 2, 4, 16).
"""

from scripts.sweep_lib import concat, grid, zip_


def get_sweep() -> dict:
    """No transform (512 -> 16 in 5 conv steps), 5/3 DWT level 1 and 2, learned conv 4x4."""
    return {
        "base_config": "configs/imagenet512.py",
        "points": concat(
            zip_(**{
                "model.input_transform": ["none", "dwt53_1", "dwt53_2"],
                "model.channel_multipliers": [(1, 1, 1, 2, 4, 16), (1, 1, 2, 4, 16), (1, 2, 4, 16)],
            }),
            grid(**{"model.input_transform": ["conv"], "model.patch_size": [4],
                    "model.channel_multipliers": [(1, 2, 4, 16)]}),
        ),
    }
