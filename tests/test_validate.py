"""`config_validation.validate`: every shipped config passes, each bad field is one line, a field
the run would ignore is refused, and the CLI stops before any work (in-process; budget: ~5 s)."""

import importlib
from pathlib import Path

import pytest
from utils import REPO, tiny_config

from sd_jax import main
from sd_jax import validate as config_validation
from sd_jax.errors import UserError

CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem != "__init__")

BAD = [  # (config path, value, words the one-line error must contain)
    ("model.dtype", "float8", ["model.dtype='float8'", "float32, bfloat16, float16"]),
    ("model.prediction", "x1", ["model.prediction"]),
    ("model.arch", "vit", ["model.arch"]),
    ("model.num_heads", 3, ["num_heads=3"]),
    ("diffusion.schedule", "linear", ["diffusion.schedule", "shifted_cosine"]),
    ("diffusion.loss", "l1", ["diffusion.loss", "v_mse"]),
    ("diffusion.loss_weighting", "snr", ["diffusion.loss_weighting", "sigmoid"]),
    ("diffusion.time_sampling", "sobol", ["diffusion.time_sampling"]),
    ("diffusion.logsnr_min", 20.0, ["logsnr_min=20.0"]),
    ("sample.sampler", "euler", ["sample.sampler", "ddpm"]),
    ("sample.guidance_scale", -0.5, ["sample.guidance_scale=-0.5", ">= 0"]),
    ("sample.noise_param", 1.5, ["sample.noise_param=1.5", "[0, 1]"]),
    ("train.checkpoint_every", 0, ["train.checkpoint_every=0", "> 0"]),
    ("train.num_steps", 0, ["train.num_steps=0"]),
    ("train.num_steps", -10, ["train.num_steps=-10"]),
    ("train.log_every", 0, ["train.log_every=0"]),
    ("train.batch_size", 0, ["train.batch_size=0"]),
    ("sample.batch_size", -8, ["sample.batch_size=-8"]),
    ("eval.batch_size", 0, ["eval.batch_size=0"]),
    ("train.ema_decay", 1.5, ["train.ema_decay"]),
    ("eval.fid_method", "exact", ["eval.fid_method", "sqrtm"]),
    ("mesh.data", 0, ["config.mesh.data=0", "-1"]),
    ("mesh.fsdp", -2, ["config.mesh.fsdp=-2"]),
    ("mesh.fsdp", -1, ["at most one"]),  # data is -1 already.
    # Issue 22: these raised a ZeroDivisionError / TypeError deep in the model or the loader.
    ("model.image_size", 0, ["config.model.image_size=0", "> 0"]),
    ("model.num_heads", 0, ["config.model.num_heads=0", "> 0"]),
    ("model.base_channels", 0, ["config.model.base_channels=0"]),
    ("model.emb_dim", 0, ["config.model.emb_dim=0"]),
    ("model.mlp_ratio", 0, ["config.model.mlp_ratio=0"]),
    ("model.image_channels", 0, ["config.model.image_channels=0"]),
    ("model.channel_multipliers", (0, 2), ["config.model.channel_multipliers=(0, 2)"]),
    ("seed", -1, ["config.seed=-1", ">= 0"]),
    ("seed", 2**32, ["config.seed=4294967296", "below 2**32"]),
]

