"""Shared base config: every config file imports this and overrides what differs.

The defaults are the simple diffusion paper's ImageNet 512 U-ViT (docs/recipe.md sections 5-7).
A comment that says "paper" gives the paper's value; "appendix, unverified" marks the 512
U-ViT's architecture numbers, which come from a review of the paper's appendix and could not be
checked against it (docs/recipe.md section 9); "choice" marks values the paper does not give.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Returns the base ConfigDict (ImageNet 512 U-ViT defaults)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # Global seed: params init, per-step noise (fold_in(key, step)), data order.

    # ---------------------------------------------------------------- model (issue 3)
    c.model = ml_collections.ConfigDict()
    m = c.model
    m.arch = "uvit"  # sd_jax.models.registry.ARCHITECTURES: 'uvit' | 'residual_uvit' (SiD2) | 'unet' (paper's baseline).
    m.image_size = 512  # Resolution of the images the model sees.
    m.image_channels = 3  # RGB.
    m.input_transform = "dwt53_2"  # 'none' | 'dwt53_1' | 'dwt53_2' (LeGall 5/3) | 'dwt1' | 'dwt2' (Haar) | 'patch' | 'conv' (learned); paper: 5/3 DWT level 2 at 512 (FID 4.85, best of its ablation).
    m.patch_size = 4  # p of 'patch' (space-to-depth) and 'conv' (p x p stride-p conv; paper's "conv 4x4": 4).
    m.colour_transform = "none"  # 'none' | 'opponent': orthonormal grey + 2 colour differences before the input transform (docs/resolution.md); paper: none.
    m.base_channels = 128  # First conv level's width (appendix, unverified: 128).
    m.channel_multipliers = (1, 2, 4, 16)  # 128/256/512 on the conv levels, 2048 at the transformer (appendix, unverified).
    m.num_res_blocks = 2  # ResNet blocks per conv level on the way down (appendix, unverified: 2).
    m.transformer_depth = 36  # Transformer blocks at 16x16 (appendix, unverified: 36 for the 512 U-ViT).
    m.num_heads = 4  # Attention heads in the transformer stack (appendix, unverified: 4).
    m.mlp_ratio = 4  # Transformer MLP hidden width / model width (choice: the standard ViT value).
    m.emb_dim = 1024  # Conditioning embedding width, logSNR + class (appendix, unverified: 1024).
    m.dropout = 0.2  # Dropout rate (appendix, unverified: 0.2 for the 512 U-ViT).
    m.dropout_max_resolution = 16  # Dropout only at this resolution and below (paper: 16x16 and below in the U-ViT).
    m.attention_resolutions = (16, 8)  # U-Net only: self-attention at these resolutions (choice, ADM-style).
    m.num_classes = 1000  # Class labels 0..num_classes-1; label num_classes is the null label.
    m.prediction = "v"  # 'v' | 'eps': what the network outputs (paper: v, for the U-ViT and the U-Net).
    m.dtype = "bfloat16"  # Compute dtype; params stay float32. Use float32 on CPU.
    m.remat = "none"  # 'none' | 'transformer' | 'all': jax.checkpoint on blocks to save memory.
    m.attention_impl = "xla"  # jax.nn.dot_product_attention backend: 'xla' (any head dim) | 'cudnn'.

    # ------------------------------------------------------------ diffusion (issue 2)
    c.diffusion = ml_collections.ConfigDict()
    d = c.diffusion
    d.schedule = "shifted_cosine"  # 'cosine' | 'shifted_cosine' | 'interpolated_cosine'.
    d.noise_d = 64  # Base resolution of the shifted schedule (paper text: 64).
    d.noise_d_low = 32  # Interpolated schedule: the strong shift, reached at the noisy end t = 1 (paper's listing at 512: 32).
    d.noise_d_high = 256  # Interpolated schedule: the mild shift, at the clean end t = 0 (paper's listing at 512: 256).
    d.logsnr_min = -15.0  # Clip of the cosine schedule (paper: -15).
    d.logsnr_max = 15.0  # Clip of the cosine schedule (paper: 15).
    d.time_sampling = "uniform"  # 'uniform' | 'stratified' (low-discrepancy) t per batch.
    d.loss = "auto"  # 'auto': the architecture's default_loss (registry: v_mse for the U-ViTs, eps_mse from the v output for the U-Net, as in the paper) | 'v_mse' | 'eps_mse'.
    d.multiscale = True  # Multiscale loss (paper: helped at 512 and 1024, slightly hurt at 256).
    d.multiscale_min_size = 32  # Smallest pooled size of the multiscale loss (paper: 32).
    d.multiscale_weighting = "inverse_size"  # Paper: 1/s per scale; normalising the weights to sum 1 is our choice.
    d.loss_weighting = "constant"  # 'constant' (paper) | 'sigmoid' (SiD2: sigmoid(b - logSNR) over logSNR, with the Jacobian; docs/recipe.md 4).
    d.sigmoid_bias = -3.0  # SiD2 sigmoid bias b at 512 (SiD2, unverified).

    # ------------------------------------------------------------- training (issue 4)
    c.train = ml_collections.ConfigDict()
    t = c.train
    t.num_steps = 500_000  # Paper: 500k steps.
    t.batch_size = 2048  # Global batch over all processes and devices (paper: 2048).
    t.microbatch_size = 0  # Global micro-batch for gradient accumulation (0 or batch_size: none); divides batch_size, divisible by the device count.
    t.log_every = 100  # Steps between metric logs.
    t.checkpoint_every = 5_000  # Steps between (async) checkpoints.
    t.keep_checkpoints = 3  # Checkpoints kept in the workdir.
    t.sample_every = 10_000  # Steps between EMA sample grids in <workdir>/samples (0: never).
    t.sample_grid_size = 16  # Images per periodic sample grid.
    t.label_dropout = 0.1  # Probability of the null label during training, for guidance (choice).
    t.ema_decay = 0.9999  # EMA of params (paper: 0.9999).
    t.tensorboard = True  # TensorBoard event files in <workdir>/tensorboard (process 0).
    t.profile_start_step = 0  # Profiler trace (clu Profile) into <workdir>/profile after this step; 0: off.
    t.profile_num_steps = 5  # Steps the profiler trace covers (clu's default: 5).
    t.stop_check_every = 10  # Multi-host: steps between agreeing on a SIGTERM/SIGINT stop (one sync).

    c.optimizer = ml_collections.ConfigDict()
    o = c.optimizer
    o.learning_rate = 1e-4  # Adam learning rate (paper: 1e-4).
    o.warmup_steps = 10_000  # Linear warm-up (paper: 10k steps).
    o.b1 = 0.9  # Adam beta1 (paper: 0.9).
    o.b2 = 0.99  # Adam beta2 (paper: 0.99).
    o.eps = 1e-12  # Adam epsilon (paper: 1e-12).
    o.weight_decay = 0.0  # Paper: none.
    o.grad_clip = 1.0  # Global-norm gradient clipping (paper: 1).

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Data-parallel axis size (-1: all devices left over).
    c.mesh.fsdp = 1  # Parameter/optimizer sharding axis size (1: replicated params).
    # Logical axis -> mesh axes, first match wins per array (flax rules); unlisted names and dims
    # that do not divide by the mesh axis size are replicated. The batch spans both mesh axes.
    c.mesh.logical_axis_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),  # Transformer weights: shard the model-width dim.
        ("conv_out", "fsdp"),  # Conv kernels: shard output channels ...
        ("conv_in", "fsdp"),  # ... or input channels when the output does not divide.
        ("mlp", "fsdp"),
        ("cond", "fsdp"),
        ("classes", "fsdp"),
    )

    # ------------------------------------------- memory plan (--mode=plan, issue 12)
    c.plan = ml_collections.ConfigDict()
    c.plan.devices = 0  # Devices to plan for (0: the devices this process sees).
    c.plan.device_memory_gb = 0.0  # Memory one device may use, GiB (0: what the device reports; CPU reports none).
    c.plan.show = 8  # Fitting layouts listed, best first.

    # ------------------------------------------------------------- sampling (issue 6)
    c.sample = ml_collections.ConfigDict()
    s = c.sample
    s.num_samples = 50_000  # FID-50k.
    s.num_steps = 512  # Sampler steps (choice; the step count behind the paper's FIDs is not checked here).
    s.sampler = "ddpm"  # sd_jax.diffusion.samplers.SAMPLERS: 'ddpm' (ancestral; paper) | 'ddim' | 'dpmpp_2m' | 'dpmpp_2m_sde' | 'heun' (2 network evaluations per step) (docs/sampling.md).
    s.grid = "uniform_t"  # Where the steps fall: 'uniform_t' (t = i / num_steps of the schedule; paper) | 'uniform_logsnr' | 'edm' (Karras rho = 7).
    s.noise_param = 0.2  # DDPM log-variance interpolation (paper: 0.2).
    s.guidance_scale = 1.0  # Reported scale 1 + w; 1.0 means no guidance.
    s.guidance_logsnr_min = -1e9  # Guidance only where logSNR >= this (SiD2 interval); -1e9: everywhere.
    s.guidance_logsnr_max = 1e9  # Guidance only where logSNR <= this (SiD2 interval); 1e9: everywhere.
    s.batch_size = 64  # Global sampling batch.
    s.use_ema = True  # Sample from EMA params (False: raw params).
    s.labels = config_dict.placeholder(str)  # Comma-separated class ids; None: uniform.

    # ----------------------------------------------------------------- data (issue 5)
    c.data = ml_collections.ConfigDict()
    dd = c.data
    dd.source = "tfds"  # 'tfds' | 'folder' | 'digits' | 'photos' (both embedded, no download).
    dd.name = "imagenet2012"  # tfds dataset name.
    dd.split = "train"  # tfds split to train on (paper: ImageNet train); 'photos': 'train' | 'test' (held-out photos).
    dd.data_dir = config_dict.placeholder(str)  # tfds data_dir (None: tfds default).
    dd.manual_dir = config_dict.placeholder(str)  # tfds manual download dir (ImageNet tars).
    dd.folder = config_dict.placeholder(str)  # Image folder for source == 'folder'.
    dd.random_flip = True  # Random horizontal flip (choice, standard for ImageNet).
    dd.num_workers = 8  # grain worker processes per training process, decoding and resizing (0: in the training process).

    # ----------------------------------------------------------- evaluation (issue 6)
    c.eval = ml_collections.ConfigDict()
    e = c.eval
    e.inception_weights = config_dict.placeholder(str)  # .npz (experiments/convert_inception_*).
    e.inception_preprocess = "tf1"  # 'tf1': resize + scaling of the TF graph behind the ADM
    # reference stats (legacy bilinear, (x-128)/128); 'pytorch_fid': pytorch-fid's (half-pixel).
    e.reference_npz = config_dict.placeholder(str)  # ADM reference batch (.npz: mu/sigma or arr_0).
    e.samples_npz = config_dict.placeholder(str)  # Samples to evaluate (None: newest in workdir).
    e.digits_classifier = config_dict.placeholder(str)  # FD-digits net .npz (None: ~/.cache/sd_jax/, trained on first use).
    e.batch_size = 200  # Inception batch size (rounded up to a multiple of the local devices).
    e.is_splits = 10  # Inception Score splits (improved-GAN / ADM: 10 for 50k).
    e.sfid = True  # Also sFID (ADM: mixed_6/conv features); needs mu_s/sigma_s in the reference.
    e.fid_method = "sqrtm"  # 'sqrtm' (pytorch-fid / ADM recipe) | 'eigh' (same trace, ~10x faster).
    e.from_shards = False  # --mode=eval: FID of a sampling job's shards as they complete (docs/sampling.md).
    e.poll_secs = 0.0  # With from_shards: seconds between looks for new shards (0: score those present once).
    e.fid_every = 0  # Steps between small FIDs during training (0: never).
    e.fid_num_samples = 5_000  # Samples for the periodic FID (FID-5k: biased up vs FID-50k).
    return c
