"""Converts pytorch-fid's FID Inception weights to sd-jax's .npz format (sd_jax/eval/inception.py).

    python -m sd_jax.eval.convert_inception \
        --pth=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

`--pth` is pytorch-fid's torch state dict (needs torch, imported only here), or an .npz holding
the same arrays under the same key names (no torch needed; what the tests use). Those weights
are the TF "2015-12-05" graph's, ported by pytorch-fid. The script checks every tensor lands in
the model's variable tree with the right shape and writes the file `eval.inception_weights` reads.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from absl import app, flags
from flax import traverse_util

from sd_jax.errors import UserError
from sd_jax.eval import inception
from sd_jax.io import npz

# torch suffix -> (flax collection, flax leaf name)
_LEAVES = {
    "conv.weight": ("params", "conv/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
    "fc.weight": ("params", "fc/kernel"),
    "fc.bias": ("params", "fc/bias"),
}


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """pytorch-fid state dict (numpy arrays) -> flat {'params/...': array} in our layout."""
    flat = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or key.startswith("AuxLogits."):
            continue
        parts = key.split(".")
        suffix = ".".join(parts[-2:])
        if suffix not in _LEAVES:
            raise ValueError(f"unexpected tensor {key} in the state dict")
        collection, leaf = _LEAVES[suffix]
        value = np.asarray(value, np.float32)
        if leaf == "conv/kernel":
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif leaf == "fc/kernel":
            value = value.T  # [out, in] -> [in, out]
        flat["/".join([collection, *parts[:-2], leaf])] = value
    return flat


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a torch .pth (lazy torch import) or an .npz with torch key names."""
    if path.endswith(".npz"):
        return npz.load(path, "state dict")  # Pickled objects are refused.
    try:
        import torch
    except ImportError as e:
        raise SystemExit("reading a .pth needs torch: `pip install torch` (CPU build is enough), "
                         "or save the state dict as .npz elsewhere") from e
    # weights_only: tensors only; a .pth from the internet must not run code when unpickled.
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert_file(pth: str, out: str) -> Path:
    """Converts, validates against the model (shapes, no missing keys) and writes `out`."""
    flat = convert_state_dict(load_state_dict(pth))
    tmp = Path(out).with_suffix(".tmp.npz")
    inception.save_weights(traverse_util.unflatten_dict(flat, sep="/"), tmp)
    try:
        inception.load_weights(tmp)  # Raises UserError naming missing / mis-shaped tensors.
    except Exception:
        tmp.unlink()
        raise
    return tmp.replace(out)


def main(argv: list[str]) -> None:
    del argv
    try:
        out = convert_file(FLAGS.pth, FLAGS.out)
    except (UserError, ValueError, OSError, pickle.UnpicklingError) as e:  # Bad input: one line.
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {out}")


if __name__ == "__main__":
    flags.DEFINE_string("pth", None, "pytorch-fid pt_inception-2015-12-05-*.pth (or .npz).")
    flags.DEFINE_string("out", None, "Output .npz for config.eval.inception_weights.")
    flags.mark_flags_as_required(["pth", "out"])
    FLAGS = flags.FLAGS
    app.run(main)
