"""FD-digits, class accuracy and pixel checks of digit samples (eval mode on digits data).

The reference is the whole embedded digits set (1,797 images) rendered by the data loader at the
samples' resolution, so the data score FD = 0 against themselves at every size. All numbers need
no download: the classifier is trained on first use (`digits_net.load_or_build`).
"""

from __future__ import annotations

import os

import numpy as np

from sd_jax.errors import UserError
from sd_jax.eval import digits_net, fid, sample_quality
from sd_jax.io import npz


def digits_metrics(samples_u8: np.ndarray, labels: np.ndarray | None, variables: dict,
                   reference_u8: np.ndarray) -> dict[str, float]:
    """FD-digits against `reference_u8`, accuracy against `labels` (if given), HF and colour."""
    if len(samples_u8) < 2:
        raise UserError(f"FD-digits needs at least 2 samples, got {len(samples_u8)}")
    extract = digits_net.make_extractor(variables)
    ref = fid.compute_image_stats(reference_u8, extract, batch_size=500, with_spatial=False)
    got = fid.compute_image_stats(samples_u8, extract, batch_size=500, with_spatial=False)
    out = {"fd_digits": fid.frechet_distance(got.mu, got.sigma, ref.mu, ref.sigma),
           "num_samples": got.count}
    labels = None if labels is None else np.asarray(labels)
    conditional = None if labels is None else labels < digits_net.NUM_CLASSES
    if conditional is not None and conditional.any():  # Null-label (unconditional) rows skipped.
        predicted = np.argmax(got.logits, axis=1)
        out["class_accuracy"] = float(np.mean(predicted[conditional] == labels[conditional]))
    quality = sample_quality.quality_metrics(samples_u8, reference_u8)
    out.update({k: quality[k] for k in ("hf_ratio", "colour_noise")})
    return out


def evaluate_npz(samples_path: str | os.PathLike, classifier_path: str | None,
                 num_classes: int) -> dict[str, float]:
    """Scores an ADM-format samples .npz (arr_0 images, arr_1 labels if class-conditional)."""
    path = samples_path
    arrays = npz.load(path, "samples")
    samples = arrays["arr_0"]
    labels = arrays.get("arr_1") if num_classes else None
    if samples.ndim != 4 or samples.shape[1] != samples.shape[2]:
        raise UserError(f"{path}: arr_0 has shape {samples.shape}; expected square "
                        "[N, H, W, 3] digit samples")
    if labels is not None and len(labels) != len(samples):
        raise UserError(f"{path}: {len(labels)} labels (arr_1) for {len(samples)} images")
    variables, test_accuracy = digits_net.load_or_build(classifier_path)
    reference, _ = digits_net.digits_data(samples.shape[1])
    out = digits_metrics(samples, labels, variables, reference)
    out["classifier_test_accuracy"] = test_accuracy
    return out
