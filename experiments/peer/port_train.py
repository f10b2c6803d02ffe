"""The PyTorch side of the head-to-head (experiments/peer/README.md): trains the U-ViT of
`denoising-diffusion-pytorch`'s `simple_diffusion` module on the batches peer.py dumped, for a
wall-clock budget, then samples its EMA weights. Runs in the separate torch environment:

    /tmp/peer_venv/bin/python experiments/peer/port_train.py --batches=B.npy --out=DIR \
        --seconds=300

Needs torch, einops, tqdm and numpy only: the module file is loaded by path, because the
package's `__init__` imports torchvision and accelerate, which this comparison does not use.
Writes DIR/result.json (params, FLOPs, steps, seconds, images/s) and DIR/samples.npy (uint8).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

# The port's U-ViT sized to sd-jax's configs/photos.py (64 px): 4x4 patches -> 16x16 (32 ch),
# 8x8 (64 ch), 2 transformer blocks of width 256 (4 heads of 64) at 4x4; 2.99M parameters and
# 0.21 GFLOP per image against sd-jax's 2.83M and 0.20 (peer.py checks both within 20%).
PORT_MODEL = {"dim": 32, "init_dim": 32, "dim_mults": (2, 8), "vit_depth": 2, "patch_size": 4,
              "vit_dropout": 0.0, "attn_heads": 4, "attn_dim_head": 64}


def load_port():
    """The `simple_diffusion` module of the installed `denoising_diffusion_pytorch`."""
    spec = importlib.util.find_spec("denoising_diffusion_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("denoising-diffusion-pytorch is not installed in this environment "
                         "(experiments/peer/README.md)")
    path = Path(list(spec.submodule_search_locations)[0]) / "simple_diffusion.py"
    module_spec = importlib.util.spec_from_file_location("simple_diffusion", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def forward_flops(net: torch.nn.Module, size: int) -> int:
    """FLOPs of one forward pass at batch 1 (torch's counter: 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, size, size), torch.zeros(1))
    return int(counter.get_total_flops())


def train(args: argparse.Namespace) -> dict:
    """Trains for `args.seconds` after the first step; returns the measurements."""
    torch.manual_seed(args.seed)
    port = load_port()
    # uint8 [steps, B, S, S, 3], flips applied.
    batches = np.load(args.batches, mmap_mode="r", allow_pickle=False)
    size = batches.shape[2]
    net = port.UViT(**PORT_MODEL)
    diffusion = port.GaussianDiffusion(
        net, image_size=size, pred_objective="v", noise_d=args.noise_d,
        num_sample_steps=args.sample_steps, min_snr_loss_weight=False)  # Plain v-MSE (paper).
    params = sum(p.numel() for p in net.parameters())
    flops = forward_flops(net, size)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99), eps=1e-12)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup))
    start, first_s, steps, losses = None, 0.0, 0, []
    t0 = time.time()
    while steps < len(batches):
        x = torch.from_numpy(np.array(batches[steps])).permute(0, 3, 1, 2).float() / 127.5 - 1
        loss = diffusion.p_losses(x, torch.rand(len(x)))  # t ~ U(0, 1), as sd-jax's 'uniform'.
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        warmup.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), net.parameters(), strict=True):
                e.lerp_(p, 1.0 - args.ema_decay)
        steps += 1
        losses.append(loss.item())
        if start is None:  # The budget starts after the first step, as sd-jax's (compile).
            start, first_s = time.time(), time.time() - t0
        elif time.time() - start >= args.seconds:
            break
    train_s = time.time() - start
    diffusion.model = ema.eval()
    t1 = time.time()
    with torch.no_grad():
        samples = diffusion.sample(batch_size=args.num_samples)  # [0, 1], NCHW.
    sample_s = time.time() - t1
    images = (samples.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    np.save(Path(args.out) / "samples.npy", images)
    return {"name": "denoising-diffusion-pytorch UViT", "params": params, "flops": flops,
            "steps": steps, "first_step_s": first_s, "train_s": train_s,
            "images_per_s": (steps - 1) * len(batches[0]) / train_s, "sample_s": sample_s,
            "final_loss": float(np.mean(losses[-20:])), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise_d", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema_decay", type=float, default=0.995)
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--sample_steps", type=int, default=32)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    result = train(args)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
