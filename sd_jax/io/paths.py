"""Every file the run reads or writes, local or in a bucket, as one type: `etils.epath.Path`.

    workdir = paths.as_path("gs://bucket/run")   # or "runs/x" (made absolute), "/nfs/run"

`gs://` paths go through etils.epath's fsspec backend (gcsfs); orbax writes checkpoints there
itself (TensorStore for arrays). `sd_jax/__init__.py` sets `EPATH_USE_TF=false` as a default
before anything is imported, so epath never routes gs:// through TensorFlow's `tf.io.gfile`
(whose GCS client has fixed endpoints and cannot be tested against an emulator); set
`EPATH_USE_TF=true` in the environment to get tf.io.gfile back.

What differs from a local disk, and how the callers handle it:
- never `Path.absolute()` / `.resolve()` on a URI: epath makes `gs://b/r` into `<cwd>/gs:/b/r`
  (a local directory named `gs:`); `as_path` leaves URIs alone.
- no appending to an object (gcsfs's mode 'a' silently overwrites): `append_text`.
- a "directory" is a name prefix: `mkdir` is a no-op and an empty one does not exist, so epath's
  `rename` (which checks the destination's parent exists) cannot move a tree: `move_tree`.
- closing a partly written object publishes it: abort an upload with `discard_upload` (gcsfs's
  `discard()` alone still publishes a small one); `write_atomic` does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import IO

from etils import epath

from sd_jax.errors import UserError

# URI scheme -> the fsspec package epath needs for it. Only gs:// is tested (against an emulator).
SCHEMES = {"gs": "gcsfs"}


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (a bucket), False for a local path."""
    return "://" in os.fspath(path)


@functools.cache
def _check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise UserError(f"{scheme}:// paths are not supported; use a local path (or a mounted "
                        "bucket) or gs://bucket/path")
    try:
        __import__(SCHEMES[scheme])
    except ImportError as e:
        raise UserError(f"{scheme}:// paths need the {SCHEMES[scheme]} package ({e}); "
                        f"pip install {SCHEMES[scheme]} (it is in requirements.txt)") from e
    import fsspec

    # No cached directory listings (gcsfs keeps them forever by default): TensorStore writes
    # checkpoints without gcsfs and `move_tree` renames through another client, so a cached
    # listing would show orbax steps that are gone and hide new ones. Set before epath builds
    # its client, which happens at the first gs:// operation, after this check.
    fsspec.config.conf.setdefault(scheme, {}).setdefault("use_listings_cache", False)


PROBE_TIMEOUT_S = 4.0  # The first request to a bucket's endpoint; a live one answers in < 1 s.


def check_reachable(path: str | os.PathLike, timeout: float = PROBE_TIMEOUT_S) -> None:
    """UserError (one line) unless the storage endpoint of the gs:// `path` answers one HTTP
    request within `timeout` seconds. Any answer counts (401 or 403 without credentials, 404 for
    a missing bucket): this tells an unreachable endpoint (no network, a firewall, a proxy that
    never answers) from one that says no, before a client library retries for a minute.
    The endpoint is the one gcsfs uses: `STORAGE_EMULATOR_HOST`, else storage.googleapis.com."""
    text = os.fspath(as_path(path))  # First: an unsupported scheme or a missing gcsfs.
    bucket = text.split("://", 1)[1].split("/", 1)[0]
    endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    endpoint = endpoint if "://" in endpoint else f"http://{endpoint}"
    url = f"{endpoint.rstrip('/')}/storage/v1/b/{urllib.parse.quote(bucket)}?fields=name"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:  # The endpoint answered.
        return
    except (OSError, ValueError) as e:  # URLError, a timeout, a refused connection, a bad URL.
        reason = " ".join(str(getattr(e, "reason", e) or type(e).__name__).split())
        raise UserError(f"{text}: no answer from {endpoint} within {timeout:g} s ({reason}); "
                        "check the network (and any proxy), or use a local --workdir") from None


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: a URI unchanged (after checking its client library is installed,
    else a one-line UserError), a local path made absolute and `~` expanded."""
    text = os.fspath(path)
    if is_uri(text):
        _check_scheme(text.split("://", 1)[0])
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def append_text(path: epath.Path, text: str) -> None:
    """Appends `text` to a file, creating it. Objects cannot be appended to, so in a bucket the
    whole object is read and written back: callers batch their lines (see metrics_io)."""
    if is_uri(path):
        old = path.read_text() if path.exists() else ""
        path.write_text(old + text)
        return
    with path.open("a") as f:
        f.write(text)


def move_tree(src: epath.Path, dst: epath.Path) -> None:
    """Moves the directory `src` to `dst` (whose parent need not exist), keeping every file.

    In a bucket each object is renamed on the server (gcsfs `mv`: copy + delete, no download)."""
    if is_uri(src):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(os.fspath(src))
        fs.mv(os.fspath(src), os.fspath(dst), recursive=True)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(os.fspath(src), os.fspath(dst))


def discard_upload(f: IO[bytes]) -> None:
    """Abandons an object being written in a bucket (gcsfs file), so that nothing is published.

    gcsfs's `discard()` cancels an upload that has started (more than one block written) but
    leaves the file open otherwise, and closing it, or its garbage collection, would then upload
    the partial bytes: so it is also marked closed, with its buffer dropped."""
    f.discard()
    f.buffer = None
    f.closed = True


@contextlib.contextmanager
def write_atomic(path: epath.Path) -> Iterator[IO[bytes]]:
    """Opens `path` for writing in binary so that it appears only whole, or not at all.

    Locally the bytes go to `<name>.tmp`, renamed over `path` when the block ends and removed if
    it raises (a killed process leaves at most the .tmp, which the next write replaces). In a
    bucket an object is published when its upload completes, so it is written in place and the
    upload discarded if the block raises (a killed process publishes nothing)."""
    if is_uri(path):
        f = path.open("wb")
        try:
            yield f
        except BaseException:
            discard_upload(f)
            raise
        f.close()
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as f:
            yield f
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
