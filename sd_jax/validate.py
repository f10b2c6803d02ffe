"""`validate(config, mode)`: the whole config, checked once before any data or state is built.

`sd_jax.main.run` calls it first in every mode, so a bad sampler or `checkpoint_every=0` stops the
run in its first second with one line, not at the first sample grid thousands of steps in. The
checks are tables of config paths; the allowed values come from the modules that use them
(`schedules.SCHEDULES`, `losses.LOSSES`, `sampling.SAMPLERS`, `ModelSpec.validate`, ...), so a new
option added there is accepted here without an edit. Errors are `UserError`s with one line each.
`check_workdir(workdir)` is the matching check of the run directory.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from etils import epath

from sd_jax import models
from sd_jax.diffusion import losses, schedules
from sd_jax.diffusion import samplers as sampling
from sd_jax.errors import UserError
from sd_jax.eval import fid, inception
from sd_jax.io.paths import as_path, is_uri

MODES = ("train", "sample", "eval", "inspect", "plan")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")  # Matmul/conv dtypes the layers support.
MODEL_PREDICTIONS = losses.PREDICTIONS  # What a network can output (losses.diffusion_loss).


def _choices() -> dict[str, tuple[Any, ...]]:
    """Config path -> allowed values, read from the modules that implement them."""
    return {
        "model.dtype": COMPUTE_DTYPES,
        "model.prediction": MODEL_PREDICTIONS,
        "diffusion.schedule": tuple(schedules.SCHEDULES),
        "diffusion.time_sampling": tuple(schedules.TIME_SAMPLING),
        "diffusion.loss": tuple(losses.LOSSES),
        "diffusion.loss_weighting": tuple(losses.LOSS_WEIGHTINGS),
        "sample.sampler": tuple(sampling.SAMPLERS),
        "eval.inception_preprocess": inception.PREPROCESS_MODES,
        "eval.fid_method": fid.FID_METHODS,
    }


# Numeric fields by the range they must lie in (checked by _RULES, one line per failure).
_POSITIVE = (  # Counts, periods and sizes: a 0 would divide by zero or do nothing.
    "train.num_steps", "train.batch_size", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.stop_check_every", "train.sample_grid_size",
    "sample.num_steps", "sample.batch_size", "sample.num_samples", "eval.batch_size",
    "eval.is_splits", "eval.fid_num_samples", "optimizer.learning_rate",
    "diffusion.noise_d", "diffusion.noise_d_low", "diffusion.noise_d_high",
    "diffusion.multiscale_min_size",
)
_NON_NEGATIVE = (
    "train.sample_every", "eval.fid_every", "optimizer.warmup_steps", "optimizer.weight_decay",
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


def _get(config: ml_collections.ConfigDict, path: str) -> Any:
    node = config
    for name in path.split("."):
        node = node[name]
    return node


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


def _check_model(config: ml_collections.ConfigDict) -> None:
    spec = models.ModelSpec.from_config(config.model)  # Raises UserError on bad values.
    limits = ATTENTION_LIMITS.get(spec.attention_impl)
    if limits is None:
        return
    max_dim, multiple, dtypes = limits
    head_dims = sorted({w // spec.num_heads for w in spec.attention_widths()})
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
    if d.multiscale:  # Raises UserError for an unknown name or a wrong number of weights.
        sizes = losses.multiscale_sizes(m.image_size, d.multiscale_min_size)
        losses.multiscale_weights(sizes, d.multiscale_weighting)
    if s.guidance_scale != 1.0 and m.num_classes == 0:
        raise UserError("config.sample.guidance_scale != 1 needs a class-conditional model "
                        "(model.num_classes > 0); set sample.guidance_scale=1.0")
    if s.guidance_logsnr_min > s.guidance_logsnr_max:
        raise UserError(f"config.sample.guidance_logsnr_min={s.guidance_logsnr_min} is above "
                        f"guidance_logsnr_max={s.guidance_logsnr_max}")


def _check_mesh(config: ml_collections.ConfigDict) -> None:
    sizes = {axis: config.mesh[axis] for axis in ("data", "fsdp")}
    for axis, size in sizes.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise UserError(f"config.mesh.{axis}={size!r} must be a positive device count or -1 "
                            "(all devices left over)")
    if list(sizes.values()).count(-1) > 1:
        raise UserError("at most one of config.mesh.data / config.mesh.fsdp may be -1")


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


def validate(config: ml_collections.ConfigDict, mode: str) -> None:
    """Raises UserError (one line) for the first bad field of `config`; `mode` as launch.py's."""
    if mode not in MODES:
        raise UserError(f"unknown --mode={mode}; use {', '.join(MODES)}")
    _check_values(config)
    _check_model(config)
    _check_diffusion_and_sampling(config)
    _check_mesh(config)
    # The device count matters only where the train step will run (inspect needs no devices).
    check_microbatch(config.train, jax.device_count() if mode == "train" else None)
    if mode == "sample":
        from sd_jax.sample import mode as sample_mode

        sample_mode.sample_labels(config, 1)  # Raises UserError on unparsable labels.


def check_workdir(workdir: str | os.PathLike, create: bool = True) -> epath.Path:
    """Raises UserError unless `workdir` is a directory this process can write, tested by writing
    a file (which also catches a read-only mount when running as root, or a bucket without write
    access). Creates it if `create`; otherwise a missing workdir passes (the mode reports what it
    expected to find there). A gs:// workdir is checked in the bucket; nothing local is made."""
    path = as_path(workdir)  # UserError for gs:// without gcsfs.
    remote = is_uri(path)
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
