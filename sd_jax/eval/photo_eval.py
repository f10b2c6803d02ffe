"""Photo metrics of a samples .npz in `--mode=eval` (sources 'photos' and 'folder'): SWD per
pyramid level, power ratio per octave and saturation ratio (`photo_metrics`), no download.

The reference is as many images as there are samples, rendered at the samples' size:
- 'photos': crops of the held-out photos (`data.split='test'`, never trained on), drawn with
  `REFERENCE_SEED` so they are not the crops a 'test' source would train on;
- 'folder': images of `data.folder` (a seeded choice, centre-cropped and resized like the
  loader's): the training images themselves, so a memorising model would score well.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from sd_jax.data import FolderSource, photos, preprocess
from sd_jax.errors import UserError
from sd_jax.eval import photo_metrics
from sd_jax.io import npz

REFERENCE_SEED = 1  # Crop seed of the photo reference.
SOURCES = ("photos", "folder")  # The data.source values scored with photo metrics.


def reference_images(data_cfg: ml_collections.ConfigDict, size: int, count: int
                     ) -> tuple[np.ndarray, str]:
    """(uint8 [count, size, size, 3] reference images, what they are) for `data_cfg.source`."""
    if data_cfg.source == "photos":
        source = photos.PhotoSource(size, "test", seed=REFERENCE_SEED)
        return source.images(count), f"held-out photos ({', '.join(source.names)})"
    if not data_cfg.folder:
        raise UserError("photo metrics of a folder run need --config.data.folder=/path/to/images")
    source = FolderSource(data_cfg.folder)
    order = np.random.default_rng(REFERENCE_SEED).permutation(len(source))[:count]
    images = np.stack([preprocess.crop_resize(source[int(i)][0], size) for i in order])
    return images, f"{len(images)} images of {data_cfg.folder} (training data)"


def evaluate_npz(samples_path: str | os.PathLike, data_cfg: ml_collections.ConfigDict
                 ) -> dict:
    """Photo metrics of `arr_0` of a samples .npz against `reference_images`."""
    samples = npz.load(samples_path, "samples")["arr_0"]
    if samples.ndim != 4 or samples.shape[1] != samples.shape[2] or samples.shape[3] != 3:
        raise UserError(f"{samples_path}: arr_0 has shape {samples.shape}; photo metrics need "
                        "square RGB samples [N, S, S, 3]")
    if samples.shape[1] < photo_metrics.SWD_MIN_SIZE:
        raise UserError(f"{samples_path}: {samples.shape[1]} px samples; photo metrics need at "
                        f"least {photo_metrics.SWD_MIN_SIZE} px")
    reference, what = reference_images(data_cfg, samples.shape[1], len(samples))
    return {**photo_metrics.photo_metrics(samples, reference), "num_samples": len(samples),
            "photo_reference": what}


def summary(results: dict) -> str:
    """One line: SWD per level, power ratio per octave, saturation ratio."""
    swd = ", ".join(f"{k[4:]}px {v:.1f}" for k, v in results.items()
                    if k.startswith("swd_") and k != "swd_avg")
    power = ", ".join(f"{k[12:]} {v:.2f}" for k, v in results.items()
                      if k.startswith("power_ratio_"))
    return (f"SWDx1e3 {swd} (avg {results['swd_avg']:.1f}); power ratio per octave {power}; "
            f"saturation ratio {results['saturation_ratio']:.2f} "
            f"(vs {results['photo_reference']})")
