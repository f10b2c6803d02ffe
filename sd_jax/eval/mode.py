"""`--mode=eval`: FID / sFID / IS of a samples .npz against an ADM reference batch, and
FD-digits / class accuracy / pixel checks when the data are the embedded digits.

    python launch.py --config=configs/imagenet512.py --workdir=DIR --mode=eval \
        --config.eval.inception_weights=inception_fid.npz \
        --config.eval.reference_npz=VIRTUAL_imagenet512.npz

On `data.source='digits'` the digits scores (`digits_eval`, no download) are always computed,
on 'photos' and 'folder' the photo metrics (`photo_eval`: SWD per level, power per octave,
saturation, no download); on those three Inception only when `config.eval.inception_weights`
is set, on tfds always.
Samples: `config.eval.samples_npz`, default the newest .npz in <workdir>/samples. Results go to
the console, <workdir>/eval_<samples name>.json and a line of <workdir>/metrics.jsonl. Every
process computes the statistics (Inception batches split over its local devices); process 0
writes.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import ml_collections
import numpy as np
from etils import epath

from sd_jax.checkpoints import integrity
from sd_jax.errors import UserError
from sd_jax.eval import digits_eval, fid, inception, photo_eval
from sd_jax.io import lock, npz, paths

REF_BATCH_HELP = (
    "Download the ADM reference batch for your dataset (e.g. VIRTUAL_imagenet512.npz, "
    "VIRTUAL_imagenet256_labeled.npz) from https://github.com/openai/guided-diffusion/tree/main/"
    "evaluations and pass --config.eval.reference_npz=PATH "
    "(see docs/sampling.md)"
)


# config.model fields that change how the network is computed, not what it is.
COMPUTE_ONLY_FIELDS = ("dtype", "remat", "attention_impl", "dropout", "dropout_max_resolution")
LOGGED_KEYS = ("fid", "sfid", "inception_score", "inception_score_std", "fd_digits",
               "class_accuracy", "hf_ratio", "colour_noise", "num_samples", "guidance_scale",
               "saturation_ratio")
LOGGED_PREFIXES = ("swd_", "power_ratio_")  # Photo metrics: one per pyramid level / octave.
SHOWN_KEYS = ("fid", "sfid", "inception_score", "fd_digits", "class_accuracy", "hf_ratio",
              "colour_noise")


def build_extractor(eval_cfg: ml_collections.ConfigDict) -> tuple[fid.ExtractFn, int]:
    """Loads the Inception weights; returns (extract_fn, batch size rounded to the devices)."""
    variables = inception.load_weights(eval_cfg.inception_weights)
    extract, num_devices = inception.make_extractor(variables, eval_cfg.inception_preprocess)
    batch_size = math.ceil(eval_cfg.batch_size / num_devices) * num_devices
    return extract, batch_size


def check_images(path: str | os.PathLike, what: str = "samples") -> tuple[int, ...]:
    """Raises UserError unless `arr_0` is uint8 [N, H, W, 1 or 3] (read from its header only, so
    before any Inception work); returns its shape."""
    shape, dtype = npz.array_header(path, "arr_0", what)
    check_image_array(shape, dtype, f"{what} {path}: arr_0")
    return shape


def check_image_array(shape: tuple[int, ...], dtype: np.dtype, what: str) -> None:
    """Raises UserError (naming `what`) unless an array of `shape` and `dtype` is uint8
    [N, H, W, 1 or 3] images."""
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise UserError(f"{what} has shape {shape}; expected [N, H, W, 3] (ADM format)")
    if dtype != np.uint8:
        raise UserError(f"{what} is {dtype}; expected uint8 images in [0, 255] (ADM format; "
                        "float images in [0, 1] would be scored as nearly black)")


def image_stats(path: str | os.PathLike, extract_fn: fid.ExtractFn, batch_size: int,
                with_spatial: bool = True) -> fid.ImageStats:
    """Inception statistics of `arr_0` of an ADM-format .npz, streamed in batches."""
    check_images(path)
    return fid.compute_image_stats(npz.iter_rows(path, "arr_0", 10 * batch_size),
                                   extract_fn, batch_size, with_spatial)


def check_reference(path: str | None,
                    feature_dims: dict[str, int] = inception.FEATURE_DIMS) -> list[str]:
    """Raises UserError unless `path` is an .npz with mu/sigma of `feature_dims` (mu_s/sigma_s
    optional) or uint8 arr_0 images; returns its keys. Reads headers only (no Inception)."""
    if not path:
        raise UserError(f"config.eval.reference_npz is not set. {REF_BATCH_HELP}")
    if not paths.as_path(path).is_file():
        raise UserError(f"reference batch {path} does not exist. {REF_BATCH_HELP}")
    what = "reference batch"
    names = npz.keys(path, what)
    if not ({"mu", "sigma"} <= set(names) or "arr_0" in names):
        raise UserError(f"{path} has neither mu/sigma nor arr_0 images. {REF_BATCH_HELP}")
    if not {"mu", "sigma"} <= set(names):
        check_images(path, what)
        return names
    for mean, dim in feature_dims.items():
        cov = mean.replace("mu", "sigma")
        if mean not in names:
            continue
        for key, want in ((mean, (dim,)), (cov, (dim, dim))):
            shape, dtype = npz.array_header(path, key, what)
            if shape != want or dtype.kind != "f":
                raise UserError(f"{what} {path}: {key} is {dtype} {shape}, expected float {want} "
                                "(statistics of this Inception network's features). "
                                f"{REF_BATCH_HELP}")
    return names


def reference_stats(path: str | None, extract_fn: fid.ExtractFn, batch_size: int,
                    with_spatial: bool = True) -> dict[str, np.ndarray]:
    """mu/sigma (and mu_s/sigma_s) of a reference .npz: stored ones, else computed from arr_0."""
    names = check_reference(path)
    if "mu" in names and "sigma" in names:
        stored = npz.load(path, "reference batch")
        return {k: stored[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in names}
    stats = image_stats(path, extract_fn, batch_size, with_spatial)
    return {"mu": stats.mu, "sigma": stats.sigma, "mu_s": stats.mu_s, "sigma_s": stats.sigma_s}


def find_samples(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> epath.Path:
    """config.eval.samples_npz, or the newest .npz in <workdir>/samples (local or gs://)."""
    if config.eval.samples_npz:
        path = paths.as_path(config.eval.samples_npz)
        if not path.is_file():
            raise UserError(f"config.eval.samples_npz={config.eval.samples_npz} does not exist")
        return path
    # epath's stat() has whole-second times in a bucket and locally; ties go to the name.
    found = sorted(paths.as_path(workdir).joinpath("samples").glob("*.npz"),
                   key=lambda p: (p.stat().mtime, p.name))
    if not found:
        raise UserError(f"no samples .npz in {workdir}/samples: run --mode=sample first "
                        "or set --config.eval.samples_npz")
    return found[-1]


def sample_metadata(samples_path: epath.Path) -> dict:
    """The sidecar <name>.json sample mode writes (step, guidance, ...), or {}."""
    meta = samples_path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() else {}


def check_samples_model(samples_path: epath.Path, meta: dict, config: ml_collections.ConfigDict
                        ) -> None:
    """Raises UserError when the sidecar says the samples came from another `config.model`, so
    an FID is never reported for the wrong model (compute-only fields are not compared)."""
    fields = integrity.config_differences(meta.get("model"), config.model, COMPUTE_ONLY_FIELDS)
    if fields:
        raise UserError(f"samples {samples_path} were drawn from a different model than "
                        f"config.model ({', '.join(fields)}); evaluate them with the config they "
                        "were sampled with, or pick other samples with --config.eval.samples_npz")


def evaluate(samples_path: str | os.PathLike, reference: dict[str, np.ndarray],
             extract_fn: fid.ExtractFn, eval_cfg: ml_collections.ConfigDict,
             batch_size: int) -> dict:
    """FID / sFID / IS of one samples .npz against reference statistics."""
    stats = image_stats(samples_path, extract_fn, batch_size, eval_cfg.sfid)
    return fid.metrics(stats, reference, eval_cfg.is_splits, eval_cfg.fid_method)


def write_results(workdir: str | os.PathLike, name: str | None, results: dict,
                  step: int | None) -> None:
    """<workdir>/eval_<name>.json (unless name is None) and, when the step is known, a line of
    <workdir>/metrics.jsonl (its readers key records by step). Process 0 only."""
    if jax.process_index() != 0:
        return
    workdir = paths.as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if name is not None:
        (workdir / f"eval_{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    if step is None:
        return
    line = {"step": step, **{f"eval/{k}": v for k, v in results.items()
                             if k in LOGGED_KEYS or k.startswith(LOGGED_PREFIXES)}}
    paths.append_text(workdir / "metrics.jsonl", json.dumps(line) + "\n")


def metrics_step(workdir: str | os.PathLike, step: int | None, name: str) -> int | None:
    """The step to log eval's metrics.jsonl line at, or None (no line, with a note) while a
    training holds the workdir in a bucket. Eval takes no lock: it reads, and writes its own
    eval_<name>.json; locally its line is appended (one write), but in a bucket an append
    rewrites the object, as the training does at each checkpoint, so one of them could be lost."""
    training = None
    if step is not None and paths.is_uri(workdir):
        training = lock.holder(paths.as_path(workdir) / lock.TRAIN_LOCK)
    if training is None:
        return step
    if jax.process_index() == 0:
        print(f"note: not adding to metrics.jsonl, which {lock.describe(training)} rewrites; the "
              f"results are in eval_{name}.json", flush=True)
    return None


def inception_metrics(config: ml_collections.ConfigDict, samples_path: epath.Path) -> dict:
    """FID / sFID / IS of the samples against `config.eval.reference_npz`."""
    extract_fn, batch_size = build_extractor(config.eval)
    reference = reference_stats(config.eval.reference_npz, extract_fn, batch_size,
                                config.eval.sfid)
    results = evaluate(samples_path, reference, extract_fn, config.eval, batch_size)
    return {**results, "reference": str(config.eval.reference_npz)}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`--mode=eval`: evaluates the samples .npz, prints and writes the metrics."""
    samples_path = find_samples(config, workdir)
    meta = sample_metadata(samples_path)
    check_samples_model(samples_path, meta, config)
    check_images(samples_path)  # Every input is checked before any network runs.
    digits = config.data.source == "digits"
    photo = config.data.source in photo_eval.SOURCES
    use_inception = bool(config.eval.inception_weights) or not (digits or photo)
    if use_inception:
        check_reference(config.eval.reference_npz)
    start = time.time()
    results = {}
    if use_inception:
        results.update(inception_metrics(config, samples_path))
    if digits:
        results.update(digits_eval.evaluate_npz(samples_path, config.eval.digits_classifier,
                                                config.model.num_classes))
    if photo:
        results.update(photo_eval.evaluate_npz(samples_path, config.data))
    results = {**meta, **results, "samples": str(samples_path),  # Measured values win.
               "seconds": round(time.time() - start, 1)}
    write_results(workdir, samples_path.stem, results,
                  metrics_step(workdir, meta.get("step"), samples_path.stem))
    if jax.process_index() == 0:
        shown = ", ".join(f"{k}={results[k]:.4g}" for k in SHOWN_KEYS if k in results)
        head = f"eval {samples_path.name} ({results['num_samples']} images): "
        if shown:
            print(head + shown, flush=True)
        if photo:
            print(head + photo_eval.summary(results), flush=True)
    return results
