"""Inception-v3 exactly as used for FID (the TF "2015-12-05" graph, as ported by pytorch-fid).

Differences from torchvision's Inception-v3 (all from pytorch-fid's `FIDInception*` blocks):
1008 output classes; the pool branch of Mixed_5b-d, Mixed_6b-e and Mixed_7b averages with
`count_include_pad=False`; Mixed_7c's pool branch is a 3x3 max pool. BatchNorm eps is 1e-3.

Outputs per image: `pool` (pool3, 2048-d, for FID), `logits` (`pool @ fc.kernel`, 1008-d, no bias,
as improved-GAN / the ADM evaluator compute the Inception Score) and `spatial` (Mixed_6d's 1x1
branch, first 7 channels, 17*17*7 = 2023-d, for sFID: the ADM evaluator's `mixed_6/conv`).

Weights format: an `.npz` whose keys are the flattened variable tree joined by "/", e.g.
`params/Conv2d_1a_3x3/conv/kernel` (HWIO), `params/.../bn/scale`, `batch_stats/.../bn/mean`,
`params/fc/kernel` ([2048, 1008]). Module names follow pytorch-fid's state dict, so
`sd_jax/eval/convert_inception.py` maps `pt_inception-2015-12-05-6726825d.pth` onto it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from sd_jax.errors import UserError
from sd_jax.io import npz
from sd_jax.io.paths import as_path

HIGHEST = jax.lax.Precision.HIGHEST  # FID must not depend on TF32 / bf16 matmul defaults.
INPUT_SIZE = 299
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7  # ADM evaluator: mixed_6/conv[..., :7].
PREPROCESS_MODES = ("tf1", "pytorch_fid")  # config.eval.inception_preprocess (see `preprocess`).
# Feature sizes of the statistics in a reference .npz: mu/sigma from pool3, mu_s/sigma_s from
# mixed_6/conv (17 x 17 grid at 299 px, SPATIAL_CHANNELS channels).
FEATURE_DIMS = {"mu": 2048, "mu_s": 17 * 17 * SPATIAL_CHANNELS}

WEIGHTS_HELP = (
    "Get pytorch-fid's weights file pt_inception-2015-12-05-6726825d.pth (GitHub release "
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth) and convert it on a machine with torch: "
    "`python -m sd_jax.eval.convert_inception --pth=pt_inception-2015-12-05-6726825d.pth "
    "--out=inception_fid.npz`, then pass --config.eval.inception_weights=inception_fid.npz "
    "(see docs/sampling.md)"
)


class ConvBN(nn.Module):
    """pytorch-fid's BasicConv2d: conv (no bias) -> BatchNorm(eps 1e-3, running stats) -> ReLU."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, (self.strides, self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, precision=HIGHEST,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
    """Mixed_5b-d (FIDInceptionA)."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
        b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
        b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e (FIDInceptionC). Returns the block output and its 1x1 branch (for sFID)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        c7 = self.channels_7x7
        b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
        b7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
        b7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
        b3 = ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (FIDInceptionE_1: avg pool) and Mixed_7c (FIDInceptionE_2: max pool)."""

    pool: str  # 'avg' | 'max'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
        b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def _resize_matrix(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """[size_out, size_in] bilinear weights. 'tf1': TF1 ResizeBilinear (align_corners=False, no
    half-pixel centres; the ADM evaluator's graph). 'pytorch_fid': F.interpolate(bilinear,
    align_corners=False) (half-pixel centres, no antialiasing)."""
    scale = size_in / size_out
    dst = np.arange(size_out, dtype=np.float64)
    src = dst * scale if mode == "tf1" else np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    frac = src - i0
    w = np.zeros((size_out, size_in), np.float64)
    np.add.at(w, (np.arange(size_out), i0), 1.0 - frac)
    np.add.at(w, (np.arange(size_out), i1), frac)
    return w.astype(np.float32)


def preprocess(images_bhwc: jax.Array, mode: str = "tf1") -> jax.Array:
    """uint8 (or float 0..255) images -> float32 [B, 299, 299, 3] in [-1, 1].

    'tf1': legacy TF bilinear resize then (x - 128) / 128, as the TF graph the ADM reference
    statistics were made with. 'pytorch_fid': half-pixel bilinear then x / 127.5 - 1.
    """
    if mode not in PREPROCESS_MODES:
        raise UserError(f"eval.inception_preprocess={mode!r}; use one of {PREPROCESS_MODES}")
    x = jnp.asarray(images_bhwc, jnp.float32)
    _, h, w, _ = x.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        rh = jnp.asarray(_resize_matrix(h, INPUT_SIZE, mode))
        rw = jnp.asarray(_resize_matrix(w, INPUT_SIZE, mode))
        x = jnp.einsum("oh,bhwc->bowc", rh, x, precision=HIGHEST)
        x = jnp.einsum("pw,bowc->bopc", rw, x, precision=HIGHEST)
    if mode == "tf1":
        return (x - 128.0) / 128.0
    return x / 127.5 - 1.0


class InceptionV3(nn.Module):
    """FID Inception-v3. Input: uint8 [B, H, W, 3] (any size; resized to 299)."""

    preprocess_mode: str = "tf1"

    @nn.compact
    def __call__(self, images_bhwc: jax.Array) -> dict[str, jax.Array]:
        x = preprocess(images_bhwc, self.preprocess_mode)
        x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x, _ = InceptionC(128, name="Mixed_6b")(x)
        x, _ = InceptionC(160, name="Mixed_6c")(x)
        x, spatial = InceptionC(160, name="Mixed_6d")(x)
        x, _ = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        fc = nn.Dense(NUM_CLASSES, precision=HIGHEST, name="fc")
        fc(pool)  # Creates fc/kernel and fc/bias (kept so the weights file is complete).
        logits = jnp.dot(pool, fc.variables["params"]["kernel"], precision=HIGHEST)
        spatial = spatial[..., :SPATIAL_CHANNELS].reshape(spatial.shape[0], -1)
        return {"pool": pool, "logits": logits, "spatial": spatial}


def abstract_variables(model: InceptionV3 | None = None) -> dict:
    """Shapes/dtypes of the variable tree (no compute)."""
    model = model or InceptionV3()
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.uint8)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))


