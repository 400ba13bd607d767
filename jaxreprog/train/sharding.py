"""Placing a run on devices with ``jax.sharding``: data parallel, and frozen models larger than one device.

A mesh has a ``"data"`` axis (each batch split along its first axis) and, from
:func:`mesh`, a ``"model"`` axis over which :func:`shard` splits the frozen parameters
(FSDP-style: each weight's largest divisible axis, or per-parameter rules). Theta and the
training state are small and replicated. ``jax.jit`` (GSPMD) partitions each matmul the way
its weight is split and inserts the collectives on the activations (for a Llama step on a
1 x 8 mesh: heads split, no weight gathered; benchmarks/README.md) and the gradient
all-reduce; the same code runs multi-host after ``jax.distributed.initialize()`` with a mesh
over ``jax.devices()``.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxreprog import checking
from jaxreprog.core import FrozenModel

__all__ = [
    "data_mesh",
    "data_processes",
    "local_rows",
    "mesh",
    "mesh_of",
    "put",
    "replicate",
    "shard",
    "shard_batch",
    "shardings",
]

PyTree = Any
Rules = Sequence[tuple[str, PartitionSpec]]


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all local devices; in a run of
    several processes, :func:`jaxreprog.train.distributed.initialize`, every process's)."""
    if devices is None:
        devices = jax.devices() if jax.process_count() > 1 else jax.local_devices()
    devices = list(devices)
    if not devices:
        raise ValueError("data_mesh: devices must not be empty")
    return Mesh(np.asarray(devices), ("data",))


