"""`validate(config, mode)`: the whole config, checked once before any data or state is built.

`sd_jax.main.run` calls it first in every mode, so a bad sampler or `checkpoint_every=0` stops the
run in its first second with one line, not at the first sample grid thousands of steps in. This is
the one place config values are checked: the specs built from the config (`sd_jax.specs`) and the
modules below trust them. The checks are tables of config paths; the allowed names come from the
tables that implement them (`spec.SCHEDULES`, `losses.LOSSES`, `samplers.SAMPLERS`,
`registry.ARCHITECTURES`, `sources.SOURCES`, ...), so a new option added there is accepted here
without an edit. Errors are `UserError`s with one line each. `check_workdir(workdir)` is the
matching check of the run directory.

A field given on the command line that the run would ignore is an error too (`_check_applies`):
a path set for a data source, model or mode that does not read it (`--config.data.folder=...`
under the digits), naming the field and what would read it. Only what the command line sets
(`overridden`) counts: a config file may keep a value that a command-line switch makes unused
(`quickstart.py`'s class labels under `--config.model.num_classes=0`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import uuid
from collections.abc import Callable, Collection
from typing import Any

import jax
import ml_collections
from etils import epath

from sd_jax.data import photos
from sd_jax.data.sources import SOURCES
from sd_jax.diffusion import losses, process, samplers, schedules
from sd_jax.diffusion.spec import SCHEDULES
from sd_jax.errors import UserError
from sd_jax.eval import fid, inception
from sd_jax.io.paths import as_path, check_reachable, is_uri
from sd_jax.models import colour, registry
from sd_jax.models.spec import ATTENTION_IMPLS, REMAT, TRANSFORMS, ModelSpec
from sd_jax.sample import mode as sample_mode

MODES = ("train", "sample", "eval", "inspect", "plan")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")  # Matmul/conv dtypes the layers support.


def _choices() -> dict[str, tuple[Any, ...]]:
    """Config path -> allowed values, read from the tables that implement them."""
    return {
        "model.arch": tuple(registry.ARCHITECTURES),
        "model.dtype": COMPUTE_DTYPES,
        "model.prediction": tuple(process.PREDICTIONS),
        "model.input_transform": TRANSFORMS,
        "model.remat": REMAT,
        "model.attention_impl": ATTENTION_IMPLS,
        "model.colour_transform": colour.COLOUR_TRANSFORMS,
        "diffusion.schedule": tuple(SCHEDULES),
        "diffusion.time_sampling": tuple(schedules.TIME_SAMPLING),
        "diffusion.loss": ("auto", *losses.LOSSES),  # 'auto': the architecture's default_loss.
        "diffusion.loss_weighting": tuple(losses.LOSS_WEIGHTINGS),
        "sample.sampler": tuple(samplers.SAMPLERS),
        "sample.grid": tuple(samplers.GRIDS),
        "data.source": tuple(SOURCES),
        "eval.inception_preprocess": inception.PREPROCESS_MODES,
        "eval.fid_method": fid.FID_METHODS,
    }


# Numeric fields by the range they must lie in (checked by _RULES, one line per failure).
_POSITIVE = (  # Counts, periods and sizes: a 0 would divide by zero or do nothing.
    "model.image_size", "model.image_channels", "model.base_channels", "model.num_heads",
    "model.emb_dim", "model.mlp_ratio",
    "train.num_steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.stop_check_every", "train.sample_grid_size",
    "sample.num_steps", "sample.batch_size", "sample.num_samples", "eval.batch_size",
    "eval.is_splits", "eval.fid_num_samples", "optimizer.learning_rate",
    "diffusion.noise_d", "diffusion.noise_d_low", "diffusion.noise_d_high",
    "diffusion.multiscale_min_size",
)
_NON_NEGATIVE = (
    "seed",  # numpy's generators (data order, labels) take no negative seed.
    "model.num_res_blocks", "model.transformer_depth",
    "train.sample_every", "eval.fid_every", "eval.poll_secs", "optimizer.warmup_steps",
    "optimizer.weight_decay",
    "train.microbatch_size",  # 0: no gradient accumulation.
    "data.num_workers",  # 0: decode in the training process.
    "optimizer.grad_clip", "optimizer.eps", "sample.guidance_scale",
    "plan.devices", "plan.device_memory_gb", "plan.show",  # 0: this machine's devices / memory.
)
_UNIT_INTERVAL = (  # Probabilities, decays and interpolation weights: in [0, 1].
    "train.label_dropout", "train.ema_decay", "model.dropout", "sample.noise_param",
    "optimizer.b1", "optimizer.b2",
)
_RULES: tuple[tuple[tuple[str, ...], Callable[[Any], bool], str], ...] = (
    (_POSITIVE, lambda v: v > 0, "> 0"),
    (_NON_NEGATIVE, lambda v: v >= 0, ">= 0"),
    (_UNIT_INTERVAL, lambda v: 0 <= v <= 1, "in [0, 1]"),
)
# Per attention backend: (largest head dim, head dim multiple, compute dtypes) or None (no
# limit). cuDNN flash attention (jax.nn.dot_product_attention(implementation='cudnn')): bf16/f16,
# head dim a multiple of 8 and <= 256 on Hopper (H100) and newer, <= 128 on Ampere (A100).
ATTENTION_LIMITS: dict[str, tuple[int, int, tuple[str, ...]] | None] = {
    "xla": None,
    "cudnn": (256, 8, ("bfloat16", "float16")),
}


# Model fields younger than some configs, with the value such a config means.
_DEFAULTS = {"model.attention_impl": "xla", "model.colour_transform": "none"}


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    parent, _, name = path.rpartition(".")
    node = config
    for part in parent.split(".") if parent else ():
        node = node[part]
    return node[name] if name in node or path not in _DEFAULTS else _DEFAULTS[path]


def _check_values(config: ml_collections.ConfigDict) -> None:
    for path, allowed in _choices().items():
        if _get(config, path) not in allowed:
            raise UserError(f"config.{path}={_get(config, path)!r}; use one of "
                            f"{', '.join(map(str, allowed))}")
    for paths, ok, must_be in _RULES:
        for path in paths:
            value = _get(config, path)
            if not isinstance(value, int | float) or math.isnan(value) or not ok(value):
                raise UserError(f"config.{path}={value!r} must be {must_be}")
    if config.seed >= 2**32:
        raise UserError(f"config.seed={config.seed} must be below 2**32")
    multipliers = tuple(config.model.channel_multipliers)
    if not multipliers or not all(isinstance(x, int) and x > 0 for x in multipliers):
        raise UserError(f"config.model.channel_multipliers={multipliers} must be positive "
                        "integers, one per level")


def _check_model_fields(config: ml_collections.ConfigDict) -> None:
    names = [f.name for f in dataclasses.fields(ModelSpec)]
    missing = sorted(n for n in names if n not in config.model and f"model.{n}" not in _DEFAULTS)
    if missing:
        raise UserError(f"config.model is missing fields {missing}; build on configs/base.py")


def _check_model(config: ml_collections.ConfigDict) -> None:
    """What a network needs of `config.model` beyond each field's own range: the fields fit
    together (sizes divide, widths split into heads) and the attention backend supports them."""
    spec = ModelSpec.from_config(config.model)
    arch = registry.ARCHITECTURES[spec.arch]
    if spec.colour_transform != "none" and spec.image_channels != 3:
        raise UserError(f"model.colour_transform={spec.colour_transform!r} needs RGB images "
                        f"(image_channels=3, got {spec.image_channels}); use 'none'")
    if arch.has_transformer and len(spec.channel_multipliers) < 2:
        raise UserError(f"model.arch={spec.arch!r} needs >= 2 channel_multipliers (conv "
                        "levels + transformer)")
    if spec.input_transform in ("patch", "conv") and spec.patch_size < 1:
        raise UserError(f"model.patch_size={spec.patch_size} must be >= 1")
    total = spec.transform_factor * 2 ** (len(spec.channel_multipliers) - 1)
    if spec.image_size % total:
        raise UserError(
            f"model.image_size={spec.image_size} is not divisible by the total downsampling "
            f"{total} (input transform x 2 per level); change channel_multipliers")
    for w in arch.attention_widths(spec):
        if w % spec.num_heads:
            raise UserError(f"attention width {w} is not divisible by num_heads={spec.num_heads}")
    if spec.num_classes < 0:
        raise UserError("model.num_classes must be >= 0 (0: unconditional)")
    limits = ATTENTION_LIMITS.get(spec.attention_impl)
    if limits is None:
        return
    max_dim, multiple, dtypes = limits
    head_dims = sorted({w // spec.num_heads for w in arch.attention_widths(spec)})
    bad = [d for d in head_dims if d > max_dim or d % multiple]
    impl = f"model.attention_impl={spec.attention_impl!r}"
    if bad:
        raise UserError(f"{impl} supports head dims <= {max_dim} that divide by {multiple}, but "
                        f"this model's are {head_dims} (width / model.num_heads={spec.num_heads}); "
                        f"raise model.num_heads or use model.attention_impl='xla'")
    if spec.dtype not in dtypes:
        raise UserError(f"{impl} needs model.dtype in {dtypes}, not {spec.dtype!r}")


def _check_diffusion_and_sampling(config: ml_collections.ConfigDict) -> None:
    d, s, m = config.diffusion, config.sample, config.model
    if not d.logsnr_min < d.logsnr_max:
        raise UserError(f"config.diffusion.logsnr_min={d.logsnr_min} must be below "
                        f"logsnr_max={d.logsnr_max}")
    if d.schedule == "interpolated_cosine" and d.noise_d_low > d.noise_d_high:
        raise UserError(
            f"config.diffusion.noise_d_low={d.noise_d_low} is above noise_d_high="
            f"{d.noise_d_high}; noise_d_low is the stronger shift, used at the noisy end t = 1 "
            "(e.g. 32 and 256 at 512): swap them")
    if d.multiscale:
        _check_multiscale_weighting(d, losses.multiscale_sizes(m.image_size, d.multiscale_min_size))
    if s.guidance_scale != 1.0 and m.num_classes == 0:
        raise UserError("config.sample.guidance_scale != 1 needs a class-conditional model "
                        "(model.num_classes > 0); set sample.guidance_scale=1.0")
    if s.guidance_logsnr_min > s.guidance_logsnr_max:
        raise UserError(f"config.sample.guidance_logsnr_min={s.guidance_logsnr_min} is above "
                        f"guidance_logsnr_max={s.guidance_logsnr_max}")


def _check_multiscale_weighting(d: ml_collections.ConfigDict, sizes: list[int]) -> None:
    weighting = d.multiscale_weighting
    if isinstance(weighting, str):
        if weighting not in losses.MULTISCALE_WEIGHTINGS:
            raise UserError(f"config.diffusion.multiscale_weighting={weighting!r}; use one of "
                            f"{', '.join(losses.MULTISCALE_WEIGHTINGS)} or give one number per "
                            "scale")
    elif len(weighting) != len(sizes):
        raise UserError(f"config.diffusion.multiscale_weighting has {len(weighting)} weights but "
                        f"the scales are {sizes}; give one weight per scale (smallest first)")


def _check_data(config: ml_collections.ConfigDict) -> None:
    data = config.data
    if data.source == "photos" and data.split not in photos.SPLITS:
        raise UserError(f"config.data.split={data.split!r}; data.source='photos' has splits "
                        f"{', '.join(photos.SPLITS)} ('test': the held-out photos)")


def _check_mesh(config: ml_collections.ConfigDict) -> None:
    sizes = {axis: config.mesh[axis] for axis in ("data", "fsdp")}
    for axis, size in sizes.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise UserError(f"config.mesh.{axis}={size!r} must be a positive device count or -1 "
                            "(all devices left over)")
    if list(sizes.values()).count(-1) > 1:
        raise UserError("at most one of config.mesh.data / config.mesh.fsdp may be -1")


def _inception_used(c: ml_collections.ConfigDict) -> bool:
    """Eval mode scores with Inception unless the data are the digits (without Inception
    weights); periodic FID always does."""
    return c.data.source != "digits" or bool(c.eval.inception_weights) or c.eval.fid_every > 0


_Rule = Callable[[ml_collections.ConfigDict, str], bool]
_TFDS: tuple[_Rule, str] = (lambda c, _: c.data.source == "tfds", "data.source='tfds'")
_INCEPTION: tuple[_Rule, str] = (
    lambda c, _: _inception_used(c),
    "Inception metrics (a data.source other than 'digits', eval.inception_weights or "
    "eval.fid_every > 0)")
_GUIDANCE: tuple[_Rule, str] = (lambda c, _: c.sample.guidance_scale != 1.0,
                                "guidance (sample.guidance_scale != 1)")
_MULTISCALE: tuple[_Rule, str] = (lambda c, _: bool(c.diffusion.multiscale),
                                  "diffusion.multiscale=True")
_PLAN: tuple[_Rule, str] = (lambda _, mode: mode == "plan", "--mode=plan")
# Field -> (whether this run reads it, given the config and the mode; what would read it).
APPLIES: dict[str, tuple[_Rule, str]] = {
    "data.folder": (lambda c, _: c.data.source == "folder", "data.source='folder'"),
    "data.name": _TFDS, "data.split": _TFDS, "data.data_dir": _TFDS, "data.manual_dir": _TFDS,
    "eval.reference_npz": _INCEPTION, "eval.inception_preprocess": _INCEPTION,
    "eval.sfid": _INCEPTION, "eval.fid_method": _INCEPTION, "eval.is_splits": _INCEPTION,
    "eval.digits_classifier": (lambda c, _: c.data.source == "digits",
                               "data.source='digits' (FD-digits)"),
    "eval.samples_npz": (lambda _, mode: mode == "eval", "--mode=eval"),
    "eval.fid_num_samples": (lambda c, _: c.eval.fid_every > 0, "eval.fid_every > 0"),
    "eval.from_shards": (lambda _, mode: mode == "eval", "--mode=eval"),
    "eval.poll_secs": (lambda c, mode: mode == "eval" and c.eval.from_shards,
                       "--mode=eval with eval.from_shards=True"),
    "sample.labels": (lambda c, _: c.model.num_classes > 0,
                      "a class-conditional model (model.num_classes > 0)"),
    "sample.guidance_logsnr_min": _GUIDANCE, "sample.guidance_logsnr_max": _GUIDANCE,
    "sample.noise_param": (lambda c, _: c.sample.sampler == "ddpm", "sample.sampler='ddpm'"),
    "diffusion.noise_d": (lambda c, _: c.diffusion.schedule == "shifted_cosine",
                          "diffusion.schedule='shifted_cosine'"),
    "diffusion.noise_d_low": (lambda c, _: c.diffusion.schedule == "interpolated_cosine",
                              "diffusion.schedule='interpolated_cosine'"),
    "diffusion.noise_d_high": (lambda c, _: c.diffusion.schedule == "interpolated_cosine",
                               "diffusion.schedule='interpolated_cosine'"),
    "diffusion.sigmoid_bias": (lambda c, _: c.diffusion.loss_weighting == "sigmoid",
                               "diffusion.loss_weighting='sigmoid'"),
    "diffusion.multiscale_min_size": _MULTISCALE, "diffusion.multiscale_weighting": _MULTISCALE,
    "model.patch_size": (lambda c, _: c.model.input_transform in ("patch", "conv"),
                         "model.input_transform='patch' or 'conv'"),
    "model.attention_resolutions": (
        lambda c, _: registry.ARCHITECTURES[c.model.arch].conv_attention, "model.arch='unet'"),
    "model.transformer_depth": (
        lambda c, _: registry.ARCHITECTURES[c.model.arch].has_transformer,
        "a U-ViT (model.arch='uvit' or 'residual_uvit')"),
    "train.profile_num_steps": (lambda c, _: c.train.profile_start_step > 0,
                                "train.profile_start_step > 0"),
    "plan.devices": _PLAN, "plan.device_memory_gb": _PLAN, "plan.show": _PLAN,
}


def _check_applies(config: ml_collections.ConfigDict, mode: str,
                   overridden: Collection[str]) -> None:
    """A field given on the command line (`overridden`) that this run would not read is an error
    naming what would read it."""
    for path, (applies, reader) in APPLIES.items():
        if path in overridden and not applies(config, mode):
            raise UserError(f"config.{path}={_get(config, path)!r} would be ignored: only "
                            f"{reader} uses it; remove it (or change the config so that it "
                            "applies)")


def check_microbatch(train_cfg: ml_collections.ConfigDict, num_devices: int | None) -> None:
    """UserError unless `train.microbatch_size` (a GLOBAL micro-batch; 0 = none) divides
    `train.batch_size` and, given `num_devices`, is divisible by it (each micro-batch is split
    over every device)."""
    batch, micro = int(train_cfg.batch_size), int(train_cfg.microbatch_size)
    if micro in (0, batch):
        return
    if micro > batch or batch % micro:
        raise UserError(f"config.train.microbatch_size={micro} must divide train.batch_size="
                        f"{batch} (or be 0 for no gradient accumulation)")
    if num_devices and micro % num_devices:
        raise UserError(f"config.train.microbatch_size={micro} is the global micro-batch and must "
                        f"be divisible by the {num_devices} devices; use a multiple of "
                        f"{num_devices}")


def validate(config: ml_collections.ConfigDict, mode: str,
             overridden: Collection[str] = ()) -> None:
    """Raises UserError (one line) for the first bad field of `config`; `mode` as launch.py's;
    `overridden`: the config paths given on the command line (`model.dropout`, ...)."""
    if mode not in MODES:
        raise UserError(f"unknown --mode={mode}; use {', '.join(MODES)}")
    _check_model_fields(config)
    _check_values(config)
    _check_model(config)
    _check_diffusion_and_sampling(config)
    _check_data(config)
    _check_mesh(config)
    _check_applies(config, mode, overridden)
    if mode == "eval" and config.eval.from_shards and not config.eval.inception_weights:
        raise UserError("config.eval.from_shards=True streams Inception statistics: set "
                        "eval.inception_weights (FD-digits and the photo metrics need the "
                        "finished .npz)")
    # The device count matters only where the train step will run (inspect needs no devices).
    check_microbatch(config.train, jax.device_count() if mode == "train" else None)
    if mode == "sample":
        sample_mode.sample_labels(config, 1)  # Raises UserError on unparsable labels.


def check_workdir(workdir: str | os.PathLike, create: bool = True) -> epath.Path:
    """Raises UserError unless `workdir` is a directory this process can write, tested by writing
    a file (which also catches a read-only mount when running as root, or a bucket without write
    access). Creates it if `create`; otherwise a missing workdir passes (the mode reports what it
    expected to find there). A gs:// workdir is checked in the bucket; nothing local is made."""
    path = as_path(workdir)  # UserError for gs:// without gcsfs.
    remote = is_uri(path)
    if remote:
        check_reachable(path)  # Seconds, not a minute of a client library's retries.
    try:
        if path.exists() and not path.is_dir():
            raise UserError(f"--workdir={workdir} is a file, not a directory; pass a directory "
                            "path")
        if not path.exists() and not create:
            return path
        if remote:  # A bucket has no directories to create: write and delete one object.
            probe = path / f".write_test_{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        else:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
                pass
    except UserError:
        raise
    except Exception as e:  # gcsfs raises HTTP and auth errors too, not only OSError.
        if not remote and not isinstance(e, OSError):
            raise
        if remote:
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise UserError(f"--workdir={workdir} is not writable ({reason}); check that the "
                            "bucket exists and that this machine's credentials may write to it "
                            "(gcloud auth application-default login)") from e
        reason = e.strerror or type(e).__name__
        raise UserError(f"--workdir={workdir} is not writable ({reason}); pass a directory you "
                        "can write to") from e
    return path
