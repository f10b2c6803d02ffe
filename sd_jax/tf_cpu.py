"""The one way sd-jax imports TensorFlow: lazily, with every accelerator hidden from it.

TF is used only by the tfds data source and clu's TensorBoard writer. It must never take GPU or
TPU memory that JAX owns, so it is imported through `import_tensorflow()`, which hides the
accelerators before TF initialises its devices.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any


def import_tensorflow() -> Any:
    """Imports TensorFlow with no GPU/TPU visible to it and returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        # RuntimeError: TF already initialised its devices; ValueError: no such device type.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)
    return tf
