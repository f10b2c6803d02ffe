"""Model changes for clean samples at resolution (docs/resolution.md): the first level's width
floor and the opponent colour transform.

The first conv level is at least as wide as the transformed input.

Without it a DWT-2 / 4x4-patch model of RGB images (48 input channels) with a 32-wide first level
can only output a noise prediction in 2/3 of the image space, and its samples keep the initial
noise in the rest. The test measures the rank of the whole network's Jacobian: full with the
rule (up to the 2 directions per group that the GroupNorm before the head removes: its group mean
and scale), at most (positions x width) without it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart
from sd_jax.errors import UserError
from sd_jax.models import ModelSpec, UViT, build_model, colour
from sd_jax.models.layers import num_groups
from sd_jax.validate import validate

# XLA:CPU spends most of the time compiling; these tiny graphs do not need optimising.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def model_config(transform: str, base: int, multipliers=(1, 2), image_size: int = 16):
    c = quickstart.get_config().model
    c.update(dict(image_size=image_size, input_transform=transform, base_channels=base,
                  channel_multipliers=multipliers, transformer_depth=1, num_heads=2, emb_dim=16,
                  patch_size=4))
    return c


@pytest.mark.parametrize("transform, base, first", [
    ("dwt2", 8, 48), ("patch", 8, 48), ("dwt1", 8, 12), ("none", 8, 8), ("dwt2", 64, 64)])
def test_first_level_width_floor(transform, base, first):
    spec = ModelSpec.from_config(model_config(transform, base))
    levels = UViT.levels(spec)
    assert levels[0].channels == first
    assert spec.transformer_width == 2 * base  # Only the first level is floored.


def _jacobian_rank(params, model, z):
    """Rank of d output / d input at z (float64 SVD of the [D, D] Jacobian)."""
    logsnr, labels = jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    flat = z.reshape(-1)

    def fn(v):
        return model.apply({"params": params}, v.reshape(z.shape), logsnr, labels).reshape(-1)

    jac = np.asarray(jax.jit(jax.jacfwd(fn), compiler_options=FAST_COMPILE)(flat), np.float64)
    s = np.linalg.svd(jac, compute_uv=False)
    # The spectrum falls smoothly to ~4e-5 of the largest value, then jumps to float32
    # round-off (~1e-8): a threshold of 1e-6 sits in that gap.
    return int(np.sum(s > 1e-6 * s[0])), jac.shape[0]


def _random_params(model, z):
    """Init params with the zero-initialised layers (output head, residual ends) made random, so
    that every path contributes (a trained network has no zero layers)."""
    init = jax.jit(model.init, compiler_options=FAST_COMPILE)
    params = nn.unbox(init(jax.random.PRNGKey(0), z, jnp.zeros((1,)),
                           jnp.zeros((1,), jnp.int32)))["params"]
    rng = np.random.default_rng(1)  # numpy: one jax.random call per leaf would compile each.
    return jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32), params)


def test_network_jacobian_has_full_rank_only_with_the_floor(monkeypatch):
    z = jax.random.normal(jax.random.PRNGKey(2), (1, 8, 8, 3))  # DWT-2: 2 x 2 x 48 = 192 dims.
    model = build_model(model_config("dwt2", 8, image_size=8))
    rank, dims = _jacobian_rank(_random_params(model, z), model, z)
    assert dims == 192 and dims - 2 * num_groups(48) <= rank <= dims
    # The same model without the floor (first level 8 wide): at most 2 * 2 * 8 = 32 directions.
    monkeypatch.setattr(ModelSpec, "level_width",
                        lambda self, i: self.base_channels * self.channel_multipliers[i])
    narrow = build_model(model_config("dwt2", 8, image_size=8))
    rank, _ = _jacobian_rank(_random_params(narrow, z), narrow, z)
    assert rank <= 32


def test_opponent_colour_transform_is_orthonormal_and_isolates_grey():
    basis = colour.OPPONENT.astype(np.float64)
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-7)  # float32 entries.
    grey = np.repeat(np.random.default_rng(0).normal(size=(2, 4, 4, 1)), 3, axis=-1)
    rotated = np.asarray(colour.forward(jnp.asarray(grey, jnp.float32), "opponent"))
    np.testing.assert_allclose(rotated[..., 1:], 0.0, atol=1e-6)  # Grey has no colour part.
    np.testing.assert_allclose(rotated[..., 0], grey[..., 0] * np.sqrt(3), rtol=1e-6)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 3)), jnp.float32)
    np.testing.assert_allclose(colour.inverse(colour.forward(x, "opponent"), "opponent"), x,
                               atol=1e-6)
    assert colour.forward(x, "none") is x


def test_opponent_model_runs_and_needs_rgb():
    cfg = model_config("dwt2", 8, image_size=8)
    cfg.colour_transform = "opponent"
    model = build_model(cfg)
    z = jnp.zeros((2, 8, 8, 3))
    out = jax.eval_shape(model.init, jax.random.PRNGKey(0), z, jnp.zeros((2,)),
                         jnp.zeros((2,), jnp.int32))
    assert out["params"]["stem"]["kernel"].value.shape[2] == 48
    config = quickstart.get_config()
    config.model = cfg
    config.model.image_channels = 1
    with pytest.raises(UserError, match="colour_transform='opponent' needs RGB"):
        validate(config, "inspect")
