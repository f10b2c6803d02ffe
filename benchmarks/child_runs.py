"""Child processes under one wall-clock deadline, each logged to its own file (not a test).

`Children(out, cwd, deadline).run(name, cmd)` runs `cmd` in `cwd` with stdout and stderr in
`out/logs/<name>.log` and returns a `Run`: its status ('ok', 'failed', 'OOM', 'timeout' when the
deadline stopped it, 'skipped' when too little time was left to start it), wall time and output.
`run_together` starts several at once and waits for all (on a GPU each may take 1/share of its
memory). The environment of the children is the one this process had when `Children` was made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

MIN_START_S = 15.0  # A child is not started with less time than this left before the deadline.
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


@dataclasses.dataclass
class Run:
    """One finished (or skipped) child."""

    name: str
    status: str
    wall_s: float
    returncode: int | None
    log: Path | None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def last_json(self) -> dict[str, Any] | None:
        """The last line of the output that is a JSON object, parsed."""
        for line in reversed(self.output().splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
        return None

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "wall_s": round(self.wall_s, 2),
                "returncode": self.returncode, "log": self.log.name if self.log else None}


class Children:
    """Runs children in `cwd`, logging into `out/logs`, until `deadline` (time.monotonic())."""

    def __init__(self, out: Path, cwd: Path, deadline: float):
        self.out, self.cwd, self.deadline = Path(out), Path(cwd), deadline
        self.started = time.monotonic()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        (self.out / "logs").mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fresh_dir(self, name: str) -> Path:
        """An empty folder `out/name`."""
        path = self.out / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def run(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Run:
        """Runs one child to its end or the deadline."""
        return self.run_together({name: cmd}, env=env)[name]

    def run_together(self, jobs: dict[str, list[str]], share: int = 1,
                     env: dict[str, str] | None = None) -> dict[str, Run]:
        """Starts every job at once and waits for all. On a GPU a child may take 95% of its
        memory (or what XLA_PYTHON_CLIENT_MEM_FRACTION says), or 90% / share with share > 1."""
        child_env = {**self.env, **(env or {})}
        if share > 1:
            child_env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / share:.2f}"
        else:
            child_env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
        if self.deadline - time.monotonic() < MIN_START_S:
            return {name: Run(name, "skipped", 0.0, None, None) for name in jobs}
        started = {}
        for name, cmd in jobs.items():
            log = self.out / "logs" / f"{name}.log"
            with open(log, "w") as f:
                f.write("$ " + " ".join(cmd) + "\n")
                f.flush()
                proc = subprocess.Popen(cmd, cwd=self.cwd, env=child_env, stdout=f,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            started[name] = (proc, log, time.monotonic())
        return {name: self._wait(name, *job) for name, job in started.items()}

    def _wait(self, name: str, proc: subprocess.Popen, log: Path, start: float) -> Run:
        try:
            returncode = proc.wait(timeout=max(self.deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # Its own session: the child and its workers.
            proc.wait()
            return Run(name, "timeout", time.monotonic() - start, None, log)
        run = Run(name, "ok", time.monotonic() - start, returncode, log)
        if returncode:
            run.status = "OOM" if any(m in run.output() for m in OOM_MARKERS) else "failed"
        return run
