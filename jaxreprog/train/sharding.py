"""Data parallelism over local devices with ``jax.sharding``.

One 1-D mesh axis ``"data"``: each batch is split along its first axis across the
devices, the frozen parameters and the training state are replicated, and
``jax.jit`` inserts the gradient all-reduce. The same code runs multi-host after
``jax.distributed.initialize()`` with a mesh over ``jax.devices()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_mesh", "replicate", "shard_batch"]

PyTree = Any


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all local devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh: devices must not be empty")
    return Mesh(np.asarray(devices), ("data",))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every leaf whole on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: PyTree, mesh: Mesh, axis: int = 0) -> PyTree:
    """Split every leaf of ``batch`` along its batch ``axis`` over the ``"data"`` axis.

    ``axis=1`` for a stack of batches (``fit``'s ``steps_per_call``). A batch whose
    size the device count does not divide (a last, partial batch) is replicated
    instead: correct, just not parallel.
    """
    n = mesh.devices.size
    sizes = {np.shape(leaf)[axis] for leaf in jax.tree.leaves(batch)}
    split = n > 1 and all(s % n == 0 for s in sizes)
    spec = PartitionSpec(*(None,) * axis, "data") if split else PartitionSpec()
    return jax.device_put(batch, NamedSharding(mesh, spec))
