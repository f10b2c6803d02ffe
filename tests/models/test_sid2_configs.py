"""configs/imagenet{512,256}_sid2.py: SiD2's pieces are on (residual U-ViT, sigmoid weighting,
guidance interval) and both process the image at 256 x 256 before the transformer at 16 x 16.

Budget: ~5 s on 2 cores (shapes only, nothing allocated).
"""

import jax
import numpy as np
import pytest
from utils import REPO

from scripts import sweep_lib
from sd_jax.models import build_model, init
from sd_jax.specs import diffusion_spec


@pytest.mark.parametrize("size", [512, 256])
def test_sid2_configs_turn_on_sid2_and_start_at_256(size):
    config = sweep_lib.load_config(str(REPO / f"configs/imagenet{size}_sid2.py"))
    model = build_model(config.model)
    assert config.model.arch == "residual_uvit" and model.residual_skips
    assert [level.resolution for level in model.levels(model.spec)] == [256, 128, 64, 32]
    assert model.spec.lowest_resolution == 16
    spec = diffusion_spec(config)
    assert spec.loss_weighting == "sigmoid" and spec.sigmoid_bias == {512: -3.0, 256: -1.0}[size]
    s = config.sample
    assert s.guidance_scale > 1 and -15 < s.guidance_logsnr_min < s.guidance_logsnr_max < 15
    shapes = init.param_shapes(config.model)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert params == {512: 1_861_965_068, 256: 1_861_944_323}[size]  # docs/training.md's table.
