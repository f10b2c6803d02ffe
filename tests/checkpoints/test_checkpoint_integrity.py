"""Checkpoint checksums, the fallback past damaged checkpoints and the model check, in-process on
small trees (budget: ~10 s). End to end with the real model: tests/test_checkpoint_faults.py."""

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from utils import DAMAGE_KINDS, damage_checkpoint

from sd_jax.checkpoints import checkpointer as checkpointing
from sd_jax.checkpoints import integrity
from sd_jax.errors import UserError
from sd_jax.train import loop as trainer


def numpy_fingerprint(x: np.ndarray) -> int:
    """The documented formula in exact integer arithmetic (uint64, reduced mod 2^32)."""
    x = np.ascontiguousarray(x)
    words = (x.astype(np.uint32) if x.dtype == np.bool_ else
             x.view(f"uint{8 * x.dtype.itemsize}").astype(np.uint32) if x.dtype.itemsize < 4 else
             x.view(np.uint32)).astype(np.uint64).ravel()
    index = np.arange(words.size, dtype=np.uint64)
    multiplier = ((index * 0x9E3779B1) % 2**32) | 1
    return int(np.sum((words * multiplier) % 2**32) % 2**32)


def test_fingerprints_match_the_formula_for_every_dtype():
    rng = np.random.default_rng(0)
    tree = {
        "f32": rng.normal(size=(5, 7)).astype(np.float32),
        "bf16": rng.normal(size=(3, 4)).astype(jnp.bfloat16),
        "f16": rng.normal(size=(9,)).astype(np.float16),
        "i32": rng.integers(-2**31, 2**31 - 1, size=(4, 3), dtype=np.int32),
        "flag": rng.random(6) > 0.5,
        "step": np.int32(1234),
        "nan": np.array([np.nan, -0.0, 0.0, np.inf], np.float32),
    }
    got = integrity.fingerprints(jax.tree.map(jnp.asarray, tree))
    assert got == {name: numpy_fingerprint(np.asarray(x)) for name, x in tree.items()}


def test_any_single_bit_flip_or_swap_changes_the_fingerprint():
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    bits = x.view(np.uint32)
    variants = {"orig": x}
    for bit in range(32):  # Every bit of one element ...
        flipped = bits.copy()
        flipped[1, 2] ^= np.uint32(1 << bit)
        variants[f"bit{bit}"] = flipped.view(np.float32)
    for i in range(x.size):  # ... and the sign bit of every element.
        flipped = bits.copy().ravel()
        flipped[i] ^= np.uint32(1 << 31)
        variants[f"pos{i}"] = flipped.reshape(x.shape).view(np.float32)
    variants["swap"] = x.ravel()[[1, 0, *range(2, x.size)]].reshape(x.shape)
    prints = integrity.fingerprints({k: jnp.asarray(v) for k, v in variants.items()})
    assert all(prints[k] != prints["orig"] for k in variants if k != "orig")
    assert integrity.first_mismatch({"orig": jnp.asarray(variants["bit7"])},
                                    {"orig": prints["orig"]}) == "orig"


def test_tree_difference_names_the_first_parameter_and_the_config_fields():
    saved = {"params": {"a": jax.ShapeDtypeStruct((3, 8), jnp.float32),
                        "b": jax.ShapeDtypeStruct((8,), jnp.float32)}}
    now = {"params": {"a": jax.ShapeDtypeStruct((3, 16), jnp.float32),
                      "b": jax.ShapeDtypeStruct((16,), jnp.float32)}}
    saved_cfg = {"base_channels": 8, "num_heads": 2}
    cfg = ml_collections.ConfigDict({"base_channels": 16, "num_heads": 2})
    with pytest.raises(UserError) as e:
        integrity.check_same_model("ckpt/6", saved, now, saved_cfg, cfg)
    message = str(e.value)
    assert "params/a has shape (3, 8) there and (3, 16)" in message
    assert "base_channels 8 -> 16" in message and "num_heads" not in message
    assert "\n" not in message
    extra = {"params": {**saved["params"], "c": jax.ShapeDtypeStruct((1,), jnp.float32)}}
    assert integrity.first_tree_difference(integrity.leaf_shapes(extra),
                                           integrity.leaf_shapes(saved)) == (
        "params/c is in the checkpoint but not in this model")
    assert integrity.first_tree_difference(integrity.leaf_shapes(saved),
                                           integrity.leaf_shapes(extra)) == (
        "params/c is not in the checkpoint")
    # Only the entries a partial restore asks for are compared.
    integrity.check_same_model("ckpt/6", {**saved, "opt": now}, {"params": saved["params"]},
                               None, None, partial=True)


