"""Forward process, parametrisation conversions and training losses (docs/recipe.md sections 3-4).

Pure functions of arrays. Per-example quantities (`logsnr_b`, weights) broadcast against images
`x_bhwc` over the trailing axes.

Parametrisations, with `z = alpha x0 + sigma eps` and `alpha^2 + sigma^2 = 1`:
    v   = alpha eps - sigma x0
    x0  = alpha z - sigma v          = (z - sigma eps) / alpha
    eps = sigma z + alpha v          = (z - alpha x0) / sigma
Given the same `z`, `eps - eps_hat = alpha (v - v_hat)` exactly (eps is affine in v with slope
alpha), so an eps-MSE equals `alpha^2 = sigmoid(logsnr)` times the v-MSE, per example, and the
same holds for every average-pooled scale of the multiscale loss. `diffusion_loss` uses this to
apply SiD2's sigmoid weighting, defined on the eps-loss, to a loss computed in v-space.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sd_jax.diffusion import schedules
from sd_jax.errors import UserError

PREDICTIONS = ("v", "eps", "x0")
# Loss name -> space the error is measured in. 'auto' is the architecture's own loss (the
# `default_loss` of its class in sd_jax.models.registry), resolved before `diffusion_loss`.
LOSSES = {"auto": None, "v_mse": "v", "eps_mse": "eps"}
LOSS_WEIGHTINGS = ("constant", "sigmoid")
MULTISCALE_WEIGHTINGS = ("inverse_size", "uniform")

DenoiseFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _per_example(a_b: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example array to broadcast against `x` (batch axis first)."""
    a_b = jnp.asarray(a_b)
    return a_b.reshape(a_b.shape + (1,) * (x.ndim - a_b.ndim))


