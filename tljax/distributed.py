"""Multi-process runs: joining JAX's distributed runtime, per-process batches, process-0-first work.

Every process (one per host, or several on one machine) runs the same command. They join one runtime
(``jax.distributed.initialize``) and then see one global mesh over all devices; each feeds only the batch
rows its own devices hold, and ``jax.make_array_from_process_local_data`` assembles the global batch.

How a process joins, from flags or environment variables (flags win):

    --coordinator=HOST:PORT  --num_processes=N  --process_id=I    (TLJAX_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID)
    --distributed=auto                                             (TLJAX_DISTRIBUTED=auto: TPU pods, SLURM, Open MPI
                                                                    jobs, where JAX discovers all three itself)

Nothing given: a single process, no runtime.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping

import jax
import numpy as np

# (flag, environment variable, help): the extra flags of ``tljax pretrain`` and ``tljax finetune``.
FLAGS = (
    ("distributed", "TLJAX_DISTRIBUTED", "'auto': join the cluster's runtime (TPU pod, SLURM, Open MPI) "
                                         "with jax.distributed.initialize()"),
    ("coordinator", "TLJAX_COORDINATOR", "HOST:PORT of process 0, for a manual multi-process run"),
    ("num_processes", "TLJAX_NUM_PROCESSES", "number of processes of a manual multi-process run"),
    ("process_id", "TLJAX_PROCESS_ID", "this process's index in [0, num_processes)"),
)
_MANUAL = ("coordinator", "num_processes", "process_id")


class DistributedError(ValueError):
    """A launch that cannot work (bad or incomplete flags, unreachable coordinator, a failed process 0)."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """mode: "single" (no runtime), "auto" (JAX discovers the cluster) or "manual" (the other fields)."""

    mode: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _name(field: str) -> str:
    env = dict((f, e) for f, e, _ in FLAGS)[field]
    return f"--{field} ({env})"


def _integer(field: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{_name(field)}={value!r} is not an integer") from None


def resolve_launch(flags: Mapping[str, str | None], environ: Mapping[str, str] = os.environ) -> Launch:
    """The launch described by ``flags`` ({flag: value or None}) and, for flags not given, ``environ``.

    Raises DistributedError naming the fix for an unknown mode, an incomplete or malformed manual launch.
    """
    given = {f: (flags.get(f) if flags.get(f) is not None else environ.get(env)) for f, env, _ in FLAGS}
    given = {f: v.strip() for f, v in given.items() if v is not None and v.strip()}
    mode = given.pop("distributed", "")
    if mode not in ("", "auto"):
        raise DistributedError(f"{_name('distributed')}={mode!r} unknown; use 'auto' on a TPU pod or SLURM, or "
                               f"give --coordinator, --num_processes and --process_id")
    if mode == "auto":
        if given:
            raise DistributedError(f"--distributed=auto discovers the coordinator, process count and index itself; "
                                   f"drop {', '.join(_name(f) for f in given)}")
        return Launch("auto")
    if not given:
        return Launch("single")
    missing = [f for f in _MANUAL if f not in given]
    if missing:
        raise DistributedError(f"a multi-process run needs --coordinator, --num_processes and --process_id; "
                               f"missing {', '.join(_name(f) for f in missing)}")
    host, _, port = given["coordinator"].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"{_name('coordinator')}={given['coordinator']!r} is not HOST:PORT "
                               f"(e.g. 10.0.0.1:1234 or 127.0.0.1:1234; the port 1-65535)")
    n, i = _integer("num_processes", given["num_processes"]), _integer("process_id", given["process_id"])
    if n < 1:
        raise DistributedError(f"{_name('num_processes')}={n} must be at least 1")
    if not 0 <= i < n:
        raise DistributedError(f"{_name('process_id')}={i} must be in [0, {n}) for --num_processes={n}")
    return Launch("manual", given["coordinator"], n, i)


def initialize(launch: Launch) -> None:
    """Join the distributed runtime per ``launch``; must run before any other JAX call (device lookups,
    computations). A no-op for a single process."""
    if launch.mode == "single":
        return
    # CPU processes need a cross-process collective backend (gloo is the default in jax 0.10, set it in
    # case that changes); GPU and TPU backends do not read this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if launch.mode == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(launch.coordinator, num_processes=launch.num_processes,
                                       process_id=launch.process_id)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        if launch.mode == "auto":
            raise DistributedError(f"--distributed=auto cannot join the cluster's runtime ({first}); outside a TPU "
                                   f"pod, SLURM or Open MPI job give --coordinator, --num_processes and "
                                   f"--process_id") from None
        raise DistributedError(f"cannot join the coordinator at {launch.coordinator}: {first}") from None


def local_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> np.ndarray:
    """Indices [n] (ascending) of the rows (dim 0) of a ``global_shape`` array that this process's devices
    hold under ``sharding``: every row for a batch replicated over processes, a slice for a data-parallel one."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
        rows.update(range(*index[0].indices(global_shape[0])))
    return np.array(sorted(rows), dtype=np.int64)


def global_array(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...],
                 read_rows: Callable[[np.ndarray], np.ndarray]) -> jax.Array:
    """The global [B, ...] array whose rows are ``read_rows(indices [n]) -> [n, ...]``; this process reads
    only the rows its devices hold. Every process must describe the same global array."""
    return jax.make_array_from_process_local_data(
        sharding, read_rows(local_rows(sharding, global_shape)), tuple(global_shape))


def to_host(tree):
    """A tree of (possibly sharded over processes) arrays as full numpy arrays on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def lead_decides(flag: bool) -> bool:
    """``flag`` as process 0 sees it, on every process (one process: ``flag``). For facts of a shared
    filesystem (does the workdir hold checkpoints?) that a slower process could see differently."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def lead_first(what: str, lead: Callable[[], object], others: Callable[[], object] | None = None):
    """``lead()`` on process 0, then ``others()`` (default ``lead``) on the rest, which find what process 0
    left (cached or saved files) instead of redoing or racing it. An error on process 0 stops every
    process (rather than leaving them waiting in the next collective); the others raise DistributedError
    naming ``what``."""
    if jax.process_count() == 1:
        return lead()
    from jax.experimental import multihost_utils
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = lead()
        except Exception as e:  # re-raised below, once the others know
            error = e
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed:
        raise DistributedError(f"process 0 failed while {what}; its output names the problem")
    return result if jax.process_index() == 0 else (others or lead)()
