"""The sampling job's cost estimate (sd_jax/sample/cost.py), counted against the sampler itself."""

import jax
import jax.numpy as jnp
import pytest
from utils import tiny_config

from sd_jax import specs
from sd_jax.diffusion import samplers
from sd_jax.models import init, summary
from sd_jax.sample import cost


def _counted(config, batch: int = 2) -> int:
    """Denoiser rows per image when the sampler really runs: a callback in the denoiser records
    its batch at every call that executes (inside the guidance interval a call has 2B rows)."""
    spec = specs.sampling_spec(config)
    rows = []

    def denoise(z, logsnr_b, labels_b):
        jax.debug.callback(lambda: rows.append(z.shape[0]))
        return jnp.zeros_like(z)

    labels = jnp.zeros(batch, jnp.int32)
    run = jax.jit(lambda r: samplers.sample(denoise, r, labels, spec))
    jax.block_until_ready(run(jax.random.key(0)))
    jax.effects_barrier()
    return sum(rows) // batch


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp_2m", "heun"])
@pytest.mark.parametrize("interval", [(-1e9, 1e9), (-2.0, 3.0), (50.0, 60.0)])
def test_evaluations_are_those_the_sampler_makes(sampler, interval):
    config = tiny_config(**{"sample.sampler": sampler, "sample.num_steps": 6,
                            "sample.guidance_scale": 2.0, "sample.guidance_logsnr_min": interval[0],
                            "sample.guidance_logsnr_max": interval[1]})
    job = cost.job_cost(config, num_devices=4, device_kind="cpu", flops_per_evaluation=1e9)
    assert job.evaluations_per_image == _counted(config)
    assert job.nfe == samplers.nfe(specs.sampling_spec(config))
    assert job.flops == config.sample.num_samples * job.evaluations_per_image * 1e9
    assert job.hours() is None and "no known peak" in job.line()


def test_hours_on_a_known_chip_and_the_forward_flops():
    config = tiny_config(**{"sample.num_samples": 50_000})
    job = cost.job_cost(config, num_devices=8, device_kind="NVIDIA H100 80GB HBM3")
    forward = summary.forward_flops(config.model, init.param_shapes(config.model))
    assert job.flops_per_evaluation == forward
    assert job.hours() == pytest.approx(job.flops / (8 * 989e12) / 3600)
    assert job.hours(0.4) == pytest.approx(job.hours() / 0.4)
    assert "h on 8 device(s)" in job.line()