def _alpha_sigma_like(logsnr_b: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    alpha, sigma = schedules.alpha_sigma(logsnr_b)
    return _per_example(alpha, x), _per_example(sigma, x)


def diffuse(x0_bhwc: jax.Array, eps_bhwc: jax.Array, logsnr_b: jax.Array) -> jax.Array:
    """Forward noising `z = alpha x0 + sigma eps`."""
    alpha, sigma = _alpha_sigma_like(logsnr_b, x0_bhwc)
    return alpha * x0_bhwc + sigma * eps_bhwc


def v_from_x0_eps(x0_bhwc: jax.Array, eps_bhwc: jax.Array, logsnr_b: jax.Array) -> jax.Array:
    """The v-prediction target `v = alpha eps - sigma x0`."""
    alpha, sigma = _alpha_sigma_like(logsnr_b, x0_bhwc)
    return alpha * eps_bhwc - sigma * x0_bhwc


def x0_eps_from_output(
    z_bhwc: jax.Array, out_bhwc: jax.Array, logsnr_b: jax.Array, prediction: str
) -> tuple[jax.Array, jax.Array]:
    """Converts a network output (`prediction` in 'v' | 'eps' | 'x0') to `(x0_hat, eps_hat)`."""
    alpha, sigma = _alpha_sigma_like(logsnr_b, z_bhwc)
    if prediction == "v":
        return alpha * z_bhwc - sigma * out_bhwc, sigma * z_bhwc + alpha * out_bhwc
    if prediction == "eps":
        return (z_bhwc - sigma * out_bhwc) / alpha, out_bhwc
    if prediction == "x0":
        return out_bhwc, (z_bhwc - alpha * out_bhwc) / sigma
    raise UserError(f"Unknown prediction={prediction!r}; choose one of {', '.join(PREDICTIONS)}.")


def convert_output(
    z_bhwc: jax.Array, out_bhwc: jax.Array, logsnr_b: jax.Array, source: str, target: str
) -> jax.Array:
    """Converts a network output from parametrisation `source` to `target` (v | eps | x0)."""
    if source == target:
        return out_bhwc
    alpha, sigma = _alpha_sigma_like(logsnr_b, z_bhwc)
    if (source, target) == ("eps", "v"):  # Direct form, avoids the 1/alpha round trip via x0.
        return (out_bhwc - sigma * z_bhwc) / alpha
    x0, eps = x0_eps_from_output(z_bhwc, out_bhwc, logsnr_b, source)
    if target == "x0":
        return x0
    if target == "eps":
        return eps
    if target == "v":
        return alpha * eps - sigma * x0
    raise UserError(f"Unknown prediction={target!r}; choose one of {', '.join(PREDICTIONS)}.")


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


def multiscale_weights(sizes: Sequence[int], weighting: str | Sequence[float]) -> list[float]:
    """Per-scale weights (aligned with `sizes`), normalised to sum to 1.

    'inverse_size': 1/s (paper, exact weights unverified); 'uniform': equal; or explicit numbers.
    """
    if isinstance(weighting, str):
        if weighting == "inverse_size":
            raw = [1.0 / s for s in sizes]
        elif weighting == "uniform":
            raw = [1.0] * len(sizes)
        else:
            raise UserError(
                f"Unknown diffusion.multiscale_weighting={weighting!r}; choose one of "
                f"{', '.join(MULTISCALE_WEIGHTINGS)} or give one number per scale."
            )
    else:
        raw = [float(w) for w in weighting]
        if len(raw) != len(sizes):
            raise UserError(
                f"diffusion.multiscale_weighting has {len(raw)} weights but the scales are "
                f"{list(sizes)}; give one weight per scale (smallest first)."
            )
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


def eps_loss_weight(
    t_b: jax.Array,
    logsnr_fn: Callable[[jax.Array], jax.Array],
    weighting: str = "constant",
    sigmoid_bias: float = 0.0,
) -> jax.Array:
    """Per-example weight on the eps-MSE for times `t_b ~ U(0, 1)` of the schedule `logsnr_fn`.

    'constant': 1. 'sigmoid' (SiD2, after Kingma & Gao): a weighting over logSNR `lambda`,
    `w(lambda) = sigmoid(b - lambda)`. With `t` uniform, `lambda` has density `1 / (-dlambda/dt)`,
    so the per-example weight carries the schedule's Jacobian:

        weight(t) = sigmoid(b - lambda(t)) * (-dlambda/dt) / Z,
        Z = softplus(b - lambda(1)) - softplus(b - lambda(0)) = integral of sigmoid(b - lambda)
            over the schedule's range [lambda(1), lambda(0)],

    so that `E_t[weight * f(lambda(t))] = (1/Z) integral sigmoid(b - lambda) f(lambda) dlambda`
    for any f: the weighting no longer depends on how the schedule spends its time, only on its
    range. Z makes the weight average 1 over t, so the loss scale (and gradient clipping at norm
    1) stays comparable with 'constant'. `dlambda/dt` comes from `jax.jvp` of `logsnr_fn`, which
    must act elementwise. Near t = 1 of a clipped cosine schedule `-dlambda/dt` is ~5.7e3, so
    an eps-space weight reaches a few hundred there (finite in float32 on all of [0, 1]).
    """
    t_b = jnp.asarray(t_b, jnp.result_type(float))
    if weighting == "constant":
        return jnp.ones_like(t_b)
    if weighting == "sigmoid":
        logsnr_b, dlogsnr_dt_b = jax.jvp(logsnr_fn, (t_b,), (jnp.ones_like(t_b),))
        logsnr_ends = logsnr_fn(jnp.asarray([1.0, 0.0], t_b.dtype))  # [lambda_min, lambda_max]
        softplus_ends = jax.nn.softplus(sigmoid_bias - logsnr_ends)
        norm = softplus_ends[0] - softplus_ends[1]
        return jax.nn.sigmoid(sigmoid_bias - logsnr_b) * (-dlogsnr_dt_b) / norm
    raise UserError(
        f"Unknown diffusion.loss_weighting={weighting!r}; "
        f"choose one of {', '.join(LOSS_WEIGHTINGS)}."
    )


def diffusion_loss(
    denoise_fn: DenoiseFn,
    x0_bhwc: jax.Array,
    labels_b: jax.Array,
    rng: jax.Array,
    diffusion_cfg: ml_collections.ConfigDict,
    image_size: int,
    prediction: str,
    loss: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training loss for one batch: scalar float32 mean loss and an aux dict.

    Samples `t` (per `diffusion_cfg.time_sampling`) and `eps` from `rng`, then returns
    `diffusion_loss_given_noise(...)` (see there).
    """
    x0_bhwc = jnp.asarray(x0_bhwc, jnp.float32)
    rng_t, rng_eps = jax.random.split(rng)
    t_b = schedules.sample_times(rng_t, x0_bhwc.shape[0], diffusion_cfg.time_sampling)
    eps_bhwc = jax.random.normal(rng_eps, x0_bhwc.shape, jnp.float32)
    return diffusion_loss_given_noise(denoise_fn, x0_bhwc, labels_b, t_b, eps_bhwc,
                                      diffusion_cfg, image_size, prediction, loss)


def diffusion_loss_given_noise(
    denoise_fn: DenoiseFn,
    x0_bhwc: jax.Array,
    labels_b: jax.Array,
    t_b: jax.Array,
    eps_bhwc: jax.Array,
    diffusion_cfg: ml_collections.ConfigDict,
    image_size: int,
    prediction: str,
    loss: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training loss for one batch at given times `t_b` and noise `eps_bhwc` (the train step draws
    them per example, so they do not depend on how the batch is split): mean loss and aux.

    Noises `x0_bhwc`, calls `denoise_fn(z_bhwc, logsnr_b, labels_b)` (returning `prediction`:
    'v' | 'eps' | 'x0'; an x0 output's v-MSE is `|x0 - x0_hat|^2 / sigma^2`, docs/resolution.md),
    converts the output to the space of the loss and applies the (multiscale) MSE and the
    weighting. `loss` ('v_mse' | 'eps_mse') overrides `diffusion_cfg.loss`; the train
    step passes `sd_jax.models.loss_name(...)`, which resolves 'auto' from the architecture.
    'constant' weighting is 1 in the loss's own space; 'sigmoid' is `eps_loss_weight`, times
    `alpha^2` for a v-space loss (module docstring), so both spaces give the same objective.
    aux: `loss_b` (weighted per-example loss), `unweighted_loss_b` (per-example loss before the
    weighting), `unweighted_loss`, `logsnr_b`, `logsnr_mean`, `t_b`.
    """
    loss = diffusion_cfg.loss if loss is None else loss
    if LOSSES.get(loss) is None:
        detail = " ('auto' is resolved by sd_jax.models.loss_name)" if loss == "auto" else ""
        raise UserError(
            f"Unknown diffusion.loss={loss!r}{detail}; choose one of {', '.join(LOSSES)}."
        )
    if prediction not in PREDICTIONS:
        raise UserError(f"Unknown model.prediction={prediction!r}; choose one of "
                        f"{', '.join(PREDICTIONS)}.")
    space = LOSSES[loss]
    x0_bhwc = jnp.asarray(x0_bhwc, jnp.float32)
    logsnr_fn = schedules.get_logsnr_fn(diffusion_cfg, image_size)
    logsnr_b = logsnr_fn(t_b)
    z_bhwc = diffuse(x0_bhwc, eps_bhwc, logsnr_b)

    out_bhwc = denoise_fn(z_bhwc, logsnr_b, labels_b).astype(jnp.float32)
    pred_bhwc = convert_output(z_bhwc, out_bhwc, logsnr_b, prediction, space)
    target_bhwc = eps_bhwc if space == "eps" else v_from_x0_eps(x0_bhwc, eps_bhwc, logsnr_b)

    if diffusion_cfg.multiscale:
        loss_b = multiscale_mse(
            target_bhwc,
            pred_bhwc,
            diffusion_cfg.multiscale_min_size,
            diffusion_cfg.multiscale_weighting,
        )
    else:
        loss_b = mse(target_bhwc, pred_bhwc)
    weight_b = eps_loss_weight(
        t_b, logsnr_fn, diffusion_cfg.loss_weighting, diffusion_cfg.sigmoid_bias
    )
    if space == "v" and diffusion_cfg.loss_weighting != "constant":
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


LOGSNR_BUCKETS = 8  # Bins of the loss-per-logSNR metric.
BUCKET_LOSS, BUCKET_COUNT = "loss_logsnr", "count_logsnr"  # Metric name prefixes.


def logsnr_bucket_edges(
    diffusion_cfg: ml_collections.ConfigDict, image_size: int, num: int = LOGSNR_BUCKETS
) -> np.ndarray:
    """`num + 1` fixed float64 edges splitting the schedule's logSNR range [lambda(1), lambda(0)]
    evenly, so the per-bucket curves of one run are comparable across steps."""
    logsnr_fn = schedules.get_logsnr_fn(diffusion_cfg, image_size)
    with jax.ensure_compile_time_eval():  # Concrete numbers even when called under jit.
        low, high = (float(v) for v in logsnr_fn(jnp.asarray([1.0, 0.0], jnp.float32)))
    return np.linspace(low, high, num + 1)


def logsnr_bucket_sums(
    logsnr_b: jax.Array, values_b: jax.Array, edges: np.ndarray
) -> tuple[jax.Array, jax.Array]:
    """Per-bucket sum of `values_b` and example count: float32 [K] each, K = len(edges) - 1.

    Buckets are [edges[k], edges[k + 1]) (the last one closed); a logSNR outside the edges
    counts in the nearest end bucket. Sums and counts add up over micro-batches and devices;
    `logsnr_bucket_metrics` turns the totals into means.
    """
    inner = jnp.asarray(np.asarray(edges, np.float32)[1:-1])
    index_b = jnp.searchsorted(inner, logsnr_b.astype(jnp.float32), side="right")
    one_hot_bk = jax.nn.one_hot(index_b, len(edges) - 1, dtype=jnp.float32)
    return one_hot_bk.T @ values_b.astype(jnp.float32), jnp.sum(one_hot_bk, axis=0)


def logsnr_bucket_names(edges: np.ndarray) -> list[str]:
    """One name per bucket, its index and range: '3:[-3.8,0.0)'."""
    pairs = zip(edges[:-1], edges[1:], strict=True)
    return [f"{k}:[{lo:.1f},{hi:.1f})" for k, (lo, hi) in enumerate(pairs)]


def logsnr_bucket_metrics(
    sums: jax.Array, counts: jax.Array, edges: np.ndarray
) -> dict[str, jax.Array]:
    """`loss_logsnr/<bucket>`: mean per bucket (0 for an empty one, whose `count_logsnr/<bucket>`
    is 0: the logger reports it as missing), never NaN."""
    means = sums / jnp.maximum(counts, 1.0)
    metrics = {}
    for k, name in enumerate(logsnr_bucket_names(edges)):
        metrics[f"{BUCKET_LOSS}/{name}"] = means[k]
        metrics[f"{BUCKET_COUNT}/{name}"] = counts[k]
    return metrics
