"""`config_validation.validate`: every shipped config passes, each bad field is one line, and the
CLI stops before any work (in-process; budget: ~5 s)."""

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
                                        ("train.checkpoint_every", 0), ("train.num_steps", 0)])
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