# A field given on the command line that this run would not read: (config changes, paths given
# on the command line, mode, words the one-line error must contain).
IGNORED = [
    ({"data.folder": "/my/images"}, ("data.folder",), "train",
     ["config.data.folder='/my/images' would be ignored", "only data.source='folder'"]),
    ({"eval.reference_npz": "/ref.npz"}, ("eval.reference_npz",), "eval",
     ["config.eval.reference_npz", "Inception metrics"]),
    ({"data.data_dir": "/tfds"}, ("data.data_dir",), "train",
     ["config.data.data_dir", "data.source='tfds'"]),
    ({"eval.samples_npz": "/s.npz"}, ("eval.samples_npz",), "sample",
     ["config.eval.samples_npz", "--mode=eval"]),
    ({"model.num_classes": 0, "sample.guidance_scale": 1.0}, ("sample.labels",), "sample",
     ["config.sample.labels='0,1,2,3,4,5,6,7,8,9'", "class-conditional"]),
    ({"diffusion.schedule": "cosine"}, ("diffusion.noise_d",), "train",
     ["config.diffusion.noise_d=32", "diffusion.schedule='shifted_cosine'"]),
    ({"data.name": "cifar10"}, ("data.name",), "train", ["config.data.name", "tfds"]),
    ({"sample.guidance_scale": 1.0}, ("sample.guidance_logsnr_max",), "sample",
     ["sample.guidance_logsnr_max", "guidance"]),
    ({}, ("model.patch_size",), "train", ["config.model.patch_size=4", "'patch' or 'conv'"]),
    ({}, ("model.attention_resolutions",), "train", ["model.attention_resolutions", "unet"]),
    ({}, ("plan.device_memory_gb",), "train", ["config.plan.device_memory_gb", "--mode=plan"]),
]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid_in_every_mode(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    for mode in config_validation.MODES:
        config_validation.validate(config, mode)


@pytest.mark.parametrize("path,value,words", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_field_is_one_line_naming_it(path, value, words):
    with pytest.raises(UserError) as e:
        config_validation.validate(tiny_config(**{path: value}), "train")
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("changes,given,mode,words", IGNORED,
                         ids=[",".join([*c, *g]) for c, g, _, _ in IGNORED])
def test_a_field_the_run_would_ignore_is_refused_naming_what_reads_it(changes, given, mode,
                                                                      words):
    with pytest.raises(UserError) as e:
        config_validation.validate(tiny_config(**changes), mode, given)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_fields_that_apply_or_come_from_the_config_file_pass():
    # quickstart.py sets noise_d=32 and class labels: a run that only switches the schedule, or
    # trains unconditionally, keeps its file.
    config_validation.validate(tiny_config(**{"diffusion.schedule": "cosine"}), "train",
                               ("diffusion.schedule",))
    unconditional = tiny_config(**{"model.num_classes": 0, "sample.guidance_scale": 1.0})
    config_validation.validate(unconditional, "sample", ("model.num_classes",))
    folder = tiny_config(**{"data.source": "folder", "data.folder": "/my/images"})
    config_validation.validate(folder, "train", ("data.folder", "data.source"))
    inception = tiny_config(**{"eval.reference_npz": "/ref.npz",
                               "eval.inception_weights": "/inception.npz"})
    config_validation.validate(inception, "eval", ("eval.reference_npz",))
    config_validation.validate(tiny_config(), "plan", ("plan.devices", "plan.show"))
    config_validation.validate(tiny_config(**{"eval.samples_npz": "/s.npz"}), "eval",
                               ("eval.samples_npz",))


def test_attention_backend_limits_name_the_head_dim():
    from configs import imagenet512

    config = imagenet512.get_config()
    config.model.attention_impl = "cudnn"  # The paper's U-ViT: width 2048 over 4 heads.
    with pytest.raises(UserError, match=r"head dims <= 256 .* are \[512\]"):
        config_validation.validate(config, "inspect")
    config.model.num_heads = 16  # Head dim 128.
    config_validation.validate(config, "inspect")
    config.model.dtype = "float32"  # cuDNN flash attention is bf16 / f16 only.
    with pytest.raises(UserError, match="needs model.dtype in"):
        config_validation.validate(config, "inspect")


def test_guidance_without_classes_fails_before_training():
    with pytest.raises(UserError, match="class-conditional"):
        config_validation.validate(tiny_config(**{"model.num_classes": 0}), "train")


def test_multiscale_weighting_is_checked_when_multiscale_is_on():
    config = tiny_config(**{"diffusion.multiscale_weighting": "bogus"})
    config_validation.validate(config, "train")  # Off: the field is not used.
    config.diffusion.multiscale = True
    with pytest.raises(UserError, match="multiscale_weighting='bogus'"):
        config_validation.validate(config, "train")


def test_bad_sample_labels_fail_in_sample_mode():
    with pytest.raises(UserError, match="sample.labels"):
        config_validation.validate(tiny_config(**{"sample.labels": "1,x"}), "sample")


@pytest.mark.parametrize("path,value", [("model.dtype", "float8"),
                                        ("train.checkpoint_every", 0), ("train.num_steps", 0),
                                        ("model.image_size", 0), ("seed", -1)])
def test_cli_prints_one_line_and_exits_1_before_any_work(tmp_path, capsys, path, value):
    with pytest.raises(SystemExit) as e:
        main.run_cli(tiny_config(**{path: value}), str(tmp_path / "run"), "train")
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: config.{path}={value!r}"), err
    assert not (tmp_path / "run").exists()  # Stopped before the workdir was even created.


def test_workdir_that_is_a_file_or_not_writable(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        config_validation.check_workdir(afile)
    with pytest.raises(UserError, match="not writable"):
        config_validation.check_workdir(afile / "sub")  # Below a file: cannot be created.
    assert config_validation.check_workdir(tmp_path / "new") == Path(tmp_path / "new")
    assert (tmp_path / "new").is_dir() and not list((tmp_path / "new").iterdir())
