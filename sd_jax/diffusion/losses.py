"""Training losses (docs/recipe.md sections 3-4): (multiscale) MSE in v- or eps-space, weightings.

Pure functions of arrays. Given the same `z`, `eps - eps_hat = alpha (v - v_hat)` exactly (eps is
affine in v with slope alpha), so an eps-MSE equals `alpha^2 = sigmoid(logsnr)` times the v-MSE,
per example, and the same holds for every average-pooled scale of the multiscale loss.
`diffusion_loss_given_noise` uses this to apply SiD2's sigmoid weighting, defined on the
eps-loss, to a loss computed in v-space.

Tables (a new option is one function and one entry): `LOSSES` (loss name -> the space its error
is measured in), `LOSS_WEIGHTINGS` (name -> per-example weight on the eps-MSE) and
`MULTISCALE_WEIGHTINGS` (name -> raw per-scale weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from sd_jax.diffusion import process, schedules
from sd_jax.diffusion.process import DenoiseFn
from sd_jax.diffusion.spec import DiffusionSpec

# Loss name -> space the error is measured in. The config's 'auto' (the architecture's own loss,
# `default_loss` of its class in sd_jax.models.registry) is resolved by `sd_jax.specs`.
LOSSES: dict[str, str] = {"v_mse": "v", "eps_mse": "eps"}


def mse(target_bhwc: jax.Array, pred_bhwc: jax.Array) -> jax.Array:
    """Per-example mean squared error over all non-batch axes."""
    err = jnp.square(target_bhwc - pred_bhwc)
    return jnp.mean(err, axis=tuple(range(1, err.ndim)))


def average_pool(x_bhwc: jax.Array, size: int) -> jax.Array:
    """Average-pools `x_bhwc` to `size x size` (H and W must be multiples of `size`)."""
    b, h, w, c = x_bhwc.shape
    if h % size or w % size:
        raise ValueError(f"cannot average-pool {h}x{w} to {size}x{size}")
    return x_bhwc.reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4))


def multiscale_sizes(image_size: int, min_size: int = 32) -> list[int]:
    """Scales of the multiscale loss: `image_size, image_size / 2, ...` down to `min_size`.

    Halving stops at the first size that is odd or below `min_size`; if `image_size <= min_size`
    only the full scale remains. Returned smallest first.
    """
    sizes = [image_size]
    while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= min_size:
        sizes.append(sizes[-1] // 2)
    return sizes[::-1]


# `diffusion.multiscale_weighting` name -> raw weights of the scales (normalised to sum 1).
MULTISCALE_WEIGHTINGS: dict[str, Callable[[Sequence[int]], list[float]]] = {
    "inverse_size": lambda sizes: [1.0 / s for s in sizes],  # Paper: 1/s (weights unverified).
    "uniform": lambda sizes: [1.0] * len(sizes),
}


def multiscale_weights(sizes: Sequence[int], weighting: str | Sequence[float]) -> list[float]:
    """Per-scale weights (aligned with `sizes`), normalised to sum to 1: a MULTISCALE_WEIGHTINGS
    name, or explicit numbers, one per scale (smallest first)."""
    if isinstance(weighting, str):
        raw = MULTISCALE_WEIGHTINGS[weighting](sizes)
    else:
        raw = [float(w) for w in weighting]
        assert len(raw) == len(sizes), (raw, sizes)  # validate() checks the config's count.
    total = sum(raw)
    return [w / total for w in raw]


def multiscale_mse(
    target_bhwc: jax.Array,
    pred_bhwc: jax.Array,
    min_size: int = 32,
    weighting: str | Sequence[float] = "inverse_size",
) -> jax.Array:
    """Per-example multiscale loss `sum_s w_s mean((D_s[target] - D_s[pred])^2)`.

    `D_s` average-pools to `s x s` for `s` in `multiscale_sizes(H, min_size)`. Pooling is linear,
    so the error is pooled once per scale. A low-frequency error survives pooling and counts at
    every scale; a high-frequency one only at the fine scales.
    """
    err_bhwc = (target_bhwc - pred_bhwc).astype(jnp.float32)
    sizes = multiscale_sizes(err_bhwc.shape[1], min_size)
    total = 0.0
    for size, weight in zip(sizes, multiscale_weights(sizes, weighting), strict=True):
        pooled = average_pool(err_bhwc, size)
        total = total + weight * jnp.mean(jnp.square(pooled), axis=(1, 2, 3))
    return total


def constant_weight(t_b: jax.Array, spec: DiffusionSpec) -> jax.Array:
    """The paper's weighting: 1 in the loss's own space."""
    del spec
    return jnp.ones_like(t_b)


def sigmoid_weight(t_b: jax.Array, spec: DiffusionSpec) -> jax.Array:
    """SiD2 (after Kingma & Gao): a weighting over logSNR `lambda`, `w = sigmoid(b - lambda)`.

    With `t` uniform, `lambda` has density `1 / (-dlambda/dt)`, so the per-example weight carries
    the schedule's Jacobian:

        weight(t) = sigmoid(b - lambda(t)) * (-dlambda/dt) / Z,
        Z = softplus(b - lambda(1)) - softplus(b - lambda(0)) = integral of sigmoid(b - lambda)
            over the schedule's range [lambda(1), lambda(0)],

    so that `E_t[weight * f(lambda(t))] = (1/Z) integral sigmoid(b - lambda) f(lambda) dlambda`
    for any f: the weighting no longer depends on how the schedule spends its time, only on its
    range. Z makes the weight average 1 over t, so the loss scale (and gradient clipping at norm
    1) stays comparable with 'constant'. `dlambda/dt` comes from `jax.jvp` of the schedule, which
    acts elementwise. Near t = 1 of a clipped cosine schedule `-dlambda/dt` is ~5.7e3, so an
    eps-space weight reaches a few hundred there (finite in float32 on all of [0, 1]).
    """
    logsnr_fn, bias = spec.logsnr_fn(), spec.sigmoid_bias
    logsnr_b, dlogsnr_dt_b = jax.jvp(logsnr_fn, (t_b,), (jnp.ones_like(t_b),))
    logsnr_ends = logsnr_fn(jnp.asarray([1.0, 0.0], t_b.dtype))  # [lambda_min, lambda_max]
    softplus_ends = jax.nn.softplus(bias - logsnr_ends)
    norm = softplus_ends[0] - softplus_ends[1]
    return jax.nn.sigmoid(bias - logsnr_b) * (-dlogsnr_dt_b) / norm


# `diffusion.loss_weighting` name -> per-example weight on the eps-MSE at times `t_b ~ U(0, 1)`.
LOSS_WEIGHTINGS: dict[str, Callable[[jax.Array, DiffusionSpec], jax.Array]] = {
    "constant": constant_weight,
    "sigmoid": sigmoid_weight,
}


def eps_loss_weight(t_b: jax.Array, spec: DiffusionSpec) -> jax.Array:
    """Per-example weight on the eps-MSE at times `t_b`: `LOSS_WEIGHTINGS[spec.loss_weighting]`."""
    t_b = jnp.asarray(t_b, jnp.result_type(float))
    return LOSS_WEIGHTINGS[spec.loss_weighting](t_b, spec)


def diffusion_loss(
    denoise_fn: DenoiseFn,
    x0_bhwc: jax.Array,
    labels_b: jax.Array,
    rng: jax.Array,
    spec: DiffusionSpec,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training loss for one batch: scalar float32 mean loss and an aux dict.

    Samples `t` (per `spec.time_sampling`) and `eps` from `rng`, then returns
    `diffusion_loss_given_noise(...)` (see there).
    """
    x0_bhwc = jnp.asarray(x0_bhwc, jnp.float32)
    rng_t, rng_eps = jax.random.split(rng)
    t_b = schedules.sample_times(rng_t, x0_bhwc.shape[0], spec.time_sampling)
    eps_bhwc = jax.random.normal(rng_eps, x0_bhwc.shape, jnp.float32)
    return diffusion_loss_given_noise(denoise_fn, x0_bhwc, labels_b, t_b, eps_bhwc, spec)


