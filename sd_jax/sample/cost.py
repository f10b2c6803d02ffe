"""What a sampling job will cost, printed before it starts: network evaluations, FLOPs, hours.

    cost = job_cost(config, num_devices, device_kind)
    print(cost.line())  # "sampling cost: 50,000 images x 64 evaluations (...) = 3.7e+18 FLOP; ..."

Evaluations per image are the sampler's NFE (`samplers.nfe`) plus one more at every grid point
where guidance runs its unconditional pass (inside `[guidance_logsnr_min, guidance_logsnr_max]`);
FLOPs per evaluation are the forward pass's at batch 1 (`models.summary.forward_flops`, XLA's
cost analysis). Where the device's dense bfloat16 peak is known (`PEAK_FLOPS`) the line adds the
hours at that peak and at an MFU of 40%, a typical figure for inference of a large model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sd_jax import specs
from sd_jax.diffusion import samplers
from sd_jax.models import init, summary

# Dense bfloat16 peak FLOP/s per chip, from the vendors' data sheets, by `device_kind` prefix.
PEAK_FLOPS = {
    "NVIDIA H100": 989e12,  # SXM.
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,  # v5e.
    "TPU v6 lite": 918e12,  # Trillium.
}
TYPICAL_MFU = 0.4


@dataclasses.dataclass(frozen=True)
class JobCost:
    """The cost of sampling `images` images."""

    images: int
    evaluations_per_image: int  # NFE plus the guided steps' unconditional passes.
    nfe: int
    flops_per_evaluation: float
    num_devices: int
    peak_flops: float | None  # Per device; None where unknown (CPU, an unlisted chip).

    @property
    def flops(self) -> float:
        return self.images * self.evaluations_per_image * self.flops_per_evaluation

    def hours(self, mfu: float = 1.0) -> float | None:
        """Wall hours on the devices at `mfu` of their peak; None without a known peak."""
        if self.peak_flops is None:
            return None
        return self.flops / (self.peak_flops * self.num_devices * mfu) / 3600

    def line(self) -> str:
        text = (f"sampling cost: {self.images:,} images x {self.evaluations_per_image} network "
                f"evaluations ({self.nfe} NFE + guidance) x "
                f"{self.flops_per_evaluation / 1e9:,.2f} GFLOP = {self.flops:.3g} FLOP")
        if self.peak_flops is None:
            return text + "; no known peak for this device, so no time estimate"
        return (text + f"; {self.hours():.3g} h on {self.num_devices} device(s) at their bf16 "
                f"peak, {self.hours(TYPICAL_MFU):.3g} h at {TYPICAL_MFU:.0%} MFU")


def guided_evaluations(spec: samplers.SamplingSpec) -> int:
    """Unconditional passes guidance adds per image: one per evaluation at a grid point inside
    the interval. Each point of the grid is evaluated once per step of the solver's, except the
    noisiest (once: nothing comes before it)."""
    if spec.guidance_scale == 1.0:
        return 0
    with jax.ensure_compile_time_eval():
        grid = samplers.GRIDS[spec.grid](spec)
        levels = np.asarray(grid(jnp.arange(1, spec.num_steps + 1)), np.float64)  # i = 1 .. n.
    inside = (levels >= spec.guidance_logsnr_min) & (levels <= spec.guidance_logsnr_max)
    per_step = samplers.SAMPLERS[spec.sampler].evaluations_per_step
    return int(per_step * inside.sum() - (per_step - 1) * inside[-1])


def peak_flops(device_kind: str) -> float | None:
    """The dense bf16 peak of one device of this kind, or None."""
    return next((v for k, v in PEAK_FLOPS.items() if device_kind.startswith(k)), None)


def job_cost(config: ml_collections.ConfigDict, num_devices: int, device_kind: str,
             flops_per_evaluation: float | None = None) -> JobCost:
    """The cost of `config.sample` (`flops_per_evaluation`: the forward's, measured if None)."""
    spec = specs.sampling_spec(config)
    if flops_per_evaluation is None:
        flops_per_evaluation = summary.forward_flops(config.model,
                                                     init.param_shapes(config.model))
    return JobCost(images=int(config.sample.num_samples),
                   evaluations_per_image=samplers.nfe(spec) + guided_evaluations(spec),
                   nfe=samplers.nfe(spec),
                   flops_per_evaluation=float(flops_per_evaluation), num_devices=num_devices,
                   peak_flops=peak_flops(device_kind))
