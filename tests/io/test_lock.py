"""sd_jax/io/lock.py: one writer per lock file, locally (flock) and in a bucket (a generation
precondition, against the local GCS emulator); a dead holder of this host is taken over with a
warning, a live one or another host's is refused naming it. Budget: ~15 s (one child process
against the emulator, one two-process run)."""

import json
import os
import socket
import subprocess
import sys

import pytest
from gcs_emulator import client_env, running
from utils import REPO, run_python

from sd_jax.errors import UserError
from sd_jax.io import lock


def finished_pid() -> int:
    """The pid of a process of this host that has ended (and was reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "train.lock"
    with lock.WorkdirLock(path, "train"):
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["mode"] == "train" and record["started"]
        with pytest.raises(UserError) as e:
            lock.WorkdirLock(path, "train").acquire()  # Another open file: flock refuses it.
        message = str(e.value)
        assert "\n" not in message and f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert str(tmp_path) in message and "in use by a train run" in message
        assert lock.holder(path) == record
    assert not path.exists() and lock.holder(path) is None  # Released at exit.
    with lock.WorkdirLock(path, "train"):  # Free again.
        pass


def test_a_second_process_is_refused_until_the_first_ends(tmp_path):
    path = tmp_path / "train.lock"
    code = f"""
import sys, time
from sd_jax.io import lock
with lock.WorkdirLock({str(path)!r}, "train"):
    print("HELD", flush=True)
    sys.stdin.readline()
"""
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "HELD"
    with pytest.raises(UserError, match=f"pid {holder.pid} on "):
        lock.WorkdirLock(path, "train").acquire()
    holder.communicate("\n", timeout=60)
    with lock.WorkdirLock(path, "train"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_dead_holder_of_this_host_is_taken_over_with_a_warning(tmp_path, capsys):
    path = tmp_path / "train.lock"
    dead = {"host": socket.gethostname(), "pid": finished_pid(), "mode": "train",
            "started": "2026-01-01T00:00:00+00:00"}
    path.write_text(json.dumps(dead))  # As a SIGKILLed run leaves it.
    assert lock.holder(path) is None
    with lock.WorkdirLock(path, "train"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err.startswith("warning: taking over") and f"pid {dead['pid']}" in err


def test_a_lock_of_another_host_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "train.lock"
    other = {"host": "another-host", "pid": 1, "mode": "train", "started": "2026-01-01"}
    path.write_text(json.dumps(other))
    with pytest.raises(UserError, match=f"pid 1 on another-host.*delete {path}"):
        lock.WorkdirLock(path, "train").acquire()
    assert json.loads(path.read_text()) == other  # Left as it was.


def test_only_process_zero_takes_it_and_all_stop_if_it_could_not(tmp_path):
    path = tmp_path / "train.lock"
    with lock.hold(path, "train", primary=False, agree=lambda ok: 1):
        assert not path.exists()  # Another process (process 0) holds it.
    refused = lock.hold(path, "train", primary=False, agree=lambda ok: 0)
    with pytest.raises(UserError, match="process 0 could not take"), refused:
        pass
    with lock.hold(path, "train"), pytest.raises(UserError, match="in use by"), \
            lock.hold(path, "train"):
        pass


BUCKET_CODE = """
import json, os, socket, subprocess, sys
from sd_jax.errors import UserError
from sd_jax.io import lock

path = "gs://test-bucket/run/train.lock"
first = lock.WorkdirLock(path, "train")
first.acquire()
try:
    lock.WorkdirLock(path, "train").acquire()
except UserError as e:
    print("REFUSED", e)
print("HOLDER", json.dumps(lock.holder(path)))
first.release()
print("RELEASED", lock.holder(path))
dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                      capture_output=True, text=True).stdout.strip()
from etils import epath
epath.Path(path).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead),
                                        "mode": "train", "started": "x"}))
with lock.WorkdirLock(path, "sample"):
    print("TAKEN", json.loads(epath.Path(path).read_text())["mode"])
print("GONE", epath.Path(path).exists())
"""


def test_bucket_lock_is_created_only_if_absent():
    with running("test-bucket") as url:
        proc = run_python(BUCKET_CODE, env_extra=client_env(url), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "REFUSED gs://test-bucket/run is in use by a train run (pid" in out, out
    holder = json.loads(out.split("HOLDER ")[1].splitlines()[0])
    assert holder["host"] == socket.gethostname() and holder["mode"] == "train"
    assert "RELEASED None" in out
    assert "warning: taking over gs://test-bucket/run/train.lock" in proc.stderr
    assert "TAKEN sample" in out and "GONE False" in out
