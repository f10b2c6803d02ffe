"""The loss-curve comparison and the printed table of `benchmarks/accelerator.py` (not a test).

Table format (markdown; docs/performance.md, "On a GPU"): a header line (device, date, memory
per device, wall time, load), then one table per part: train steps, sampling, the costliest ops
of the traced 512 step (with --profile), bf16 against float32, and the quickstart end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GIB = 2**30
PRECISION_RUNS = ("bf16_seed0", "f32_seed0", "f32_seed1")


def losses(workdir: Path) -> list[float] | None:
    """The loss at steps 1, 2, ... from `workdir/metrics.jsonl` (None if there is none)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_step = {r["step"]: r["loss"] for r in records if "loss" in r}
    return [by_step[s] for s in sorted(by_step)] or None


def window_means(curve: list[float], window: int) -> list[float]:
    """Means of consecutive `window`-step windows (a last partial window dropped)."""
    return [sum(curve[i:i + window]) / window for i in range(0, len(curve) - window + 1, window)]


def agreement(curves: dict[str, list[float] | None], window: int) -> dict[str, Any]:
    """The largest gap between window means of bf16 and float32 from one seed, next to the gap
    between float32 from two seeds (the noise the comparison is judged against)."""
    out: dict[str, Any] = {"window": window, "bf16_vs_f32": None, "seed_vs_seed": None,
                           "agree": None}
    if any(not curves.get(k) for k in PRECISION_RUNS) or len(
            {len(curves[k]) for k in PRECISION_RUNS}) != 1:
        return out  # A run failed or stopped early: nothing to compare.
    means = {k: window_means(curves[k], window) for k in PRECISION_RUNS}

    def gap(a: str, b: str) -> float:
        return max(abs(x - y) for x, y in zip(means[a], means[b], strict=True))

    out.update(window_means=means, bf16_vs_f32=gap("bf16_seed0", "f32_seed0"),
               seed_vs_seed=gap("f32_seed1", "f32_seed0"))
    out["agree"] = out["bf16_vs_f32"] <= out["seed_vs_seed"]
    return out


def _num(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "N/A" if x is None else format(x * scale, fmt)


def _train_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| config | remat | batch / device | status | compile s | step ms | images/s | MFU "
             "| HFU | peak GiB (device) | plan GiB | plan / peak |", "|" + "---|" * 12]
    for r in rows:
        peak, plan = r.get("peak_memory_bytes"), r.get("plan_bytes")
        lines.append(
            f"| {r['config']} | {r.get('remat', '')} | {r.get('per_device_batch', '')} | "
            f"{r['status']} | {_num(r.get('compile_s'), '.1f')} | "
            f"{_num(r.get('step_time_s'), '.1f', 1e3)} | {_num(r.get('train_images_per_s'), '.1f')}"
            f" | {_num(r.get('mfu'), '.1%')} | {_num(r.get('hfu'), '.1%')} | "
            f"{_num(peak, '.3g', 1 / GIB)} | {_num(plan, '.3g', 1 / GIB)} | "
            f"{_num(plan / peak if plan and peak else None, '.2f')} |")
    sources = {r["peak_memory_source"] for r in rows if r.get("peak_memory_source")}
    return lines + [f"peak: {source}" for source in sorted(sources)]


def _sampling_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| config | batch | passes / step | guidance | images/s | timed loop s | "
             "compile s |", "|" + "---|" * 7]
    for r in rows:
        for s in r.get("sampling") or []:
            passes = 1 if s["guidance_scale"] == 1 else 2
            measured = (f"{s['images_per_s']:.3f} | {s['loop_s']:.3f} ({s['timed_steps']} of "
                        f"{s['steps']} steps) | {s['compile_s']:.1f}" if "error" not in s else
                        f"failed: {s['error'][:60].replace('|', '/')} | N/A | N/A")
            lines.append(f"| {r['config']} | {s['batch']} | {passes} | {s['guidance_scale']:g} | "
                         f"{measured} |")
    return lines


def _profile_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if r.get("profile_top_ops"):
            lines += [f"costliest device ops of {r['config']} (remat {r['remat']}, batch "
                      f"{r['per_device_batch']}), trace {r['profile_dir']}:",
                      "| share | ms / step | count | op | hlo op |", "|" + "---|" * 5]
            lines += [f"| {op['share']:.1%} | {op['ms_per_step']:.3f} | {op['count']} | "
                      f"{op['name'][:80]} | {op['hlo_op'] or ''} |" for op in r["profile_top_ops"]]
    return lines


def _precision_rows(p: dict[str, Any]) -> list[str]:
    lines = [f"bf16 vs float32, shrunk 512 config, {p['steps']} steps, means of "
             f"{p['window']}-step windows:",
             "| run | status | first window | last window | largest window gap to f32 seed 0 |",
             "|" + "---|" * 5]
    means = p.get("window_means") or {}
    for run in PRECISION_RUNS:
        m = means.get(run)
        gaps = ([abs(x - y) for x, y in zip(m, means["f32_seed0"], strict=True)] if m else None)
        lines.append(f"| {run} | {p['runs'][run]['status']} | {_num(m[0] if m else None, '.4f')} "
                     f"| {_num(m[-1] if m else None, '.4f')} | "
                     f"{_num(max(gaps) if gaps else None, '.4f')} |")
    verdict = {True: "yes", False: "NO", None: "N/A"}[p["agree"]]
    lines.append(f"bf16 vs f32 (seed 0) {_num(p['bf16_vs_f32'], '.4f')}; f32 seed 1 vs seed 0 "
                 f"{_num(p['seed_vs_seed'], '.4f')}; bf16 within seed noise: {verdict}")
    return lines


def _quickstart_rows(q: dict[str, Any]) -> list[str]:
    modes = [m for m in ("train", "sample", "eval") if m in q]
    evals = q.get("eval_results") or {}
    total = sum(q[m]["wall_s"] for m in modes)
    return ["quickstart end to end (launch.py train, sample, eval):",
            "| train s | sample s | eval s | total s | status | FD-digits | class accuracy |",
            "|" + "---|" * 7,
            "| " + " | ".join(_num(q[m]["wall_s"], ".1f") if m in q else "N/A"
                              for m in ("train", "sample", "eval"))
            + f" | {total:.1f} | {','.join(q[m]['status'] for m in modes)} | "
            f"{_num(evals.get('fd_digits'), '.1f')} | {_num(evals.get('class_accuracy'), '.2f')} |"]


def table(results: dict[str, Any]) -> str:
    """The whole printed table (see the module docstring)."""
    d = results["device"]
    header = (f"accelerator.py{' --tiny' if results['tiny'] else ''}: "
              f"{d.get('device_count', '?')} x {d.get('device_kind', '?')} "
              f"({d.get('platform', '?')}), {results['date']}, "
              f"{results['device_memory_bytes'] / GIB:.2f} GiB per device planned for, "
              f"wall {results['wall_s']:.0f} s, load {results['load_average_before']:.1f} -> "
              f"{results['load_average_after']:.1f}")
    train = results["train"]
    parts = [[header], _train_rows(train), _sampling_rows(train), _profile_rows(train),
             _precision_rows(results["precision"]), _quickstart_rows(results["quickstart"])]
    return "\n\n".join("\n".join(p) for p in parts if p)
