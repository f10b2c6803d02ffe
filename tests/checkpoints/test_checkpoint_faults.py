"""Damaged checkpoints and restores into another model, end to end with the tiny real model on one
CPU device (budget: ~60 s on 2 cores).

One child process (so the train step compiles once, into a persistent cache the launch.py child
reuses) trains 6 steps straight with checkpoints at 3 and 6. Then, for each kind of damage to
checkpoint 6 (truncated data file, deleted `_METADATA`, one flipped byte), a copy of that workdir
is resumed: it must report the damage, fall back to step 3, set 6 aside and reach bitwise the same
final state as the straight run. It also checks the refusal when every checkpoint is damaged, the
NaN message right after a restore, and restores into models with another transformer_depth,
base_channels or num_classes in train and sample mode.
"""

import numpy as np
import pytest
from utils import (
    DAMAGE_KINDS,
    PRELUDE,
    check,
    config_args,
    fast_env,
    jax_cache_dir,
    run_launch,
    run_python,
    tiny_config,
)

pytestmark = pytest.mark.slow

OTHER_MODELS = {"transformer_depth": 2, "base_channels": 16, "num_classes": 12}

CODE = PRELUDE + """
import shutil
from utils import damage_checkpoint
from sd_jax.errors import UserError

def final_state(cfg, workdir):
    np.savez(workdir + ".npz", **flat(trainer.train(cfg, workdir)))

final_state(tiny_config(), W + "/straight")
for kind in {kinds!r}:
    shutil.copytree(W + "/straight", W + "/" + kind)
    damage_checkpoint(W + "/" + kind + "/checkpoints/6", kind)
    final_state(tiny_config(), W + "/" + kind)

shutil.copytree(W + "/straight", W + "/all_bad")
damage_checkpoint(W + "/all_bad/checkpoints/3", "flip")
damage_checkpoint(W + "/all_bad/checkpoints/6", "metadata")
try:
    trainer.train(tiny_config(), W + "/all_bad")
except UserError as e:
    print("ALL_BAD", e)

# A state whose Adam second moment went negative (a sign-bit flip), saved with valid checksums:
# the update after the restore is NaN.
cfg = tiny_config()
state, _ = restore(W + "/straight", cfg, jax.devices())
state = jax.tree_util.tree_map_with_path(
    lambda p, x: -abs(x) - 1 if "nu" in jax.tree_util.keystr(p) else x, state)
ckpt = checkpointing.Checkpointer(W + "/nan_after_restore")
ckpt.save(6, state, checkpointing.data_meta(6, cfg))
ckpt.close()
try:
    trainer.train(tiny_config(**{{"train.num_steps": 12}}), W + "/nan_after_restore")
except UserError as e:
    print("NAN_AFTER_RESTORE", e)

mesh = sharding.make_mesh(cfg.mesh)
for field, value in {other!r}.items():
    other = tiny_config(**{{"model." + field: value}})
    for mode, run in (("train", lambda: trainer.train(other, W + "/straight")),
                      ("sample", lambda: sample_restore.restore_inference_params(
                          W + "/straight", other, mesh))):
        try:
            run()
        except UserError as e:
            print("MISMATCH", mode, field, e)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults")
    cache = jax_cache_dir(tmp_path_factory)  # The session's, shared with the other tiny runs.
    code = CODE.format(workdir=str(workdir), kinds=DAMAGE_KINDS, other=OTHER_MODELS)
    proc = run_python(code, 1, env_extra=fast_env(cache, 1))
    check(proc)
    return workdir, cache, proc


def steps(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_damaged_checkpoint_resumes_from_the_previous_one_bitwise(runs, kind):
    workdir, _, proc = runs
    reports = [x for x in proc.stderr.splitlines() if f"/{kind}/checkpoints/6 is damaged" in x]
    assert len(reports) == 1 and "resuming from step 3" in reports[0], proc.stderr[-3000:]
    assert f"{kind}/checkpoints/6 is damaged" not in proc.stdout
    assert steps(workdir / kind / "checkpoints") == ["3", "6"]  # Step 6 written again ...
    assert steps(workdir / kind / "damaged_checkpoints") == ["6"]  # ... the damaged one kept.
    straight = np.load(workdir / "straight.npz", allow_pickle=False)
    resumed = np.load(workdir / f"{kind}.npz", allow_pickle=False)
    assert straight.files == resumed.files and len(straight.files) > 20
    assert any("opt_state" in name for name in straight.files)  # Every leaf, not just params.
    for name in straight.files:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)


def test_every_checkpoint_damaged_refuses_naming_them(runs):
    workdir, _, proc = runs
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ALL_BAD"))
    assert "every checkpoint is damaged" in line
    assert "all_bad/checkpoints/3:" in line and "all_bad/checkpoints/6:" in line
    assert steps(workdir / "all_bad" / "checkpoints") == ["3", "6"]  # Nothing moved.


def test_nan_right_after_restore_names_the_checkpoint(runs):
    _, _, proc = runs
    line = next(x for x in proc.stdout.splitlines() if x.startswith("NAN_AFTER_RESTORE"))
    assert "after resuming from checkpoint" in line and "nan_after_restore/checkpoints/6" in line
    assert "may be damaged" in line and "learning_rate" not in line


@pytest.mark.parametrize("field", OTHER_MODELS)
@pytest.mark.parametrize("mode", ["train", "sample"])
def test_restore_into_another_model_names_parameter_and_field(runs, field, mode):
    _, _, proc = runs
    line = next(x for x in proc.stdout.splitlines() if x.startswith(f"MISMATCH {mode} {field}"))
    assert "written by a different model" in line and "params/" in line
    assert f"{field} {tiny_config().model[field]} -> {OTHER_MODELS[field]}" in line, line


def test_resume_with_another_architecture_is_one_line_through_launch(runs):
    workdir, cache, _ = runs
    args = config_args(tiny_config(**{"model.base_channels": 16}))
    proc = run_launch([*args, f"--workdir={workdir / 'straight'}"], 1,
                      env_extra=fast_env(cache, 1))
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and "base_channels 8 -> 16" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
