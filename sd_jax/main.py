"""Mode dispatch for launch.py: distributed init, one-line user errors, lazy imports per mode."""

from __future__ import annotations

import contextlib
import sys

import ml_collections

from sd_jax.errors import UserError


def init_distributed(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Initialises jax.distributed when asked, or when a cluster environment is detected."""
    import jax

    explicit = coordinator_address is not None or num_processes is not None
    if explicit:
        if coordinator_address is None or num_processes is None or process_id is None:
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
    try:  # TPU pods / SLURM: jax auto-detects the cluster; single host: nothing to do.
        from jax._src import clusters

        detected = any(env.is_env_present() for env in clusters.ClusterEnv._cluster_types)
    except Exception:  # pragma: no cover - private API moved; skip auto-detection.
        detected = False
    if detected:
        _cpu_collectives()
        jax.distributed.initialize()


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


def run(config: ml_collections.ConfigDict, workdir: str | None, mode: str) -> None:
    """Validates the whole config, then runs one mode. Modules are imported lazily so `inspect`
    never imports the data layer."""
    from sd_jax import config_validation

    config_validation.validate(config, mode)  # Before any data, state or compilation.
    if mode == "inspect":
        from sd_jax import inspect_model

        inspect_model.run(config)
        return
    if mode == "plan":
        from sd_jax import plan

        plan.run(config)
        return
    if workdir is None:
        raise UserError(f"--workdir is required for --mode={mode}")
    # Train creates the workdir; sample and eval need one that exists (with checkpoints or
    # samples) and report a missing one themselves. All of them write there.
    config_validation.check_workdir(workdir, create=mode == "train")
    if mode == "train":
        from sd_jax import trainer

        trainer.train(config, workdir)
    elif mode == "sample":
        from sd_jax import sample_mode

        sample_mode.run(config, workdir)
    else:
        from sd_jax.eval import evaluate

        evaluate.run(config, workdir)


def run_cli(
    config: ml_collections.ConfigDict,
    workdir: str | None,
    mode: str,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """launch.py's body: a UserError becomes one line on stderr and exit status 1."""
    try:
        init_distributed(coordinator_address, num_processes, process_id)
        if mode not in ("inspect", "plan"):
            log_devices()
        run(config, workdir, mode)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
