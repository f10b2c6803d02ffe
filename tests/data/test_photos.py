"""The embedded photo source (`data.source='photos'`): determinism in (seed, index), whole photos
held out, crops drawn from the documented distribution, pixels equal to PIL's crop + resize.

Budget: ~3 s on 2 cores (decoding the ten photos a few times).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from configs import base
from sd_jax.data import build_loader, photos
from sd_jax.errors import UserError
from sd_jax.validate import validate


@pytest.fixture(scope="module")
def train64() -> photos.PhotoSource:
    return photos.PhotoSource(64, "train")


def test_same_seed_and_index_give_the_same_crop_other_seeds_others(train64):
    again = pickle.loads(pickle.dumps(photos.PhotoSource(64, "train")))  # As in a worker.
    other = photos.PhotoSource(64, "train", seed=1)
    for index in (0, 7, 12345, photos.NUM_CROPS - 1):
        image, label = train64[index]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and label == 0
        np.testing.assert_array_equal(image, again[index][0])
    boxes = [train64.crop(i)[1] for i in range(64)]
    assert sum(b == other.crop(i)[1] for i, b in enumerate(boxes)) < 4  # Ties only by chance.
    with pytest.raises(IndexError):
        train64[photos.NUM_CROPS]


def test_held_out_photos_never_reach_training(monkeypatch):
    files = photos.photo_files()
    train, test = photos.PhotoSource(64, "train"), photos.PhotoSource(64, "test")
    assert set(train.names).isdisjoint(test.names)
    assert set(train.names) | set(test.names) == set(files)
    assert set(test.names) in (set(photos.HELD_OUT), set(photos.HELD_OUT_SKLEARN_ONLY))
    assert set(train.files).isdisjoint(test.files)  # Whole files, not crops, are held out.
    # Every training crop comes from a training photo (index i -> photo i % P).
    assert {train.names[train.crop(i)[0]] for i in range(100)} == set(train.names)
    # Without scikit-image: scikit-learn's two, one each side.
    only_sklearn = {n: files[n] for n in photos.SKLEARN_PHOTOS}
    monkeypatch.setattr(photos, "photo_files", lambda: only_sklearn)
    assert photos.PhotoSource(64, "train").names == ["china"]
    assert photos.PhotoSource(64, "test").names == ["flower"]


def test_scikit_image_photos_ship_with_the_installed_package():
    pytest.importorskip("skimage")
    assert set(photos.photo_files()) == set(photos.SKLEARN_PHOTOS) | set(photos.SKIMAGE_PHOTOS)


@pytest.mark.parametrize("size", [64, 128])
def test_crops_follow_the_documented_distribution(size):
    """Side log-uniform in [S, short side], corner uniform over the positions inside the photo."""
    source = photos.PhotoSource(size, "train")
    shapes = [p.shape for p in source.photos()]
    u_side, u_top = [], []
    for index in range(3000):
        photo, (left, top, right, bottom) = source.crop(index)
        height, width, _ = shapes[photo]
        short, side = min(height, width), right - left
        assert bottom - top == side and size <= side <= short
        assert left >= 0 and right <= width and top >= 0 and bottom <= height
        u_side.append((math.log(side) - math.log(size)) / (math.log(short) - math.log(size)))
        u_top.append((top + 0.5) / (height - side + 1))  # Uniform integer -> about U(0, 1).
    # Fixed seeds, so the outcome is fixed; a wrong law (e.g. uniform sides) gives p < 1e-20.
    assert stats.kstest(u_side, "uniform").pvalue > 1e-3
    assert stats.kstest(u_top, "uniform").pvalue > 1e-3


def test_a_photo_smaller_than_the_crop_is_used_whole():
    rng = np.random.default_rng(0)
    for _ in range(20):
        left, top, right, bottom = photos.crop_box(rng, 300, 451, 512)
        assert (top, bottom, right - left) == (0, 300, 300)


def test_pixels_equal_pils_crop_and_resize_of_the_photo_file(train64):
    for index in (0, 5, 6, 999):
        photo, box = train64.crop(index)
        with Image.open(train64.files[photo]) as image:  # Decoded here, not by the source.
            crop = image.convert("RGB").crop(box)
            want = crop if crop.size == (64, 64) else crop.resize(
                (64, 64), Image.Resampling.BICUBIC, reducing_gap=3.0)
        np.testing.assert_array_equal(train64[index][0], np.asarray(want))


def test_the_loader_reads_photos_and_validation_names_the_splits():
    config = base.get_config()
    config.data.source, config.model.image_size, config.train.batch_size = "photos", 32, 4
    config.data.num_workers, config.model.num_classes = 0, 0
    loader = build_loader(config, process_index=0, process_count=1)
    batch = loader.get_batch(3)
    assert batch["image"].shape == (4, 32, 32, 3) and loader.num_classes == 0
    indices = loader.global_indices(3)
    want = np.stack([loader.source[int(i)][0] for i in indices])
    np.testing.assert_array_equal(batch["image"], want)
    config.data.split = "validation"
    with pytest.raises(UserError, match="data.split='validation'.*train, test"):
        validate(config, "train")
