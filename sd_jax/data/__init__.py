"""Input pipelines: sources (tfds, image folders, embedded digits) and a deterministic grain
loader.

TensorFlow is imported only by `sd_jax.data.tfds_source`, lazily, and never sees accelerators.
"""

from sd_jax.data import preprocess
from sd_jax.data.loader import Loader, build_loader, build_source, check_divisible
from sd_jax.data.sources import ArraySource, FolderSource, Source, digits_source

__all__ = [
    "ArraySource",
    "FolderSource",
    "Loader",
    "Source",
    "build_loader",
    "build_source",
    "check_divisible",
    "digits_source",
    "preprocess",
]
