"""Model tests (CPU, tiny widths, real config structure). Budget: ~45 s on 2 cores.

XLA:CPU spends most of the time compiling, so: parameters are drawn with numpy from the
eval_shape'd tree (no compiled init) except where the real init is the point, keys use the 'rbg'
PRNG (one op instead of unrolled threefry), and jit runs with backend optimisations off.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import inputs, jit, key, param_shapes, tiny_config, trained_like_params
from utils import float32_sum_error

from configs.base import get_config
from sd_jax.errors import UserError
from sd_jax.models import ARCHITECTURES, UViT, build_model, transforms
from sd_jax.specs import loss_name
from sd_jax.validate import validate

CONFIGS = ("imagenet64", "imagenet128", "imagenet256", "imagenet512", "imagenet1024")
ARCHS = tuple(ARCHITECTURES)
LOGICAL_NAMES = {"embed", "mlp", "heads", "kv", "conv_in", "conv_out", "cond", "classes", "norm",
                 None}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_maps_batch_to_shape(name, arch):
    dtypes = ("float32", "bfloat16") if name == "imagenet512" else ("float32",)
    for dtype in dtypes:
        cfg = tiny_config(name, arch, dtype=dtype).model
        model = build_model(cfg)
        z, logsnr, labels = inputs(cfg)
        params = param_shapes(model, z, logsnr, labels)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
        out = jax.eval_shape(
            lambda p, m=model, z=z, s=logsnr, y=labels: m.apply(
                {"params": p}, z, s, y, train=True, rngs={"dropout": key(1)}), params)
        assert out.shape == z.shape and out.dtype == jnp.float32


def test_output_zero_at_init():
    cfg = tiny_config("imagenet512", "residual_uvit").model
    model = build_model(cfg)
    z, logsnr, labels = inputs(cfg)
    params = nn.unbox(jit(model.init)(key(0), z, logsnr, labels))["params"]
    out = jit(model.apply)({"params": params}, z, logsnr, labels)
    assert out.shape == z.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_bfloat16_compute_close_to_float32():
    cfg32 = tiny_config("imagenet256").model
    cfg16 = tiny_config("imagenet256", dtype="bfloat16").model
    z, logsnr, labels = inputs(cfg32)
    params = trained_like_params(build_model(cfg32), z, logsnr, labels)
    out32 = jit(build_model(cfg32).apply)({"params": params}, z, logsnr, labels)
    out16 = jit(build_model(cfg16).apply)({"params": params}, z, logsnr, labels)
    assert out16.dtype == jnp.float32 and np.all(np.isfinite(out32))
    assert float(jnp.std(out32)) > 1e-2
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 0 < rel < 0.05, rel


KINDS = [("dwt1", 1), ("dwt2", 1), ("dwt53_1", 1), ("dwt53_2", 1), ("patch", 2), ("patch", 4),
         ("none", 1)]


@pytest.mark.parametrize("kind,patch", KINDS)
def test_transforms_invert_exactly(kind, patch):
    """Round trip in float64: a few multiply-adds with coefficients <= 1 per level on values
    |x| < 6 lose < 1e-14, so 1e-12 is exact up to rounding."""
    assert kind in transforms.KINDS
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3))
    with jax.enable_x64(True):
        y = transforms.forward(jnp.asarray(x), kind, patch)
        back = np.asarray(transforms.inverse(y, kind, patch))
        y = np.asarray(y)
    factor = transforms.factor(kind, patch)
    assert y.dtype == np.float64
    assert y.shape == (2, 16 // factor, 16 // factor, 3 * factor**2)
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-12)
    if not kind.startswith("dwt53"):  # Orthonormal (Haar) or a permutation: energy preserved.
        np.testing.assert_allclose(np.sum(y**2), np.sum(x**2), rtol=1e-12)


def _legall53_reference(x, axis):
    """Filter-bank form in numpy float64: (-1, 2, 6, 2, -1)/8 at even and (-1, 2, -1)/2 at odd
    samples of the whole-sample symmetric extension (numpy's 'reflect': x[-1] = x[1])."""
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    ext = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(2, 2)], mode="reflect")
    low = sum(c * ext[..., k:k + n:2] for k, c in enumerate(np.array([-1, 2, 6, 2, -1]) / 8))
    high = sum(c * ext[..., k + 2:k + 2 + n:2] for k, c in enumerate(np.array([-1, 2, -1]) / 2))
    return np.moveaxis(low, -1, axis), np.moveaxis(high, -1, axis)


