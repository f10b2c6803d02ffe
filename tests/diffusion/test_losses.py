"""Losses: forward process, conversions, multiscale MSE, weighting, diffusion_loss (~20 s)."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import integrate
from test_schedules import cosine_reference
from utils import float32_sum_error

from configs.base import get_config
from sd_jax.diffusion import losses, process, schedules
from sd_jax.diffusion import spec as spec_module
from sd_jax.diffusion.spec import DiffusionSpec
from sd_jax.errors import UserError
from sd_jax.specs import diffusion_spec
from sd_jax.validate import validate

B, D = 6, 16


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(-1, 1, (B, D, D, 3)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((B, D, D, 3)), jnp.float32)
    logsnr = jnp.asarray(np.linspace(-8, 8, B), jnp.float32)
    return x0, eps, logsnr


def _alpha_sigma_np(logsnr):
    alpha2 = 1 / (1 + np.exp(-np.asarray(logsnr, np.float64)))
    return np.sqrt(alpha2)[:, None, None, None], np.sqrt(1 - alpha2)[:, None, None, None]


def _config(image_size=D, prediction="v", **overrides):
    """The base config with `diffusion` fields overridden (multiscale off, v-MSE by default)."""
    config = get_config()
    config.model.update(image_size=image_size, prediction=prediction)
    config.diffusion.update({"multiscale": False, "loss": "v_mse", **overrides})
    return config


def _spec(image_size=D, prediction="v", **overrides) -> DiffusionSpec:
    return diffusion_spec(_config(image_size, prediction, **overrides))


def _loss(denoise, x0, seed, spec):
    """`diffusion_loss` run op by op (on CPU cheaper than compiling one program per config)."""
    labels = jnp.zeros(x0.shape[0], jnp.int32)
    return losses.diffusion_loss(denoise, x0, labels, jax.random.key(seed), spec)


def test_diffuse_and_v_target_match_formulas():
    x0, eps, logsnr = _batch()
    alpha, sigma = _alpha_sigma_np(logsnr)
    np.testing.assert_allclose(process.diffuse(x0, eps, logsnr), alpha * x0 + sigma * eps,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(process.v_from_x0_eps(x0, eps, logsnr), alpha * eps - sigma * x0,
                               rtol=1e-5, atol=1e-6)


@jax.enable_x64(True)  # Exact inverses: float64 (1 / alpha at logSNR -8 amplifies rounding 55x).
def test_conversions_round_trip():
    x0, eps, logsnr = (jnp.asarray(a, jnp.float64) for a in _batch())
    z = process.diffuse(x0, eps, logsnr)
    truth = {"x0": x0, "eps": eps, "v": process.v_from_x0_eps(x0, eps, logsnr)}
    assert z.dtype == truth["v"].dtype == jnp.float64
    for source in truth:
        x0_hat, eps_hat = process.x0_eps_from_output(z, truth[source], logsnr, source)
        np.testing.assert_allclose(x0_hat, x0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(eps_hat, eps, rtol=0, atol=1e-12)
    for source, target in itertools.permutations(truth, 2):
        got = process.convert_output(z, truth[source], logsnr, source, target)
        np.testing.assert_allclose(got, truth[target], rtol=0, atol=1e-12,
                                   err_msg=f"{source}->{target}")
    with pytest.raises(UserError, match="model.prediction"):
        validate(_config(512, prediction="score"), "inspect")


def test_eps_error_is_alpha_times_v_error():
    x0, eps, logsnr = _batch()
    z = process.diffuse(x0, eps, logsnr)
    v = process.v_from_x0_eps(x0, eps, logsnr)
    v_hat = v + jnp.asarray(np.random.default_rng(1).standard_normal(v.shape), jnp.float32)
    eps_hat = process.convert_output(z, v_hat, logsnr, "v", "eps")
    alpha, _ = _alpha_sigma_np(logsnr)
    np.testing.assert_allclose(eps - eps_hat, alpha * (v - v_hat), atol=1e-5)


def test_multiscale_sizes_and_weights():
    assert losses.multiscale_sizes(512, 32) == [32, 64, 128, 256, 512]
    assert losses.multiscale_sizes(32, 32) == [32]
    assert losses.multiscale_sizes(16, 32) == [16]
    assert losses.multiscale_sizes(96, 32) == [48, 96]
    weights = losses.multiscale_weights([32, 64, 128], "inverse_size")
    np.testing.assert_allclose(weights, np.array([4, 2, 1]) / 7)
    np.testing.assert_allclose(losses.multiscale_weights([8, 16], "uniform"), [0.5, 0.5])
    np.testing.assert_allclose(losses.multiscale_weights([8, 16], (1.0, 3.0)), [0.25, 0.75])
    config = ml_collections.ConfigDict(_config(512, multiscale=True).to_dict(), type_safe=False)
    config.diffusion.multiscale_weighting = (1.0, 2.0)  # Scales [32, ..., 512]: 3 weights short.
    with pytest.raises(UserError, match="one weight per scale"):
        validate(config, "inspect")
    with pytest.raises(UserError, match="multiscale_weighting"):
        validate(_config(512, multiscale=True, multiscale_weighting="edm"), "inspect")


def test_average_pool_matches_numpy():
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    want = x.reshape(2, 2, 4, 2, 4, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(losses.average_pool(jnp.asarray(x), 2), want, atol=1e-6)


def test_multiscale_with_only_full_scale_is_plain_mse():
    x0, eps, _ = _batch()
    plain = losses.mse(x0, eps)
    np.testing.assert_allclose(plain, np.mean((np.asarray(x0) - np.asarray(eps)) ** 2, (1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.multiscale_mse(x0, eps, min_size=D), plain, rtol=1e-5)
    np.testing.assert_allclose(losses.multiscale_mse(x0, eps, min_size=64), plain, rtol=1e-5)
    only_full = losses.multiscale_mse(x0, eps, min_size=4, weighting=(0.0, 0.0, 1.0))
    np.testing.assert_allclose(only_full, plain, rtol=1e-5)


def test_multiscale_weighs_low_frequency_error_more():
    """Errors of equal energy: a constant offset survives every pooling, a checkerboard none."""
    amp = 0.3
    target = jnp.zeros((1, D, D, 1))
    low = jnp.full((1, D, D, 1), amp)
    checker = (-1.0) ** (np.arange(D)[:, None] + np.arange(D)[None, :])
    high = jnp.asarray(amp * checker[None, :, :, None], jnp.float32)
    np.testing.assert_allclose(losses.mse(target, low), losses.mse(target, high), rtol=1e-6)
    sizes = losses.multiscale_sizes(D, 4)  # [4, 8, 16]
    weights = losses.multiscale_weights(sizes, "inverse_size")
    loss_low = losses.multiscale_mse(target, low, min_size=4)
    loss_high = losses.multiscale_mse(target, high, min_size=4)
    # float32 means over at most D^2 pooled errors per scale, three scales.
    rtol = float32_sum_error(3 * D * D)
    np.testing.assert_allclose(loss_low, amp**2, rtol=rtol)
    np.testing.assert_allclose(loss_high, weights[-1] * amp**2, rtol=rtol)
    assert float(loss_low[0]) > 5 * float(loss_high[0])


# Schedules as (name in spec.SCHEDULES, float64 numpy reference) at 512 px; the last one,
# registered by the `t_squared_schedule` fixture (one function, one table entry), spends its
# time differently from the cosine but has the same range, so a weighting over logSNR must not
# tell them apart.
SCHEDULES = {
    "cosine": ("cosine", cosine_reference),
    "shifted": ("shifted_cosine", lambda t: cosine_reference(t) + 2 * np.log(64 / 512)),
    "interpolated": (
        "interpolated_cosine",
        lambda t: t * (cosine_reference(t) + 2 * np.log(32 / 512))
        + (1 - t) * (cosine_reference(t) + 2 * np.log(256 / 512))),
    "cosine_of_t_squared": ("cosine_of_t_squared",
                            lambda t: cosine_reference(np.asarray(t) ** 2)),
}
BIAS = -3.0


@pytest.fixture(autouse=True)
def t_squared_schedule(monkeypatch):
    """A test-only schedule, `logsnr_cosine(t^2)`, added to the table as a user would add one."""
    monkeypatch.setitem(spec_module.SCHEDULES, "cosine_of_t_squared",
                        lambda spec: lambda t: schedules.logsnr_cosine(jnp.asarray(t) ** 2))


def _weight_spec(name, weighting="sigmoid") -> DiffusionSpec:
    """The sigmoid weighting (bias BIAS) on schedule `name` of SCHEDULES at 512 px."""
    return DiffusionSpec(image_size=512, schedule=SCHEDULES[name][0], noise_d=64.0,
                         noise_d_low=32.0, noise_d_high=256.0, loss_weighting=weighting,
                         sigmoid_bias=BIAS)


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _softplus(x):
    return np.logaddexp(0.0, np.asarray(x, np.float64))


def _reference_weight(t, logsnr_ref, bias=BIAS, h=1e-7):
    """sigmoid(b - lambda) (-dlambda/dt) / Z in float64, dlambda/dt by central differences.

    Relative error: truncation h^2 |d3lambda/dt3| / (6 |dlambda/dt|) < 3e-8 even at t = 1,
    where dlambda/dt varies on a scale of ~3.5e-4 in t; rounding eps64 |lambda| / (h |dlambda/dt|)
    < 1e-9.
    """
    t = np.asarray(t, np.float64)
    dlogsnr_dt = (logsnr_ref(t + h) - logsnr_ref(t - h)) / (2 * h)
    norm = _softplus(bias - logsnr_ref(1.0)) - _softplus(bias - logsnr_ref(0.0))
    return _sigmoid(bias - logsnr_ref(t)) * -dlogsnr_dt / norm


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_eps_loss_weight_matches_finite_differences(name):
    _, ref = SCHEDULES[name]
    t = np.concatenate([[0.0, 1e-6, 1e-3], np.linspace(0.01, 0.99, 15), [0.999, 1 - 1e-6, 1.0]])
    with jax.enable_x64(True):
        got = np.asarray(losses.eps_loss_weight(jnp.asarray(t), _weight_spec(name)))
    np.testing.assert_allclose(got, _reference_weight(t, ref), rtol=1e-6)
    constant = _weight_spec(name, "constant")
    np.testing.assert_array_equal(losses.eps_loss_weight(jnp.asarray(t), constant), 1.0)
    with pytest.raises(UserError, match="loss_weighting"):
        validate(_config(512, loss_weighting="edm"), "inspect")


def _expect_over_t(spec, f):
    """E_{t ~ U(0, 1)}[weight(t) f(lambda(t))] by Gauss-Legendre on panels graded toward both
    ends (near t = 1 the Jacobian peaks at ~5.7e3 over a width of ~3.5e-4), in float64."""
    edges = np.unique(np.concatenate([[0.0, 0.5, 1.0], 10.0 ** -np.arange(1, 10),
                                      1 - 10.0 ** -np.arange(1, 10)]))
    nodes, weights = np.polynomial.legendre.leggauss(40)
    lo, hi = edges[:-1, None], edges[1:, None]
    t = (lo + (hi - lo) * (nodes + 1) / 2).ravel()
    dt = ((hi - lo) / 2 * weights).ravel()
    with jax.enable_x64(True):
        w = np.asarray(losses.eps_loss_weight(jnp.asarray(t), spec))
        logsnr = np.asarray(spec.logsnr_fn()(jnp.asarray(t)))
    return float(np.sum(dt * w * f(logsnr)))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_sigmoid_weighting_is_a_weighting_over_logsnr(name):
    """E_t[weight * f(lambda(t))] = (1/Z) * integral over [lambda_min, lambda_max] of
    sigmoid(b - lambda) f(lambda) dlambda, for any f: only the schedule's range enters, not how
    it spends its time (f = 1: the weight averages to 1). Both sides are float64 quadratures
    converged to < 1e-9 (doubling the nodes changes nothing at that level)."""
    _, ref = SCHEDULES[name]
    logsnr_min, logsnr_max = float(ref(1.0)), float(ref(0.0))
    norm = _softplus(BIAS - logsnr_min) - _softplus(BIAS - logsnr_max)
    test_fns = {"one": np.ones_like, "wave": lambda x: np.cos(x / 3) + 0.1 * x,
                "bump": lambda x: np.exp(-((x + 2) ** 2) / 8)}
    for label, f in test_fns.items():
        over_logsnr = integrate.quad(lambda x, f=f: _sigmoid(BIAS - x) * f(x), logsnr_min,
                                     logsnr_max, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        np.testing.assert_allclose(_expect_over_t(_weight_spec(name), f), over_logsnr / norm,
                                   rtol=1e-7, err_msg=label)


def test_without_the_jacobian_the_weighting_would_depend_on_the_schedule():
    """Control for the test above: same range, different time allocation, different result."""
    f = lambda x: np.exp(-((x + 2) ** 2) / 8)
    t = np.linspace(0.0, 1.0, 200_001)
    no_jacobian = [np.mean(_sigmoid(BIAS - ref(t)) * f(ref(t)))
                   for ref in (SCHEDULES["cosine"][1], SCHEDULES["cosine_of_t_squared"][1])]
    assert abs(no_jacobian[0] / no_jacobian[1] - 1) > 0.1, no_jacobian
    with_jacobian = [_expect_over_t(_weight_spec(n), f) for n in ("cosine", "cosine_of_t_squared")]
    np.testing.assert_allclose(with_jacobian[0], with_jacobian[1], rtol=1e-7)


@pytest.mark.parametrize("name", ["shifted", "interpolated"])
def test_eps_loss_weight_in_float32_is_finite_and_accurate_on_all_of_0_1(name):
    """-dlambda/dt reaches ~5.7e3 at t = 1; the float32 weight stays finite and within 1e-3 of
    float64 (float32 tan near pi/2 loses eps32 * (pi/2) / (pi/2 - u) ~ 2e-4, relative)."""
    _, ref = SCHEDULES[name]
    t = np.linspace(0.0, 1.0, 2001)
    w = np.asarray(losses.eps_loss_weight(jnp.asarray(t, jnp.float32), _weight_spec(name)))
    assert w.dtype == np.float32 and np.all(np.isfinite(w)) and np.all(w > 0)
    np.testing.assert_allclose(w, _reference_weight(t, ref), rtol=1e-3)
    assert 100 < w.max() < 1e4  # The eps-space weight is large at the noisy end, by design.


def _constant_data_denoiser(value, prediction):
    """Optimal denoiser when every image equals `value`: x0_hat = value exactly."""

    def denoise(z, logsnr_b, labels_b):
        x0 = jnp.full_like(z, value)
        alpha, sigma = (a[:, None, None, None] for a in schedules.alpha_sigma(logsnr_b))
        eps = (z - alpha * x0) / sigma
        return {"v": alpha * eps - sigma * x0, "eps": eps, "x0": x0}[prediction]

    return denoise


@pytest.mark.parametrize("loss", ["v_mse", "eps_mse"])
@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_diffusion_loss_is_zero_for_the_optimal_denoiser(loss, prediction):
    spec = _spec(D, prediction, loss=loss, multiscale=True, multiscale_min_size=4,
                 schedule="cosine")
    x0 = jnp.full((B, D, D, 3), 0.4)
    value, aux = _loss(_constant_data_denoiser(0.4, prediction), x0, 0, spec)
    assert float(value) < 1e-6 and aux["loss_b"].shape == (B,)


def test_diffusion_loss_of_zero_v_output_is_mean_v_squared():
    """With x0 = 0, v = alpha eps, so a zero output has v-MSE ~ alpha^2 per example."""
    spec = _spec(32, time_sampling="stratified")
    x0 = jnp.zeros((B, 32, 32, 3))
    zero = lambda z, logsnr_b, labels_b: jnp.zeros_like(z, jnp.bfloat16)
    value, aux = _loss(zero, x0, 3, spec)
    assert value.dtype == jnp.float32 and value.shape == ()
    t_b = np.sort(np.asarray(aux["t_b"]))
    np.testing.assert_allclose(np.diff(t_b), 1 / B, atol=1e-6)  # Stratified times were used.
    logsnr_b = spec.logsnr_fn()(aux["t_b"])
    alpha2 = np.asarray(jax.nn.sigmoid(logsnr_b))
    # Each example averages 3072 eps^2 draws: relative std ~2.6%, so 12% is > 4 std errors.
    np.testing.assert_allclose(aux["loss_b"], alpha2, rtol=0.12)
    np.testing.assert_allclose(aux["logsnr_mean"], np.mean(logsnr_b), rtol=1e-5)


def test_x0_output_v_loss_is_x0_error_over_sigma_squared():
    """v - v_hat = (x0_hat - x0) / sigma (v = (alpha z - x0) / sigma), so an x0 output that is
    off by a constant 0.05 has v-MSE 0.0025 / sigma^2 per example (docs/resolution.md)."""
    spec = _spec(D, "x0", schedule="cosine")
    x0 = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (B, D, D, 3)), jnp.float32)
    off = lambda z, logsnr_b, labels_b: x0 + 0.05
    _, aux = _loss(off, x0, 6, spec)
    logsnr_b = np.asarray(spec.logsnr_fn()(aux["t_b"]), np.float64)
    sigma2 = 1.0 / (1.0 + np.exp(logsnr_b))
    # float32: v_hat = (alpha z - x0_hat) / sigma loses ~1e-7 of |z| against a 0.05 error.
    np.testing.assert_allclose(aux["loss_b"], 0.0025 / sigma2, rtol=1e-4)


@pytest.mark.parametrize("multiscale", [False, True])
def test_sigmoid_weighting_is_the_same_eps_loss_in_v_and_eps_space(multiscale):
    """The sigmoid weight is defined on the eps-loss; a v-space loss must give the same value."""
    rng = np.random.default_rng(2)
    x0 = jnp.asarray(rng.uniform(-1, 1, (B, D, D, 3)), jnp.float32)
    noise_out = jnp.asarray(rng.standard_normal((B, D, D, 3)), jnp.float32)
    denoise = lambda z, logsnr_b, labels_b: 0.5 * z + 0.1 * noise_out  # Any v-predictor.
    results = {}
    for loss in ("v_mse", "eps_mse"):
        spec = _spec(D, loss=loss, loss_weighting="sigmoid", sigmoid_bias=-1.0,
                     multiscale=multiscale, multiscale_min_size=4)
        results[loss] = _loss(denoise, x0, 5, spec)
    np.testing.assert_allclose(results["v_mse"][0], results["eps_mse"][0], rtol=1e-4)
    np.testing.assert_allclose(results["v_mse"][1]["loss_b"], results["eps_mse"][1]["loss_b"],
                               rtol=1e-4, atol=1e-7)
    # Unweighted, the two differ by alpha^2 per example, so they are not the same number.
    assert not np.allclose(results["v_mse"][1]["unweighted_loss"],
                           results["eps_mse"][1]["unweighted_loss"], rtol=1e-2)


def test_diffusion_loss_jits_and_differentiates():
    spec = _spec(D, multiscale=True, multiscale_min_size=4)
    x0, _, _ = _batch()

    def loss_of_scale(scale):
        denoise = lambda z, logsnr_b, labels_b: scale * z
        return losses.diffusion_loss(
            denoise, x0, jnp.zeros(B, jnp.int32), jax.random.key(0), spec)[0]

    grad = jax.jit(jax.grad(loss_of_scale))(jnp.float32(0.3))
    assert np.isfinite(grad) and grad != 0.0
    with pytest.raises(UserError, match="diffusion.loss"):
        validate(_config(512, loss="l1"), "inspect")


def _offset_denoiser(offset, prediction):
    """For x0 = 0 (so z = sigma eps): outputs the true eps / v plus `offset`, so the per-example
    MSE in the output's own space is exactly offset^2."""

    def denoise(z, logsnr_b, labels_b):
        alpha, sigma = (a[:, None, None, None] for a in schedules.alpha_sigma(logsnr_b))
        eps = z / sigma
        return (eps if prediction == "eps" else alpha * eps) + offset

    return denoise


