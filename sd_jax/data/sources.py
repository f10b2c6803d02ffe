"""Random-access image sources: in-memory arrays, embedded digits, image folders.

Every source has `__len__`, `__getitem__(i) -> (uint8 [H, W, C] image, int label)` and
`num_classes` (0: unconditional). Images may have any size and 1, 3 or 4 channels; the loader
crops, resizes and converts them. `__getitem__` may raise on a corrupt record: the loader
counts it and substitutes another index. Sources are pickled into the loader's worker
processes, so they hold no open files or threads. The tfds source lives in `tfds_source.py`.

`SOURCES` maps `data.source` to the function that builds the source from `config.data` and the
model's image size (`model.image_size`; only sources that crop at that size read it); a new
source is one class (or function) and one entry. The embedded photos live in `photos.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import ml_collections
import numpy as np
from PIL import Image

from sd_jax.data.photos import PhotoSource
from sd_jax.data.tfds_source import TfdsSource
from sd_jax.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class Source(Protocol):
    """What the loader needs from a dataset."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]: ...


class ArraySource:
    """In-memory source over uint8 [N, H, W, C] images and int labels [N]."""

    def __init__(self, images_nhwc_uint8: np.ndarray, labels: np.ndarray | None = None,
                 num_classes: int | None = None) -> None:
        images = np.asarray(images_nhwc_uint8)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [N, H, W, C] images, got {images.dtype} "
                             f"{images.shape}")
        labels = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"labels shape {labels.shape} does not match {len(images)} images")
        if num_classes is None:  # Labels given: classes 0..max; no labels: unconditional.
            num_classes = int(labels.max()) + 1 if len(labels) and labels.any() else 0
        self.images = images
        self.labels = labels.astype(np.int64)
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def resized(self, size: int) -> ArraySource:
        """The same source with every image centre-cropped and resized to size x size RGB once
        (the loader then gathers whole batches by fancy indexing, no per-image work)."""
        from sd_jax.data.preprocess import crop_resize

        images = np.stack([crop_resize(im, size) for im in self.images])
        return ArraySource(images, self.labels, self.num_classes)


def digits_source() -> ArraySource:
    """scikit-learn's embedded 8x8 digits (1,797 images, 10 classes, no download) as RGB uint8.

    Values 0..16 (ink density) are scaled to 0..255 (v * 255 / 16, rounded): white digits on
    black, like MNIST; grayscale is repeated to RGB.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - listed in requirements.txt
        raise UserError("data.source='digits' needs scikit-learn: pip install scikit-learn") from e
    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=-1)
    return ArraySource(images, digits.target, num_classes=10)


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_files(root: Path) -> list[Path]:
    """All files below root (recursive, following no symlinked directories), sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


class FolderSource:
    """Images in a folder, listed recursively (JPEG / PNG / WebP / BMP, any size).

    With class subfolders (`root/<class>/**/*.jpg`) labels are the subfolder's index in
    name order; with images only directly in root (or nested without class structure),
    it is unconditional (num_classes = 0). Non-image files are skipped and counted.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UserError(f"data.folder={str(root)!r} is not a directory; point it at a folder "
                            "of images (optionally one subfolder per class)")
        files = _list_files(root)
        images = [f for f in files if _is_image_file(f.name)]
        self.num_skipped_files = len(files) - len(images)
        if self.num_skipped_files:
            examples = [str(f) for f in files if not _is_image_file(f.name)][:3]
            log.warning("FolderSource(%s): skipped %d non-image files (e.g. %s); images must "
                        "end in %s", root, self.num_skipped_files, examples,
                        "/".join(IMAGE_EXTENSIONS))
        if not images:
            raise UserError(f"data.folder={str(root)!r} contains no images ("
                            f"{'/'.join(IMAGE_EXTENSIONS)}); put images there, optionally in one "
                            "subfolder per class")
        top = [f.relative_to(root).parts for f in images]
        in_subfolders = [len(p) > 1 for p in top]
        if all(in_subfolders):
            self.class_names = sorted({p[0] for p in top})
            index = {name: i for i, name in enumerate(self.class_names)}
            self.labels = np.array([index[p[0]] for p in top], np.int64)
        else:
            if any(in_subfolders):
                log.warning("FolderSource(%s): images both in the root and in subfolders; "
                            "treating the folder as unconditional (no class labels)", root)
            self.class_names = []
            self.labels = np.zeros(len(images), np.int64)
        self.root = root
        # Plain strings, not Paths: the source is pickled into every worker process, and a
        # million Path objects pickle several times slower and larger than their strings.
        self.files = [str(f) for f in images]
        self.num_classes = len(self.class_names)

    @property
    def paths(self) -> list[Path]:
        """The image files, in index order."""
        return [Path(f) for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return decode_rgb8(self.files[index]), int(self.labels[index])


# Pillow's modes for 16-bit grayscale (PNG); `convert("RGB")` would clip them at 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_rgb8(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W, 3] of an image file; 16-bit images are scaled to 8 bits (65535 -> 255), not
    clipped. Raises on corrupt or truncated files."""
    with Image.open(path) as image:
        if image.mode in _SIXTEEN_BIT_MODES:  # Pillow already reduces 16-bit RGB to 8 bits.
            gray = np.rint(np.asarray(image, np.float64) / 257.0)  # 257 = 65535 / 255.
            return np.repeat(np.clip(gray, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
        return np.asarray(image.convert("RGB"))  # Decodes the pixels.


def _folder(data_cfg: ml_collections.ConfigDict, image_size: int) -> Source:
    if not data_cfg.folder:  # A field the user must set on the command line.
        raise UserError("data.source='folder' needs --config.data.folder=/path/to/images")
    return FolderSource(data_cfg.folder)


def _tfds(data_cfg: ml_collections.ConfigDict, image_size: int) -> Source:
    return TfdsSource(data_cfg.name, split=data_cfg.split, data_dir=data_cfg.data_dir,
                      manual_dir=data_cfg.manual_dir)


def _photos(data_cfg: ml_collections.ConfigDict, image_size: int) -> Source:
    return PhotoSource(image_size, split=data_cfg.split)


# `data.source` name -> the source of a (validated) `config.data` at `model.image_size`.
SOURCES: dict[str, Callable[[ml_collections.ConfigDict, int], Source]] = {
    "digits": lambda data_cfg, image_size: digits_source(),  # scikit-learn's 8x8 digits.
    "folder": _folder,  # The images in data.folder.
    "tfds": _tfds,  # A prepared tensorflow-datasets dataset (array_record).
    "photos": _photos,  # Multi-scale crops of the photos scikit-learn / scikit-image ship.
}
