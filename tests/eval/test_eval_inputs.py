"""Eval mode on bad input files: one line and exit 1 before any Inception work, pickles refused
(in-process through `sd_jax.main.run_cli`, launch.py's body; budget: ~5 s)."""

import json
import re

import numpy as np
import pytest
from utils import REPO, tiny_config

from sd_jax import main
from sd_jax.errors import UserError
from sd_jax.io import npz as npz_io

PICKLED = np.array([{"payload": "would run on unpickling"}], dtype=object)


@pytest.fixture
def workdir(tmp_path):
    """A workdir with a valid samples .npz and sidecar, a valid reference and weights path."""
    samples = tmp_path / "wd" / "samples"
    samples.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(samples / "s.npz", images)
    model = json.loads(json.dumps(tiny_config().model.to_dict()))
    (samples / "s.json").write_text(json.dumps({"step": 6, "model": model}))
    np.savez(tmp_path / "ref.npz", images)
    return tmp_path / "wd"


def eval_error(capsys, workdir, weights="missing_weights.npz", reference=None, **overrides):
    """Runs eval mode; asserts exit 1 with one line on stderr and returns that line."""
    config = tiny_config(**overrides)
    config.eval.inception_weights = str(workdir.parent / weights)
    config.eval.reference_npz = str(reference or workdir.parent / "ref.npz")
    with pytest.raises(SystemExit) as e:
        main.run_cli(config, str(workdir), "eval")
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("content", ["garbage", "truncated", "pickled"])
def test_bad_inception_weights_file(capsys, workdir, content):
    path = workdir.parent / "weights.npz"
    if content == "garbage":
        path.write_bytes(np.random.default_rng(1).bytes(5000))
    else:
        np.savez(path, **({"w": PICKLED} if content == "pickled" else
                          {"a": np.zeros((64, 64), np.float32), "b": np.ones(100, np.float32)}))
        if content == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = eval_error(capsys, workdir, weights="weights.npz")
    assert f"Inception weights file {path}" in line
    assert ("pickled Python objects" if content == "pickled" else "not a readable .npz") in line


def test_reference_stats_of_the_wrong_size_fail_before_inception(capsys, workdir):
    reference = workdir.parent / "stats.npz"
    np.savez(reference, mu=np.zeros(64), sigma=np.eye(64))
    # The weights file does not exist: the reference is judged first, from its headers.
    line = eval_error(capsys, workdir, reference=reference)
    assert "mu is float64 (64,), expected float (2048,)" in line


@pytest.mark.parametrize("images", ["float01", "int64", "pickled"])
def test_reference_images_must_be_uint8(capsys, workdir, images):
    reference = workdir.parent / "bad_ref.npz"
    x = np.random.default_rng(2).random((5, 8, 8, 3))
    arr_0 = {"float01": x.astype(np.float32), "int64": (x * 255).astype(np.int64),
             "pickled": PICKLED}[images]
    np.savez(reference, arr_0)
    line = eval_error(capsys, workdir, reference=reference)
    assert str(reference) in line
    assert ("expected uint8 images in [0, 255]" in line) if images != "pickled" else (
        "expected [N, H, W, 3]" in line)


def test_samples_of_another_model_are_refused(capsys, workdir):
    line = eval_error(capsys, workdir, **{"model.transformer_depth": 2})
    assert "drawn from a different model" in line and "transformer_depth 1 -> 2" in line
    eval_error(capsys, workdir, **{"model.dtype": "bfloat16"})  # Not a model change: passes on
    assert "missing_weights.npz does not exist" in eval_error(capsys, workdir)  # to the weights.


def test_pickles_are_refused_when_loading_any_npz(tmp_path):
    np.savez(tmp_path / "p.npz", mu=PICKLED)
    with pytest.raises(UserError, match="pickled Python objects"):
        npz_io.load(tmp_path / "p.npz", "reference batch")
    from sd_jax.eval import (
        convert_inception as convert_inception_weights,  # The converter's .npz input too.
    )

    with pytest.raises(UserError, match="pickled Python objects"):
        convert_inception_weights.load_state_dict(str(tmp_path / "p.npz"))


def test_every_np_load_in_the_repo_refuses_pickles():
    folders = ("sd_jax", "experiments", "scripts", "benchmarks", "tests")
    files = [REPO / "launch.py", *(p for d in folders for p in (REPO / d).rglob("*.py"))]
    calls = []
    for path in files:
        text = path.read_text()
        for match in re.finditer(r"\bnp\.load\(", text):
            depth, end = 1, match.end()
            while depth:  # The whole call, nested parentheses included.
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append((path.name, " ".join(text[match.start():end].split())))
    assert len(calls) > 5
    unsafe = [call for call in calls if "allow_pickle=False" not in call[1]]
    assert not unsafe, unsafe