@pytest.mark.parametrize("loss, prediction", [("eps_mse", "eps"), ("v_mse", "v")])
def test_diffusion_loss_applies_the_sigmoid_weight_with_its_jacobian(loss, prediction):
    """loss_b = offset^2 * sigmoid(b - lambda) (-dlambda/dt) / Z, times alpha^2 in v-space."""
    spec = _spec(512, prediction, loss=loss, loss_weighting="sigmoid", sigmoid_bias=BIAS,
                 schedule="shifted_cosine", noise_d=64, time_sampling="stratified")
    x0 = jnp.zeros((B, 32, 32, 3))
    offset = 0.3
    _, aux = _loss(_offset_denoiser(offset, prediction), x0, 4, spec)
    t_b = np.asarray(aux["t_b"], np.float64)
    ref = SCHEDULES["shifted"][1]
    want = offset**2 * _reference_weight(t_b, ref)
    if loss == "v_mse":
        want = want * _sigmoid(ref(t_b))
    # float32 throughout: z / sigma and the schedule's Jacobian each lose ~1e-6 relative here
    # (t is away from the ends), so 1e-4 is generous.
    np.testing.assert_allclose(aux["loss_b"], want, rtol=1e-4)
    np.testing.assert_allclose(aux["unweighted_loss"], offset**2, rtol=1e-4)