def test_legall53_level1_matches_the_filter_bank_with_symmetric_extension():
    x = np.random.default_rng(2).normal(size=(2, 12, 16, 3))
    low_w, high_w = _legall53_reference(x, 2)
    (ll, hl), (lh, hh) = _legall53_reference(low_w, 1), _legall53_reference(high_w, 1)
    # Unit white-noise variance per band: divide by the filters' L2 norms, per axis.
    g_low, g_high = 1 / np.sqrt(23 / 32), 1 / np.sqrt(3 / 2)
    want = np.stack([ll * g_low**2, lh * g_low * g_high, hl * g_high * g_low, hh * g_high**2],
                    axis=3).reshape(2, 6, 8, 12)
    with jax.enable_x64(True):
        got = np.asarray(transforms.forward(jnp.asarray(x), "dwt53_1"))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_legall53_level2_is_level1_on_every_band_up_to_a_scale_per_band():
    x = np.random.default_rng(3).normal(size=(2, 16, 16, 3))
    with jax.enable_x64(True):
        twice = np.asarray(transforms.forward(transforms.forward(jnp.asarray(x), "dwt53_1"),
                                              "dwt53_1"))
        level2 = np.asarray(transforms.forward(jnp.asarray(x), "dwt53_2"))
    ratio = level2 / twice  # [B, 4, 4, 48]: one constant per channel.
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1, :1, :1], ratio.shape), rtol=1e-10)


@pytest.mark.parametrize("kind, border", [("dwt1", 0), ("dwt2", 0), ("dwt53_1", 1),
                                          ("dwt53_2", 2)])
def test_wavelet_bands_have_unit_white_noise_variance(kind, border):
    """The transform is linear, so the variance of an output coefficient under unit white noise
    is the squared norm of its row of the matrix: 1 for every band (away from the border for
    5/3, whose filters are not orthonormal and change at the border), as for Haar everywhere."""
    size = 32
    impulses = np.eye(size * size).reshape(size * size, size, size, 1)
    with jax.enable_x64(True):
        rows = np.asarray(transforms.forward(jnp.asarray(impulses), kind))
    norms = np.sqrt(np.sum(rows**2, axis=0))  # [h, w, bands]
    inner = norms[border:norms.shape[0] - border, border:norms.shape[1] - border]
    np.testing.assert_allclose(inner, 1.0, rtol=1e-12)


@pytest.mark.parametrize("kind", ["dwt53_1", "dwt53_2"])
def test_legall53_is_not_haar_a_ramp_leaves_the_high_bands_empty(kind):
    """5/3 predicts odd samples linearly: a linear ramp has zero high bands except in the last
    row / column (the border); Haar's high bands hold the ramp's slope everywhere."""
    i, j = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    ramp = (0.3 * i - 0.2 * j + 1.0)[None, :, :, None]
    haar_kind = {"dwt53_1": "dwt1", "dwt53_2": "dwt2"}[kind]
    with jax.enable_x64(True):
        bands = np.asarray(transforms.forward(jnp.asarray(ramp), kind))
        haar = np.asarray(transforms.forward(jnp.asarray(ramp), haar_kind))
    np.testing.assert_allclose(bands[:, :-1, :-1, 1:], 0.0, atol=1e-12)
    assert np.abs(bands[:, -1:, :, 1:]).max() > 0.01  # The border does see the ramp's end.
    assert np.min(np.abs(haar[..., 1:3])) > 0.05  # Haar: LH, HL = the slopes, everywhere.


def test_conv_input_transform_is_a_learned_patchify():
    """'conv' (the paper's "conv 4x4"): 4x4 stride-4 conv in, 4x4 stride-4 transposed conv out,
    the same levels as a fixed 4x downsampling, and still an exact zero output at init."""
    cfg = tiny_config("imagenet512", input_transform="conv", patch_size=4).model
    model = build_model(cfg)
    spec = model.spec
    assert spec.transform_factor == 4
    fixed = build_model(tiny_config("imagenet512", input_transform="dwt53_2").model)
    assert model.levels(spec) == fixed.levels(fixed.spec)
    z, logsnr, labels = inputs(cfg)
    params = nn.unbox(jit(model.init)(key(0), z, logsnr, labels))["params"]
    width = max(cfg.base_channels * cfg.channel_multipliers[0], 4 * 4 * 3)  # Width floor.
    assert params["stem"]["kernel"].shape == (4, 4, 3, width)
    assert params["out_conv"]["kernel"].shape == (4, 4, width, 3)
    out = jit(model.apply)({"params": params}, z, logsnr, labels)
    assert out.shape == z.shape
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    trained = trained_like_params(model, z, logsnr, labels)
    out = jit(model.apply)({"params": trained}, z, logsnr, labels)
    assert float(jnp.std(out)) > 1e-2


