"""The costliest ops of a `jax.profiler` trace, read from its Perfetto file (not a test).

`jax.profiler.trace(DIR, create_perfetto_trace=True)` writes
`DIR/plugins/profile/<run>/perfetto_trace.json.gz` (Chrome trace events) beside the `.xplane.pb`
that TensorBoard's profile plugin reads. `top_ops` sums the durations of the complete events
('X') of the threads that execute device work, by op name:

- GPU / TPU: processes named `/device:...`; where some of their threads are streams
  (`Stream #...`), only those, since the other lines there repeat the same work per XLA op or
  module;
- CPU (no device process): the host threads XLA:CPU runs its thunks on (`tf_XLAPjRtCpuClient`).

So a trace of a few train steps names the top costs without TensorBoard. Checked on CPU traces
(tests/studies/test_accelerator.py); the GPU thread layout above is jax's documented one and has
not yet been read from a GPU trace by this project.
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path
from typing import Any

CPU_EXECUTOR_THREAD = "tf_XLAPjRtCpuClient"


def perfetto_file(trace_dir: str | Path) -> Path:
    """The newest `perfetto_trace.json.gz` under `trace_dir`."""
    found = sorted(Path(trace_dir).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}/plugins/profile; "
                                "trace with jax.profiler.trace(..., create_perfetto_trace=True)")
    return found[-1]


def device_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The complete events of the threads that run device work (see the module docstring)."""
    processes = {e["pid"]: e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if not devices:
        keep = {key for key, name in threads.items() if name.startswith(CPU_EXECUTOR_THREAD)}
        return [e for e in complete if (e["pid"], e["tid"]) in keep]
    lines = {key for key in threads if key[0] in devices}
    keep = {key for key in lines if threads[key].startswith("Stream")} or lines
    if not keep:  # Device processes without thread names: all their events.
        return [e for e in complete if e["pid"] in devices]
    return [e for e in complete if (e["pid"], e["tid"]) in keep]


def top_ops(trace_dir: str | Path, steps: int, n: int = 10) -> list[dict[str, Any]]:
    """The `n` ops with the most device time in the trace: name, ms per step (over `steps`
    traced steps), share of all device time, event count, and an `hlo_op` where the event names
    one (a GPU kernel's XLA op)."""
    with gzip.open(perfetto_file(trace_dir), "rt") as f:
        trace = json.load(f)
    events = device_events(trace["traceEvents"] if isinstance(trace, dict) else trace)
    total_us: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    hlo_op: dict[str, str] = {}
    for e in events:
        total_us[e["name"]] += float(e["dur"])
        count[e["name"]] += 1
        if "hlo_op" in e.get("args", {}):
            hlo_op.setdefault(e["name"], str(e["args"]["hlo_op"]))
    device_us = sum(total_us.values())
    return [{"name": name, "ms_per_step": us / 1e3 / steps, "share": us / device_us,
             "count": count[name], "hlo_op": hlo_op.get(name)}
            for name, us in total_us.most_common(n)]
