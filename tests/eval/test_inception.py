"""FID Inception-v3 (sd_jax/eval/inception.py), its weights format and converter, and eval mode.

Budget: ~20 s on 2 CPU cores (two Inception compilations at 299x299 and one converter run).
"""

import json
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util
from utils import U32, child_env, run_launch

from configs import quickstart
from sd_jax.errors import UserError
from sd_jax.eval import inception
from sd_jax.eval import mode as evaluate


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(variables, path): random weights saved in the documented .npz format."""
    variables = inception.random_variables(seed=0)
    path = inception.save_weights(variables, tmp_path_factory.mktemp("w") / "inception.npz")
    return variables, path


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def test_forward_at_299_and_weights_roundtrip(weights):
    variables, path = weights
    loaded = inception.load_weights(path)
    assert _flat(loaded).keys() == _flat(variables).keys()
    apply = jax.jit(inception.InceptionV3().apply)
    x = np.random.default_rng(0).integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
    out, out_loaded = apply(variables, x), apply(loaded, x)
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 17 * 17 * 7)
    for key in out:
        assert np.isfinite(out[key]).all()
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(out_loaded[key]))
    assert not np.allclose(out["pool"][0], out["pool"][1])  # Depends on the image.


def test_preprocess_resize_modes():
    # TF1 legacy bilinear (ADM graph): 2x downsampling picks every other pixel exactly.
    w = inception._resize_matrix(8, 4, "tf1")
    np.testing.assert_array_equal(w, np.eye(8)[::2])
    # pytorch-fid (half-pixel, no antialias) equals jax.image.resize without antialiasing,
    # taken in float64. Our float32 rounding, per resized axis: weights (u) and a 2-term dot (2u),
    # relative to pixel values up to 255 = 2 output units, so 2 x 3u x 2 = 12u; then the scaling
    # and the shift (2u): at most 14u.
    x = np.random.default_rng(1).uniform(0, 255, (1, 37, 50, 3)).astype(np.float32)
    got = inception.preprocess(x, "pytorch_fid")
    with jax.enable_x64(True):
        want = jax.image.resize(x.astype(np.float64), (1, 299, 299, 3), "bilinear",
                                antialias=False) / 127.5 - 1
    np.testing.assert_allclose(got, want, rtol=0, atol=16 * U32)
    same = inception.preprocess(np.full((1, 299, 299, 3), 128, np.uint8), "tf1")
    np.testing.assert_array_equal(same, 0.0)
    with pytest.raises(UserError, match="inception_preprocess"):
        inception.preprocess(x, "bicubic")


def _torch_state_dict(variables) -> dict[str, np.ndarray]:
    """Our tree in pytorch-fid's layout and key names (OIHW convs, [out, in] fc)."""
    state = {}
    for key, value in _flat(variables).items():
        collection, *path, leaf = key.split("/")
        name = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}[leaf]
        if path[-1] == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif path[-1] == "fc" and leaf == "kernel":
            value = value.T
        state[".".join([*path, name])] = value
        if leaf == "mean":
            state[".".join([*path, "num_batches_tracked"])] = np.array(0)
    return state


def test_converter_on_fabricated_pytorch_fid_state_dict(weights, tmp_path):
    import subprocess

    variables, _ = weights
    state = _torch_state_dict(variables)
    # Spot-check that the fabricated dict has pytorch-fid's names and shapes.
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["Mixed_5b.branch_pool.bn.running_var"].shape == (32,)
    assert state["fc.weight"].shape == (1008, 2048)
    assert sum(not k.endswith("num_batches_tracked") for k in state) == 94 * 5 + 2
    np.savez(tmp_path / "pt_inception.npz", **state)
    out = tmp_path / "converted.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "sd_jax.eval.convert_inception",
         f"--pth={tmp_path / 'pt_inception.npz'}", f"--out={out}"],
        env=child_env(1), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    converted = _flat(inception.load_weights(out))
    for key, value in _flat(variables).items():
        np.testing.assert_array_equal(converted[key], value, err_msg=key)


