"""Solvers against the exact probability-flow ODE of Gaussian data, in float64 (~30 s).

For data x0 ~ N(mu, s^2) per pixel the marginal at logSNR l is N(m, v), m = alpha mu,
v = alpha^2 s^2 + sigma^2, and the probability-flow ODE keeps the standardised value
(z - m) / sqrt(v) of every sample fixed (its velocity is affine in z, so it moves the quantiles
of one Gaussian onto the next). So from the initial noise z_n at the noisiest grid point the
exact state at the last point is m_1 + sqrt(v_1 / v_n) (z_n - m_n), and the exact output is the
denoiser's x0 there. A solver of order p has a global error ~ C h^p: doubling the steps divides
it by ~2^p, which pins DDIM (first order) and the second-order solvers, and catches a solver
whose second-order correction is removed (it falls to first order).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_samplers import MU, NULL, S, _sample, gaussian_denoiser
from utils import run_python

from sd_jax.diffusion import samplers, schedules, solvers
from sd_jax.diffusion.spec import DiffusionSpec, SamplingSpec

STEPS = (32, 64, 128, 256)


def _spec(sampler="ddim", grid="uniform_t", num_steps=32, schedule="cosine") -> SamplingSpec:
    diffusion = DiffusionSpec(image_size=64, prediction="v", schedule=schedule, noise_d=32.0)
    return SamplingSpec(diffusion, image_channels=1, num_classes=NULL, num_steps=num_steps,
                        sampler=sampler, grid=grid, clip_x0=False)


def _exact(z, logsnr_n, logsnr_1):
    """x0 prediction at the last grid point of the exact ODE solution from z at the first."""
    def moments(logsnr):
        alpha, sigma = schedules.alpha_sigma(logsnr)
        return alpha, alpha * MU, alpha**2 * S**2 + sigma**2

    _, m_n, v_n = moments(logsnr_n)
    alpha_1, m_1, v_1 = moments(logsnr_1)
    z_1 = m_1 + jnp.sqrt(v_1 / v_n) * (z - m_n)
    return MU + alpha_1 * S**2 * (z_1 - m_1) / v_1


def _error(solve, spec, n=2000):
    """Largest |x0 - exact x0| over n one-pixel samples, in float64."""
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(0), (n, 1, 1, 1), jnp.float64)
        labels = jnp.zeros(n, jnp.int32)
        grid = samplers.GRIDS[spec.grid](spec)

        def logsnr_at(i):
            return jnp.full((n,), grid(i), jnp.float64)

        predict = samplers.predictor(gaussian_denoiser("v"), labels, spec)
        run = jax.jit(lambda z: solve(predict, z, logsnr_at, jax.random.key(1), spec))
        out = run(z)
        assert out.dtype == jnp.float64
        want = _exact(z, logsnr_at(spec.num_steps)[0], logsnr_at(1)[0])
        return float(jnp.max(jnp.abs(out - want)))


def _orders(solve, **spec_fields):
    """Observed orders log2(err(n) / err(2n)) for n in STEPS."""
    errors = [_error(solve, _spec(num_steps=n, **spec_fields)) for n in STEPS]
    return np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:])), errors


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2)])
def test_each_solver_converges_at_its_order(sampler, order):
    orders, errors = _orders(samplers.SAMPLERS[sampler].solve, sampler=sampler)
    assert errors[-1] < errors[0] / 2**order, errors
    # The last halvings are in the asymptotic range: within 0.3 of the order.
    np.testing.assert_allclose(orders[-2:], order, atol=0.3, err_msg=str((orders, errors)))


@pytest.mark.parametrize("grid", ["uniform_logsnr", "edm"])
def test_second_order_holds_on_every_grid(grid):
    orders, errors = _orders(samplers.SAMPLERS["dpmpp_2m"].solve, sampler="dpmpp_2m", grid=grid)
    np.testing.assert_allclose(orders[-2:], 2, atol=0.3, err_msg=str((orders, errors)))


@pytest.mark.parametrize("name, solver", [("dpmpp_2m", solvers.dpmpp_2m(second_order=False)),
                                          ("heun", solvers.heun(second_order=False))])
def test_without_its_correction_a_solver_falls_to_first_order(name, solver):
    """The test above would catch a lost correction: the same solver without it is first order
    (and then no better than DDIM)."""
    orders, errors = _orders(solver, sampler=name)
    np.testing.assert_allclose(orders[-2:], 1, atol=0.3, err_msg=str((orders, errors)))
    assert _error(samplers.SAMPLERS[name].solve, _spec(name)) < errors[0] / 4


def test_nfe_per_sampler():
    assert {name: samplers.nfe(_spec(name, num_steps=16)) for name in samplers.SAMPLERS} == {
        "ddpm": 16, "ddim": 16, "dpmpp_2m": 16, "dpmpp_2m_sde": 16, "heun": 31}


@pytest.mark.parametrize("grid", sorted(samplers.GRIDS))
def test_grids_span_the_schedule_from_its_noisy_end(grid):
    """Point n is the schedule's noisiest logSNR, point 0 its cleanest; monotone in between."""
    spec = _spec(grid=grid, num_steps=16, schedule="shifted_cosine")
    at = samplers.GRIDS[grid](spec)
    values = np.asarray([float(at(i)) for i in range(16, -1, -1)])
    low, high = spec.diffusion.logsnr_range()
    np.testing.assert_allclose(values[[0, -1]], [low, high], rtol=1e-5, atol=1e-4)
    assert np.all(np.diff(values) > 0), values


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_sde", "heun"])
def test_new_samplers_reproduce_gaussian_data(sampler):
    """As DDPM and DDIM in test_samplers.py: 64 steps, mean within 0.015 (~7 std errors of the
    50k samples), variance within 5% (the discretisation error is far below that here)."""
    x = np.asarray(_sample(gaussian_denoiser("v"), sampler=sampler, num_steps=64), np.float64)
    assert abs(x.mean() - MU) < 0.015
    np.testing.assert_allclose(x.var(), S**2, rtol=0.05)


DEVICES = """
import jax, jax.numpy as jnp, numpy as np, sys
sys.path[:0] = ["tests", "tests/diffusion"]
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from test_samplers import gaussian_denoiser
from test_solvers import _spec
from sd_jax.diffusion import samplers

assert jax.device_count() == 8
labels = jnp.arange(64) % 2
rows = NamedSharding(Mesh(np.asarray(jax.devices()), ("batch",)), P("batch"))
for name in ("ddim", "dpmpp_2m", "heun", "dpmpp_2m_sde"):
    spec = _spec(name, num_steps=16).replace(clip_x0=True)
    run = lambda y: samplers.sample(gaussian_denoiser("v", mus=(0.3, -0.2)), jax.random.key(3),
                                    y, spec)
    one = np.asarray(jax.jit(run)(labels))  # On one device.
    again = np.asarray(jax.jit(run)(labels))
    split = np.asarray(jax.jit(run, in_shardings=rows, out_shardings=rows)(
        jax.device_put(labels, rows)))
    print(name, np.array_equal(one, again), np.array_equal(one, split), float(one.std()))
"""


def test_deterministic_samplers_are_bitwise_reproducible_on_1_and_8_devices():
    proc = run_python(DEVICES, num_devices=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.strip().splitlines()}
    for name in ("ddim", "dpmpp_2m", "heun"):
        assert rows[name][:2] == ["True", "True"], (name, rows[name])
        assert float(rows[name][2]) > 0.1  # Real samples, not a constant.
    assert rows["dpmpp_2m_sde"][0] == "True"  # Same seed, same noise: reproducible too.
