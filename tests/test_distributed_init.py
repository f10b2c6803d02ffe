"""Multi-host start-up through public JAX APIs (`sd_jax.main.init_distributed`), no real cluster.

The decision (which launcher started this process, if any) is a function of the environment,
tested on tables of variables; then two local processes per launcher are started with the
variables SLURM's srun or Open MPI's mpirun would set, and `jax.distributed.initialize()` finds
the job from them (budget: ~15 s).
"""

import random
import socket
import subprocess
import sys

import jax
import pytest
from utils import REPO, child_env

from sd_jax import main
from sd_jax.errors import UserError

NO_TPU = False


@pytest.mark.parametrize("env, tpu, expected", [
    ({}, NO_TPU, None),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, NO_TPU, None),  # One task: all its GPUs.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, NO_TPU, main.SLURM),
    ({"SLURM_NTASKS": "16"}, NO_TPU, None),  # Not inside a job.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "many"}, NO_TPU, None),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, NO_TPU, None),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, NO_TPU, main.OPEN_MPI),
    ({}, True, main.TPU),  # jax reads the slice (one host or many) from the TPU metadata.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}, True, main.SLURM),
])
def test_detect_cluster(env, tpu, expected):
    assert main.detect_cluster(env, tpu) == expected


@pytest.fixture
def initialize(monkeypatch):
    """Records the calls to jax.distributed.initialize instead of starting anything."""
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(main, "_tpu_runtime", lambda: False)
    monkeypatch.setattr(main, "_cpu_collectives", lambda: None)
    calls, failure = [], []

    def fake(**kwargs):
        calls.append(kwargs)
        if failure:
            raise failure[0]

    monkeypatch.setattr(jax.distributed, "initialize", fake)
    return calls, failure


def test_init_distributed_decisions(initialize, monkeypatch):
    calls, failure = initialize
    main.init_distributed(None, None, None)
    assert calls == []  # One process on one machine: nothing to start.
    main.init_distributed("10.0.0.1:1234", 2, 1)
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                      "process_id": 1}]
    with pytest.raises(UserError, match="needs all of --coordinator_address"):
        main.init_distributed("10.0.0.1:1234", None, None)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    main.init_distributed(None, None, None)
    assert calls[-1] == {}  # jax reads the job from SLURM's variables.
    failure.append(ValueError("coordinator_address should be defined."))
    with pytest.raises(UserError, match="multi-process SLURM job") as e:
        main.init_distributed(None, None, None)
    assert "\n" not in str(e.value) and "--coordinator_address" in str(e.value)
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setattr(main, "_tpu_runtime", lambda: True)
    main.init_distributed(None, None, None)  # A TPU VM outside any slice: one process.
    assert len(calls) == 4


def test_no_private_jax_imports():
    """`jax._src` is private: nothing in the package, launcher or experiments may import it."""
    folders = ("sd_jax", "experiments", "scripts", "benchmarks", "notebooks")
    files = [REPO / "launch.py", *(p for d in folders for pattern in ("*.py", "*.ipynb")
                                   for p in (REPO / d).rglob(pattern))]
    assert len(files) > 20
    assert [str(f) for f in files if "jax._src" in f.read_text()] == []


def _free_port_in_jax_range() -> int:
    """A free port in [61440, 65535], where jax puts SLURM's and Open MPI's coordinator."""
    for _ in range(200):
        port = random.randrange(61440, 65536)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 61440-65535")


def _launcher_env(launcher: str, port: int, rank: int) -> dict[str, str]:
    """What srun / mpirun set for task `rank` of 2 on this host; jax derives `port` from the
    job id (jax/_src/clusters/slurm_cluster.py, ompi_cluster.py)."""
    if launcher == main.SLURM:
        return {"SLURM_JOB_ID": str(port - 61440), "SLURM_NTASKS": "2",
                "SLURM_STEP_NODELIST": "localhost", "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(rank)}
    return {"OMPI_MCA_orte_hnp_uri": f"{(port - 61440) * 4096}.0;tcp://127.0.0.1:1",
            "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": str(rank),
            "OMPI_COMM_WORLD_LOCAL_RANK": str(rank)}


TWO_TASKS = """
import jax, numpy as np
from jax.experimental import multihost_utils
from sd_jax import main
main.init_distributed(None, None, None)
ranks = multihost_utils.process_allgather(np.int32(jax.process_index()))
print("JOB", jax.process_count(), jax.device_count(), sorted(ranks.tolist()))
"""


@pytest.mark.parametrize("launcher", [main.SLURM, main.OPEN_MPI])
def test_two_tasks_find_each_other_from_the_launcher_variables(launcher):
    port = _free_port_in_jax_range()
    procs = [subprocess.Popen([sys.executable, "-c", TWO_TASKS], cwd=REPO,
                              env=child_env(1) | _launcher_env(launcher, port, rank),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:] + err[-4000:]
        assert "JOB 2 2 [0, 1]" in out, out  # Two processes, one device each, one job.

