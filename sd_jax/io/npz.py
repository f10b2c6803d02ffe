"""Streaming read/write of ADM-format .npz files (`arr_0` uint8 NHWC images, `arr_1` labels).

50k ImageNet-512 samples are 39 GB of uint8, more than a host may hold, so `arr_0` is written and
read in row batches. The files are ordinary uncompressed .npz (what `np.savez` writes): `np.load`
and the ADM evaluator read them unchanged. Files from elsewhere (reference batches, weights) are
read with `allow_pickle=False`: an object array could run code when unpickled, so it is refused
with a `UserError`, as is a file that is not an .npz or is truncated. Paths may be local or
gs:// (`sd_jax.io.paths`).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from typing import IO

import numpy as np
from etils import epath
from flax import traverse_util

from sd_jax.errors import UserError
from sd_jax.io.paths import as_path, discard_upload, is_uri


class _StreamSink(io.RawIOBase):
    """What zipfile writes into: passes bytes to `file` until `aborted`, then drops them.

    Unseekable on purpose: zipfile then streams each member with a trailing data descriptor
    instead of seeking back to patch its header, which an upload to GCS could not do.
    """

    def __init__(self, file: IO[bytes]):
        super().__init__()
        self.file, self.position, self.aborted = file, 0, False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.position

    def write(self, data) -> int:
        if not self.aborted:
            self.file.write(data)
        self.position += len(data)
        return len(data)


class NpzStreamWriter:
    """Writes `<key>.npy` of a known final shape row batch by row batch, then small arrays.

    The file appears only on `close()`: a local one is renamed from a temporary name; in a bucket
    the object is uploaded in parts and published when the upload completes (GCS has no rename).
    `abort()` (or an exception inside `with`) leaves nothing behind.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype=np.uint8,
                 key: str = "arr_0") -> None:
        self.path = as_path(path)
        self._remote = is_uri(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path if self._remote else self.path.with_name(self.path.name + ".tmp")
        self._shape, self._dtype = tuple(shape), np.dtype(dtype)
        self._rows = 0
        self._file = self._tmp.open("wb")
        self._sink = _StreamSink(self._file)
        self._zip = zipfile.ZipFile(self._sink, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open(f"{key}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(self._dtype), "fortran_order": False,
                  "shape": self._shape}
        np.lib.format.write_array_header_2_0(self._member, header)

    def write(self, rows: np.ndarray) -> None:
        """Appends rows (shape [n, *shape[1:]])."""
        rows = np.ascontiguousarray(rows, dtype=self._dtype)
        if rows.shape[1:] != self._shape[1:] or self._rows + len(rows) > self._shape[0]:
            raise ValueError(f"rows {rows.shape} do not fit {self._shape} after {self._rows}")
        self._member.write(rows.tobytes())
        self._rows += len(rows)

    def __enter__(self) -> NpzStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        """Discards the partial file (e.g. after an error while sampling)."""
        self._sink.aborted = True  # The zip's closing records go nowhere.
        if not self._member.closed:
            self._member.close()
        self._zip.close()
        if self._remote:
            discard_upload(self._file)  # Closing would publish a partial object.
        else:
            self._file.close()
            self._tmp.unlink(missing_ok=True)

    def close(self, **arrays: np.ndarray) -> epath.Path:
        """Checks every row was written, adds small arrays (e.g. arr_1=labels), publishes."""
        self._member.close()
        if self._rows != self._shape[0]:
            self.abort()
            raise ValueError(f"wrote {self._rows} rows, expected {self._shape[0]}")
        for name, value in arrays.items():
            with self._zip.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
        self._zip.close()
        self._file.close()
        if not self._remote:
            self._tmp.replace(self.path)
        return self.path


def _unreadable(path: str | os.PathLike, what: str, error: BaseException) -> UserError:
    """One line for an .npz that cannot be read (not a zip, truncated, pickled objects)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "allow_pickle" in text:  # numpy's refusal of object arrays / pickled files.
        return UserError(f"{what} {path} holds pickled Python objects, which are refused (loading "
                         "them could run code); save plain numeric arrays (np.savez)")
    return UserError(f"{what} {path} is not a readable .npz (truncated or not an .npz file: "
                     f"{text[:160]})")


def keys(path: str | os.PathLike, what: str = "file") -> list[str]:
    """Array names in an .npz; UserError naming `what` if it is not a readable .npz."""
    try:
        with as_path(path).open("rb") as fh, zipfile.ZipFile(fh) as zf:
            return [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise _unreadable(path, what, e) from e


def load(path: str | os.PathLike, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of a (small) .npz, with pickles refused; UserError naming `what` on failure."""
    keys(path, what)  # Not a zip at all: np.load would try to unpickle it.
    try:
        with as_path(path).open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise _unreadable(path, what, e) from e


def _open_array(zf: zipfile.ZipFile, key: str):
    f = zf.open(f"{key}.npy")
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
        raise ValueError(f"{key} is Fortran-ordered; save it C-ordered")
    return f, tuple(shape), np.dtype(dtype)


def array_header(path: str | os.PathLike, key: str = "arr_0", what: str = "file"
                 ) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one array, read from its header only (nothing is unpickled)."""
    try:
        with as_path(path).open("rb") as fh, zipfile.ZipFile(fh) as zf:
            f, shape, dtype = _open_array(zf, key)
            f.close()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, KeyError) as e:
        raise _unreadable(path, what, e) from e
    return shape, dtype


def array_shape(path: str | os.PathLike, key: str = "arr_0") -> tuple[int, ...]:
    """Shape of one array, without reading it."""
    return array_header(path, key)[0]


def iter_rows(path: str | os.PathLike, key: str = "arr_0", batch_rows: int = 1000
              ) -> Iterator[np.ndarray]:
    """Yields consecutive row batches of one (uncompressed or compressed) array."""
    with as_path(path).open("rb") as fh, zipfile.ZipFile(fh) as zf:
        f, shape, dtype = _open_array(zf, key)
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        with f:
            for start in range(0, shape[0], batch_rows):
                n = min(batch_rows, shape[0] - start)
                buf = f.read(n * row_bytes)
                yield np.frombuffer(buf, dtype).reshape((n, *shape[1:]))


def save_tree(path: str | os.PathLike, tree: dict, **extra: np.ndarray) -> epath.Path:
    """Writes a variable tree as float32 arrays under '/'-joined keys (plus `extra` arrays)."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(tree, sep="/")
    with path.open("wb") as f:  # A file object keeps numpy from appending ".npz".
        np.savez(f, **extra, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
    return path


def tree_mismatch(flat: dict[str, np.ndarray], abstract: dict) -> str:
    """'' if `flat` ('/'-joined arrays, as `save_tree` writes) has exactly the keys and shapes of
    the variable tree `abstract`, else one line naming what is missing, unexpected or mis-shaped."""
    expected = traverse_util.flatten_dict(abstract, sep="/")
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    bad = sorted(k for k in expected if k in flat and flat[k].shape != expected[k].shape)
    if not (missing or unexpected or bad):
        return ""
    return f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {bad[:3]}"