def _tree(value: int) -> dict:
    # 16 KB of random floats: incompressible and above OCDBT's inline limit, so they fill the
    # largest data file.
    w = np.random.default_rng(value).normal(size=(64, 64)).astype(np.float32)
    return {"w": jnp.asarray(w), "step": jnp.int32(value)}


def _abstract():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        _tree(0))


def _steps(path: Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _write(workdir: Path, steps) -> None:
    ckpt = checkpointing.Checkpointer(workdir, keep=5)
    for step in steps:
        ckpt.save(step, _tree(step), {"step": step})
    ckpt.close()


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_damaged_newest_checkpoint_is_reported_set_aside_and_written_again(
        tmp_path, capsys, kind):
    _write(tmp_path, (1, 2, 3))
    damage_checkpoint(tmp_path / "checkpoints" / "3", kind)
    ckpt = checkpointing.Checkpointer(tmp_path, keep=5)
    state, meta, step = ckpt.restore_newest_intact(_abstract(), None)
    assert step == 2 and meta["step"] == 2
    np.testing.assert_array_equal(state["w"], _tree(2)["w"])
    lines = [x for x in capsys.readouterr().err.splitlines() if "damaged" in x]
    assert len(lines) == 1 and "checkpoints/3 is damaged" in lines[0], lines
    assert _steps(tmp_path / "checkpoints") == [1, 2]
    assert _steps(tmp_path / checkpointing.DAMAGED_DIR) == [3]  # Kept, never deleted.
    ckpt.save(3, _tree(3), {"step": 3})  # The step is free again: the resumed run rewrites it.
    ckpt.close()
    assert _steps(tmp_path / "checkpoints") == [1, 2, 3]


def test_read_only_restore_falls_back_without_moving_anything(tmp_path, capsys):
    _write(tmp_path, (1, 2))
    damage_checkpoint(tmp_path / "checkpoints" / "2", "flip")
    ckpt = checkpointing.Checkpointer(tmp_path, read_only=True)
    _, _, step = ckpt.restore_newest_intact(_abstract(), None)
    ckpt.close()
    assert step == 1 and _steps(tmp_path / "checkpoints") == [1, 2]
    # The flipped byte decompresses to other values: only the checksum can tell.
    assert "w differs from what was saved (checksum); using step 1" in capsys.readouterr().err


def test_every_checkpoint_damaged_refuses_naming_them_and_moves_nothing(tmp_path):
    _write(tmp_path, (1, 2))
    damage_checkpoint(tmp_path / "checkpoints" / "1", "truncate")
    damage_checkpoint(tmp_path / "checkpoints" / "2", "metadata")
    ckpt = checkpointing.Checkpointer(tmp_path, keep=5)
    with pytest.raises(UserError, match="every checkpoint is damaged") as e:
        ckpt.restore_newest_intact(_abstract(), None)
    ckpt.close()
    message = str(e.value)
    assert "checkpoints/1:" in message and "checkpoints/2:" in message and "\n" not in message
    assert _steps(tmp_path / "checkpoints") == [1, 2]


def test_nan_right_after_a_restore_blames_the_checkpoint_not_the_learning_rate(tmp_path):
    where = tmp_path / "checkpoints" / "1000"
    soon = trainer.divergence_advice(1002, (1000, where))
    assert str(where) in soon and "damaged" in soon and "learning_rate" not in soon
    later = trainer.divergence_advice(1000 + trainer.RESTORE_SUSPECT_STEPS + 1, (1000, where))
    assert "learning_rate" in later and trainer.divergence_advice(5, None) == later
