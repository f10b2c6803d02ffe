"""Data layer: sources, preprocessing, deterministic/resumable order, shards, bad input.

Budget: ~10 s on 2 cores plus ~10 s for the two tests that start grain worker processes
(the tfds source is tested in test_data_tfds.py).
"""

from __future__ import annotations

import gc
import logging
import os

import numpy as np
import pytest
from PIL import Image

from configs import base
from sd_jax.data import ArraySource, FolderSource, Loader, build_loader, digits_source, preprocess
from sd_jax.data.loader import release_shared_memory
from sd_jax.errors import UserError
from sd_jax.validate import validate


def make_source(n: int = 37, size: int = 8, num_classes: int = 5) -> ArraySource:
    """n images whose pixel values encode their index (row-major), label = index % classes."""
    images = np.zeros((n, size, size, 3), np.uint8)
    images[:] = (np.arange(n) * 5 % 256).astype(np.uint8)[:, None, None, None]
    images[:, :, : size // 2, 0] = 255  # Left half red: a flip moves it to the right.
    labels = np.arange(n) % num_classes if num_classes else np.zeros(n, np.int64)
    return ArraySource(images, labels, num_classes)


def make_loader(source: ArraySource | None = None, **kw) -> Loader:
    args = dict(image_size=8, global_batch_size=12, seed=0, random_flip=False, num_workers=2)
    args.update(kw)
    return Loader(source or make_source(), **args)


def recover_indices(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Inverse of make_source: the example index of each row (from the green channel)."""
    green = batch["image"][:, 0, 0, 1].astype(int)
    return np.array([int(np.nonzero(np.arange(37) * 5 % 256 == g)[0][0]) for g in green])


def assert_same_batch(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b) == ["flip", "image", "label"]
    for key in a:
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key])


def write_jpeg(path, size=(50, 40), color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)


# ------------------------------------------------------------------ preprocessing


def test_center_crop_resize_of_a_known_pattern():
    # 40 high x 80 wide: the centred 40x40 square is columns 20..59, split into 4 quadrants.
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :20] = 255  # Outside the crop: must not leak in.
    image[:, 60:] = 255
    image[:20, 20:40] = (10, 20, 30)
    image[:20, 40:60] = (40, 50, 60)
    image[20:, 20:40] = (70, 80, 90)
    image[20:, 40:60] = (100, 110, 120)
    out = preprocess.crop_resize(image, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    # Away from the quadrant borders (bicubic support) every pixel keeps its quadrant's colour.
    np.testing.assert_array_equal(out[:2, :2], np.broadcast_to([10, 20, 30], (2, 2, 3)))
    np.testing.assert_array_equal(out[:2, -2:], np.broadcast_to([40, 50, 60], (2, 2, 3)))
    np.testing.assert_array_equal(out[-2:, :2], np.broadcast_to([70, 80, 90], (2, 2, 3)))
    np.testing.assert_array_equal(out[-2:, -2:], np.broadcast_to([100, 110, 120], (2, 2, 3)))
    # Portrait image: crop rows instead of columns.
    np.testing.assert_array_equal(preprocess.center_crop_box(80, 40), (0, 20, 40, 60))


def test_resize_is_antialiased():
    # A 1-pixel checkerboard averages to mid-grey when downsampled 8x (nearest would alias).
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    out = preprocess.crop_resize(checker, 8)
    assert out.shape == (8, 8, 3)
    assert np.all(np.abs(out.astype(int) - 128) <= 2)


def test_float_range_and_flip():
    image = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)  # 1x2: black, white.
    x = preprocess.to_float(image)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :, 0], [-1.0, 1.0])
    np.testing.assert_array_equal(preprocess.to_float(image, flip=True)[0, :, 0], [1.0, -1.0])


def test_loader_flags_flips_and_the_train_step_applies_them():
    loader = make_loader(random_flip=True, global_batch_size=64)
    batch = loader.get_batch(3)
    expected = preprocess.flip_mask(0, 3, 64)
    np.testing.assert_array_equal(batch["flip"], expected)
    assert 10 < expected.sum() < 54
    assert np.all(batch["image"][:, 0, 0, 0] == 255)  # The loader never mirrors: red on the left.
    assert np.all(batch["image"][:, 0, -1, 0] != 255)
    from sd_jax.train.step import device_images

    model = np.asarray(device_images(batch["image"], batch["flip"]))  # What the model sees.
    assert model.dtype == np.float32
    np.testing.assert_array_equal(model[:, 0, -1, 0] == 1.0, expected)
    np.testing.assert_array_equal(model[:, 0, 0, 0] == 1.0, ~expected)
    np.testing.assert_array_equal(model[~expected], preprocess.to_float(batch["image"][~expected]))
    assert not make_loader(global_batch_size=64).get_batch(3)["flip"].any()  # random_flip=False.


def test_device_normalise_and_flip_equal_the_host_float_path_bitwise():
    """The train step's on-device uint8 -> [-1, 1] + flip (under jit, as in the step) gives the
    bits of the host float path `preprocess.to_float(image, flip)`, for every uint8 value."""
    import jax

    from sd_jax.train.step import device_images

    rng = np.random.default_rng(0)
    images = rng.permutation(np.tile(np.arange(256, dtype=np.uint8), 6 * 4 * 4 * 3 // 256 + 1))
    images = images[: 6 * 4 * 4 * 3].reshape(6, 4, 4, 3)
    images[0] = np.arange(48).reshape(4, 4, 3) * 5 + 10  # An asymmetric row, flipped or not.
    flips = np.array([True, False, True, True, False, False])
    host = np.stack([preprocess.to_float(x, f) for x, f in zip(images, flips, strict=True)])
    device = np.asarray(jax.jit(device_images)(images, flips))
    assert device.dtype == np.float32 and not np.array_equal(host[0], host[0, :, ::-1])
    np.testing.assert_array_equal(device.view(np.uint32), host.view(np.uint32))
    batch = make_loader(random_flip=True, global_batch_size=36).get_batch(1)  # Loader output.
    host = np.stack([preprocess.to_float(x, f)
                     for x, f in zip(batch["image"], batch["flip"], strict=True)])
    device = np.asarray(jax.jit(device_images)(batch["image"], batch["flip"]))
    np.testing.assert_array_equal(device.view(np.uint32), host.view(np.uint32))


def test_per_image_path_matches_in_memory_path():
    class Wrapped:  # Not an ArraySource: the loader decodes per image on its threads.
        def __init__(self, inner):
            self.inner, self.num_classes = inner, inner.num_classes

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    source = make_source(size=12)  # Resized 12 -> 8 by either path.
    resized_once = make_loader(source, random_flip=True, global_batch_size=40).get_batch(2)
    per_image = make_loader(Wrapped(source), random_flip=True, global_batch_size=40).get_batch(2)
    assert_same_batch(per_image, resized_once)


# ---------------------------------------------------------------- order and shards


def test_batches_follow_epoch_permutations():
    loader = make_loader(seed=3)
    stream = np.concatenate([loader.global_indices(k) for k in range(9)])  # 108 = 2.9 epochs.
    # The order every checkpoint's data position refers to: epoch e is
    # default_rng([seed, e]).permutation(N), concatenated. Changing it would resume old runs on
    # other data.
    expected = np.concatenate([np.random.default_rng([3, e]).permutation(37) for e in range(3)])
    np.testing.assert_array_equal(stream, expected[:108])
    batch = loader.get_batch(2)
    np.testing.assert_array_equal(recover_indices(batch), loader.global_indices(2))
    np.testing.assert_array_equal(batch["label"], loader.global_indices(2) % 5)
    assert batch["label"].dtype == np.int32 and batch["image"].dtype == np.uint8
    assert batch["flip"].dtype == bool and batch["image"].shape == (12, 8, 8, 3)


class PidSource:
    """Labels each example with the id of the process that read it."""

    num_classes = 1 << 30

    def __init__(self, inner: ArraySource) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.inner[index][0], os.getpid()


def test_worker_processes_resume_bitwise_and_seeds_differ():
    reference = [make_loader(random_flip=True).get_batch(k) for k in range(8)]
    # A fresh loader after a restart at step 3, read by 2 grain worker processes; its source
    # labels every example with the id of the process that decoded it.
    resumed = make_loader(PidSource(make_source()), random_flip=True, num_workers=2)
    steps, readers = [], []
    for step, batch in resumed.iterate(3, 8):
        steps.append(step)
        for key in ("image", "flip"):
            assert batch[key].dtype == reference[step][key].dtype
            np.testing.assert_array_equal(batch[key], reference[step][key])
        readers.append(set(batch["label"].tolist()))
    assert steps == [3, 4, 5, 6, 7]
    # Decoding runs in two other processes (past the GIL), each building whole batches.
    assert all(len(r) == 1 for r in readers)
    assert len(set.union(*readers)) == 2 and os.getpid() not in set.union(*readers)

    in_process = make_loader(random_flip=True, num_workers=0)  # One reader thread, same batches.
    assert [s for s, _ in in_process.iterate(6, 8)] == [6, 7]
    assert_same_batch(next(in_process.iterate(6))[1], reference[6])
    other = make_loader(seed=1, random_flip=True)
    assert not np.array_equal(other.get_batch(0)["image"], reference[0]["image"])


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory in /dev/shm")
def test_worker_batches_leave_shared_memory_without_garbage_collection(monkeypatch):
    """Every shared-memory block of the worker batches is unlinked once the iteration has
    ended, with the garbage collector never running: grain keeps the last batch of each reader
    thread in a reference cycle (the frames of the StopIteration that ended it), so a block
    left for grain's array to unlink would wait for a collection, and at exit it is reported
    as leaked."""
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    opened, original = [], SharedMemoryArray.from_metadata.__func__

    def from_metadata(cls, metadata):
        opened.append(metadata.name)
        return original(cls, metadata)

    monkeypatch.setattr(SharedMemoryArray, "from_metadata", classmethod(from_metadata))
    monkeypatch.setattr(gc, "collect", lambda *args: 0)  # Not even the loader's own collection.
    gc.disable()
    try:
        loader = make_loader(random_flip=True, num_workers=2)
        assert [step for step, _ in loader.iterate(0, 3)] == [0, 1, 2]
        assert len(opened) == 3 * 4  # Image, flip, label and the substitution count per batch.
        assert [n for n in opened if os.path.exists(f"/dev/shm/{n.lstrip('/')}")] == []
    finally:
        gc.enable()


def test_released_batch_is_a_copy_and_grain_no_longer_unlinks_it():
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

    shared = SharedMemoryArray((2, 3), np.uint8)
    shared[:] = np.arange(6, dtype=np.uint8).reshape(2, 3)
    shared.unlink_on_del()  # As grain hands a worker's array to the reading process.
    name = shared.shm.name
    plain = np.arange(4)
    released = release_shared_memory({"image": shared, "label": plain})
    assert not os.path.exists(f"/dev/shm/{name.lstrip('/')}")  # Unlinked at once ...
    assert not shared._unlink_on_del  # ... so grain's array only closes its mapping.
    np.testing.assert_array_equal(released["image"], np.arange(6).reshape(2, 3))
    assert type(released["image"]) is np.ndarray and not np.shares_memory(released["label"], plain)
    shared[:] = 0  # The mapping is still valid; the copy does not see it.
    assert released["image"].sum() == 15


@pytest.mark.parametrize("process_count", [2, 3, 4])
def test_process_shards_partition_the_global_batch(process_count):
    single = make_loader(random_flip=True).get_batch(5)
    shards = [make_loader(random_flip=True, process_index=p, process_count=process_count)
              .get_batch(5) for p in range(process_count)]
    assert all(len(s["label"]) == 12 // process_count for s in shards)
    assert_same_batch({k: np.concatenate([s[k] for s in shards]) for k in single}, single)


def test_build_loader_checks_divisibility_and_classes():
    config = base.get_config()
    config.train.batch_size = 10
    config.model.image_size = 8
    with pytest.raises(UserError, match="divisible"):
        build_loader(config, process_index=0, process_count=3, source=make_source())
    loader = build_loader(config, process_index=1, process_count=2, source=make_source())
    assert loader.local_batch_size == 5 and loader.num_classes == 5
    config.model.num_classes = 3
    with pytest.raises(UserError, match="num_classes=5"):
        build_loader(config, process_index=0, process_count=1, source=make_source())
    unlabeled = make_source(num_classes=0)  # E.g. a flat folder: no classes to condition on.
    with pytest.raises(UserError, match="num_classes=0"):
        build_loader(config, process_index=0, process_count=1, source=unlabeled)
    config.model.num_classes = 0
    assert build_loader(config, process_index=0, process_count=1, source=unlabeled).num_classes == 0


# ------------------------------------------------------------------------ sources


def test_digits_source_and_loader():
    source = digits_source()
    assert len(source) == 1797 and source.num_classes == 10
    image, label = source[0]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and label == 0
    assert image.min() == 0 and image.max() == 239  # Digit 0's max is 15: 15 * 255 / 16.
    assert max(int(source[i][0].max()) for i in range(20)) == 255  # 16 -> 255.
    config = base.get_config()
    config.data.source, config.model.image_size, config.train.batch_size = "digits", 16, 32
    loader = build_loader(config, process_index=0, process_count=1)
    batch = loader.get_batch(0)
    assert batch["image"].shape == (32, 16, 16, 3) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["label"], source.labels[loader.global_indices(0)])
    np.testing.assert_array_equal(  # 8x8 -> 16x16 of a constant 8x8 block stays constant.
        batch["image"][:, 4:12, 4:12].max((1, 2, 3)) > 0, True)


def test_folder_with_class_subfolders(tmp_path, caplog):
    for cls, color in [("cat", (255, 0, 0)), ("dog", (0, 0, 255))]:
        for i in range(3):
            write_jpeg(tmp_path / cls / ("nested" if i == 2 else "") / f"{i}.jpg", color=color)
    Image.new("RGB", (30, 60), (0, 255, 0)).save(tmp_path / "dog" / "png.PNG")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        source = FolderSource(tmp_path)
    assert "skipped 1 non-image files" in caplog.text
    assert source.num_classes == 2 and source.class_names == ["cat", "dog"]
    assert len(source) == 7 and list(source.labels) == [0, 0, 0, 1, 1, 1, 1]
    image, label = source[source.paths.index(tmp_path / "dog" / "png.PNG")]
    assert image.shape == (60, 30, 3) and label == 1
    loader = Loader(source, image_size=16, global_batch_size=7, seed=0, random_flip=False)
    batch = loader.get_batch(0)
    for img, lab in zip(batch["image"].astype(int), batch["label"], strict=True):
        red, blue = img[8, 8, 0], img[8, 8, 2]
        assert (red > 230 and blue < 25) if lab == 0 else (blue > 230 or img[8, 8, 1] > 230)


def test_flat_folder_is_unconditional(tmp_path):
    for i in range(4):
        write_jpeg(tmp_path / f"{i}.jpeg")
    source = FolderSource(tmp_path)
    assert len(source) == 4 and source.num_classes == 0
    batch = Loader(source, image_size=8, global_batch_size=4, seed=0).get_batch(0)
    np.testing.assert_array_equal(batch["label"], np.zeros(4, np.int32))


def test_sixteen_bit_png_is_scaled_to_eight_bits_not_clipped(tmp_path):
    gray16 = np.arange(0, 65536, 257 * 17, dtype=np.uint16).reshape(4, 4)  # 0, 4369, ..., 65535
    gray16[0, 1] = 300  # Not a multiple of 257: rounds to the nearest 8-bit level (1).
    Image.fromarray(gray16).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # Really stored as 16 bits.
    image, _ = FolderSource(tmp_path)[0]
    assert image.dtype == np.uint8 and image.shape == (4, 4, 3)
    expected = np.rint(gray16 / 257.0).astype(np.uint8)  # 65535 -> 255, 4369 -> 17.
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    for i in range(6):
        write_jpeg(tmp_path / f"good{i}.jpg")
    (tmp_path / "bad0.jpg").write_bytes(b"not a jpeg at all")
    good = (tmp_path / "good0.jpg").read_bytes()
    (tmp_path / "bad1.jpg").write_bytes(good[: len(good) // 2])  # Truncated.
    source = FolderSource(tmp_path)
    bad = {source.files.index(str(tmp_path / f"bad{i}.jpg")) for i in range(2)}

    def make(**kw):
        return Loader(source, image_size=8, global_batch_size=16, seed=0, random_flip=False, **kw)

    loader = make(num_workers=1)  # Read in a worker process, counted in this one.
    with caplog.at_level(logging.WARNING):
        batches = [b for _, b in loader.iterate(0, 2)]
    # 32 rows = 4 epochs of the 8 files: each bad file is drawn 4 times (a substitute may fail
    # too, and is counted as well).
    drawn = [int(i) for k in range(2) for i in loader.global_indices(k)]
    assert sum(i in bad for i in drawn) == 8 and loader.num_bad_records >= 8
    assert caplog.text.count("unreadable records replaced") == 2  # One warning per step.
    for batch in batches:  # Only good images remain: (200, 30, 30) up to JPEG rounding.
        np.testing.assert_allclose(batch["image"][:, 4, 4].astype(int),
                                   np.broadcast_to([200, 30, 30], (16, 3)), atol=3)
    again = make(num_workers=0)  # Same substitutes when read in this process.
    for k in range(2):
        assert_same_batch(again.get_batch(k), batches[k])
    assert again.num_bad_records == loader.num_bad_records


def test_a_row_that_keeps_failing_is_a_user_error(tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    loader = Loader(FolderSource(tmp_path), image_size=8, global_batch_size=2, seed=0)
    with pytest.raises(UserError, match="15 substitutes could not be read"):
        loader.get_batch(0)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="contains no images"):
        FolderSource(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        FolderSource(tmp_path / "missing")
    config = base.get_config()
    config.data.source = "folder"
    with pytest.raises(UserError, match="data.folder"):
        build_loader(config, process_index=0, process_count=1)
    config.data.source = "nope"
    with pytest.raises(UserError, match="data.source='nope'; use one of digits, folder, tfds"):
        validate(config, "train")
