"""Your own images: a 30M-parameter U-ViT at 128x128 for one GPU, trained on a folder.

    python launch.py --config=configs/folder_small.py --workdir=/ckpt/mine \
        --config.data.folder=/data/my_images

Unconditional by default (any folder works); with one subfolder per class, add
`--config.model.num_classes=<number of subfolders>` for class-conditional training and guidance.
The recipe is the paper's at 128 (shifted cosine with noise_d 32, v-prediction, no multiscale
loss) on a model scaled down 60x: the 5/3 wavelet takes 128x128x3 to 64x64x12, two conv levels
(64 and 128 channels at 64 and 32) and 8 transformer blocks of width 512 at 16x16 (256 tokens).
Parameters, FLOPs, memory and the throughput they imply: docs/training.md, "Train on your own images".

Memory (plan mode, `--config=folder_small --mode=plan --config.plan.devices=1
--config.plan.device_memory_gb=80`, 2026-12-06): 26.64 GiB on one GPU at batch 128 without remat
(activations 26.01, params 0.11, EMA 0.11, Adam 0.22, gradients 0.11, batch 0.02, bf16 weights
0.06): plan mode says it fits one 40 or 80 GB GPU as it is. On a 24 GB GPU its best layout is
`--config.model.remat=transformer` (16.42 GiB); `remat=all` needs 4.63 GiB.
It is a GPU recipe: on a CPU, training refuses to start when plan mode says it will not fit in
the machine's memory (26.6 GiB > 23.5 GiB on the 2-core VM this was written on), naming
configs/folder_cpu.py, the own-images recipe sized for a CPU.
"""

import ml_collections

from sd_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    """Returns the small own-folder config."""
    c = base.get_config()

    m = c.model
    m.image_size = 128  # Big enough to be useful, small enough for one GPU.
    m.input_transform = "dwt53_1"  # LeGall 5/3 level 1: 64x64x12 into the stem, 4x cheaper first level (paper's transform at 256).
    m.base_channels = 64  # Conv width at 64x64 (base: 128).
    m.channel_multipliers = (1, 2, 8)  # Conv 64 @64, 128 @32; transformer width 512 @16 (base: 2048).
    m.transformer_depth = 8  # Transformer blocks at 16x16 (base: 36): 25.2M of the 30.1M params.
    m.num_heads = 8  # Head dim 64: any attention backend, cudnn included.
    m.emb_dim = 512  # Conditioning embedding width (base: 1024).
    m.dropout = 0.1  # Choice: small datasets overfit; the paper's 0.2 was for a 2B model on ImageNet.
    m.dropout_max_resolution = 16  # Dropout at 16x16 and below, as the paper's U-ViT.
    m.num_classes = 0  # Unconditional: works for any folder; set to the number of class subfolders to condition.

    d = c.diffusion
    d.noise_d = 32  # Paper's schedule ablation at 128: shift 32 (FID 2.26) beats 64 (2.41) and cosine (2.96).
    d.multiscale = False  # Paper: multiscale loss only at 512 and 1024.
    d.sigmoid_bias = 0.0  # SiD2 sigmoid bias at 128 (SiD2, unverified; used if loss_weighting='sigmoid').

    t = c.train
    t.num_steps = 200_000  # Choice: 25.6M images at batch 128, e.g. 256 epochs of 100k images.
    t.batch_size = 128  # One GPU (paper: 2048 over 128 TPU v4).
    t.log_every = 100  # Steps between metric logs.
    t.checkpoint_every = 5_000  # Steps between (async) checkpoints.
    t.sample_every = 5_000  # An EMA sample grid every 5k steps (about 1 min of sampling).
    t.ema_decay = 0.9999  # Paper: 0.9999 (averages the last ~10k steps).

    o = c.optimizer
    o.warmup_steps = 5_000  # Choice: half the paper's 10k for a 2.5x shorter run.

    s = c.sample
    s.num_samples = 1_000  # --mode=sample: a quick look; set 50_000 for FID-50k.
    s.num_steps = 256  # Sampler steps (base: 512).

    dd = c.data
    dd.source = "folder"  # Your images: --config.data.folder=/path (JPEG/PNG/WebP/BMP, any size, recursive).
    dd.num_workers = 8  # grain worker processes (~325 ImageNet-size JPEGs per core-second each at 128): raise to the free cores.
    return c
