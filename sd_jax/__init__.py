"""sd-jax: pixel-space simple diffusion (Hoogeboom et al. 2023) and SiD2 in JAX/Flax."""

__version__ = "0.1.0"
