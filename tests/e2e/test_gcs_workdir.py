"""gs:// workdirs against a real local GCS emulator (tests/gcs_emulator.py), no network.

The emulator runs in its own process on 127.0.0.1; each child process here reaches it only
through the libraries' documented endpoint overrides (`gcs_emulator.client_env`). Each child
works from an empty temporary directory and checks it is still empty at the end: nothing (no
directory named `gs:`) is written locally. What is in the bucket is listed over the JSON API,
not through the libraries under test. The children share the session's compile cache with the
other tiny runs (`utils.jax_cache_dir`), so the model compiled for them is reused.
"""

import os

import pytest
from gcs_emulator import client_env, object_names, running
from utils import REPO, config_args, jax_cache_dir, run_launch, run_python, tiny_config

BUCKET = "test-bucket"
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

PRELUDE = f"""
import io, json, os, sys, tempfile
os.chdir(tempfile.mkdtemp())  # Must still be empty at the end: nothing is written locally.
HERE = os.getcwd()
sys.path.insert(0, {str(REPO / "tests")!r})
import jax, numpy as np
from etils import epath
"""


@pytest.fixture(scope="module")
def gcs():
    with running(BUCKET) as url:
        yield url


def run_in_bucket(code: str, url: str, cache_dir) -> str:
    env = client_env(url) | {
        "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}",
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    proc = run_python(PRELUDE + code + "\nassert os.listdir(HERE) == [], os.listdir(HERE)\n",
                      1, env_extra=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


END_TO_END = """
import orbax.checkpoint as ocp
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util
from utils import tiny_config
from sd_jax import main
from sd_jax.checkpoints import checkpointer as checkpointing
from sd_jax.sample import mode as sample_mode
from sd_jax.eval import mode as evaluate
from sd_jax.io import npz as npz_io

W = "gs://test-bucket/run"

def losses(workdir):
    lines = epath.Path(workdir, "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}

def final_state(workdir):  # Every array of the newest checkpoint, as saved (no target tree).
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    step = ckpt.latest_step()
    state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    ckpt.close()
    return step, {jax.tree_util.keystr(k): np.asarray(v)
                  for k, v in jax.tree_util.tree_leaves_with_path(state.state)}

# Through main.run, as launch.py does: config validation and the workdir write check included.
main.run(tiny_config(), W + "/straight", "train")
main.run(tiny_config(**{"train.num_steps": 3}), W + "/resumed", "train")
main.run(tiny_config(**{"train.tensorboard": True, "train.profile_start_step": 4,
                        "train.profile_num_steps": 1}), W + "/resumed", "train")
straight, resumed = losses(W + "/straight"), losses(W + "/resumed")
assert sorted(straight) == [1, 2, 3, 4, 5, 6] and straight == resumed, (straight, resumed)
(step_a, a), (step_b, b) = final_state(W + "/straight"), final_state(W + "/resumed")
assert step_a == step_b == 6 and a.keys() == b.keys() and len(a) > 10
assert all(np.array_equal(a[k], b[k]) for k in a)  # Bitwise, params and optimizer state.

# TensorBoard (run 3 only), read back from the bucket: the same losses as metrics.jsonl.
board = {}
for obj in epath.Path(W, "resumed", "tensorboard").iterdir():
    local = os.path.join(tempfile.mkdtemp(), obj.name)  # Outside HERE.
    with open(local, "wb") as f:
        f.write(obj.read_bytes())
    for event in event_file_loader.EventFileLoader(local).Load():
        for value in event.summary.value:
            if value.tag == "loss":
                board[event.step] = tensor_util.make_ndarray(value.tensor).item()
assert board == {s: float(np.float32(l)) for s, l in resumed.items() if s > 3}, board

cfg = tiny_config(**{"sample.num_samples": 12})  # Two batches of 8, the second one short.
# A crash while the second batch's shard is uploading publishes nothing of it; the rerun
# continues from the first batch's shard in the bucket.
from unittest import mock
from sd_jax.io import paths
from sd_jax.io import shards as sample_shards
write_shard = sample_shards.ShardFolder.write
def crash_on_second(folder, index, images):
    if index == 1:
        with paths.write_atomic(folder.shard(index)) as f:
            f.write(images.tobytes()[:1000])
            raise RuntimeError("crashed while uploading shard 1")
    write_shard(folder, index, images)
with mock.patch.object(sample_shards.ShardFolder, "write", crash_on_second):
    try:
        main.run(cfg, W + "/resumed", "sample")
        raise AssertionError("the crash did not stop sample mode")
    except RuntimeError as e:
        assert "shard 1" in str(e), e
left = sorted(p.name for p in epath.Path(W, "resumed", "samples").glob("*.shards-*/*"))
assert left == ["000000.npy", "settings.json"], left
first = np.load(io.BytesIO(next(epath.Path(W, "resumed", "samples").glob(
    "*.shards-*/000000.npy")).read_bytes()), allow_pickle=False)
main.run(cfg, W + "/resumed", "sample")
path = evaluate.find_samples(cfg, W + "/resumed")
with path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
    images, labels = npz["arr_0"], npz["arr_1"]
assert images.shape == (12, 8, 8, 3) and images.dtype == np.uint8 and images.std() > 0
assert np.array_equal(images[:8], first)  # The first batch came from the crashed run's shard.
assert np.array_equal(labels, sample_mode.sample_labels(cfg, 12))
assert np.array_equal(np.concatenate(list(npz_io.iter_rows(path, batch_rows=5))), images)
assert json.loads(path.with_suffix(".json").read_text())["step"] == 6
evaluate.write_results(W + "/resumed", path.stem, {"fid": 1.5, "num_samples": 12}, 6)
assert losses(W + "/resumed") == resumed  # The eval line was appended, nothing lost.
from sd_jax.io import lock
with lock.WorkdirLock(W + "/resumed/train.lock", "train"):  # As if a training were running.
    assert evaluate.metrics_step(W + "/resumed", 6, path.stem) is None  # It rewrites the file.
assert evaluate.metrics_step(W + "/resumed", 6, path.stem) == 6
print("SAMPLES", path.stem)
"""


@pytest.mark.slow
def test_train_resume_sample_in_a_bucket(gcs, tmp_path_factory):
    """train -> checkpoint -> exact resume (bitwise) -> sample, crashed and resumed from its
    shards -> .npz, all in gs://; no lock object left; eval's metrics.jsonl line left out
    while a training holds the bucket workdir."""
    out = run_in_bucket(END_TO_END, gcs, jax_cache_dir(tmp_path_factory))
    stem = out.split("SAMPLES ")[1].split()[0]
    assert f"resuming from gs://test-bucket/run/resumed/samples/{stem}.shards-" in out, out
    assert "note: not adding to metrics.jsonl, which a train run (pid " in out
    names = object_names(gcs, BUCKET, "run/")
    assert not [n for n in names if n.endswith(".lock")], names  # Train and sample released.
    for run in ("straight", "resumed"):
        for step in (3, 6):
            assert f"run/{run}/checkpoints/{step}/state/_METADATA" in names, names
            assert f"run/{run}/checkpoints/{step}/meta/metadata" in names, names
            assert f"run/{run}/checkpoints/{step}/commit_success.txt" in names, names
        assert f"run/{run}/metrics.jsonl" in names
    assert any(n.startswith("run/resumed/tensorboard/events.out.tfevents.") for n in names)
    assert any(n.startswith("run/resumed/profile/plugins/profile/") and n.endswith(".xplane.pb")
               for n in names), names  # clu's Profile, copied from a local directory.
    assert {f"run/resumed/samples/{stem}{ext}" for ext in (".npz", ".png", ".json")} <= set(names)
    assert f"run/resumed/eval_{stem}.json" in names
    assert not [n for n in names if ".write_test_" in n or n.endswith(".tmp")], names
    assert not [n for n in names if ".shards-" in n], names  # Removed once the .npz is out.
    assert not os.path.exists(REPO / "gs:")


BUCKET_IO = """
from utils import damage_checkpoint
from sd_jax.checkpoints import checkpointer as checkpointing
from sd_jax import validate as config_validation
from sd_jax.io import paths
from sd_jax.errors import UserError
from sd_jax.io import npz as npz_io

W = "gs://test-bucket/io"

# A damaged checkpoint is reported, moved aside in the bucket, the one before restored, and the
# step can be written again (orbax sees the bucket as it is: no stale listing).
tree = lambda v: {"w": jax.random.normal(jax.random.key(v), (128, 64)), "step": jax.numpy.array(v)}
ckpt = checkpointing.Checkpointer(W, keep=5)
for step in (1, 2):
    ckpt.save(step, tree(step), {"step": step})
ckpt.close()
damage_checkpoint(W + "/checkpoints/2", "flip")  # Only the checksum can tell.
ckpt = checkpointing.Checkpointer(W, keep=5)
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree(0))
state, meta, step = ckpt.restore_newest_intact(abstract, None)
assert step == 1 == meta["step"] and np.array_equal(state["w"], tree(1)["w"])
assert ckpt.manager.all_steps() == [1]
ckpt.save(2, tree(2), {"step": 2})
ckpt.close()

# .npz streamed into an object; an aborted one leaves nothing, even after a part was uploaded.
rows = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
writer = npz_io.NpzStreamWriter(W + "/samples/a.npz", rows.shape)
writer.write(rows[:4])
assert not epath.Path(W, "samples", "a.npz").exists()  # Published only on close.
writer.write(rows[4:])
writer.close(arr_1=np.arange(10))
loaded = npz_io.load(W + "/samples/a.npz")
assert np.array_equal(loaded["arr_0"], rows) and np.array_equal(loaded["arr_1"], np.arange(10))
big = npz_io.NpzStreamWriter(W + "/samples/b.npz", (100, 256, 256, 3))
big.write(np.zeros((40, 256, 256, 3), np.uint8))  # 7.9 MB > gcsfs's 5 MiB upload part.
big.abort()
small = npz_io.NpzStreamWriter(W + "/samples/c.npz", (10, 16, 16, 3))  # Within one part.
small.write(rows[:4])
small.abort()
del small  # Garbage collection must not publish the partial object either.
import gc
gc.collect()

paths.append_text(epath.Path(W, "log.txt"), "a\\n")
paths.append_text(epath.Path(W, "log.txt"), "b\\n")
assert epath.Path(W, "log.txt").read_text() == "a\\nb\\n"

assert config_validation.check_workdir(W + "/new") == epath.Path(W + "/new")
try:
    config_validation.check_workdir("gs://no-such-bucket/run")
    raise AssertionError("a bucket that does not exist passed the write check")
except UserError as e:
    assert "not writable" in str(e) and "\\n" not in str(e), e
print("BUCKET_IO_OK")
"""


def test_checkpoint_fallback_npz_and_workdir_check_in_a_bucket(gcs, tmp_path_factory):
    assert "BUCKET_IO_OK" in run_in_bucket(BUCKET_IO, gcs, jax_cache_dir(tmp_path_factory))
    names = object_names(gcs, BUCKET, "io/")
    for step in (1, 2):  # 2 written again after the damaged one was moved.
        assert f"io/checkpoints/{step}/commit_success.txt" in names, names
    assert "io/damaged_checkpoints/2/state/_METADATA" in names  # Kept, never deleted.
    assert "io/samples/a.npz" in names and "io/samples/b.npz" not in names
    assert "io/samples/c.npz" not in names
    assert not [n for n in names if ".write_test_" in n], names


def test_paths_keep_uris_and_make_local_paths_absolute(tmp_path, monkeypatch):
    from sd_jax.errors import UserError
    from sd_jax.io import paths

    monkeypatch.chdir(tmp_path)
    uri = paths.as_path("gs://bucket/run") / "checkpoints"
    assert str(uri) == "gs://bucket/run/checkpoints" and paths.is_uri(uri)
    assert str(paths.as_path("run/x")) == str(tmp_path / "run" / "x")
    with pytest.raises(UserError, match="s3:// paths are not supported"):
        paths.as_path("s3://bucket/run")
    assert list(tmp_path.iterdir()) == []  # Nothing made locally, no `gs:` directory.


def test_write_atomic_leaves_whole_files_or_nothing(tmp_path):
    """Local side of `paths.write_atomic` (the bucket side runs in the end-to-end test)."""
    from sd_jax.io import paths

    target = paths.as_path(tmp_path / "a.npy")
    with pytest.raises(RuntimeError, match="midway"), paths.write_atomic(target) as f:
        f.write(b"partial")
        assert not target.exists()  # Not visible while being written.
        raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []  # Neither the file nor its temporary.
    target.write_bytes(b"old")
    with paths.write_atomic(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_gs_workdir_without_gcsfs_is_one_line(tmp_path):
    """No client library: one line naming it, exit 1, and no local `gs:` directory."""
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "gcsfs.py").write_text("raise ImportError('No module named gcsfs')\n")
    proc = run_launch([*config_args(tiny_config()), "--workdir=gs://some-bucket/run"],
                      env_extra={"PYTHONPATH": f"{fake}{os.pathsep}{REPO}"})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr[-3000:]
    assert err[0].startswith("error: gs:// paths need the gcsfs package"), err
    assert "pip install gcsfs" in err[0]
    assert not os.path.exists(REPO / "gs:")

