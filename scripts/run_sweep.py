"""Runs every point of a sweep as its own workdir under --root.

    python scripts/run_sweep.py --sweep=scripts/sweeps/schedule_shift_128.py --root=/tmp/sw
    python scripts/run_sweep.py --sweep=... --root=gs://... --dry_run   # one command a point

Each point runs `python launch.py --config=BASE --workdir=ROOT/NAME --config.k=v ... EXTRA`
sequentially (subprocess, output in ROOT/NAME/launch.log). NAME is derived from the point's
overrides, so re-running a sweep resumes each workdir. `ROOT/NAME/sweep_point.json` records the
overrides for `scripts/aggregate.py`. With --dry_run the commands are printed (for a cluster
scheduler) and nothing runs; add --write_points to still write the sweep_point.json files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import sweep_lib  # noqa: E402


def launch_args(sweep: dict, point: dict, workdir: Path | str, extra: list[str]) -> list[str]:
    """launch.py arguments (without the interpreter) for one point."""
    overrides = {**sweep["fixed"], **point}
    return [
        "launch.py",
        f"--config={sweep['base_config']}",
        f"--workdir={workdir}",
        *sweep_lib.override_flags(overrides),
        *extra,
    ]


def check_points(sweep: dict, extra: list[str]) -> None:
    """Fails fast (before launching anything) if an override key or value does not parse."""
    config_extra = [e for e in extra if e.startswith("--config.")]
    for point in sweep["points"]:
        flag_args = sweep_lib.override_flags({**sweep["fixed"], **point}) + config_extra
        try:
            sweep_lib.load_config(sweep["base_config"], flag_args)
        except Exception as e:
            name = sweep_lib.point_name(point)
            raise ValueError(f"sweep {sweep['name']}, point {name}: {flag_args}: {e}") from e


def write_point(workdir: Path, sweep: dict, point: dict, args: list[str], extra: list[str]) -> Path:
    """Writes ROOT/NAME/sweep_point.json (the record aggregate.py reads)."""
    workdir.mkdir(parents=True, exist_ok=True)
    record = {
        "sweep": sweep["name"],
        "name": workdir.name,
        "base_config": sweep["base_config"],
        "overrides": point,
        "fixed": sweep["fixed"],
        "extra": extra,
        "command": ["python", *args],
    }
    path = workdir / "sweep_point.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def run_point(args: list[str], workdir: Path) -> int:
    """Runs launch.py for one point from the repo root; tees output to workdir/launch.log."""
    with open(workdir / "launch.log", "a") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=sweep_lib.REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(f"[{workdir.name}] {line}")
        return proc.wait()


def run_sweep(sweep_path: str, root: str, dry_run: bool = False, extra: list[str] | None = None,
              only: list[str] | None = None, write_points: bool = False,
              check: bool = True) -> list[dict]:
    """Runs (or prints) every point; returns [{name, workdir, returncode, seconds}]."""
    sweep = sweep_lib.load_sweep(sweep_path)
    extra = list(extra or [])
    remote = "://" in root  # e.g. gs://bucket/runs: only for --dry_run (printed, not written).
    if remote and (not dry_run or write_points):
        raise ValueError(f"--root={root} is a URL: use it with --dry_run (without --write_points)")
    if check:
        check_points(sweep, extra)
    names = [sweep_lib.point_name(p) for p in sweep["points"]]
    unknown = [name for name in only or [] if name not in names]
    if unknown:
        raise ValueError(f"--only={','.join(unknown)} names no point of sweep {sweep['name']}; "
                         f"its points: {', '.join(names)}")
    points = [p for p, name in zip(sweep["points"], names, strict=True)
              if not only or name in only]
    results = []
    for point in points:
        name = sweep_lib.point_name(point)
        workdir = Path(root).absolute() / name if not remote else f"{root.rstrip('/')}/{name}"
        args = launch_args(sweep, point, workdir, extra)
        if dry_run:
            print(shlex.join(["python", *args]))
            if write_points:
                write_point(workdir, sweep, point, args, extra)
            continue
        write_point(workdir, sweep, point, args, extra)
        start = time.time()
        code = run_point(args, workdir)
        results.append({"name": workdir.name, "workdir": str(workdir), "returncode": code,
                        "seconds": round(time.time() - start, 1)})
        print(f"== {workdir.name}: exit {code} after {results[-1]['seconds']} s", flush=True)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", required=True, help="Sweep file (scripts/sweeps/*.py).")
    p.add_argument("--root", required=True, help="Folder that gets one workdir per point.")
    p.add_argument("--dry_run", action="store_true", help="Print one command per point.")
    p.add_argument("--write_points", action="store_true",
                   help="With --dry_run: still write ROOT/NAME/sweep_point.json.")
    p.add_argument("--extra", action="append", default=[],
                   help="Extra launch.py flag for every point, e.g. "
                   "--extra=--config.train.num_steps=10 (repeatable).")
    p.add_argument("--only", action="append", default=[], help="Run only this point name.")
    p.add_argument("--nocheck", dest="check", action="store_false",
                   help="Skip parsing every point against the config first.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs or prints the sweep; exit 1 on a bad sweep or a failed point."""
    args = parse_args(argv)
    try:
        results = run_sweep(args.sweep, args.root, args.dry_run, args.extra, args.only,
                            args.write_points, args.check)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    failed = [r["name"] for r in results if r["returncode"] != 0]
    if failed:
        print(f"error: {len(failed)} of {len(results)} points failed: {failed}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
