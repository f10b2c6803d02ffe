"""What differs between `benchmarks/accelerator.py` on a GPU and its `--tiny` CPU form: model
sizes, batches, steps and the time budget. Everything else (the code path) is the same."""

from __future__ import annotations

import dataclasses
from typing import Any

# configs/imagenet{128,256,512}.py at 1/16 of their resolution, each keeping its input transform
# (none, 5/3 DWT level 1, level 2), with a one-block transformer 16 wide: seconds on a CPU.
TINY_MODEL = {"model.base_channels": 8, "model.channel_multipliers": (2, 2),
              "model.num_res_blocks": 1, "model.transformer_depth": 1, "model.num_heads": 2,
              "model.emb_dim": 16}
TINY_SIZES = {"imagenet128": 8, "imagenet256": 16, "imagenet512": 32}

# The 512 recipe (5/3 DWT level 2 to 128 x 128 x 48, conv levels at 128 / 64 / 32, transformer
# at 16 x 16, multiscale loss, shifted schedule) at 5.9M params (14.5 GFLOP forward per image),
# on the embedded digits resized to 512 px.
SHRUNK_512 = {"model.base_channels": 32, "model.channel_multipliers": (1, 2, 4, 8),
              "model.num_res_blocks": 1, "model.transformer_depth": 4, "model.num_heads": 4,
              "model.emb_dim": 256}
DIGITS_RUN = {"model.num_classes": 10, "data.source": "digits", "data.random_flip": False,
              "data.num_workers": 0, "train.log_every": 1, "train.sample_every": 0,
              "train.tensorboard": False, "train.keep_checkpoints": 1,
              "optimizer.learning_rate": 2e-4, "optimizer.warmup_steps": 20}


@dataclasses.dataclass(frozen=True)
class Scale:
    """One size of the whole run."""

    budget_s: float  # Default wall-clock budget.
    cpu_memory_gb: float  # Memory to plan for when the device reports none (a CPU).
    max_batch: int  # Largest per-device batch tried (powers of two up to it).
    min_batch: int  # Remat is used only when no remat fits fewer images per device than this.
    steps: int  # Timed train steps per point.
    warmup: int
    sample_timed_steps: int
    precision_steps: int
    precision_batch: int
    tiny: bool
    quickstart_overrides: dict[str, Any]

    def batches(self) -> list[int]:
        """Per-device batches tried: 1, 2, 4, ... up to max_batch."""
        return [2**i for i in range(self.max_batch.bit_length()) if 2**i <= self.max_batch]

    def train_overrides(self, name: str) -> dict[str, Any]:
        """Overrides of configs/<name>.py for its train step (none on a GPU)."""
        if not self.tiny:
            return {}
        return {**TINY_MODEL, "model.image_size": TINY_SIZES[name], "sample.batch_size": 2}

    def precision_overrides(self) -> dict[str, Any]:
        """configs/imagenet512.py shrunk, trained `precision_steps` steps on the digits."""
        model = ({**TINY_MODEL, "model.image_size": TINY_SIZES["imagenet512"]} if self.tiny
                 else SHRUNK_512)
        return {**model, **DIGITS_RUN, "train.num_steps": self.precision_steps,
                "train.batch_size": self.precision_batch,
                "train.checkpoint_every": self.precision_steps,
                "sample.batch_size": self.precision_batch}

    def precision_window(self) -> int:
        """Steps per window of the loss curves' means (10 windows)."""
        return max(1, self.precision_steps // 10)


GPU = Scale(budget_s=450, cpu_memory_gb=8.0, max_batch=256, min_batch=8, steps=20, warmup=3,
            sample_timed_steps=4, precision_steps=200, precision_batch=32,
            tiny=False, quickstart_overrides={})

TINY = Scale(budget_s=300, cpu_memory_gb=1.0, max_batch=4, min_batch=1, steps=2, warmup=1,
             sample_timed_steps=2, precision_steps=4, precision_batch=4,
             tiny=True, quickstart_overrides={
                 **TINY_MODEL, "model.image_size": 8,
                 "train.num_steps": 3, "train.batch_size": 8, "train.log_every": 1,
                 "train.checkpoint_every": 3, "train.sample_every": 0,
                 "optimizer.warmup_steps": 2,
                 "sample.num_samples": 10, "sample.num_steps": 4, "sample.batch_size": 10})
