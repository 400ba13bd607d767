"""Runs of several processes (hosts): one global device mesh over JAX's own multi-controller runtime.

Every process runs the same program (``jaxreprog run``, or your script calling
:func:`jaxreprog.train.fit`) after :func:`initialize`. ``fit`` and ``evaluate`` then use a
``"data"`` mesh over every process's devices (or the mesh of a :func:`jaxreprog.shard` model):
every process walks the same seeded order, and from a :class:`jaxreprog.data.Dataset` reads
and preprocesses only the rows of each batch its own devices hold
(:func:`jaxreprog.train.local_rows`: half of each batch in two processes; all of a
batch the ``"data"`` axis does not divide, which is replicated, or where a ``"model"`` axis
spans the processes), so the batch size must divide over the processes; the global batch is
assembled from the parts (:func:`jaxreprog.train.shard_batch`). Another iterable of
batches is read whole by each process. Theta and the optimiser state are replicated, and
orbax writes each checkpoint once (the primary process; every process takes part). Results
and reports are written by process 0 only.
"""

from __future__ import annotations

import os

import jax

from jaxreprog import checking

__all__ = ["initialize", "is_primary"]

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Join a run of ``num_processes`` processes coordinated at ``coordinator`` (``"HOST:PORT"``).

    Arguments not given are read from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``; with none of them, nothing happens and ``False`` is returned (a run of
    one process). On CPU the processes exchange data over gloo. Call it before anything
    touches a device. Returns ``True`` once joined.

    Example (two processes on one machine)::

        $ jaxreprog run RECIPE --coordinator localhost:1234 --num-processes 2 --process-id 0 &
        $ jaxreprog run RECIPE --coordinator localhost:1234 --num-processes 2 --process-id 1
    """
    env = {k: os.environ.get(k) for k in _ENV}
    coordinator = coordinator or env["JAX_COORDINATOR_ADDRESS"]
    num_processes = num_processes if num_processes is not None else _int(env["JAX_NUM_PROCESSES"], _ENV[1])
    process_id = process_id if process_id is not None else _int(env["JAX_PROCESS_ID"], _ENV[2])
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if all(v is None for v in given.values()):
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"distributed: give coordinator, num_processes and process_id together; missing {missing}"
        )
    if not isinstance(coordinator, str) or coordinator.rpartition(":")[2] == "" or ":" not in coordinator:
        raise ValueError(f"distributed: coordinator must be 'HOST:PORT', got {coordinator!r:.60}")
    num_processes = checking.integer(num_processes, "num_processes", who="distributed")
    process_id = checking.integer(
        process_id, "process_id", who="distributed", minimum=0, maximum=num_processes - 1
    )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; GPUs use NCCL
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    return True


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes results)."""
    return jax.process_index() == 0


def _int(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"distributed: ${name} must be an integer, got {text!r:.40}") from None
