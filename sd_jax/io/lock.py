"""One writer at a time: a lock file, `<name>.lock`, held while a run writes its outputs.

    with lock.hold(workdir / lock.TRAIN_LOCK, "train"):
        ...   # a second training of this workdir stops with one line naming this one

The file holds JSON: the holder's host, pid, start time and mode. Locally it is held with
flock(2) for the life of the process: the kernel drops it when the process ends, however it ends
(SIGKILL included), and the inode is checked after locking, so a lock file released (deleted)
by its holder meanwhile is not mistaken for a held one. In a gs:// bucket the object is created
with the precondition "only if it does not exist" (`ifGenerationMatch=0`, gcsfs's mode 'xb'),
which GCS grants to one writer only; it is deleted at exit.

A lock left behind by a process of this host that is gone (killed; a local flock would have been
dropped anyway) is taken over with a warning. A lock of a live process, or of another host (whose
processes cannot be checked from here), stops the run with one line naming its holder and the
file to delete if that run has ended.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

from sd_jax.errors import UserError
from sd_jax.io import paths

TRAIN_LOCK = "train.lock"  # In the workdir, held by a training run (sample mode: one per name).


def _record(mode: str) -> dict[str, Any]:
    now = datetime.datetime.now().astimezone()  # Local time, with its UTC offset.
    return {"host": socket.gethostname(), "pid": os.getpid(), "mode": mode,
            "started": now.isoformat(timespec="seconds")}


def describe(record: dict[str, Any]) -> str:
    """'a train run (pid 123 on host-a, since 2026-12-06T15:00:00+00:00)'."""
    return (f"a {record.get('mode', '?')} run (pid {record.get('pid', '?')} on "
            f"{record.get('host', '?')}, since {record.get('started', '?')})")


def _parse(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:  # Written by something else, or cut short.
        return {"unreadable": text[:80]}
    return record if isinstance(record, dict) else {"unreadable": text[:80]}


def _gone(record: dict[str, Any]) -> bool:
    """Whether the holder was a process of this host that no longer exists."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # Exists, under another user.
        return False
    return False


class WorkdirLock:
    """The lock file `path` (local or gs://), taken by `acquire` (or `with`), freed by `release`."""

    def __init__(self, path: str | os.PathLike, mode: str):
        self.path, self.mode = paths.as_path(path), mode
        self._fd: int | None = None
        self._taken = False

    def _busy(self, record: dict[str, Any]) -> UserError:
        if record.get("host") == socket.gethostname():
            hint = "wait for it to end (or stop it), or use another --workdir"
        else:
            hint = f"if that run has ended, delete {self.path}; otherwise use another --workdir"
        return UserError(f"{self.path.parent} is in use by {describe(record)}: {hint}")

    def _take_over(self, record: dict[str, Any]) -> None:
        print(f"warning: taking over {self.path} from {describe(record)}, which has ended "
              "without releasing it", file=sys.stderr, flush=True)

    def acquire(self) -> None:
        """Takes the lock or raises UserError naming its holder."""
        if paths.is_uri(self.path):
            self._acquire_object()
        else:
            self._acquire_file()
        self._taken = True

    def _acquire_file(self) -> None:
        os.makedirs(self.path.parent, exist_ok=True)
        name = os.fspath(self.path)
        while True:  # Again if the holder deleted the file between our open and our flock.
            fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
                os.close(fd)
                raise self._busy(record) from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(name).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        previous = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
        # Unlocked: its holder is gone, unless it is on another host of a file system whose
        # locks this host does not see.
        if previous and previous.get("host") not in (None, socket.gethostname()):
            os.close(fd)
            raise self._busy(previous)
        if previous:
            self._take_over(previous)
        data = json.dumps(_record(self.mode)).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self._fd = fd

    def _acquire_object(self) -> None:
        data = json.dumps(_record(self.mode)).encode()
        for attempt in range(2):
            try:
                fs, name = fsspec.core.url_to_fs(os.fspath(self.path))
                with fs.open(name, "xb") as f:  # gcsfs: ifGenerationMatch=0 (epath has no 'x').
                    f.write(data)
                return
            except FileExistsError:
                try:
                    previous = _parse(self.path.read_text())
                except FileNotFoundError:  # Released meanwhile: try again.
                    continue
                if attempt or not _gone(previous):
                    raise self._busy(previous) from None
                self._take_over(previous)
                self.path.unlink(missing_ok=True)
        raise self._busy({})

    def release(self) -> None:
        """Deletes the lock file (ours only) and drops the lock; safe to call twice."""
        if not self._taken:
            return
        self._taken = False
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
            os.close(self._fd)  # After the unlink: a waiting run then sees the file gone.
            self._fd = None
            return
        with contextlib.suppress(FileNotFoundError):
            record = _parse(self.path.read_text())
            if (record.get("host"), record.get("pid")) == (socket.gethostname(), os.getpid()):
                self.path.unlink()

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the run holding the lock file `path`, or None (no file, or its holder is a
    process of this host that has ended). Reads only; a released lock file is deleted."""
    try:
        record = _parse(paths.as_path(path).read_text())
    except FileNotFoundError:
        return None
    return None if _gone(record) else record


@contextlib.contextmanager
def hold(path: str | os.PathLike, mode: str, primary: bool = True,
         agree: Callable[[int], int] = int) -> Iterator[None]:
    """Holds the lock file `path` for the block: process 0 (`primary`) takes it, the others hold
    nothing. `agree(ok)` returns process 0's `ok` on every process (a broadcast on multi-host),
    so that every process stops when process 0 could not take the lock."""
    lock, error = WorkdirLock(path, mode), None
    if primary:
        try:
            lock.acquire()
        except UserError as e:
            error = e
    if not agree(int(error is None)):
        raise error or UserError(f"process 0 could not take {path} (its output says why)")
    try:
        yield
    finally:
        lock.release()
