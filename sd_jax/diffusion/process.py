"""The forward process and the network's parametrisations (docs/recipe.md section 3).

Pure functions of arrays. Per-example quantities (`logsnr_b`) broadcast against images `x_bhwc`
over the trailing axes. With `z = alpha x0 + sigma eps` and `alpha^2 + sigma^2 = 1`:

    v   = alpha eps - sigma x0
    x0  = alpha z - sigma v          = (z - sigma eps) / alpha
    eps = sigma z + alpha v          = (z - alpha x0) / sigma

`PREDICTIONS` maps what a network outputs ('v', 'eps', 'x0') to the function that turns the
output into `(x0_hat, eps_hat)`; the loss and every sampler go through it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from sd_jax.diffusion import schedules

# The denoiser contract of the loss and the samplers: (z_bhwc, logsnr_b, labels_b) -> output.
DenoiseFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def per_example(a_b: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example array to broadcast against `x` (batch axis first)."""
    a_b = jnp.asarray(a_b)
    return a_b.reshape(a_b.shape + (1,) * (x.ndim - a_b.ndim))


def alpha_sigma_like(logsnr_b: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`schedules.alpha_sigma(logsnr_b)`, shaped to broadcast against `x`."""
    alpha, sigma = schedules.alpha_sigma(logsnr_b)
    return per_example(alpha, x), per_example(sigma, x)


def diffuse(x0_bhwc: jax.Array, eps_bhwc: jax.Array, logsnr_b: jax.Array) -> jax.Array:
    """Forward noising `z = alpha x0 + sigma eps`."""
    alpha, sigma = alpha_sigma_like(logsnr_b, x0_bhwc)
    return alpha * x0_bhwc + sigma * eps_bhwc


def _from_v(z, out, alpha, sigma):
    return alpha * z - sigma * out, sigma * z + alpha * out


def _from_eps(z, out, alpha, sigma):
    return (z - sigma * out) / alpha, out


def _from_x0(z, out, alpha, sigma):
    return out, (z - alpha * out) / sigma


# Network output kind -> (z, output, alpha, sigma) -> (x0_hat, eps_hat).
PREDICTIONS: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "v": _from_v,
    "eps": _from_eps,
    "x0": _from_x0,
}
# Target space -> (x0, eps, alpha, sigma) -> that quantity.
_TARGETS: dict[str, Callable[..., jax.Array]] = {
    "x0": lambda x0, eps, alpha, sigma: x0,
    "eps": lambda x0, eps, alpha, sigma: eps,
    "v": lambda x0, eps, alpha, sigma: alpha * eps - sigma * x0,
}


def from_x0_eps(x0_bhwc: jax.Array, eps_bhwc: jax.Array, logsnr_b: jax.Array, target: str
                ) -> jax.Array:
    """The quantity `target` (v | eps | x0) of clean data `x0_bhwc` noised by `eps_bhwc`."""
    alpha, sigma = alpha_sigma_like(logsnr_b, x0_bhwc)
    return _TARGETS[target](x0_bhwc, eps_bhwc, alpha, sigma)


def v_from_x0_eps(x0_bhwc: jax.Array, eps_bhwc: jax.Array, logsnr_b: jax.Array) -> jax.Array:
    """The v-prediction target `v = alpha eps - sigma x0`."""
    return from_x0_eps(x0_bhwc, eps_bhwc, logsnr_b, "v")


def x0_eps_from_output(
    z_bhwc: jax.Array, out_bhwc: jax.Array, logsnr_b: jax.Array, prediction: str
) -> tuple[jax.Array, jax.Array]:
    """Converts a network output (`prediction`, a key of PREDICTIONS) to `(x0_hat, eps_hat)`."""
    alpha, sigma = alpha_sigma_like(logsnr_b, z_bhwc)
    return PREDICTIONS[prediction](z_bhwc, out_bhwc, alpha, sigma)


def convert_output(
    z_bhwc: jax.Array, out_bhwc: jax.Array, logsnr_b: jax.Array, source: str, target: str
) -> jax.Array:
    """Converts a network output from parametrisation `source` to `target` (v | eps | x0)."""
    if source == target:
        return out_bhwc
    alpha, sigma = alpha_sigma_like(logsnr_b, z_bhwc)
    if (source, target) == ("eps", "v"):  # Direct form, avoids the 1/alpha round trip via x0.
        return (out_bhwc - sigma * z_bhwc) / alpha
    x0, eps = PREDICTIONS[source](z_bhwc, out_bhwc, alpha, sigma)
    return _TARGETS[target](x0, eps, alpha, sigma)
