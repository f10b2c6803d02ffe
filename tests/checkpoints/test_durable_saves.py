"""Checkpoints are reported only once committed, and a failed save stops training in one line
with the last good checkpoint untouched: on a real, full filesystem (a 1300 KiB tmpfs, mounted in
a private user and mount namespace by `unshare -rm`, which needs no root), and by stopping the
run (SIGSTOP) the moment it prints "checkpoint N saved". Budget: ~40 s on 2 cores.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
from utils import (
    REPO,
    child_env,
    config_args,
    fast_env,
    jax_cache_dir,
    start_launch,
    tiny_config,
)

pytestmark = pytest.mark.slow

# One tiny checkpoint takes ~850 KiB: the one at step 100 fits, the one at step 200 does not.
FULL_DISK = tiny_config(**{"train.num_steps": 100_000, "train.checkpoint_every": 100,
                           "train.keep_checkpoints": 5, "train.log_every": 1})

RESTORE = """
import sys
sys.path.insert(0, "tests")
from utils import tiny_config
from sd_jax import models, sharding
from sd_jax.checkpoints import checkpointer
from sd_jax.train import state as train_state
cfg = tiny_config()
mesh = sharding.make_mesh(cfg.mesh)
model, tx = models.build_model(cfg.model), train_state.make_optimizer(cfg.optimizer)
abstract, _ = train_state.state_shardings(model, tx, cfg, mesh)
ckpt = checkpointer.Checkpointer(sys.argv[1], read_only=True)
state, meta, step = ckpt.restore_newest_intact(abstract, cfg.model)  # Checksums verified.
print("RESTORED", step, ckpt.manager.all_steps())
"""


def can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return jax_cache_dir(tmp_path_factory)


@pytest.mark.skipif(not can_mount_tmpfs(), reason="no unprivileged mount namespace (unshare -rm)")
def test_a_full_disk_stops_training_in_one_line_and_keeps_the_last_checkpoint(tmp_path, cache):
    workdir = tmp_path / "small_disk"
    workdir.mkdir()
    train = shlex.join([sys.executable, "launch.py", *config_args(FULL_DISK),
                        f"--workdir={workdir}"])
    restore = shlex.join([sys.executable, "-c", RESTORE, str(workdir)])
    # Everything on the small filesystem happens inside the namespace that mounted it.
    script = (f"mount -t tmpfs -o size=1300k tmpfs {workdir} && {train}; echo EXIT $?; "
              f"ls {workdir / 'checkpoints'}; {restore}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO,
                          env=child_env(1) | fast_env(cache, 1), capture_output=True, text=True,
                          timeout=600)
    out, err = proc.stdout, proc.stderr
    assert "EXIT 1" in out, out[-2000:] + err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    restore_err = err.split("RESTORED")[0]
    assert "Traceback" not in restore_err and len(errors) == 1, err[-3000:]
    assert errors[0] == (
        f"error: saving the checkpoint of step 200 in {workdir / 'checkpoints'} failed: No space "
        "left on device; training stopped. The newest complete checkpoint (step 100) is "
        "untouched: free space or fix access, then rerun to resume from it"), errors[0]
    # Stopped once the failure was known, well before the next save would have reported it.
    last_step = max(int(m) for m in re.findall(r"^step (\d+):", out, re.MULTILINE))
    assert 200 <= last_step < 300, last_step
    assert f"checkpoint 100 saved: {workdir / 'checkpoints' / '100'}" in out
    assert "RESTORED 100 [100]" in out, out[-2000:] + err[-3000:]


def test_checkpoint_saved_is_printed_once_the_checkpoint_is_final(tmp_path, cache):
    """SIGTERM; the moment the run says "checkpoint N saved", it is frozen (SIGSTOP) and the
    directory must be complete: orbax renames `N.orbax-checkpoint-tmp` to `N` when committed."""
    workdir = tmp_path / "stopped"
    long_run = tiny_config(**{"train.num_steps": 100_000, "train.checkpoint_every": 100_000})
    proc = start_launch([*config_args(long_run), f"--workdir={workdir}"],
                        env_extra=fast_env(cache, 1), stderr=subprocess.DEVNULL)
    saved = None
    try:
        for line in proc.stdout:
            if line.startswith("step 3:"):
                proc.send_signal(signal.SIGTERM)
            if "saved" in line:
                proc.send_signal(signal.SIGSTOP)
                saved = line.strip()
                break
        stopped = int(re.fullmatch(r"stopped by signal at step (\d+); checkpoint (\d+) saved: "
                                   r"\S+", saved or "").group(2))
        on_disk = sorted(os.listdir(workdir / "checkpoints"))
    finally:
        proc.kill()
        proc.communicate()
    assert saved.endswith(f": {workdir / 'checkpoints' / str(stopped)}")
    assert on_disk == [str(stopped)], on_disk  # Committed, no temporary directory left.


def test_only_closed_loop_errors_of_abandoned_writes_are_dropped():
    """The unraisable hook a saving Checkpointer installs drops RuntimeError('Event loop is
    closed') raised in asyncio's frames (TensorStore completing a failed save's writes after
    orbax closed their loop: ~240 tracebacks under load) and passes everything else on."""
    import asyncio
    import types

    from sd_jax.checkpoints import checkpointer

    seen = []
    hook = checkpointer._closed_loop_hook(seen.append)

    def unraisable(fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - what an unraisable report carries.
            return types.SimpleNamespace(exc_type=type(e), exc_value=e,
                                         exc_traceback=e.__traceback__.tb_next, object=None)

    loop = asyncio.new_event_loop()
    loop.close()
    closed = unraisable(loop.call_soon_threadsafe, print)
    hook(closed)
    assert seen == []  # Dropped.

    def ours():
        raise RuntimeError("Event loop is closed")

    other = unraisable(ours)  # Same message, raised outside asyncio: kept.
    hook(other)
    hook(unraisable(divmod, 1, 0))
    assert [info.exc_type for info in seen] == [RuntimeError, ZeroDivisionError]
