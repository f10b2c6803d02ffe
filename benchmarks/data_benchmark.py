"""Throughput of the input pipeline alone: JPEG decode + centre crop + resize (+ flip flags).

Writes ImageNet-like JPEGs (500x375, quality 90, textured so they compress like photos) into a
temp folder, then reads batches through `Loader.iterate` for each loader, resolution and worker
count:

    python benchmarks/data_benchmark.py --sizes 256 512 --workers 1 2 --loaders grain threads

`grain` is today's loader (`data.num_workers` worker processes, uint8 batches). `threads` is the
loader it replaced, read from git (`sd_jax/data/loader.py` at --threads_rev: `num_workers`
threads, float32 batches flipped on the host), so both are measured on the same files under the
same load. Prints one markdown row per setting: the median (and range) over --repeats runs of
images per wall-clock second and per CPU-second of the whole process tree (this process and its
workers; the per-core cost, which moves much less than wall time when other jobs share the
machine). Rates are taken in steady state: from batch arrival times after the first batches,
which the workers may have prepared ahead of time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sd_jax.data import FolderSource, Loader  # noqa: E402

THREADS_REV = "35d4410"  # The last commit with the threaded loader.


def write_jpegs(folder: Path, num_images: int, width: int = 500, height: int = 375) -> float:
    """Writes textured photo-like JPEGs; returns their mean size in KiB."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(num_images):
        coarse = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, (height, width, 3))
        pixels = np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total / num_images / 1024


def threaded_loader_class(rev: str) -> type:
    """The `Loader` class of sd_jax/data/loader.py at git revision `rev`."""
    code = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:sd_jax/data/loader.py"],
                          check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("threaded_loader", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(code, f"{rev}:sd_jax/data/loader.py", "exec"), module.__dict__)  # noqa: S102
    return module.Loader


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (the grain workers)."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:  # A worker that has just exited.
            pass
    return total


def steady_rates(loader_cls: type, source: FolderSource, size: int, workers: int,
                 batch_size: int, num_batches: int) -> tuple[float, float]:
    """(images per wall second, images per CPU-second of the process tree) over the last
    `num_batches` of `num_batches + 3 * workers + 1` batches: the first ones may have been
    prepared while the workers started (up to about 3 per worker: the one being built and two
    buffered), so they are not counted."""
    loader = loader_cls(source, image_size=size, global_batch_size=batch_size, seed=0,
                        random_flip=True, num_workers=workers)
    skip = 3 * workers + 1
    try:
        batches = loader.iterate(0, skip + num_batches)
        for _ in range(skip):
            next(batches)
        start, cpu_start = time.perf_counter(), tree_cpu_seconds()
        for _ in range(num_batches):
            next(batches)
        wall, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu_start
        batches.close()
    finally:
        loader.close()
    n = batch_size * num_batches
    return n / wall, n / cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--loaders", nargs="+", default=["grain", "threads"],
                   choices=["grain", "threads"])
    p.add_argument("--threads_rev", default=THREADS_REV, help="git revision of the old loader")
    p.add_argument("--num_images", type=int, default=512, help="distinct JPEGs written")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_batches", type=int, default=12, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting (median reported)")
    args = p.parse_args()
    classes = {"grain": Loader}
    if "threads" in args.loaders:
        classes["threads"] = threaded_loader_class(args.threads_rev)
    with tempfile.TemporaryDirectory() as tmp:
        kib = write_jpegs(Path(tmp), args.num_images)
        source = FolderSource(tmp)
        print(f"{args.num_images} JPEGs 500x375, mean {kib:.0f} KiB; batch {args.batch_size}, "
              f"{args.num_batches} timed batches, median of {args.repeats} runs; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
        print("| loader | resolution | workers | images/s (wall) | per worker | "
              "images per CPU-second |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes:
            for workers in args.workers:
                for name in args.loaders:
                    runs = [steady_rates(classes[name], source, size, workers, args.batch_size,
                                         args.num_batches) for _ in range(args.repeats)]
                    wall = statistics.median(r[0] for r in runs)
                    cpu = statistics.median(r[1] for r in runs)
                    spread = f"{min(r[0] for r in runs):.0f}-{max(r[0] for r in runs):.0f}"
                    print(f"| {name} | {size} | {workers} | {wall:.0f} ({spread}) | "
                          f"{wall / workers:.0f} | {cpu:.0f} |", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
