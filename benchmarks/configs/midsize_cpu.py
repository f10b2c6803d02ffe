"""A mid-size U-ViT for CPU measurements of FSDP on 8 fake devices (docs/performance.md).

About 29M parameters in bfloat16 compute, sharded 8 ways: big enough that the weight all-gathers
are a real part of a step, small enough that a step takes seconds on a 2-core CPU:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/benchmark.py \\
        --config=benchmarks/configs/midsize_cpu.py --per_device_batch=2 --steps=5
"""

import ml_collections

from sd_jax.configs import imagenet64


def get_config() -> ml_collections.ConfigDict:
    """imagenet64 shrunk: 64@32, 128@16 conv levels, 8 transformer blocks of width 512 at 8x8."""
    c = imagenet64.get_config()
    m = c.model
    m.image_size = 32  # 32x32 RGB, no input transform.
    m.base_channels = 64  # Conv 64 @32x32, 128 @16x16 ...
    m.channel_multipliers = (1, 2, 8)  # ... and a transformer of width 512 at 8x8 (64 tokens).
    m.transformer_depth = 8
    m.num_heads = 8  # Head dim 64.
    m.emb_dim = 256
    m.dtype = "bfloat16"  # The accelerator setting whose gathers the bf16 weight cast halves.
    c.mesh.data, c.mesh.fsdp = 1, 8  # Every weight split over the 8 devices.
    c.train.batch_size = 16  # Overridden by the benchmark's --per_device_batch.
    c.sample.num_steps = 64
    return c
