"""Schedules: formulas, clip bounds, the interpolated order, the pooled-SNR claim (~5 s)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from sd_jax.diffusion import schedules
from sd_jax.diffusion.losses import average_pool
from sd_jax.diffusion.process import diffuse
from sd_jax.diffusion.spec import SCHEDULES
from sd_jax.errors import UserError
from sd_jax.specs import diffusion_spec
from sd_jax.validate import validate

T_GRID = np.linspace(0.0, 1.0, 1001)


def cosine_reference(t, logsnr_min=-15.0, logsnr_max=15.0):
    """docs/recipe.md section 2, in float64."""
    t_min = np.arctan(np.exp(-logsnr_max / 2))
    t_max = np.arctan(np.exp(-logsnr_min / 2))
    return -2 * np.log(np.tan(t_min + np.asarray(t, np.float64) * (t_max - t_min)))


@jax.enable_x64(True)  # Exactness of the formula: float64. (In float32, near t = 1 the tangent
# is within 5e-4 of its pole, so one rounding of t moves logSNR by ~1e-4: no test of the formula.)
def test_cosine_matches_formula_endpoints_and_midpoint():
    got = np.asarray(schedules.logsnr_cosine(T_GRID))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, cosine_reference(T_GRID), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(schedules.logsnr_cosine(0.0), 15.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(schedules.logsnr_cosine(1.0), -15.0, rtol=0, atol=1e-10)
    # The clip is symmetric, so t = 1/2 is still logSNR 0; away from the ends it is the plain
    # cosine -2 log tan(pi t / 2) up to the small reparametrisation (~1e-3 at t = 0.3).
    np.testing.assert_allclose(schedules.logsnr_cosine(0.5), 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(schedules.logsnr_cosine(0.3), -2 * np.log(np.tan(0.15 * np.pi)),
                               atol=2e-3)
    np.testing.assert_allclose(schedules.logsnr_cosine(0.0, -5.0, 7.0), 7.0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(schedules.logsnr_cosine(1.0, -5.0, 7.0), -5.0, rtol=0, atol=1e-10)


def test_cosine_clip_bounds_and_strict_monotonicity():
    got = np.asarray(schedules.logsnr_cosine(T_GRID))
    assert got.max() <= 15.0 + 1e-4 and got.min() >= -15.0 - 1e-4
    assert np.all(np.diff(got) < 0)
    for fn in (
        lambda t: schedules.logsnr_shifted_cosine(t, 512, 64),
        lambda t: schedules.logsnr_interpolated_cosine(t, 512, 32, 256),
    ):
        assert np.all(np.diff(np.asarray(fn(T_GRID))) < 0)


@pytest.mark.parametrize("image_d, noise_d", [(256, 64), (512, 32), (64, 64), (32, 64)])
def test_shift_formula(image_d, noise_d):
    shifted = schedules.logsnr_shifted_cosine(T_GRID, image_d, noise_d)
    diff = np.asarray(shifted - schedules.logsnr_cosine(T_GRID))
    np.testing.assert_allclose(diff, 2 * math.log(noise_d / image_d), atol=1e-4)
    # SNR_d * (d / base)^2 = SNR_base (docs/recipe.md section 1).
    np.testing.assert_allclose(np.exp(diff) * (image_d / noise_d) ** 2, 1.0, rtol=1e-4)


@jax.enable_x64(True)  # The formula, not float32 rounding near the tangent's pole at t = 1.
def test_interpolated_follows_the_papers_listing_order():
    """`t * shifted(noise_d_low) + (1 - t) * shifted(noise_d_high)`: the strongest shift (32)
    at the noisy end t = 1. At 512 with 32 / 256 and the +-15 clip that is ~13.6 at t = 0 and
    ~-20.5 at t = 1 (the reverse order would give ~9.5 and ~-16.4)."""
    t = jnp.asarray([0.0, 0.25, 1.0], jnp.float64)
    got = np.asarray(schedules.logsnr_interpolated_cosine(t, 512, noise_d_low=32,
                                                          noise_d_high=256))
    assert got.dtype == np.float64
    t64 = np.asarray(t, np.float64)
    low = cosine_reference(t64) + 2 * np.log(32 / 512)
    high = cosine_reference(t64) + 2 * np.log(256 / 512)
    want = t64 * low + (1 - t64) * high
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # The ends: the clip bounds +-15 shifted by 2 ln(256/512) at t = 0, 2 ln(32/512) at t = 1.
    np.testing.assert_allclose(want[[0, 2]], [15 + 2 * np.log(0.5), -15 + 2 * np.log(1 / 16)])
    assert abs(got[0] - 13.6) < 0.05 and abs(got[2] - (-20.55)) < 0.05
    config = get_config()
    config.diffusion.update(dict(schedule="interpolated_cosine", noise_d_low=256, noise_d_high=32))
    with pytest.raises(UserError, match="swap"):
        validate(config, "inspect")


@pytest.mark.parametrize("logsnr", [-100.0, -20.0, -3.0, 0.0, 2.5, 20.0, 100.0])
def test_alpha_sigma(logsnr):
    alpha, sigma = schedules.alpha_sigma(jnp.float32(logsnr))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(alpha**2, 1 / (1 + np.exp(-logsnr)), rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(2 * (np.log(alpha) - np.log(sigma)), logsnr, rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda x: sum(schedules.alpha_sigma(x)))(jnp.float32(logsnr))
    assert np.isfinite(grads)


SCHEDULE_FNS = {
    "cosine": schedules.logsnr_cosine,
    "shifted": lambda t: schedules.logsnr_shifted_cosine(t, 1024, 64),
    "interpolated": lambda t: schedules.logsnr_interpolated_cosine(t, 512, 32, 256),
}


@pytest.mark.parametrize("name", sorted(SCHEDULE_FNS))
def test_finite_values_and_gradients_at_endpoints_under_jit_vmap(name):
    fn = SCHEDULE_FNS[name]

    def alpha_of_t(t):
        return schedules.alpha_sigma(fn(t))[0]

    for f in (fn, alpha_of_t, lambda t: schedules.alpha_sigma(fn(t))[1]):
        values = jax.jit(jax.vmap(f))(jnp.asarray([0.0, 0.5, 1.0]))
        grads = jax.jit(jax.vmap(jax.grad(f)))(jnp.asarray([0.0, 0.5, 1.0]))
        assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))
    # Broadcasting: a [2, 3] grid of t gives a [2, 3] grid of logSNR.
    assert fn(jnp.zeros((2, 3))).shape == (2, 3)


def test_the_spec_picks_the_schedule_by_name_from_the_config():
    config = get_config()
    config.model.image_size = 256
    cfg = config.diffusion
    t = jnp.linspace(0, 1, 7)
    expected = {
        "cosine": schedules.logsnr_cosine(t),
        "shifted_cosine": schedules.logsnr_shifted_cosine(t, 256, cfg.noise_d),
        "interpolated_cosine": schedules.logsnr_interpolated_cosine(
            t, 256, cfg.noise_d_low, cfg.noise_d_high
        ),
    }
    assert set(expected) == set(SCHEDULES)
    for name, want in expected.items():
        cfg.schedule = name
        np.testing.assert_allclose(diffusion_spec(config).logsnr_fn()(t), want, atol=1e-6)
    cfg.schedule = "linear"
    with pytest.raises(UserError, match="diffusion.schedule"):
        validate(config, "inspect")


def test_sample_times():
    rng = jax.random.key(0)
    t = schedules.sample_times(rng, 1000)
    assert t.shape == (1000,) and float(t.min()) >= 0.0 and float(t.max()) < 1.0
    assert abs(float(t.mean()) - 0.5) < 0.05
    t = np.sort(np.asarray(schedules.sample_times(rng, 64, "stratified")))
    np.testing.assert_allclose(np.diff(t), 1 / 64, atol=1e-6)  # One shared offset.
    assert t.min() >= 0.0 and t.min() < 1 / 64 and t.max() < 1.0
    config = get_config()
    config.diffusion.time_sampling = "sobol"
    with pytest.raises(UserError, match="time_sampling"):
        validate(config, "inspect")


def test_shift_gives_pooled_snr_of_base_schedule():
    """The paper's claim, measured: a 256 image noised with the schedule shifted for 256, then
    pooled to 64, has the SNR a 64 image has under the base schedule; unshifted, 16x more."""
    d, base, n = 256, 64, 8
    rng = np.random.default_rng(0)
    grid = (np.arange(d) + 0.5) / d
    smooth = 0.5 * np.sin(2 * np.pi * grid)[:, None] * np.cos(2 * np.pi * grid)[None, :] + 0.2
    x0_d = jnp.asarray(np.broadcast_to(smooth[None, :, :, None], (n, d, d, 1)), jnp.float32)
    x0_base = average_pool(x0_d, base)  # The same picture at the base resolution.
    eps_d = jnp.asarray(rng.standard_normal(x0_d.shape), jnp.float32)
    eps_base = jnp.asarray(rng.standard_normal(x0_base.shape), jnp.float32)

    @jax.jit
    def pooled_snr(x0, eps, logsnr):
        logsnr_b = jnp.full((n,), logsnr)
        signal = average_pool(diffuse(x0, jnp.zeros_like(eps), logsnr_b), base)
        noise = average_pool(diffuse(jnp.zeros_like(x0), eps, logsnr_b), base)
        return jnp.mean(signal**2) / jnp.var(noise)

    for t in (0.3, 0.5, 0.7):
        snr_base = pooled_snr(x0_base, eps_base, schedules.logsnr_cosine(t))
        snr_shifted = pooled_snr(x0_d, eps_d, schedules.logsnr_shifted_cosine(t, d, base))
        snr_unshifted = pooled_snr(x0_d, eps_d, schedules.logsnr_cosine(t))
        # Each noise variance comes from 32768 Gaussian draws (~0.8% std): 5% is > 4 std errors.
        np.testing.assert_allclose(snr_shifted / snr_base, 1.0, rtol=0.05)
        np.testing.assert_allclose(snr_unshifted / snr_base, (d // base) ** 2, rtol=0.05)
