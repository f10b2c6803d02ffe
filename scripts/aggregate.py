"""Collects a sweep's workdirs into one table: overrides, loss, steps, speed, FID / IS.

    python scripts/aggregate.py --root=/tmp/sw [--csv=/tmp/sw/results.csv]

A workdir is any folder under --root (one level down) holding `sweep_point.json` (written by
run_sweep.py) or `metrics.jsonl` (written by the trainer). From metrics.jsonl it takes the last
and minimum training loss, the last step and the median images/s; FID and Inception Score from
the newest `eval_*.json`, else from the last metrics.jsonl record that has them. Prints a
markdown table; --csv also writes a CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

# Metric names the trainer and evaluator may use, in order of preference.
LOSS_KEYS = ("loss", "train/loss", "train_loss")
SPEED_KEYS = ("images_per_sec", "images_per_second", "train/images_per_sec", "imgs_per_sec")
FID_KEYS = ("fid", "eval/fid", "FID", "fid50k", "fid_train")
IS_KEYS = ("inception_score", "eval/inception_score", "is", "IS")
METRIC_COLUMNS = ("steps", "last_loss", "min_loss", "images_per_s", "fid", "inception_score")


def _first(record: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in record and isinstance(record[key], (int, float)):
            return record[key]
    return None


def read_metrics(path: Path) -> dict[str, Any]:
    """Summarises metrics.jsonl: steps, last_loss, min_loss, images_per_s (median of logs), and
    the last logged FID / IS (periodic or --mode=eval records)."""
    losses, speeds, steps = [], [], []
    scores: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # A line cut short by a live writer.
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("step"), (int, float)):
            steps.append(int(record["step"]))
        loss = _first(record, LOSS_KEYS)
        if loss is not None and math.isfinite(loss):
            losses.append(float(loss))
        speed = _first(record, SPEED_KEYS)
        if speed is not None:
            speeds.append(float(speed))
        if _first(record, FID_KEYS) is not None:
            scores = {"fid": _first(record, FID_KEYS),
                      "inception_score": _first(record, IS_KEYS)}
    return {
        "steps": max(steps) if steps else None,
        "last_loss": losses[-1] if losses else None,
        "min_loss": min(losses) if losses else None,
        "images_per_s": statistics.median(speeds) if speeds else None,
        **scores,
    }


def read_eval(workdir: Path) -> dict[str, Any]:
    """FID and Inception Score from the newest eval_*.json in the workdir (or its subfolders)."""
    files = sorted(workdir.rglob("eval_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {}
    record = json.loads(files[-1].read_text())
    return {"fid": _first(record, FID_KEYS), "inception_score": _first(record, IS_KEYS),
            "eval_file": files[-1].name}


def collect(root: str | Path) -> list[dict[str, Any]]:
    """One row per workdir under root: name, the point's overrides, and its metrics."""
    rows = []
    for workdir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        point_file, metrics_file = workdir / "sweep_point.json", workdir / "metrics.jsonl"
        if not point_file.exists() and not metrics_file.exists():
            continue
        point = json.loads(point_file.read_text()) if point_file.exists() else {}
        row: dict[str, Any] = {"name": workdir.name, "overrides": point.get("overrides", {})}
        row.update(read_metrics(metrics_file) if metrics_file.exists() else {})
        row.update({k: v for k, v in read_eval(workdir).items() if v is not None})
        rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_fmt(v) for v in value) + ")"
    return str(value)


def to_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells: name, one column per override key, then the metrics."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["overrides"] if k not in keys]
    header = ["name", *keys, *METRIC_COLUMNS]
    cells = [[row["name"], *(_fmt(row["overrides"].get(k)) for k in keys),
              *(_fmt(row.get(c)) for c in METRIC_COLUMNS)] for row in rows]
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def write_csv(path: str | Path, header: list[str], cells: list[list[str]]) -> None:
    """Writes the table as CSV (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(cells)


def main(argv: list[str] | None = None) -> None:
    """Entry point: prints the markdown table (and writes --csv)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="Sweep root: one workdir per sub-folder.")
    p.add_argument("--csv", default=None, help="Also write the table as CSV here.")
    args = p.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: --root={root} is not a folder", file=sys.stderr)
        sys.exit(1)
    rows = collect(root)
    if not rows:
        print(f"error: no workdirs with sweep_point.json or metrics.jsonl under {root}",
              file=sys.stderr)
        sys.exit(1)
    header, cells = to_table(rows)
    print(markdown(header, cells))
    if args.csv:
        write_csv(args.csv, header, cells)


if __name__ == "__main__":
    main()
