"""A small CNN classifier of scikit-learn's digits: the feature network of FD-digits.

    python -m sd_jax.eval.digits_net [--out=PATH]   # trains (~1 min on 2 CPU cores), caches

Inception features mean little on 8x8 digits, so eval mode scores digit samples with this net:
the Frechet distance of its penultimate features (64-d, before the ReLU) against the digits ("FD-
digits"), and its accuracy on class-conditional samples against the labels they were drawn for.

Input: one grey channel at INPUT_SIZE = 16 (twice the digits' native 8x8), in [-1, 1]. Images of
any size are converted by `to_input`: mean over RGB (colour is scored separately by
`sample_quality.colour_noise`), then a PIL resize of the float image to 16x16 with the area
(BOX) filter when shrinking (at 32/64/128 px an exact mean of 2x2/4x4/8x8 blocks) and bicubic
when enlarging (the filter the digits are rendered with). Training data: the digits rendered at
16 px by the loader (bicubic), shifted by up to one pixel at random; 20% (seed 0) are held out.

Weights are cached as an .npz ('/'-joined variable names, as the Inception weights) at
`config.eval.digits_classifier`, default `$SD_JAX_CACHE_DIR` or `~/.cache/sd_jax`
/digits_classifier_v1.npz; `load_or_build` trains it on first use. Training is deterministic
for a given JAX build and machine (fixed seeds, one thread of data order).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import traverse_util
from PIL import Image

from sd_jax.errors import UserError
from sd_jax.io import npz, paths

INPUT_SIZE = 16
FEATURES = 64
NUM_CLASSES = 10
VERSION = 1  # Bump when the architecture, data or training recipe changes: new cache file.
TEST_FRACTION = 0.2
SPLIT_SEED = 0
TRAIN_SEED = 0
EPOCHS = 30
BATCH = 64
LEARNING_RATE = 2e-3


class DigitsNet(nn.Module):
    """conv16-conv16-pool-conv32-conv32-pool (16 -> 4) -> dense 64 (features) -> ReLU -> 10."""

    @nn.compact
    def __call__(self, x_bhw1: jax.Array) -> dict[str, jax.Array]:
        h = x_bhw1
        for width in (16, 32):
            h = nn.relu(nn.Conv(width, (3, 3))(h))
            h = nn.relu(nn.Conv(width, (3, 3))(h))
            h = nn.avg_pool(h, (2, 2), (2, 2))
        # FD features: the penultimate layer before its ReLU (no dead units, so the covariance
        # is full rank).
        features = nn.Dense(FEATURES)(h.reshape(h.shape[0], -1))
        return {"pool": features, "logits": nn.Dense(NUM_CLASSES)(nn.relu(features))}


def default_path() -> epath.Path:
    """Where the classifier is cached when `config.eval.digits_classifier` is unset."""
    root = os.environ.get("SD_JAX_CACHE_DIR") or Path.home() / ".cache" / "sd_jax"
    return paths.as_path(root) / f"digits_classifier_v{VERSION}.npz"


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] (any square size, 1 or 3 channels) -> float32 [N, 16, 16, 1] in [-1, 1].

    Grey = mean over channels; resized as a float image, BOX (area) filter when shrinking,
    bicubic when enlarging, so block means are exact at 32, 64 and 128 px.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise UserError(f"expected square images [N, H, W, C], got shape {images.shape}")
    grey = images.astype(np.float32).mean(axis=-1) / 127.5 - 1.0
    size = grey.shape[1]
    if size != INPUT_SIZE:
        method = Image.Resampling.BOX if size > INPUT_SIZE else Image.Resampling.BICUBIC
        grey = np.stack([np.asarray(Image.fromarray(g, mode="F").resize(
            (INPUT_SIZE, INPUT_SIZE), method)) for g in grey])
    return grey[..., None].astype(np.float32)


def split_indices(num: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of the digits: a fixed permutation (seed 0), the last 20% held out."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(num)
    num_test = int(round(TEST_FRACTION * num))
    return np.sort(perm[num_test:]), np.sort(perm[:num_test])


def digits_data(size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as the data loader renders them at `size` (uint8 RGB) and their labels."""
    from sd_jax.data import digits_source

    source = digits_source().resized(size)
    return source.images, source.labels


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Moves every image by up to one pixel in each direction (background -1 fills)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    dy, dx = rng.integers(0, 3, (2, len(x)))
    return np.stack([padded[i, dy[i]:dy[i] + INPUT_SIZE, dx[i]:dx[i] + INPUT_SIZE]
                     for i in range(len(x))])


