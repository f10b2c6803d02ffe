"""tfds source: a tiny builder prepared as array_record into a tmp data_dir, and the errors.

Budget: ~20 s on 2 cores (importing TensorFlow, one grain worker process). Nothing is
downloaded.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from utils import run_python

from configs import base
from sd_jax.data import build_loader
from sd_jax.errors import UserError

tfds_source = pytest.importorskip("sd_jax.data.tfds_source")
tfds = tfds_source._import_tfds()


class TinyImages(tfds.core.GeneratorBasedBuilder):
    """12 images of varying size; image i has value 20 * i and label i % 3."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(12)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((10 + i, 14, 3), 20 * i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    TinyImages(data_dir=str(path), file_format="array_record").download_and_prepare()
    return str(path)


def test_tfds_source_random_access(data_dir):
    source = tfds_source.TfdsSource("tiny_images", split="train", data_dir=data_dir)
    assert len(source) == 12 and source.num_classes == 3
    seen = []
    for record in range(12):  # tfds shuffles records at preparation: recover i from the value.
        image, label = source[record]
        i = int(image[0, 0, 0]) // 20
        assert image.shape == (10 + i, 14, 3) and image.dtype == np.uint8
        assert np.all(image == 20 * i) and label == i % 3
        seen.append(i)
    assert sorted(seen) == list(range(12))


def test_build_loader_from_tfds(data_dir):
    config = base.get_config()
    config.data.name, config.data.data_dir = "tiny_images", data_dir
    config.model.image_size, config.train.batch_size, config.model.num_classes = 8, 6, 3
    config.data.num_workers = 1
    loader = build_loader(config, process_index=0, process_count=1)
    batch = loader.get_batch(1)
    values = np.array([loader.source[j][0][0, 0, 0] for j in loader.global_indices(1)])
    np.testing.assert_array_equal(batch["image"][:, 4, 4, 0], values)  # Constant images.
    np.testing.assert_array_equal(batch["label"], values // 20 % 3)
    # The same batch when a grain worker process reopens the source from its pickle.
    step, from_worker = next(loader.iterate(1, 2))
    assert step == 1
    for key in batch:
        np.testing.assert_array_equal(from_worker[key], batch[key])


def test_pickled_source_reopens_without_tensorflow(data_dir):
    source = tfds_source.TfdsSource("tiny_images", split="train", data_dir=data_dir)
    expected = [(int(source[i][0][0, 0, 0]), source[i][1]) for i in range(12)]
    # A fresh interpreter, like a grain worker: no builder class registered, no TensorFlow.
    result = run_python(f"""
        import pickle, sys
        source = pickle.loads({pickle.dumps(source)!r})
        print([(int(source[i][0][0, 0, 0]), source[i][1]) for i in range(len(source))])
        print("tensorflow" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == str(expected) and lines[-1] == "False"


def test_tfrecord_only_dataset_says_how_to_reprepare(tmp_path):
    TinyImages(data_dir=str(tmp_path)).download_and_prepare()  # tfds default: tfrecord.
    with pytest.raises(UserError, match="file_format=array_record"):
        tfds_source.TfdsSource("tiny_images", data_dir=str(tmp_path))


def test_unknown_name_unprepared_and_bad_split(tmp_path, data_dir):
    with pytest.raises(UserError, match="unknown tfds dataset 'no_such_dataset_xyz'"):
        tfds_source.TfdsSource("no_such_dataset_xyz", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="not prepared.*tfds build tiny_images"):
        tfds_source.TfdsSource("tiny_images", data_dir=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no split 'test'"):
        tfds_source.TfdsSource("tiny_images", split="test", data_dir=data_dir)


def test_missing_manual_imagenet_files(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")  # Train tar missing.
    with pytest.raises(UserError, match="lacks ILSVRC2012_img_train.tar: download") as e:
        tfds_source.TfdsSource("imagenet2012", data_dir=str(tmp_path), manual_dir=str(manual))
    assert "--file_format=array_record" in str(e.value)
    (manual / "ILSVRC2012_img_train.tar").write_bytes(b"")  # Present but not prepared yet.
    with pytest.raises(UserError, match="prepare it once with `CUDA_VISIBLE_DEVICES= tfds build"):
        tfds_source.TfdsSource("imagenet2012", data_dir=str(tmp_path), manual_dir=str(manual))