def mesh(data: int | None = None, model: int = 1, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 2-D ``("data", "model")`` mesh over ``devices`` (default: all devices).

    ``data · model`` must equal the device count; ``data`` defaults to the count over ``model``.

    Example::

        >>> m = jr.train.mesh(data=2, model=4)          # 8 devices
        >>> model = jr.shard(jr.models.load("gpt2"), m)  # weights split 4 ways
    """
    devices = list(jax.devices() if devices is None else devices)
    for name, size in (("data", data), ("model", model)):
        if size is not None:
            checking.integer(size, name, who="mesh")
    if data is None:
        if len(devices) % model:
            raise ValueError(f"mesh: model={model} does not divide the {len(devices)} devices")
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(
            f"mesh: data={data} x model={model} = {data * model}, but there are {len(devices)} devices"
        )
    return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def put(tree: PyTree, sharding: NamedSharding | PyTree) -> PyTree:
    """``jax.device_put(tree, sharding)`` (one sharding, or one per leaf); in a run of several
    processes, global arrays built from each process's own copy of the value (each one transfers
    only its devices' pieces: every process holds the same value, e.g. the same batch read in the
    same seeded order)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, tree)

    def one(leaf, where):
        if isinstance(leaf, jax.Array) and leaf.sharding == where:
            return leaf
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, where, lambda index: host[index])

    return jax.tree.map(one, tree, sharding)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every leaf whole on every device of ``mesh``."""
    return put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: PyTree, mesh: Mesh, axis: int = 0, size: int | None = None) -> PyTree:
    """Split every leaf of ``batch`` along its batch ``axis`` over the ``"data"`` axis.

    ``axis=1`` for a stack of batches (``fit``'s ``steps_per_call``). A batch whose
    size the data axis does not divide (a last, partial batch) is replicated
    instead: correct, just not parallel.

    ``size`` is the global batch's examples where ``batch`` may hold only this process's
    rows of it, :func:`local_rows` (``Dataset.epoch(e, rows=...)``): in a run of several
    processes the global arrays are then assembled from each process's own rows (a leaf
    with all ``size`` rows is taken whole, as without ``size``).
    """
    if size is None or jax.process_count() == 1:
        sizes = {np.shape(leaf)[axis] for leaf in jax.tree.leaves(batch)}
        n = mesh.shape["data"]
        split = n > 1 and all(s % n == 0 for s in sizes)
        return put(batch, _batch_sharding(mesh, split, axis))
    size = checking.integer(size, "size", who="shard_batch")
    where = _batch_sharding(mesh, size % mesh.shape["data"] == 0, axis)
    held = local_rows(size, mesh)

    def one(leaf):
        host = np.asarray(leaf)
        rows = host.shape[axis]
        if rows not in (size, held.stop - held.start):
            raise ValueError(
                f"shard_batch: a leaf holds {rows} rows along axis {axis}; a batch of {size} holds "
                f"{size}, or this process's rows {held.start}:{held.stop} of it"
            )
        offset = 0 if rows == size else held.start
        shape = host.shape[:axis] + (size,) + host.shape[axis + 1 :]

        def piece(index):
            start, stop, _ = index[axis].indices(size)
            return host[(*index[:axis], slice(start - offset, stop - offset), *index[axis + 1 :])]

        return jax.make_array_from_callback(shape, where, piece)

    return jax.tree.map(one, batch)


def local_rows(size: int, mesh: Mesh) -> slice:
    """The rows of a global batch of ``size`` examples that this process's devices hold once
    :func:`shard_batch` places it on ``mesh``: the only ones it needs to read and preprocess.

    Its part of the ``"data"`` axis; all of them where the batch is replicated (a size the
    data axis does not divide) or where each of the process's devices holds other rows
    (a ``"model"`` axis across processes); in a run of one process, ``slice(0, size)``.
    Where a process's rows lie apart, the span from its first to its last.
    """
    size = checking.integer(size, "size", who="local_rows")
    if jax.process_count() == 1:
        return slice(0, size)
    return _local_rows(size, mesh)


@functools.lru_cache(maxsize=64)  # once per batch size and mesh, not per batch
def _local_rows(size: int, mesh: Mesh) -> slice:
    where = _batch_sharding(mesh, size % mesh.shape["data"] == 0)
    spans = [i[0].indices(size)[:2] for i in where.addressable_devices_indices_map((size,)).values()]
    if not spans:
        raise ValueError(f"local_rows: the mesh holds none of process {jax.process_index()}'s devices")
    return slice(min(a for a, _ in spans), max(b for _, b in spans))


def data_processes(mesh: Mesh) -> int:
    """How many processes share out the rows of a batch: those along the mesh's ``"data"`` axis
    (all of them for :func:`data_mesh`; one where only a ``"model"`` axis crosses processes)."""
    devices = np.moveaxis(mesh.devices, mesh.axis_names.index("data"), 0).reshape(mesh.shape["data"], -1)
    return max(len({d.process_index for d in column}) for column in devices.T)


def _batch_sharding(mesh: Mesh, split: bool, axis: int = 0) -> NamedSharding:
    split = split and mesh.shape["data"] > 1
    return NamedSharding(mesh, PartitionSpec(*(None,) * axis, "data") if split else PartitionSpec())


def shard(frozen_model: FrozenModel, mesh: Mesh, rules: Rules | None = None) -> FrozenModel:
    """``frozen_model`` with its parameters split over ``mesh``'s ``"model"`` axis.

    Each parameter, named by its path (``"params/h_0/attn/c_attn/kernel"``), takes the
    :class:`~jax.sharding.PartitionSpec` of the first of ``rules`` (``(glob, spec)`` pairs,
    e.g. tensor parallel ``("*/mlp/c_fc/kernel", P(None, "model"))``) whose glob matches
    it; a parameter no rule matches is split FSDP-style along its largest axis that the
    ``"model"`` size divides, or replicated when none does (biases, norms). The model's
    outputs and gradients are unchanged; :func:`jaxreprog.train.fit` and ``evaluate``
    keep this layout and split batches over ``"data"``.

    Raises:
      ValueError: a rule whose spec does not fit its parameter (rank, or a dimension the
        mesh axis does not divide), naming the parameter and the axis.
    """
    if not isinstance(frozen_model, FrozenModel):
        raise TypeError(f"shard: expected a jr.FrozenModel, got {type(frozen_model).__name__}")
    if not isinstance(mesh, Mesh) or "model" not in mesh.axis_names:
        raise ValueError("shard: mesh must be a jax Mesh with a 'model' axis (jr.train.mesh(data=, model=))")
    rules = list(rules or ())
    for rule in rules:
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
            raise TypeError(f"shard: rules must be (glob, PartitionSpec) pairs, got {rule!r:.60}")
    return frozen_model._replace(params=put(frozen_model.params, shardings(frozen_model.params, mesh, rules)))


def shardings(params: PyTree, mesh: Mesh, rules: Rules | None = None) -> PyTree:
    """The :class:`~jax.sharding.NamedSharding` :func:`shard` gives each leaf of ``params``
    (arrays or :class:`jax.ShapeDtypeStruct` s: a model's shapes, e.g. from ``jax.eval_shape``)."""
    rules = list(rules or ())
    size = mesh.shape["model"]

    def place(path, leaf):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        shape = tuple(np.shape(leaf))
        spec = next((PartitionSpec(*s) for glob, s in rules if fnmatch.fnmatchcase(name, glob)), None)
        if spec is None:
            axes = [a for a in np.argsort(shape)[::-1] if shape[a] % size == 0 and shape[a] >= size]
            spec = (
                PartitionSpec(*("model" if a == axes[0] else None for a in range(len(shape))))
                if axes
                else PartitionSpec()
            )
        _check_fits(name, shape, spec, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(place, params)


def _check_fits(name: str, shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> None:
    if len(spec) > len(shape):
        raise ValueError(f"shard: {name} has shape {shape}; the spec {spec} names {len(spec)} axes")
    for dim, axes in zip(shape, spec):
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            if axis not in mesh.shape:
                raise ValueError(f"shard: {name}: the spec {spec} names {axis!r}, not an axis of the mesh")
            if dim % mesh.shape[axis]:
                raise ValueError(
                    f"shard: {name} of shape {shape}: dimension {dim} is not divisible by the mesh's "
                    f"{axis!r} axis ({mesh.shape[axis]})"
                )


def mesh_of(tree: PyTree) -> Mesh | None:
    """The mesh :func:`shard` split ``tree``'s arrays over (it has a ``"model"`` axis), or ``None``."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and "model" in sharding.mesh.axis_names:
            return sharding.mesh
    return None
