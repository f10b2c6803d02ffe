"""Your own images on a laptop CPU: configs/photos.py's recipe (64 px, 2.8M parameters) on a folder.

    python launch.py --config=configs/folder_cpu.py --workdir=/tmp/mine \
        --config.data.folder=/path/to/images
    python launch.py --config=configs/folder_cpu.py --workdir=/tmp/mine --mode=sample \
        --config.data.folder=/path/to/images
    python launch.py --config=configs/folder_cpu.py --workdir=/tmp/mine --mode=eval \
        --config.data.folder=/path/to/images    # SWD, power per octave, saturation vs the folder

Unconditional (any folder). The paper's recipe as configs/photos.py sets it at 64 px: the 5/3
DWT-2 into a 64-wide conv level at 16x16, 128 at 8x8, 2 transformer blocks of width 256 at 4x4,
v output, the cosine schedule (noise_d 64 at 64 px), logSNR clipped at +-15. Every image is
centre-cropped and resized to 64 px by the loader (one worker process). What it gives on a
folder of photo crops and how long it takes: docs/training.md, "Your own images on a CPU".
For a GPU, configs/folder_small.py (128 px, 30M parameters).
"""

import ml_collections

from sd_jax.configs import photos


def get_config() -> ml_collections.ConfigDict:
    """Returns the CPU own-folder config."""
    c = photos.get_config("64")
    c.train.num_steps = 1_000  # Choice: a few minutes on 2 idle CPU cores (docs/training.md).
    c.train.checkpoint_every = 500  # Two checkpoints.
    c.train.sample_every = 1_000  # One 6x6 grid at the end.

    dd = c.data
    dd.source = "folder"  # Your images: --config.data.folder=/path (JPEG/PNG/WebP/BMP, any size, recursive).
    dd.num_workers = 1  # One decoding process: full-size JPEGs cost more than a crop (2 cores in all).
    return c