@pytest.mark.parametrize("schedule, loss, prediction", [
    ("shifted_cosine", "eps_mse", "eps"), ("interpolated_cosine", "eps_mse", "v"),
    ("interpolated_cosine", "v_mse", "v")])
def test_sigmoid_weighted_loss_and_gradient_are_finite_at_t_0_and_1(monkeypatch, schedule, loss,
                                                                     prediction):
    """The batch's times include exactly 0 and 1, where -dlambda/dt is largest."""
    monkeypatch.setattr(schedules, "sample_times", lambda rng, n, method: jnp.linspace(0, 1, n))
    spec = _spec(512, prediction, loss=loss, loss_weighting="sigmoid", sigmoid_bias=BIAS,
                 multiscale=True, multiscale_min_size=4, schedule=schedule)
    x0, _, _ = _batch()

    def loss_of_scale(scale):
        denoise = lambda z, logsnr_b, labels_b: scale * z
        return losses.diffusion_loss(
            denoise, x0, jnp.zeros(B, jnp.int32), jax.random.key(0), spec)[0]

    value, grad = jax.value_and_grad(loss_of_scale)(jnp.float32(0.3))  # Op by op: cheap here.
    assert np.isfinite(value) and np.isfinite(grad) and grad != 0.0


def test_auto_loss_is_resolved_by_the_architecture_before_the_spec():
    """'auto' is a config value, never a spec's: `specs` replaces it by the architecture's own
    loss (the U-ViTs' v-MSE, the U-Net's eps-MSE), so the loss table has no 'auto' entry."""
    assert "auto" not in losses.LOSSES
    for arch, want in (("uvit", "v_mse"), ("unet", "eps_mse")):
        config = _config(512, loss="auto")
        config.model.arch = arch
        validate(config, "inspect")
        assert diffusion_spec(config).loss == want