def test_missing_or_wrong_weights_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="inception_weights is not set.*pytorch-fid"):
        inception.load_weights(None)
    with pytest.raises(UserError, match="does not exist.*python -m sd_jax.eval.convert_inception"):
        inception.load_weights(tmp_path / "nope.npz")
    (tmp_path / "pt.pth").write_bytes(b"x")
    with pytest.raises(UserError, match="torch file; convert it"):
        inception.load_weights(tmp_path / "pt.pth")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(UserError, match="not an FID Inception-v3 weights file"):
        inception.load_weights(tmp_path / "other.npz")


def test_eval_mode_end_to_end(weights, tmp_path):
    _, path = weights
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    workdir = tmp_path / "wd"
    (workdir / "samples").mkdir(parents=True)
    np.savez(workdir / "samples" / "s.npz", images, np.arange(5))
    (workdir / "samples" / "s.json").write_text(json.dumps({"step": 7}))
    np.savez(tmp_path / "ref.npz", images[::-1])  # Same images, other order: FID ~0.
    proc = run_launch([
        "--config=configs/quickstart.py", f"--workdir={workdir}", "--mode=eval",
        f"--config.eval.inception_weights={path}",
        f"--config.eval.reference_npz={tmp_path}/ref.npz",
        "--config.eval.batch_size=4",  # 5 images: the last batch is padded and masked.
        "--config.eval.is_splits=3",
        "--config.eval.fid_method=eigh",  # scipy sqrtm at 2048-d takes ~1 min on 2 busy cores.
        "--config.eval.sfid=False",  # sFID's maths is tested in test_fid.py; halves the time.
    ], num_devices=2, env_extra={"OPENBLAS_NUM_THREADS": "1"})  # Threads thrash on busy CI.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval s.npz (5 images): fid=" in proc.stdout.splitlines()[-1]
    results = json.loads((workdir / "eval_s.json").read_text())
    assert results["num_samples"] == 5 and results["step"] == 7
    assert abs(results["fid"]) < 1e-3 and "sfid" not in results
    assert results["inception_score"] >= 1.0
    line = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["step"] == 7 and line["eval/fid"] == results["fid"]
    config = quickstart.get_config()  # Eval mode with a missing weights file: a clear error.
    config.eval.inception_weights = str(tmp_path / "none.npz")
    config.eval.reference_npz = str(tmp_path / "ref.npz")
    with pytest.raises(UserError, match="Inception weights file .* does not exist"):
        evaluate.run(config, str(workdir))


def test_reference_stats_sources(tmp_path):
    stats = {"mu": np.zeros(2048), "sigma": np.eye(2048)}
    np.savez(tmp_path / "ref_stats.npz", **stats)  # Stored statistics are used as they are.
    loaded = evaluate.reference_stats(str(tmp_path / "ref_stats.npz"), None, 8)
    np.testing.assert_array_equal(loaded["sigma"], stats["sigma"])
    with pytest.raises(UserError, match="reference batch .* does not exist.*guided-diffusion"):
        evaluate.reference_stats(str(tmp_path / "missing.npz"), None, 8)
    np.savez(tmp_path / "odd.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="neither mu/sigma nor arr_0"):
        evaluate.reference_stats(str(tmp_path / "odd.npz"), None, 8)


def test_periodic_fid_switch_and_fail_fast(weights, tmp_path):
    from sd_jax.train import periodic

    config = quickstart.get_config()
    assert periodic.maybe_fid(10, None, config, None, tmp_path) is None  # fid_every = 0
    periodic.check_config(config)  # Off: nothing to check.
    config.eval.fid_every = 10
    with pytest.raises(UserError, match="inception_weights is not set"):
        periodic.check_config(config)
    config.eval.inception_weights = str(weights[1])
    with pytest.raises(UserError, match="reference_npz is not set"):
        periodic.check_config(config)
    assert periodic.maybe_fid(7, None, config, None, tmp_path) is None  # Not a FID step.
