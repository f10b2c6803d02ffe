"""Throughput of the input pipeline alone: JPEG decode + centre crop + resize + flip + [-1, 1].

Writes ImageNet-like JPEGs (500x375, quality 90, textured so they compress like photos) into a
temp folder, then times `Loader.get_batch` through `Loader.iterate` (with its prefetch) for each
resolution and worker count:

    python experiments/data_benchmark.py --sizes 256 512 --workers 1 2

Prints one markdown table row per setting (best of --repeats): images per wall-clock second,
and images per CPU-second of the process (per-core cost, robust to other jobs on the machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sd_jax.data import FolderSource, Loader  # noqa: E402


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


def images_per_second(source: FolderSource, size: int, workers: int, batch_size: int,
                      num_batches: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of one loader over
    `num_batches` batches after one warm-up batch. The second is what one free core would do,
    and barely moves when other jobs share the machine."""
    loader = Loader(source, image_size=size, global_batch_size=batch_size, seed=0,
                    random_flip=True, num_workers=workers)
    try:
        batches = loader.iterate(0, num_batches + 1)
        next(batches)  # Warm-up: thread start, first file reads.
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in batches:
            pass
        n = batch_size * num_batches
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu_start)
    finally:
        loader.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num_images", type=int, default=512, help="distinct JPEGs written")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kib = write_jpegs(Path(tmp), args.num_images)
        source = FolderSource(tmp)
        print(f"{args.num_images} JPEGs 500x375, mean {kib:.0f} KiB; batch {args.batch_size} x "
              f"{args.num_batches} batches, best of {args.repeats}")
        print("| resolution | workers | images/s (wall) | images per CPU-second |")
        print("|---|---|---|---|")
        for size in args.sizes:
            for workers in args.workers:
                runs = [images_per_second(source, size, workers, args.batch_size,
                                          args.num_batches) for _ in range(args.repeats)]
                wall, cpu = max(r[0] for r in runs), max(r[1] for r in runs)
                print(f"| {size} | {workers} | {wall:.0f} | {cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
