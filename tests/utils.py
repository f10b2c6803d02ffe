"""Test helpers: run a Python snippet or launch.py in a child process with N fake CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(num_devices: int = 1) -> dict[str, str]:
    """Environment for a child process that sees `num_devices` fake CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def run_python(code: str, num_devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with `num_devices` fake CPU devices."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, env=child_env(num_devices), capture_output=True, text=True, timeout=timeout,
    )


def run_launch(args: list[str], num_devices: int = 1, timeout: float = 600,
               env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `python launch.py ARGS` from the repo root with `num_devices` fake CPU devices."""
    env = child_env(num_devices)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, str(REPO / "launch.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
