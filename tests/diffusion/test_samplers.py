"""Samplers against the closed-form denoiser of Gaussian data, and guidance (~20 s).

For data x0 ~ N(mu, s^2) per pixel and z = alpha x0 + sigma eps, the optimal denoiser is
E[x0|z] = mu + alpha s^2 (z - alpha mu) / den and E[eps|z] = sigma (z - alpha mu) / den with
den = alpha^2 s^2 + sigma^2; v_hat = alpha E[eps|z] - sigma E[x0|z].
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from utils import U32

from configs.base import get_config
from sd_jax.diffusion import process, samplers, schedules
from sd_jax.diffusion.spec import DiffusionSpec, SamplingSpec
from sd_jax.errors import UserError
from sd_jax.specs import sampling_spec
from sd_jax.validate import validate

MU, S = 0.25, 0.5
N = 50_000  # Scalars per run: std error of the mean 0.0022, of the variance ~0.63% (relative).
NULL = 2


def gaussian_denoiser(prediction, mus=(MU,), s=S):
    """Optimal denoiser; class c has mean mus[c], the null label (NULL) mean -0.5."""
    mu_table = jnp.asarray(list(mus) + [-0.5] * (NULL + 1 - len(mus)), jnp.float32)

    def denoise(z, logsnr_b, labels_b):
        alpha, sigma = (a[:, None, None, None] for a in schedules.alpha_sigma(logsnr_b))
        mu = mu_table[labels_b][:, None, None, None]
        den = alpha**2 * s**2 + sigma**2
        x0 = mu + alpha * s**2 * (z - alpha * mu) / den
        eps = sigma * (z - alpha * mu) / den
        return {"v": alpha * eps - sigma * x0, "eps": eps, "x0": x0}[prediction]

    return denoise


def _sample(denoise, *, sampler, num_steps, noise_param=0.2, prediction="v", n=N, seed=1,
            labels=None, **guidance):
    """`n` one-pixel samples on the clipped cosine schedule (logSNR in [-15, 15])."""
    diffusion = DiffusionSpec(image_size=1, prediction=prediction, schedule="cosine")
    spec = SamplingSpec(diffusion, image_channels=1, num_classes=NULL,
                                 num_steps=num_steps, sampler=sampler, noise_param=noise_param,
                                 clip_x0=False, **guidance)
    labels = jnp.zeros(n, jnp.int32) if labels is None else labels
    run = lambda rng, labels: samplers.sample(denoise, rng, labels, spec)
    return jax.jit(run)(jax.random.key(seed), labels)  # One program: faster than op by op.


def exact_sampler_moments(sampler, num_steps, noise_param):
    """Mean and variance the discrete sampler must produce with the optimal denoiser, in float64.

    Every step is affine in z plus Gaussian noise, so (mean, var) follow a scalar recursion:
    DDPM: z_s = r alpha_s / alpha_t z + (1 - r) alpha_s x0_hat + std n, r = exp(l_t - l_s),
    var = (1 - r) exp(p log sigma_t^2 + (1 - p) log sigma_s^2). DDIM: z_s = alpha_s x0_hat +
    sigma_s eps_hat, eps_hat = (z - alpha_t x0_hat) / sigma_t. Start N(0, 1), end with x0_hat.
    """
    t_min, t_max = np.arctan(np.exp(-7.5)), np.arctan(np.exp(7.5))
    lam = lambda t: -2 * np.log(np.tan(t_min + t * (t_max - t_min)))
    a_s = lambda lam_: (np.sqrt(1 / (1 + np.exp(-lam_))), np.sqrt(1 / (1 + np.exp(lam_))))

    def x0_hat(lam_):  # x0_hat(z) = c z + d
        alpha, sigma = a_s(lam_)
        c = alpha * S**2 / (alpha**2 * S**2 + sigma**2)
        return c, MU - c * alpha * MU

    mean, var = 0.0, 1.0
    for i in range(num_steps, 1, -1):
        lam_t, lam_s = lam(i / num_steps), lam((i - 1) / num_steps)
        (alpha_t, sigma_t), (alpha_s, sigma_s) = a_s(lam_t), a_s(lam_s)
        c, d = x0_hat(lam_t)
        if sampler == "ddim":
            gain = alpha_s * c + sigma_s * (1 - alpha_t * c) / sigma_t
            shift, added = alpha_s * d - sigma_s * alpha_t * d / sigma_t, 0.0
        else:
            r = np.exp(lam_t - lam_s)
            gain, shift = r * alpha_s / alpha_t + (1 - r) * alpha_s * c, (1 - r) * alpha_s * d
            added = (1 - r) * sigma_t ** (2 * noise_param) * sigma_s ** (2 - 2 * noise_param)
        mean, var = gain * mean + shift, gain**2 * var + added
    c, d = x0_hat(lam(1 / num_steps))
    return c * mean + d, c**2 * var


@pytest.mark.parametrize(
    "sampler, prediction", [("ddpm", "v"), ("ddpm", "eps"), ("ddim", "v")]
)
def test_samplers_reproduce_gaussian_data(sampler, prediction):
    """256 steps, paper noise_param 0.2. The discretisation itself is biased low in variance
    (-2.2% DDPM, -1.2% DDIM, from `exact_sampler_moments`); sampling noise adds ~0.6% std.
    Tolerance: mean 0.015 (~7 std errors), variance 5%."""
    x = np.asarray(_sample(gaussian_denoiser(prediction), sampler=sampler, num_steps=256,
                           prediction=prediction), np.float64)
    assert abs(x.mean() - MU) < 0.015
    np.testing.assert_allclose(x.var(), S**2, rtol=0.05)


@pytest.mark.parametrize("sampler, noise_param", [("ddpm", 0.0), ("ddpm", 1.0), ("ddim", 0.0)])
def test_sampler_matches_exact_discrete_moments(sampler, noise_param):
    """With 16 steps the samplers differ a lot (variance -29% / +8% / -18% vs the data), so
    matching the exact discrete recursion within 2.5% (4 std errors) pins the update rule and the
    log-variance interpolation (noise_param 0: posterior variance, 1: forward 'beta')."""
    mean, var = exact_sampler_moments(sampler, 16, noise_param)
    x = np.asarray(_sample(gaussian_denoiser("v"), sampler=sampler, num_steps=16,
                           noise_param=noise_param), np.float64)
    assert abs(x.mean() - mean) < 0.01
    np.testing.assert_allclose(x.var(), var, rtol=0.025)


def _eps_of(denoise, prediction, z, logsnr_b, labels_b):
    out = denoise(z, logsnr_b, labels_b)
    return process.x0_eps_from_output(z, out, logsnr_b, prediction)[1]


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_guidance_one_step_follows_formula(prediction):
    denoise = gaussian_denoiser(prediction, mus=(0.6, -0.2))
    z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 2, 1)), jnp.float32)
    logsnr_b = jnp.full((4,), 0.5)
    labels_b = jnp.asarray([0, 1, 0, 1])
    eps_cond = _eps_of(denoise, prediction, z, logsnr_b, labels_b)
    eps_uncond = _eps_of(denoise, prediction, z, logsnr_b, jnp.full((4,), NULL))
    w = 2.0  # guidance_scale = 1 + w = 3.
    out = samplers.guided_output(denoise, z, logsnr_b, labels_b, guidance_scale=3.0,
                                 guidance_logsnr_min=-1e9, guidance_logsnr_max=1e9,
                                 null_label=NULL)
    eps_guided = process.x0_eps_from_output(z, out, logsnr_b, prediction)[1]
    np.testing.assert_allclose(eps_guided, (1 + w) * eps_cond - w * eps_uncond, atol=1e-5)
    assert not np.allclose(eps_guided, eps_cond, atol=1e-2)
    # Outside the interval the conditional output comes back unchanged. It is computed inside
    # a compiled `lax.cond` branch, the reference op by op, so they may round differently: the
    # denoiser is ~20 float32 operations per element, hence a bound of 64 u of its scale
    # (the guided output differs by ~0.1 to 1).
    cond = denoise(z, logsnr_b, labels_b)
    for lo, hi in ((1.0, 5.0), (-5.0, 0.0)):
        out = samplers.guided_output(denoise, z, logsnr_b, labels_b, guidance_scale=3.0,
                                     guidance_logsnr_min=lo, guidance_logsnr_max=hi,
                                     null_label=NULL)
        np.testing.assert_allclose(out, cond, rtol=0, atol=64 * U32 * float(jnp.abs(cond).max()))


def test_guidance_scale_one_skips_unconditional_pass():
    calls = []

    def denoise(z, logsnr_b, labels_b):
        calls.append(labels_b)  # Recorded at trace time.
        # The null label gives NaN: any use of the unconditional pass would poison the sample.
        out = gaussian_denoiser("v")(z, logsnr_b, jnp.minimum(labels_b, 0))
        return jnp.where((labels_b == NULL)[:, None, None, None], jnp.nan, out)

    x = _sample(denoise, sampler="ddpm", num_steps=8, n=64)
    assert len(calls) == 2  # Loop body + final x0 step, conditional only.
    assert np.all(np.isfinite(x))
    reference = _sample(gaussian_denoiser("v"), sampler="ddpm", num_steps=8, n=64)
    np.testing.assert_array_equal(x, reference)
    calls.clear()
    _sample(lambda *a: calls.append(a[2]) or gaussian_denoiser("v")(*a), sampler="ddpm",
            num_steps=8, n=64, guidance_scale=2.0)
    # With guidance, the loop body and the final step each trace one call on the doubled batch
    # (inside the interval: each label next to the null label) and one on the batch alone
    # (outside it). Which rows pair up is checked by test_guidance_one_step_follows_formula.
    assert sorted(len(labels) for labels in calls) == [64, 64, 128, 128]


def test_guidance_interval_end_to_end():
    denoise = gaussian_denoiser("v", mus=(0.6, -0.2))
    plain = _sample(denoise, sampler="ddim", num_steps=8, n=256)
    # The 8-step grid spans logSNR [-15, 15]; an interval above it means no guidance at all.
    outside = _sample(denoise, sampler="ddim", num_steps=8, n=256, guidance_scale=3.0,
                      guidance_logsnr_min=20.0, guidance_logsnr_max=30.0)
    # The same conditional passes, but run inside a `lax.cond` branch, compiled apart, so they
    # may round differently: ~20 float32 operations per call (64 u of the scale), added up
    # over the 8 steps of DDIM, whose update does not amplify z. Guidance moves the mean by 0.1.
    np.testing.assert_allclose(outside, plain, rtol=0, atol=8 * 64 * U32)
    guided = _sample(denoise, sampler="ddim", num_steps=8, n=256, guidance_scale=3.0)
    # Guidance pushes samples away from the null mean (-0.5) past the class mean (0.6).
    assert float(guided.mean()) > float(plain.mean()) + 0.1


def test_sampling_spec_from_config_clips():
    config = get_config()
    config.model.update(dict(image_size=8, num_classes=2, prediction="eps"))
    config.sample.update(dict(num_steps=4, guidance_scale=2.0))
    config.diffusion.schedule = "shifted_cosine"
    spec = sampling_spec(config)
    labels = jnp.asarray([0, 1])
    far = lambda z, logsnr_b, labels_b: -3.0 * jnp.ones_like(z)  # eps far off: x0 blows up.
    x = jax.jit(lambda rng: samplers.sample(far, rng, labels, spec))(jax.random.key(0))
    assert x.shape == (2, 8, 8, 3) and x.dtype == jnp.float32
    assert float(jnp.abs(x).max()) <= 1.0


def test_bad_sampling_settings_are_refused_by_validation():
    config = get_config()
    config.model.num_classes = 0
    config.sample.guidance_scale = 2.0
    with pytest.raises(UserError, match="guidance_scale"):
        validate(config, "sample")
    config.model.num_classes, config.sample.sampler = 2, "euler"
    with pytest.raises(UserError, match="sampler"):
        validate(config, "sample")
    config.sample.sampler, config.sample.num_steps = "ddpm", 0
    with pytest.raises(UserError, match="num_steps"):
        validate(config, "sample")
    config.sample.num_steps = 4
    config.diffusion.update(schedule="interpolated_cosine", noise_d_low=256, noise_d_high=32)
    with pytest.raises(UserError, match="swap them"):
        validate(config, "sample")


def test_sampling_spec_is_a_value():
    """Equal settings from two config objects give equal, equally hashed specs (one compiled
    program); any sampling, schedule or model field that changes the images changes the spec."""
    first, second = get_config(), get_config()
    second.train.batch_size = 7  # Not a sampling setting.
    spec = sampling_spec(first)
    assert spec == sampling_spec(second)
    assert hash(spec) == hash(sampling_spec(second))
    for field, value in (("guidance_scale", 1.5), ("num_steps", 8)):
        assert spec.replace(**{field: value}) != spec, field
    for field, value in (("noise_d", 32.0), ("image_size", 256), ("prediction", "eps")):
        diffusion = dataclasses.replace(spec.diffusion, **{field: value})
        assert spec.replace(diffusion=diffusion) != spec, field
