"""Mode dispatch for launch.py: distributed init, one-line user errors, lazy imports per mode."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence

import ml_collections
from absl import logging

from sd_jax.errors import UserError
from sd_jax.io.paths import check_reachable, is_uri

# Launchers whose processes `jax.distributed.initialize()` finds on its own (its docstring: "If
# you are using TPU, Slurm, or Open MPI, all arguments are optional"), told apart by the variables
# they document: SLURM's output environment (sbatch/srun), Open MPI's mpirun, JAX's TPU package.
SLURM, OPEN_MPI, TPU = "SLURM", "Open MPI", "Cloud TPU"


def _count(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "0"))
    except ValueError:
        return 0


def detect_cluster(env: Mapping[str, str], tpu_runtime: bool) -> str | None:
    """The launcher that started several processes of this job, or None for one process.

    SLURM: `SLURM_JOB_ID` with `SLURM_NTASKS` > 1 (a one-task job, e.g. one process on all of a
    node's GPUs, is left alone: jax would pin it to one GPU, `SLURM_LOCALID`). Open MPI:
    `OMPI_COMM_WORLD_SIZE` > 1. TPU: `tpu_runtime` (libtpu is installed); jax reads the slice's
    hosts from the TPU VM metadata, one host included.
    """
    if "SLURM_JOB_ID" in env and _count(env, "SLURM_NTASKS") > 1:
        return SLURM
    if _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return OPEN_MPI
    return TPU if tpu_runtime else None


def _tpu_runtime() -> bool:
    """Whether JAX's TPU runtime is installed (`pip install "jax[tpu]"` brings libtpu)."""
    return importlib.util.find_spec("libtpu") is not None


def init_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Initialises jax.distributed from the flags, or when a cluster launcher is detected.

    Public APIs only: `jax.distributed.initialize()` finds the coordinator on TPU, SLURM and
    Open MPI itself (`detect_cluster` decides whether to call it); elsewhere all three flags
    are needed.
    """
    import jax

    explicit = (coordinator_address, num_processes, process_id)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            raise UserError(
                "multi-host needs all of --coordinator_address, --num_processes and --process_id"
            )
        _cpu_collectives()
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
        return
    cluster = detect_cluster(os.environ, _tpu_runtime())
    if cluster is None:
        return
    _cpu_collectives()
    try:
        jax.distributed.initialize()
    except ValueError as e:  # jax found no coordinator / process count / id for this launcher.
        if cluster == TPU:  # A single TPU VM without slice metadata (e.g. Colab): one process.
            logging.info("no multi-host TPU slice found (%s); running as one process", e)
            return
        raise UserError(
            f"this looks like a multi-process {cluster} job, but jax.distributed.initialize() "
            f"could not set it up ({e}); start one process per task (e.g. srun / mpirun "
            "python launch.py ...) or pass --coordinator_address, --num_processes and "
            "--process_id") from e


def _cpu_collectives() -> None:
    """Multi-process CPU runs (tests, CPU clusters) need a collectives backend; GPUs/TPUs ignore it.
    """
    import jax

    with contextlib.suppress(AttributeError, ValueError):  # Option renamed in another jax.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def log_devices() -> None:
    """One line per process: which devices it drives and how many there are in all."""
    import jax

    local = jax.local_devices()
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {len(local)} local "
        f"{local[0].platform} devices of {jax.device_count()}",
        flush=True,
    )


def run(config: ml_collections.ConfigDict, workdir: str | None, mode: str,
        overridden: Sequence[str] = ()) -> None:
    """Validates the whole config, then runs one mode. Modules are imported lazily so `inspect`
    never imports the data layer. `overridden`: the config paths set on the command line."""
    from sd_jax.validate import check_workdir, validate

    validate(config, mode, overridden)  # Before any data, state or compilation.
    if mode == "inspect":
        from sd_jax.tools import inspect

        inspect.run(config)
        return
    if mode == "plan":
        from sd_jax.tools import plan

        plan.run(config)
        return
    if workdir is None or not workdir.strip():
        given = "is required" if workdir is None else "is empty (an unset variable?)"
        raise UserError(f"--workdir {given}: --mode={mode} keeps its checkpoints, metrics and "
                        "samples there; pass a directory (or gs://bucket/path)")
    if mode == "train":
        from sd_jax.tools import plan

        plan.check_fits_host(config)  # A CPU without the memory: one line, nothing created.
    # Train creates the workdir; sample and eval need one that exists (with checkpoints or
    # samples) and report a missing one themselves. All of them write there.
    check_workdir(workdir, create=mode == "train")
    if mode == "train":
        from sd_jax.train import loop

        loop.train(config, workdir)
    elif mode == "sample":
        from sd_jax.sample import mode as sample_mode

        sample_mode.run(config, workdir)
    else:
        from sd_jax.eval import mode as eval_mode
        from sd_jax.eval import partial

        (partial.run if config.eval.from_shards else eval_mode.run)(config, workdir)


def run_cli(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    mode: str,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    overridden: Sequence[str] = (),
) -> None:
    """launch.py's body: a UserError becomes one line on stderr and exit status 1."""
    try:
        if workdir and is_uri(workdir):
            check_reachable(workdir)  # First, before the seconds JAX takes to start.
        init_distributed(coordinator_address, num_processes, process_id)
        if mode not in ("inspect", "plan"):
            log_devices()
        run(config, workdir, mode, overridden)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