def diffusion_loss_given_noise(
    denoise_fn: DenoiseFn,
    x0_bhwc: jax.Array,
    labels_b: jax.Array,
    t_b: jax.Array,
    eps_bhwc: jax.Array,
    spec: DiffusionSpec,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training loss for one batch at given times `t_b` and noise `eps_bhwc` (the train step draws
    them per example, so they do not depend on how the batch is split): mean loss and aux.

    Noises `x0_bhwc`, calls `denoise_fn(z_bhwc, logsnr_b, labels_b)` (returning
    `spec.prediction`: 'v' | 'eps' | 'x0'; an x0 output's v-MSE is `|x0 - x0_hat|^2 / sigma^2`,
    docs/resolution.md), converts the output to the space of `spec.loss` and applies the
    (multiscale) MSE and the weighting. 'constant' weighting is 1 in the loss's own space;
    'sigmoid' is `eps_loss_weight`, times `alpha^2` for a v-space loss (module docstring), so
    both spaces give the same objective.
    aux: `loss_b` (weighted per-example loss), `unweighted_loss_b` (per-example loss before the
    weighting), `unweighted_loss`, `logsnr_b`, `logsnr_mean`, `t_b`.
    """
    space = LOSSES[spec.loss]
    x0_bhwc = jnp.asarray(x0_bhwc, jnp.float32)
    logsnr_b = spec.logsnr_fn()(t_b)
    z_bhwc = process.diffuse(x0_bhwc, eps_bhwc, logsnr_b)

    out_bhwc = denoise_fn(z_bhwc, logsnr_b, labels_b).astype(jnp.float32)
    pred_bhwc = process.convert_output(z_bhwc, out_bhwc, logsnr_b, spec.prediction, space)
    target_bhwc = process.from_x0_eps(x0_bhwc, eps_bhwc, logsnr_b, space)

    if spec.multiscale:
        loss_b = multiscale_mse(target_bhwc, pred_bhwc, spec.multiscale_min_size,
                                spec.multiscale_weighting)
    else:
        loss_b = mse(target_bhwc, pred_bhwc)
    weight_b = eps_loss_weight(t_b, spec)
    if space == "v" and spec.loss_weighting != "constant":
        weight_b = weight_b * jax.nn.sigmoid(logsnr_b)  # eps - eps_hat = alpha (v - v_hat).
    weighted_b = weight_b * loss_b
    aux = {
        "loss_b": weighted_b,
        "unweighted_loss_b": loss_b,
        "unweighted_loss": jnp.mean(loss_b),
        "logsnr_b": logsnr_b,
        "logsnr_mean": jnp.mean(logsnr_b),
        "t_b": t_b,
    }
    return jnp.mean(weighted_b), aux