def train(epochs: int = EPOCHS, log: Callable[[str], None] = print) -> tuple[dict, float]:
    """Trains the classifier on the training split; returns (variables, test accuracy)."""
    images, labels = digits_data()
    x_all = to_input(images)
    train_idx, test_idx = split_indices(len(images))
    model = DigitsNet()
    params = model.init(jax.random.PRNGKey(TRAIN_SEED), x_all[:1])["params"]
    steps_per_epoch = len(train_idx) // BATCH
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, epochs * steps_per_epoch)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(TRAIN_SEED)
    for epoch in range(epochs):
        order = rng.permutation(train_idx)
        for i in range(steps_per_epoch):
            rows = order[i * BATCH:(i + 1) * BATCH]
            params, opt_state, loss = step(params, opt_state, _shift(x_all[rows], rng),
                                           jnp.asarray(labels[rows]))
        if (epoch + 1) % 10 == 0:
            log(f"digits classifier: epoch {epoch + 1}/{epochs} loss {float(loss):.4f}")
    variables = {"params": jax.device_get(params)}
    accuracy = classify_accuracy(variables, images[test_idx], labels[test_idx])
    return variables, accuracy


def predict(variables: dict, images: np.ndarray, batch: int = 500) -> dict[str, np.ndarray]:
    """Penultimate features ('pool') and logits of uint8 images of any size."""
    extract = make_extractor(variables)
    outs = [extract(images[i:i + batch]) for i in range(0, len(images), batch)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def classify_accuracy(variables: dict, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` (uint8, any size) classified as `labels`."""
    logits = predict(variables, images)["logits"]
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def abstract_variables() -> dict:
    """Shapes of the variable tree (no compute)."""
    x = jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 1), jnp.float32)
    return jax.eval_shape(lambda: DigitsNet().init(jax.random.PRNGKey(0), x))


def save_weights(variables: dict, path: str | os.PathLike, test_accuracy: float
                 ) -> epath.Path:
    """Writes the weights (and their test accuracy) atomically as an .npz."""
    path = paths.as_path(path)
    tmp = path.parent / f"{path.name}.{os.getpid()}.tmp"
    npz.save_tree(tmp, variables, test_accuracy=np.float64(test_accuracy))
    tmp.replace(path)  # Concurrent builders: the last complete file wins, never a partial.
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict, float]:
    """Reads and validates an .npz written by `save_weights`: (variables, test accuracy)."""
    path = paths.as_path(path)
    if not path.is_file():
        raise UserError(f"digits classifier {path} does not exist; build it with "
                        f"`python -m sd_jax.eval.digits_net --out={path}`")
    flat = npz.load(path, "digits classifier")
    accuracy = float(flat.pop("test_accuracy", np.nan))
    problem = npz.tree_mismatch(flat, abstract_variables())
    if problem:
        raise UserError(f"{path} is not a digits classifier v{VERSION} file ({problem}); "
                        f"delete it and rerun to rebuild")
    return traverse_util.unflatten_dict(flat, sep="/"), accuracy


def load_or_build(path: str | os.PathLike | None = None, log: Callable[[str], None] = print
                  ) -> tuple[dict, float]:
    """The cached classifier at `path` (default `default_path()`), trained first if missing."""
    path = paths.as_path(path) if path else default_path()
    if not path.is_file():
        start = time.time()
        log(f"training the digits classifier once into {path} ...")
        variables, accuracy = train(log=log)
        save_weights(variables, path, accuracy)
        log(f"digits classifier: test accuracy {accuracy:.4f} ({time.time() - start:.0f} s)")
    return load_weights(path)


def make_extractor(variables: dict) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """uint8 images of any size -> {'pool': [N, 64] features, 'logits': [N, 10]} (jitted)."""
    apply = jax.jit(DigitsNet().apply)

    def extract(images: np.ndarray) -> dict[str, np.ndarray]:
        out = apply(variables, jnp.asarray(to_input(images)))
        return {k: np.asarray(v, np.float64) for k, v in out.items()}

    return extract


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and cache the digits classifier.")
    parser.add_argument("--out", default=None, help=f"weights .npz (default {default_path()})")
    args = parser.parse_args()
    path = paths.as_path(args.out) if args.out else default_path()
    if path.exists():
        path.unlink()  # The command always rebuilds; eval mode reuses the cache.
    _, accuracy = load_or_build(path)
    print(f"test accuracy {accuracy:.4f} -> {path}")


if __name__ == "__main__":
    main()
