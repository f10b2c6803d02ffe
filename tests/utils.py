"""Test helpers: run a Python snippet or launch.py in a child process with N fake CPU devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
U32 = 2.0**-24  # float32 unit roundoff: the relative rounding error bound of one operation.


def float32_sum_error(num_terms: int) -> float:
    """(n - 1) u: bound on the rounding error of a float32 sum of n terms, relative to the sum of
    their magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5).

    The yardstick for two float32 evaluations of one formula that differ only in the order of
    operations (fusion, vectorisation, recomputation): it holds on any CPU, unlike a tolerance
    read off one machine.
    """
    return max(num_terms - 1, 1) * U32


def child_env(num_devices: int = 1) -> dict[str, str]:
    """Environment for a child process that sees `num_devices` fake CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def run_python(code: str, num_devices: int = 1, timeout: float = 600,
               env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with `num_devices` fake CPU devices."""
    env = child_env(num_devices)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
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


def start_launch(args: list[str], num_devices: int = 1, env_extra: dict[str, str] | None = None,
                 stderr: int = subprocess.PIPE) -> subprocess.Popen:
    """`python launch.py ARGS` started in the background with its stdout piped (text), for a
    run to be signalled mid-way (SIGTERM, SIGKILL, SIGSTOP) when a line appears."""
    env = child_env(num_devices)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def tiny_config(**overrides):
    """configs/quickstart.py shrunk to a model that compiles and steps in seconds on CPU.

    `overrides` are dotted config paths, e.g. `tiny_config(**{"train.num_steps": 4})`.
    """
    from configs import quickstart

    c = quickstart.get_config()
    m = c.model
    # First level 16 wide: above the width floor (12 for DWT-1 of RGB) and divisible by 8 devices.
    m.image_size, m.base_channels, m.channel_multipliers = 8, 8, (2, 2)
    m.transformer_depth, m.num_heads, m.emb_dim = 1, 2, 16
    t = c.train
    t.num_steps, t.batch_size, t.log_every, t.checkpoint_every = 6, 8, 1, 3
    t.sample_every, t.tensorboard, t.keep_checkpoints = 0, False, 5
    c.sample.num_steps, c.sample.batch_size, c.sample.num_samples = 4, 8, 8
    c.sample.sampler = "ddpm"  # What the tests' expectations were written for (noise_param...).
    c.optimizer.warmup_steps = 2
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return c


# tiny_config() overrides for a two-step run at the quickstart's 16x16 (sweep, notebook, sampling).
TWO_STEP_RUN = {"model.image_size": 16, "train.num_steps": 2, "train.checkpoint_every": 2}


def override_args(config) -> list[str]:
    """`--config.path=value` flags that turn configs/quickstart.py into `config`."""
    from configs import quickstart

    args = []

    def walk(node, ref, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value, ref[key], f"{prefix}{key}.")
            elif value != ref[key]:
                text = str(value).replace(" ", "") if isinstance(value, tuple) else value
                args.append(f"--config.{prefix}{key}={text}")

    walk(config, quickstart.get_config(), "")
    return args


def config_args(config) -> list[str]:
    """launch.py flags (config file + overrides) that load `config`."""
    return ["--config=configs/quickstart.py", *override_args(config)]


DAMAGE_KINDS = ("truncate", "metadata", "flip")


def damage_checkpoint(step_dir, kind: str):
    """Damages a saved checkpoint as a full disk, a bad copy or bit rot would; returns the file.

    'truncate': the largest array data file (OCDBT, zstd-compressed chunks) is cut to half its
    size; 'metadata': the tree
    metadata `state/_METADATA` is deleted; 'flip': one byte in the middle of the largest array
    data file is inverted, the size unchanged. `step_dir` may be local or gs:// (etils.epath).
    """
    from etils import epath

    state = epath.Path(step_dir) / "state"
    if kind == "metadata":
        (state / "_METADATA").unlink()
        return state / "_METADATA"
    data = max((p for p in state.glob("ocdbt.process_*/d/*") if p.is_file()),  # Array chunks.
               key=lambda p: p.stat().length)
    raw = bytearray(data.read_bytes())
    if kind == "truncate":
        raw = raw[: len(raw) // 2]
    elif kind == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raise ValueError(kind)
    data.write_bytes(bytes(raw))
    return data


def jax_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A persistent compilation cache shared by this session's tiny runs (same train step)."""
    return str(tmp_path_factory.getbasetemp() / "sd_jax_tiny_jax_cache")


FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def fast_env(cache_dir, num_devices: int) -> dict[str, str]:
    """Shared persistent compile cache; unoptimised XLA CPU code compiles twice as fast."""
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices} {FAST_COMPILE}"}


def check(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(proc, *words):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]


# Child-process prelude of the end-to-end training tests: restore a workdir's state.
PRELUDE = """
import sys, json, numpy as np, jax
sys.path.insert(0, "tests")
from utils import tiny_config
from sd_jax import models, sharding
from sd_jax.checkpoints import checkpointer as checkpointing
from sd_jax.sample import restore as sample_restore
from sd_jax.train import state as train_state
from sd_jax.train import loop as trainer
W = {workdir!r}

def flat(tree):
    return {{jax.tree_util.keystr(k): np.asarray(v) for k, v in
             jax.tree_util.tree_leaves_with_path(tree)}}

def restore(workdir, cfg, devices):
    mesh = sharding.make_mesh(cfg.mesh, devices)
    model, tx = models.build_model(cfg.model), train_state.make_optimizer(cfg.optimizer)
    abstract, _ = train_state.state_shardings(model, tx, cfg, mesh)
    ckpt = checkpointing.Checkpointer(workdir)
    state, meta = ckpt.restore(abstract)
    ckpt.close()
    return state, meta
"""
