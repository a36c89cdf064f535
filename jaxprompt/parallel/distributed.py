"""Multi-process runs through JAX's own runtime (`jax.distributed`): one process per host (or per
GPU), each feeding its share of every batch; process 0 writes what a run writes once.

`initialize` must run before anything touches a device. It takes the coordinator from the flags
(`--coordinator HOST:PORT --num-processes N --process-id I`), or leaves it to JAX's detection of
the cluster it runs in (TPU pod slices, SLURM, Open MPI) when the environment names one.

Every process runs the same program on the same inputs, so most decisions agree by themselves.
What depends on the file system at one moment (does the run directory hold a run? may it be
locked?) is decided by process 0 alone and shared (`decided_by_writer`); writes another process
must see are followed by a `barrier`. The run directory must be on a file system every process
sees, as Orbax's multi-process checkpoints require.

How a multi-process run ends early: preemption.py (every process stops at one step on SIGTERM or
SIGINT) and watchdog.py (a lost process ends the others in one line).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Callable, TypeVar

import jax
import numpy as np

from jaxprompt.settings import one_line

T = TypeVar("T")


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
               process_id: int | None = None, heartbeat_timeout: int = 60) -> bool:
    """Joins (or starts) a multi-process run; returns whether the run is multi-process. Calling it
    again in the same process changes nothing (a sweep trains several runs in one process).

    A process not heard from for `heartbeat_timeout` seconds is lost: JAX's coordination service
    then aborts the others, and watchdog.py ends them first, in one line, after half that time.
    SIGTERM and SIGINT stop every process at one step (preemption.py)."""
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise DistributedError("a multi-process run needs all of --coordinator HOST:PORT, --num-processes N and "
                               "--process-id I (or none of them, inside a cluster JAX detects)")
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if all(given):
        if num_processes == 1:
            return False
        _join(f"the coordinator {coordinator}", heartbeat_timeout, coordinator_address=coordinator,
              num_processes=num_processes, process_id=process_id)
        return True
    if cluster_detected():
        _join("the cluster this job runs in", heartbeat_timeout)
        return jax.process_count() > 1
    return False


def _join(where: str, heartbeat_timeout: int, **arguments) -> None:
    from jaxprompt.parallel import preemption, watchdog

    _cpu_collectives()
    try:
        jax.distributed.initialize(**arguments, heartbeat_timeout_seconds=heartbeat_timeout)
    except Exception as e:  # a coordinator that cannot be reached, JAX already started in this process, ...
        raise DistributedError(f"could not join a multi-process run through {where} ({one_line(e, limit=300)})"
                               ) from None
    preemption.reclaim_sigterm()  # jax.distributed installed its own handler
    if jax.process_count() > 1:
        preemption.listen()
        watchdog.start(heartbeat_timeout)


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


def run_devices(per_process: int | None = None) -> list:
    """The devices a run uses, the same list in every process: each process's first `per_process`
    local devices (default: all of them), in process order."""
    by_process: dict[int, list] = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(d.process_index, []).append(d)
    return [d for p in sorted(by_process) for d in by_process[p][:per_process]]


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


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def host(tree):
    """Host (numpy) copies of every array of `tree`, the whole value in every process. An array
    spread over several processes' devices is gathered from them: every process must call this
    at the same point."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))  # a replica is all of it
        return np.asarray(x)

    return jax.tree.map(one, tree)


def decided_by_writer(decide: Callable[[], T], shared: bool = False) -> T | None:
    """Runs `decide` in process 0 alone and gives every process its outcome: the error it raised is
    raised again in every process (same type, same message); otherwise `decide`'s result is
    returned in process 0 and, with `shared` (the result JSON data, e.g. a run directory's name),
    in every process; without, the others get None (a lock is held by process 0 alone).

    The others wait for process 0's answer, so they act only on the state it left behind."""
    if jax.process_count() == 1:
        return decide()
    from jax.experimental import multihost_utils

    result, error, outcome = None, None, {}
    if is_writer():
        try:
            result = decide()
            outcome = {"result": result if shared else None}
        except Exception as e:
            error = e
            outcome = {"error": [type(e).__module__, type(e).__qualname__, _error_args(e)]}
    message = np.frombuffer(json.dumps(outcome).encode(), np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(message.size)))
    padded = message if is_writer() else np.zeros(size, np.uint8)
    received = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(padded))).decode())
    if error is not None:
        raise error
    if "error" in received:
        raise _rebuilt(*received["error"])
    return result if is_writer() else received["result"]


def _error_args(e: Exception) -> list:
    if isinstance(e, OSError):  # the CLI reports its strerror and file name
        return [e.errno, e.strerror or str(e), e.filename]
    return [str(e)]


def _rebuilt(module: str, name: str, args: list) -> Exception:
    """Process 0's error, as this process raises it (a RuntimeError with its text when its type
    cannot be built here)."""
    try:
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(*args)
    except Exception:
        pass
    return RuntimeError(f"process 0: {name}: {args[-1] if len(args) == 1 else args[1]}")
