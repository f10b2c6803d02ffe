"""sd-jax: pixel-space simple diffusion (Hoogeboom et al. 2023) and SiD2 in JAX/Flax."""

import os

# gs:// paths through etils.epath's fsspec backend (gcsfs), not TensorFlow's tf.io.gfile: set
# before any epath use (epath reads it once). Override with EPATH_USE_TF=true. See
# sd_jax/io/paths.py.
os.environ.setdefault("EPATH_USE_TF", "false")
# Quiet by default: TensorFlow (imported by the data layer and clu's writers) otherwise prints
# C++ INFO lines at import (oneDNN and CPU-feature notices) that no --verbosity controls. TF does
# no numerics that matter here (decoding, TensorBoard files). Set either variable to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