@jax.enable_x64(True)
def test_haar_dwt_matches_formula():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 2)))
    y = transforms.haar_dwt(x)
    a, b, c, d = x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    expected = jnp.concatenate(
        [(a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2], -1)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-14)
    # Constant image: all energy in the LL band of every level (2^level x the value).
    const = transforms.forward(jnp.full((1, 8, 8, 1), 3.0), "dwt2")
    np.testing.assert_allclose(const[..., 0], 12.0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(const[..., 1:], 0.0, rtol=0, atol=1e-14)


@pytest.mark.parametrize("arch", ["uvit", "unet"])
def test_label_and_logsnr_change_output_after_training(arch):
    cfg = tiny_config("imagenet128", arch).model
    model = build_model(cfg)
    z, logsnr, labels = inputs(cfg)
    params = trained_like_params(model, z, logsnr, labels)
    apply = jit(model.apply)
    base = apply({"params": params}, z, logsnr, labels)
    assert float(jnp.abs(apply({"params": params}, z, logsnr, labels + 1) - base).max()) > 1e-6
    assert float(jnp.abs(apply({"params": params}, z, logsnr + 1.0, labels) - base).max()) > 1e-6


def test_unconditional_ignores_labels_and_null_row_exists():
    cfg = tiny_config(num_classes=0).model
    model = build_model(cfg)
    z, logsnr, labels = inputs(cfg)
    params = trained_like_params(model, z, logsnr, labels)
    assert "class_embed" not in params["cond"]
    apply = jit(model.apply)
    np.testing.assert_array_equal(apply({"params": params}, z, logsnr, labels),
                                  apply({"params": params}, z, logsnr, labels + 3))
    cond_cfg = tiny_config().model
    table = param_shapes(build_model(cond_cfg), z, logsnr, labels)["cond"]["class_embed"]
    table = table["embedding"]
    assert table.shape == (cond_cfg.num_classes + 1, cond_cfg.emb_dim)  # Last row: null label.


def _dropout_rates(model, params, z, logsnr, labels) -> dict[str, float]:
    """Path of every Dropout module -> its rate, from one traced training forward."""
    rates = {}

    def record(mdl, _):
        if isinstance(mdl, nn.Dropout):
            rates["/".join(mdl.scope.path)] = mdl.rate
        return False

    jax.eval_shape(lambda p: model.apply({"params": p}, z, logsnr, labels, train=True,
                                         rngs={"dropout": key(0)},
                                         capture_intermediates=record), params)
    return rates


@pytest.mark.parametrize("name,arch", [("imagenet128", "uvit"), ("imagenet512", "unet"),
                                       ("imagenet1024", "residual_uvit")])
def test_dropout_only_at_configured_resolutions(name, arch):
    cfg = tiny_config(name, arch, dropout=0.3).model
    model = build_model(cfg)
    spec = model.spec
    z, logsnr, labels = inputs(cfg)
    params = param_shapes(model, z, logsnr, labels)
    rates = _dropout_rates(model, params, z, logsnr, labels)
    res_of_level = {i: lv.resolution for i, lv in enumerate(model.levels(spec))}
    assert rates
    for path, rate in rates.items():
        top = path.split("/")[0]
        if top.startswith(("down", "up")):
            res = res_of_level[int(top.split("_")[0].lstrip("downup"))]
        else:  # Transformer / U-Net middle: the lowest resolution.
            res = spec.lowest_resolution
        assert rate == (0.3 if res <= cfg.dropout_max_resolution else 0.0), (path, rate, res)
    assert any(r > 0 for r in rates.values()) and any(r == 0 for r in rates.values())


def test_dropout_keys_matter_only_when_dropout_is_on():
    for max_res, expect_same in [(2, False), (1, True)]:  # Transformer runs at 2x2 here.
        cfg = tiny_config("imagenet512", dropout=0.5, dropout_max_resolution=max_res).model
        model = build_model(cfg)
        z, logsnr, labels = inputs(cfg)
        params = trained_like_params(model, z, logsnr, labels)
        run = jit(lambda p, k, m=model, z=z, s=logsnr, y=labels: m.apply(
            {"params": p}, z, s, y, train=True, rngs={"dropout": k}))
        a, b = run(params, key(1)), run(params, key(2))
        assert bool(jnp.all(a == b)) == expect_same


@pytest.mark.parametrize("remat", ["transformer", "all"])
def test_remat_keeps_outputs_and_gradients(remat):
    cfgs = [tiny_config("imagenet64", "unet" if remat == "all" else "uvit", remat=r).model
            for r in ("none", remat)]
    z, logsnr, labels = inputs(cfgs[0])
    params = trained_like_params(build_model(cfgs[0]), z, logsnr, labels)
    results = []
    for cfg in cfgs:
        model = build_model(cfg)

        def loss(p, m=model):
            out = m.apply({"params": p}, z, logsnr, labels, train=True,
                          rngs={"dropout": key(3)})
            return jnp.mean(out**2), out

        results.append(jit(jax.value_and_grad(loss, has_aux=True))(params))
    (_, out_a), grad_a = results[0]
    (_, out_b), grad_b = results[1]
    # The same function with float32 rounding in another order (recomputation, other fusions):
    # the difference is within the float32 error of the longest accumulation chain, at most every
    # layer's fan-in added up, relative to each tensor's scale (a gradient that cancels to ~0,
    # e.g. a conv bias under GroupNorm, carries the error of its large terms). A remat that
    # changed the function (other dropout masks or inputs) differs by O(1).
    chain = sum(int(np.prod(k.shape[:-1])) for k in jax.tree.leaves(params) if k.ndim > 1)
    tol = float32_sum_error(chain)
    np.testing.assert_allclose(out_b, out_a, rtol=0, atol=tol * float(jnp.max(jnp.abs(out_a))))
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_a))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=0, atol=tol * scale),
                 grad_a, grad_b)


