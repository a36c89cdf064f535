"""Multi-process runs through JAX's own runtime (`jax.distributed`): one process per host (or per
GPU), each feeding its share of every batch; process 0 writes what a run writes once.

`initialize` must run before anything touches a device. It takes the coordinator from the flags
(`--coordinator HOST:PORT --num-processes N --process-id I`), or leaves it to JAX's detection of
the cluster it runs in (TPU pod slices, SLURM, Open MPI) when the environment names one.
"""

from __future__ import annotations

import os

import jax
import numpy as np


class DistributedError(ValueError):
    """Multi-process settings that cannot work."""


def cluster_detected() -> bool:
    """Whether the environment names a multi-process job JAX can join by itself."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU slice
        return True
    return int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins (or starts) a multi-process run; returns whether the run is multi-process."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise DistributedError("a multi-process run needs all of --coordinator HOST:PORT, --num-processes N and "
                               "--process-id I (or none of them, inside a cluster JAX detects)")
    if all(given):
        if ":" not in coordinator:
            raise DistributedError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributedError(f"--process-id must be in 0..{num_processes - 1} for --num-processes "
                                   f"{num_processes}, got {process_id}")
        if num_processes == 1:
            return False
        _cpu_collectives()
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
        return True
    if cluster_detected():
        _cpu_collectives()
        jax.distributed.initialize()
        return jax.process_count() > 1
    return False


def _cpu_collectives() -> None:
    # CPU devices of different processes talk through gloo (GPUs and TPUs use their own fabric)
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _has_accelerator() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))


def is_writer() -> bool:
    """Process 0 writes metrics, plots and results; every process takes part in checkpoints."""
    return jax.process_index() == 0


def process_rows(batch: dict, process: int | None = None, count: int | None = None) -> dict:
    """This process's contiguous share of a global batch (the global batch is every process's
    share in process order, which is how `make_array_from_process_local_data` assembles it)."""
    process = jax.process_index() if process is None else process
    count = jax.process_count() if count is None else count
    rows = len(next(iter(batch.values())))
    if rows % count:
        raise DistributedError(f"batch size {rows} is not divisible by {count} processes")
    share = rows // count
    return {k: np.asarray(v)[process * share:(process + 1) * share] for k, v in batch.items()}
