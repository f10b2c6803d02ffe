"""Samples from any saved checkpoint of a run (not only the newest), for studies over steps."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from sd_jax.checkpoints import checkpointer as checkpointing
from sd_jax.models import build_model
from sd_jax.sample import mode as sample_mode


def checkpoint_steps(workdir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in a workdir, ascending."""
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        return sorted(int(s) for s in ckpt.manager.all_steps())
    finally:
        ckpt.close()


def restore_at(workdir: str | Path, config: ml_collections.ConfigDict, step: int | None = None
               ) -> tuple[Any, Any, Any, int]:
    """(model, params, mesh, step) of checkpoint `step` (newest if None); params per
    `config.sample.use_ema`."""
    workdir = Path(workdir)
    model = build_model(config.model)
    if step is None:
        return model, *sample_mode.load_for_sampling(config, workdir)
    # load_for_sampling reads the newest step: give it a view that holds only `step`.
    view = Path(tempfile.mkdtemp(prefix="ckpt_view_"))
    try:
        (view / checkpointing.CHECKPOINT_DIR).mkdir()
        target = checkpointing.checkpoint_dir(workdir) / str(step)
        (view / checkpointing.CHECKPOINT_DIR / str(step)).symlink_to(target)
        return model, *sample_mode.load_for_sampling(config, view)
    finally:
        shutil.rmtree(view)


def draw(params: Any, config: ml_collections.ConfigDict, mesh: Any, labels: np.ndarray
         ) -> np.ndarray:
    """uint8 samples for `labels` with the sample-mode path (config.sample settings, seed)."""
    batches = sample_mode.iter_samples(params, config, mesh, np.asarray(labels, np.int32))
    return np.concatenate(list(batches))
