"""sd-jax: pixel-space simple diffusion (Hoogeboom et al. 2023) and SiD2 in JAX/Flax."""

import importlib.util
import os
import sys

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


def _checkout_configs() -> None:
    """Makes `sd_jax.configs` the checkout's top-level configs/ folder.

    `pip install` puts the config files in sd_jax/configs (pyproject.toml maps configs/ there,
    so no top-level package named `configs` is installed); in a checkout, or an editable
    install, they stay in <repo>/configs, and this makes `from sd_jax.configs import base`
    (what every config file does) work there as well.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    folder = os.path.join(os.path.dirname(here), "configs")
    init = os.path.join(folder, "__init__.py")
    if os.path.isdir(os.path.join(here, "configs")) or not os.path.isfile(init):
        return  # Installed (or no configs at all).
    spec = importlib.util.spec_from_file_location(
        f"{__name__}.configs", init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["configs"] = module


_checkout_configs()