def random_variables(seed: int = 0) -> dict:
    """Random weights in numpy (tests, smoke runs): He-normal kernels, unit BN statistics."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(abstract_variables(), sep="/")
    out = {}
    for key, leaf in flat.items():
        name = key.rsplit("/", 1)[-1]
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            out[key] = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        elif name in ("scale", "var"):
            out[key] = np.ones(leaf.shape, np.float32)
        else:
            out[key] = np.zeros(leaf.shape, np.float32)
    return traverse_util.unflatten_dict(out, sep="/")


def save_weights(variables: dict, path: str | os.PathLike) -> epath.Path:
    """Writes the variable tree as an .npz with '/'-joined keys (the documented format)."""
    return npz.save_tree(path, jax.device_get(variables))


def load_weights(path: str | os.PathLike | None) -> dict:
    """Reads and validates an .npz written by `save_weights` or the converter."""
    if not path:
        raise UserError(f"config.eval.inception_weights is not set. {WEIGHTS_HELP}")
    path = as_path(path)
    if not path.is_file():
        raise UserError(f"Inception weights file {path} does not exist. {WEIGHTS_HELP}")
    if path.suffix == ".pth":
        raise UserError(f"{path} is a torch file; convert it first. {WEIGHTS_HELP}")
    flat = npz.load(path, "Inception weights file")  # Pickles refused; truncation -> one line.
    problem = npz.tree_mismatch(flat, abstract_variables())
    if problem:
        raise UserError(f"{path} is not an FID Inception-v3 weights file: {problem}. "
                        f"{WEIGHTS_HELP}")
    return traverse_util.unflatten_dict(
        {k: v.astype(np.float32) for k, v in flat.items()}, sep="/")


def make_extractor(variables: dict, preprocess_mode: str = "tf1"
                   ) -> tuple[Callable[[np.ndarray], dict[str, np.ndarray]], int]:
    """Returns (extract_fn, num_local_devices): a jitted Inception forward whose batch is split
    over this process's devices (params replicated). The batch must divide by the device count."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    model = InceptionV3(preprocess_mode=preprocess_mode)
    devices = np.asarray(jax.local_devices())
    mesh = Mesh(devices, ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = NamedSharding(mesh, PartitionSpec("data"))
    variables = jax.device_put(variables, replicated)
    apply = jax.jit(model.apply, in_shardings=(replicated, batch), out_shardings=batch)

    def extract(images_bhwc: np.ndarray) -> dict[str, np.ndarray]:
        images_bhwc = np.asarray(images_bhwc)
        if images_bhwc.shape[-1] == 1:  # Grayscale datasets: Inception wants RGB.
            images_bhwc = np.repeat(images_bhwc, 3, axis=-1)
        out = apply(variables, jax.device_put(images_bhwc, batch))
        return {k: np.asarray(v) for k, v in jax.device_get(out).items()}

    return extract, len(devices)
