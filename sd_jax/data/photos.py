"""The embedded photo source (`data.source='photos'`): random multi-scale square crops of the
photos that ship inside installed packages, so natural images need no download.

Photos (all load from the packages' own folders, never through the network):
- scikit-learn (always): china, flower (640 x 427, `sklearn/datasets/images/`, the files of
  `load_sample_images`);
- scikit-image (if installed; requirements-dev.txt): astronaut (512 x 512), chelsea (451 x 300),
  coffee (600 x 400), rocket (640 x 427), hubble_deep_field (1000 x 872), ihc (512 x 512),
  retina (1411 x 1411), motorcycle_left (741 x 500), from `skimage.data.data_dir` (shipped in
  its wheel; a missing file is skipped with a warning).

Held out (`data.split='test'`, the reference of `--mode=eval`): coffee and ihc, whole photos
never seen in training (`data.split='train'`: the other eight). Of the 45 pairs, theirs are the
crops whose power per octave (0.88x to 1.16x) and saturation (1.09x) come closest to the other
eight's (150 crops per photo at 64 px, 2026-12-06). Without scikit-image the split is china /
flower.

Crop distribution, at output size S (`model.image_size`), for source index i: the photo is
`photos[i % P]` (P photos in the split, so each gets an equal share); with
`rng = default_rng([seed, i])`, the crop's side is `s = round(exp(U(ln S, ln m)))` with m the
photo's short side (log-uniform from 1:1 pixels up to the whole short side; S when m <= S), its
top-left corner uniform over the positions that keep it inside the photo; the crop is resized
to S x S with the loader's antialiased bicubic (`preprocess.crop_resize`). The loader mirrors
half the rows (`data.random_flip`). The source has `NUM_CROPS` indices; the training seed picks
their order (the loader's permutation), the source's `seed` which crop each index is.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from sd_jax.data import preprocess
from sd_jax.errors import UserError

log = logging.getLogger(__name__)

SKLEARN_PHOTOS = ("china", "flower")
SKIMAGE_PHOTOS = {  # name -> file in skimage.data.data_dir (shipped in the wheel).
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png",
    "rocket": "rocket.jpg", "hubble_deep_field": "hubble_deep_field.jpg", "ihc": "ihc.png",
    "retina": "retina.jpg", "motorcycle_left": "motorcycle_left.png",
}
HELD_OUT = ("coffee", "ihc")  # data.split='test': whole photos kept out of training.
HELD_OUT_SKLEARN_ONLY = ("flower",)  # The same without scikit-image.
SPLITS = ("train", "test")
NUM_CROPS = 1 << 20  # Source length: crops per epoch of the loader's order.


def photo_files() -> dict[str, Path]:
    """name -> file of every embedded photo present on this machine (scikit-learn's always,
    scikit-image's if it is installed and ships the file)."""
    try:
        import sklearn.datasets
    except ImportError as e:  # pragma: no cover - listed in requirements.txt
        raise UserError("data.source='photos' needs scikit-learn: pip install scikit-learn") from e
    images = Path(sklearn.datasets.__file__).parent / "images"
    files = {name: images / f"{name}.jpg" for name in SKLEARN_PHOTOS}
    try:
        import skimage.data
    except ImportError:
        log.info("scikit-image is not installed: data.source='photos' uses %s only",
                 ", ".join(SKLEARN_PHOTOS))
        return files
    root = Path(skimage.data.data_dir)
    for name, file in SKIMAGE_PHOTOS.items():
        if (root / file).is_file():
            files[name] = root / file
        else:
            log.warning("skimage.data ships no %s here; data.source='photos' skips it", file)
    return files


def decode_rgb(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of an 8-bit photo file."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def split_names(split: str, names: list[str] | tuple[str, ...]) -> list[str]:
    """The photos of `split` among `names`: HELD_OUT for 'test', the rest for 'train'; with
    scikit-learn's two only, china trains and flower is held out."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} not in {SPLITS}")
    held_out = HELD_OUT if set(HELD_OUT) <= set(names) else HELD_OUT_SKLEARN_ONLY
    held = [n for n in names if n in held_out]
    train = [n for n in names if n not in held_out]
    return held if split == "test" else train


def crop_box(rng: np.random.Generator, height: int, width: int, size: int
             ) -> tuple[int, int, int, int]:
    """(left, upper, right, lower) of one random square crop (module docstring)."""
    short = min(height, width)
    side = short if short <= size else int(round(math.exp(
        rng.uniform(math.log(size), math.log(short)))))
    side = min(max(side, min(size, short)), short)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return left, top, left + side, top + side


class PhotoSource:
    """Random multi-scale crops of the embedded photos of one split (module docstring).

    `__getitem__(i)` returns a uint8 [S, S, 3] crop, label 0 (unconditional). The decoded photos
    are cached per process and not pickled: each loader worker decodes them once.
    """

    num_classes = 0

    def __init__(self, image_size: int, split: str = "train", seed: int = 0,
                 num_crops: int = NUM_CROPS) -> None:
        files = photo_files()
        self.names = split_names(split, list(files))
        self.files = [str(files[n]) for n in self.names]
        self.image_size, self.split = int(image_size), split
        self.seed, self.num_crops = int(seed), int(num_crops)
        self._photos: list[np.ndarray] | None = None

    def photos(self) -> list[np.ndarray]:
        """The decoded uint8 [H, W, 3] photos of the split, in `names` order."""
        if self._photos is None:
            self._photos = [decode_rgb(f) for f in self.files]
        return self._photos

    def crop(self, index: int) -> tuple[int, tuple[int, int, int, int]]:
        """(photo number, crop box) of source `index`."""
        if not 0 <= index < self.num_crops:
            raise IndexError(f"index {index} out of range [0, {self.num_crops})")
        photo = index % len(self.files)
        height, width, _ = self.photos()[photo].shape
        rng = np.random.default_rng([self.seed, index])
        return photo, crop_box(rng, height, width, self.image_size)

    def __len__(self) -> int:
        return self.num_crops

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        photo, (left, top, right, bottom) = self.crop(int(index))
        pixels = self.photos()[photo][top:bottom, left:right]
        return preprocess.crop_resize(pixels, self.image_size), 0

    def images(self, count: int, start: int = 0) -> np.ndarray:
        """uint8 [count, S, S, 3]: the crops at indices start .. start + count - 1."""
        return np.stack([self[i][0] for i in range(start, start + count)])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_photos": None}  # Workers decode their own copy.
