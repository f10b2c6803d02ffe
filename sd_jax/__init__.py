"""sd-jax: pixel-space simple diffusion (Hoogeboom et al. 2023) and SiD2 in JAX/Flax."""

import os

# gs:// paths through etils.epath's fsspec backend (gcsfs), not TensorFlow's tf.io.gfile: set
# before any epath use (epath reads it once). Override with EPATH_USE_TF=true. See sd_jax/paths.py.
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
