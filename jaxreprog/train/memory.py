"""Will a training step fit? Per-device memory from the compiled step, before any weight loads.

:func:`memory_plan` compiles :func:`~jaxreprog.train.make_step`'s step for *shapes*
(``jax.ShapeDtypeStruct`` s: a model's parameters from ``jax.eval_shape``, never
materialised), optionally split over a ``("data", "model")`` mesh as
:func:`jaxreprog.shard` would place them, and reads XLA's own accounting
(``compiled.memory_analysis()``): the per-device bytes of the arguments (frozen
parameters, optimiser state, batch), outputs and temporaries (activations kept for the
backward pass, which ``remat=`` shrinks).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxreprog import checking
from jaxreprog.core import FrozenModel, Reprogrammed
from jaxreprog.train.loop import make_step
from jaxreprog.train.sharding import Rules, shardings

__all__ = ["MemoryPlan", "memory_plan"]

PyTree = Any
GiB = 2**30


class MemoryPlan(NamedTuple):
    """Per-device bytes of one compiled training step (XLA's ``memory_analysis``)."""

    params: int  # the frozen parameters (this device's share)
    arguments: int  # everything passed in: parameters, train state (theta, optimiser), batch, key
    outputs: int  # the new train state and metrics
    temporaries: int  # activations and gradients live at once inside the step
    aliased: int  # outputs written over donated arguments
    device_bytes: int | None  # the device's memory, when given

    @property
    def peak(self) -> int:
        """An upper bound on the bytes the step needs at once: arguments + outputs + temporaries - aliased."""
        return self.arguments + self.outputs + self.temporaries - self.aliased

    @property
    def fits(self) -> bool | None:
        """Whether :attr:`peak` fits in ``device_bytes`` (``None`` when that is unknown)."""
        return None if self.device_bytes is None else self.peak <= self.device_bytes

    def __str__(self) -> str:
        cells = [
            f"{name} {getattr(self, name) / GiB:.2f} GiB" for name in ("params", "arguments", "temporaries")
        ]
        verdict = "" if self.fits is None else (
            f" of {self.device_bytes / GiB:.0f} GiB: " + ("fits" if self.fits else "does NOT fit")
        )  # fmt: skip
        return f"per device: peak {self.peak / GiB:.2f} GiB{verdict} ({', '.join(cells)})"


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def memory_plan(
    program: Reprogrammed,
    frozen_model: FrozenModel,
    x: PyTree,
    *,
    optimizer: optax.GradientTransformation | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    device_bytes: int | None = None,
) -> MemoryPlan:
    """Compile ``program``'s training step for shapes and report its per-device memory.

    Args:
      program: the program to train (:func:`jaxreprog.reprogram`).
      frozen_model: its model; ``params`` may be arrays or ``jax.ShapeDtypeStruct`` s (e.g.
        ``jax.eval_shape`` of an initialiser: an 8B model's plan needs no 16 GB of weights).
      x: one batch of inputs (arrays or shapes); the labels are ``(B,)`` int32 with ``B``
        its leading size.
      optimizer: default ``optax.adam(1e-3)``.
      mesh: a ``("data", "model")`` mesh (:func:`jaxreprog.train.mesh`): the parameters are
        placed as :func:`jaxreprog.shard` would (with ``rules``), the batch split over
        ``"data"``; default one device.
      device_bytes: the device's memory, for :attr:`MemoryPlan.fits` (e.g. ``80 * 2**30``).

    Example::

        >>> shapes = jax.eval_shape(lambda: model.params)
        >>> plan = jr.train.memory_plan(program, model._replace(params=shapes), x, mesh=mesh,
        ...                             device_bytes=80 * 2**30)
        >>> print(plan)  # per device: peak 21.40 GiB of 80 GiB: fits (...)
    """
    if not isinstance(program, Reprogrammed) or not isinstance(frozen_model, FrozenModel):
        raise TypeError("memory_plan: pass a jr.Reprogrammed program and its jr.FrozenModel")
    if device_bytes is not None:
        device_bytes = checking.integer(device_bytes, "device_bytes", who="memory_plan")
    init, step = make_step(program, optimizer or optax.adam(1e-3))
    params = _abstract(frozen_model.params)
    xs = _abstract(x)
    batch = jax.tree.leaves(xs)[0].shape[0]
    state = jax.eval_shape(lambda k: init(program.init(k)), jax.random.key(0))
    key = jax.eval_shape(lambda: jax.random.key(0))
    args = (state, params, (xs, jax.ShapeDtypeStruct((batch,), jnp.int32)), key)
    if mesh is None:
        compiled = jax.jit(step).lower(*args).compile()
        share = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params))
    else:
        placed = shardings(params, mesh, rules)
        replicated = NamedSharding(mesh, PartitionSpec())
        data = NamedSharding(mesh, PartitionSpec("data"))
        in_shardings = (
            jax.tree.map(lambda _: replicated, state),
            placed,
            jax.tree.map(lambda _: data, args[2]),
            replicated,
        )
        compiled = jax.jit(step, in_shardings=in_shardings).lower(*args).compile()
        share = sum(
            np.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
            for a, s in zip(jax.tree.leaves(params), jax.tree.leaves(placed))
        )
    m = compiled.memory_analysis()
    return MemoryPlan(
        params=int(share),
        arguments=int(m.argument_size_in_bytes),
        outputs=int(m.output_size_in_bytes),
        temporaries=int(m.temp_size_in_bytes),
        aliased=int(m.alias_size_in_bytes),
        device_bytes=None if device_bytes is None else int(device_bytes),
    )
