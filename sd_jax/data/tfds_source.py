"""tensorflow-datasets source, random access through `builder.as_data_source` (array_record).

Strategy: the loader never downloads or prepares a dataset (a training job on many hosts is the
wrong place for an hours-long ImageNet preparation). The dataset must already be prepared in
`data_dir` in the array_record format; otherwise a UserError gives the exact `tfds build`
command. Datasets prepared only as tfrecord (tfds's default) have no random access and are
refused with the re-prepare command; there is no tf.data fallback, because it could not give
`get_batch(step)` for an arbitrary step. Records are decoded by tfds's NumPy path (PIL / OpenCV),
so TensorFlow is imported only to hide accelerators from it and for tfds's own bookkeeping.
The loader's worker processes reopen the prepared files by directory
(`tfds.builder_from_directory`), which needs neither the builder class nor TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sd_jax.errors import UserError
from sd_jax.tf_cpu import import_tensorflow

# Files tfds expects in the manual download dir (the rest are handled generically).
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}


def _import_tfds():
    import_tensorflow()  # Before tfds, so TF never sees the accelerators.
    import tensorflow_datasets as tfds

    return tfds


def build_command(name: str, data_dir: str, manual_dir: str | None) -> str:
    """The `tfds build` command that prepares `name` for random access."""
    manual = f" --manual_dir={manual_dir}" if manual_dir else ""
    return (f"CUDA_VISIBLE_DEVICES= tfds build {name} --data_dir={data_dir}{manual} "
            "--file_format=array_record")


def _not_prepared_error(builder, name: str, data_dir: str, manual_dir: str | None) -> UserError:
    """What to do when `name` is not prepared: download manually and/or run `tfds build`."""
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions:
        manual = Path(manual_dir or Path(data_dir) / "downloads" / "manual").expanduser()
        base = name.split("/")[0].split(":")[0]
        needed = MANUAL_FILES.get(base, ())
        missing = [f for f in needed if not (manual / f).exists()]
        if not manual.is_dir() or missing or (not needed and not any(manual.iterdir())):
            what = ", ".join(missing) if missing else "the manually downloaded files"
            hint = " (register at https://image-net.org/download-images)" if needed else ""
            return UserError(
                f"tfds dataset {name!r} is not prepared in {data_dir} and the manual download "
                f"dir {manual} lacks {what}: download them there{hint}, then run "
                f"`{build_command(name, data_dir, str(manual))}` "
                "(or set --config.data.manual_dir / --config.data.data_dir)")
        return UserError(
            f"tfds dataset {name!r} is not prepared in {data_dir}; the manual files are in "
            f"{manual}, so prepare it once with `{build_command(name, data_dir, str(manual))}`")
    return UserError(f"tfds dataset {name!r} is not prepared in {data_dir}; prepare it once with "
                     f"`{build_command(name, data_dir, None)}` (this loader never downloads)")


def _image_and_label_keys(features) -> tuple[str, str | None, int]:
    """(image key, label key or None, num_classes) of a tfds FeaturesDict."""
    import tensorflow_datasets as tfds

    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not images:
        raise UserError(f"the tfds dataset has no image feature (features: {list(features)})")
    image_key = "image" if "image" in images else images[0]
    label_key = "label" if "label" in labels else (labels[0] if labels else None)
    num_classes = features[label_key].num_classes if label_key else 0
    return image_key, label_key, num_classes


class TfdsSource:
    """A split of a prepared tfds dataset (e.g. 'imagenet2012', 'imagenet_resized/64x64',
    'celeb_a_hq/256'); examples decode to (uint8 [H, W, C], label), label 0 if unlabelled."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None,
                 manual_dir: str | None = None) -> None:
        tfds = _import_tfds()
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # DatasetNotFoundError, bad config name, bad version, ...
            raise UserError(f"unknown tfds dataset {name!r} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0]}); see `tfds.list_builders()` or "
                            "https://www.tensorflow.org/datasets/catalog") from e
        data_dir = str(data_dir or tfds.core.constants.DATA_DIR)
        if not builder.is_prepared():
            raise _not_prepared_error(builder, name, data_dir, manual_dir)
        formats = {f.value for f in builder.info.available_file_formats()}
        if "array_record" not in formats:
            raise UserError(
                f"tfds dataset {name!r} in {builder.data_dir} is prepared as {sorted(formats)}, "
                "which has no random access; re-prepare it as array_record with "
                f"`{build_command(name, data_dir, manual_dir)}` (into a fresh --data_dir, or "
                "after deleting that folder)")
        try:
            self.data = builder.as_data_source(split=split, file_format="array_record")
        except (ValueError, KeyError) as e:
            raise UserError(f"tfds dataset {name!r} has no split {split!r} (splits: "
                            f"{list(builder.info.splits)})") from e
        self.image_key, self.label_key, self.num_classes = _image_and_label_keys(
            builder.info.features)
        self.name, self.split = name, split
        self.builder_dir = str(builder.data_dir)  # The prepared version's folder.

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["data"]  # Reopened by __setstate__: file handles do not cross processes.
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        import tensorflow_datasets as tfds  # Reads array_record with NumPy: TF is not imported.

        builder = tfds.builder_from_directory(self.builder_dir)
        self.data = builder.as_data_source(split=self.split, file_format="array_record")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        example = self.data[index]
        label = int(example[self.label_key]) if self.label_key else 0
        return np.asarray(example[self.image_key]), label
