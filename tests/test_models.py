"""Model tests (CPU, tiny widths, real config structure). Budget: ~45 s on 2 cores.

XLA:CPU spends most of the time compiling, so: parameters are drawn with numpy from the
eval_shape'd tree (no compiled init) except where the real init is the point, keys use the 'rbg'
PRNG (one op instead of unrolled threefry), and jit runs with backend optimisations off.
"""

from __future__ import annotations

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from utils import float32_sum_error

from sd_jax.errors import UserError
from sd_jax.models import build_model, transforms

CONFIGS = ("imagenet64", "imagenet128", "imagenet256", "imagenet512", "imagenet1024")
ARCHS = ("uvit", "residual_uvit", "unet")
SHRINK = 8  # Image sizes / 8 keep every config's input transform and number of levels.
LOGICAL_NAMES = {"embed", "mlp", "heads", "kv", "conv_in", "conv_out", "cond", "classes", None}


def tiny_config(name: str = "imagenet512", arch: str = "uvit", **overrides):
    """A real config with tiny widths/depth; transforms and levels kept (sizes / 8)."""
    c = importlib.import_module(f"configs.{name}").get_config()
    m = c.model
    m.arch = arch
    m.image_size //= SHRINK
    m.dropout_max_resolution = max(1, m.dropout_max_resolution // SHRINK)
    m.attention_resolutions = tuple(r // SHRINK for r in m.attention_resolutions)
    m.update(dict(base_channels=8, emb_dim=16, transformer_depth=1, num_heads=2,
                  num_res_blocks=1, num_classes=10, dtype="float32"))
    m.update(overrides)
    return c


def inputs(model_cfg, batch: int = 2, seed: int = 0):
    size = model_cfg.image_size
    z = np.random.default_rng(seed).normal(size=(batch, size, size, model_cfg.image_channels))
    labels = jnp.arange(batch, dtype=jnp.int32) % 10
    return jnp.asarray(z, jnp.float32), jnp.linspace(-5.0, 5.0, batch), labels


FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit(fn, **kwargs):
    """jax.jit with cheap XLA:CPU compilation (the tests' tiny graphs do not need it fast)."""
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def param_shapes(model, z, logsnr, labels):
    return nn.unbox(jax.eval_shape(model.init, key(0), z, logsnr, labels))["params"]


def trained_like_params(model, z, logsnr, labels, seed: int = 1):
    """Params as after some training: lecun-scaled kernels, norm scales ~1, small non-zero rest.

    Unlike the init, no layer is zero, so every input (label, logSNR) reaches the output.
    """
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = path[-1].key
        if name in ("kernel", "embedding", "pos_embed"):
            fan_in = np.prod(shape.shape[:-1]) if name == "kernel" else 1
            std = 1.0 / np.sqrt(fan_in)
        else:
            std = 0.05
        value = rng.normal(0.0, std, shape.shape) + (1.0 if name == "scale" else 0.0)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(model, z, logsnr, labels))


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


@pytest.mark.parametrize("kind,patch", [("dwt1", 1), ("dwt2", 1), ("patch", 2), ("patch", 4),
                                        ("none", 1)])
@jax.enable_x64(True)  # Exactness: in float64 only ~1e-16 of rounding is left.
def test_transforms_invert_exactly(kind, patch):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)))
    y = transforms.forward(x, kind, patch)
    factor = {"none": 1, "dwt1": 2, "dwt2": 4, "patch": patch}[kind]
    assert y.shape == (2, 16 // factor, 16 // factor, 3 * factor**2) and y.dtype == jnp.float64
    np.testing.assert_allclose(transforms.inverse(y, kind, patch), x, rtol=0, atol=1e-13)
    # Orthonormal (Haar) or a permutation (patch): energy is preserved.
    np.testing.assert_allclose(jnp.sum(y**2), jnp.sum(x**2), rtol=1e-13)


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
    res_of_level = {i: lv.resolution for i, lv in enumerate(spec.levels())}
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
    with pytest.raises(UserError):
        build_model(tiny_config(**override).model)
