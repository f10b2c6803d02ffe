"""A local Google Cloud Storage for tests: gcp-storage-emulator (pure Python, PyPI), three fixes.

    with gcs_emulator.running("test-bucket") as url:
        env = gcs_emulator.client_env(url)   # for the child process that uses gs://test-bucket

The emulator runs in its own process (`python tests/gcs_emulator.py PORT BUCKET`), so the fixes
below never touch the test process. Each client library is pointed at it through its documented
endpoint override (`client_env`). Objects are listed over the JSON API with urllib
(`object_names`), independently of the libraries under test.

Fixes to gcp-storage-emulator 2026.7.19, each a behaviour of real GCS the emulator lacks:
1. Media downloads carry no `x-goog-generation` header. TensorStore (orbax's array I/O) reads the
   object generation from it (tensorstore/kvstore/gcs_http/gcs_key_value_store.cc, ReadTask);
   without it the generation is 0 and the next conditional read of an OCDBT manifest fails with
   "Malformed StorageGeneration" (seen at the second checkpoint of a training run).
2. `objects.move` (POST .../o/SRC/moveTo/o/DST), which gcsfs >= 2025 uses to rename, answers 501;
   gcsfs retries it with backoff for ~31 s before falling back to copy + delete.
3. Cancelling a resumable upload (DELETE on the session URI; GCS answers 499) answers 501;
   gcsfs's `GCSFile.discard()` (used to abort a partial .npz) would retry ~31 s, then raise.
4. An upload with the precondition `ifGenerationMatch=0` ("only if no such object exists", what
   gcsfs sends for mode 'xb' and the workdir lock relies on) replaces an existing object; GCS
   answers 412 Precondition Failed (https://cloud.google.com/storage/docs/request-preconditions).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator


def client_env(url: str) -> dict[str, str]:
    """Environment that points every library sd-jax uses for gs:// at the emulator at `url`.

    Several are read once, at import or at the first gs:// path: set them before the child starts.
    """
    return {
        # TensorStore (orbax's arrays): tensorstore/kvstore/gcs/index.rst, section "Testing".
        "TENSORSTORE_GCS_HTTP_URL": url,
        # TensorStore's auth: a fixed bearer token instead of Google credentials (same section).
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        # gcsfs (etils.epath's gs:// backend) and google-cloud-storage (orbax asks it whether a
        # bucket has a hierarchical namespace before deleting an old checkpoint).
        "STORAGE_EMULATOR_HOST": url,
        # gcsfs >= 2025 asks the Storage Control gRPC API (TLS) for the bucket's layout: against
        # the emulator each call waits 60 s for a timeout. Read at `import gcsfs`.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # fsspec's per-protocol defaults: gcsfs token='anon', no probe for gcloud credentials.
        "FSSPEC_GCS_TOKEN": "anon",
        # sd_jax sets this default itself; explicit here so the test never depends on order.
        "EPATH_USE_TF": "false",
    }


def object_names(url: str, bucket: str, prefix: str = "") -> list[str]:
    """Names of the objects under `prefix`, from the JSON API (not through gcsfs)."""
    names, token = [], None
    while True:
        query = {"prefix": prefix, **({"pageToken": token} if token else {})}
        with urllib.request.urlopen(
                f"{url}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}") as response:
            page = json.load(response)
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return sorted(names)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(bucket: str = "test-bucket") -> Iterator[str]:
    """Starts the fixed emulator with an empty `bucket` on 127.0.0.1; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # stderr to a file, never an unread pipe: a full pipe would block the server mid-test.
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port), bucket],
                                stdout=subprocess.DEVNULL, stderr=log, text=True)
        try:
            _wait_until_up(url, proc, log)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_until_up(url: str, proc: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/").read()  # The emulator's health check.
            return
        except OSError:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"GCS emulator exited: {log.read()[-2000:]}") from None
            if time.monotonic() > deadline:
                raise RuntimeError("GCS emulator did not start in 60 s") from None
            time.sleep(0.05)


class _Status:
    """What the emulator's Response wants as a status (an HTTPStatus has no 499)."""

    def __init__(self, value: int, phrase: str):
        self.value, self.phrase = value, phrase


def _fix_emulator() -> None:
    """Applies fixes 1-4 of the module docstring to the emulator in this process."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    original_download = objects.download

    def download(request, response, storage, *args, **kwargs):  # Fix 1.
        original_download(request, response, storage, *args, **kwargs)
        if response.status.value < 300:  # 200, or 206 for a range.
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    def move_to(request, response, storage, *args, **kwargs):  # Fix 2.
        p = request.params
        try:
            obj = objects._copy(request.base_url, storage, p["bucket_name"], p["object_id"],
                                p["bucket_name"], p["dest_object_id"])
        except objects.NotFound:
            response.status = _Status(404, "Not Found")
            return
        storage.delete_file(p["bucket_name"], p["object_id"])
        response.json(obj)

    def cancel_upload(request, response, storage, *args, **kwargs):  # Fix 3.
        with contextlib.suppress(Exception):  # Already finished or cancelled: nothing to drop.
            storage.delete_resumable_file_obj(request.query["upload_id"][0])
        response.status = _Status(499, "Client Closed Request")

    original_insert = objects.insert

    def insert(request, response, storage, *args, **kwargs):  # Fix 4.
        name = (request.query.get("name") or [None])[0]
        if name is None and isinstance(request.data, dict):  # Multipart: the name is in 'meta'.
            name = (request.data.get("meta") or request.data).get("name")
        if request.query.get("ifGenerationMatch") == ["0"] and name:
            try:
                storage.get_file_obj(request.params["bucket_name"], name)
            except objects.NotFound:
                pass
            else:
                response.status = _Status(412, "Precondition Failed")
                response.json({"error": {"code": 412, "message": "At least one of the pre-"
                                         "conditions you specified did not hold."}})
                return
        original_insert(request, response, storage, *args, **kwargs)

    objects.download = download  # objects.get(alt=media) calls the module-level name.
    handlers = []
    for regex, methods in server.HANDLERS:
        methods = {m: download if f is original_download else insert if f is original_insert
                   else f for m, f in methods.items()}
        if regex.startswith("^/upload/storage/v1/b/"):
            methods["DELETE"] = cancel_upload
        handlers.append((regex, methods))
    move = (r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
            r"(?P<dest_object_id>.*[^/]+)$", {"POST": move_to})
    server.HANDLERS = (move, *handlers)  # The router reads the module global per request.


def _serve(port: int, bucket: str) -> None:
    import logging

    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s log as errors.
    _fix_emulator()
    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
