"""Timing shared by the benchmarks: medians of calls that take turns."""

from __future__ import annotations

import statistics
import time

import jax


def median_seconds(runs: dict[str, object], repeats: int) -> dict[str, float]:
    """Median seconds per call of each run; the runs take turns, so a change in the machine's
    load during the measurement falls on all of them alike."""
    times = {key: [] for key in runs}
    for i in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run(jax.random.key(i))
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}