@pytest.mark.parametrize("arch", ARCHS)
def test_params_carry_logical_names(arch):
    cfg = tiny_config("imagenet512", arch).model
    z, logsnr, labels = inputs(cfg)
    boxed = jax.eval_shape(build_model(cfg).init, key(0), z, logsnr, labels)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= LOGICAL_NAMES, leaf.names


@pytest.mark.parametrize("override", [dict(arch="vit"), dict(input_transform="dwt3"),
                                      dict(image_size=60), dict(num_heads=3)])
def test_bad_model_config_raises_user_error(override):
    validate(tiny_config(), "inspect")  # Valid without the override.
    with pytest.raises(UserError):
        validate(tiny_config(**override), "inspect")


def test_loss_defaults_follow_the_architecture():
    """diffusion.loss='auto' (the base default): the U-Net trains on eps-MSE from its v output,
    as in the paper; the U-ViTs on v-MSE. An explicit loss wins."""
    config = get_config()
    assert config.diffusion.loss == "auto"

    def loss_of(arch):
        config.model.arch = arch
        return loss_name(config)

    assert {arch: loss_of(arch) for arch in ARCHS} == {
        "uvit": "v_mse", "residual_uvit": "v_mse", "unet": "eps_mse"}
    config.diffusion.loss = "v_mse"
    assert loss_of("unet") == "v_mse"


def test_registering_an_architecture_takes_one_table_entry(monkeypatch):
    class WideUViT(UViT):
        default_loss = "eps_mse"

    monkeypatch.setitem(ARCHITECTURES, "wide_uvit", WideUViT)
    cfg = tiny_config("imagenet256", "wide_uvit")
    model = build_model(cfg.model)
    assert type(model) is WideUViT and model.has_transformer
    assert loss_name(cfg) == "eps_mse"
    z, logsnr, labels = inputs(cfg.model)
    assert "transformer0" in param_shapes(model, z, logsnr, labels)
    validate(cfg, "inspect")  # The registered name is a valid model.arch ...
    with pytest.raises(UserError, match="wide_uvit"):  # ... and the error lists it.
        validate(tiny_config(arch="vit"), "inspect")
