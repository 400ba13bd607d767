"""The candidate axis: K prompts, mappings or hyperparameters as one stacked theta.

Training K candidates is one vmapped step, not K runs: theta carries a leading
axis of size K while the frozen parameters and the batch are shared
(``jax.vmap(apply, in_axes=(0, None, None))``).

Example::

    >>> thetas = jr.candidates.init(program, jax.random.split(key, 16))
    >>> logits = jr.candidates.apply(program, thetas, model.params, x)  # (16, B, C)
    >>> best = jr.candidates.select(thetas, int(jnp.argmax(accuracies)))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxreprog.core import Reprogrammed

__all__ = ["apply", "count", "init", "select", "stack", "unstack"]

PyTree = Any


def init(program: Reprogrammed, keys: jax.Array) -> PyTree:
    """K thetas from K keys, stacked on a leading candidate axis.

    ``keys``: ``jax.random.split(key, K)``, typed ``(K,)`` or raw uint32 ``(K, 2)``.
    """
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    if keys.ndim != (1 if typed else 2) or not (typed or keys.dtype == jnp.uint32):
        raise ValueError(
            "candidates.init: keys must be a batch of K PRNG keys (jax.random.split(key, K)), "
            f"got shape {keys.shape}, dtype {keys.dtype}"
        )
    return jax.vmap(program.init)(keys)


def apply(
    program: Reprogrammed, theta: PyTree, frozen_params: PyTree, x: Any, key: jax.Array | None = None
) -> jax.Array:
    """Every candidate on the same batch: ``(K, *program.apply(...).shape)``.

    The frozen parameters and the batch are shared across candidates
    (``in_axes=(0, None, None)``); so is ``key`` when given.
    """
    count(theta)
    return jax.vmap(program.apply, in_axes=(0, None, None, None))(theta, frozen_params, x, key)


def count(theta: PyTree) -> int:
    """The number of candidates K (checks every leaf has the same leading axis)."""
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(theta)}
    if not sizes:
        raise ValueError("candidate theta has no arrays")
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"candidate theta needs one leading axis K on every leaf; got leading sizes {sizes}")
    return sizes.pop()


def select(theta: PyTree, index: int | jax.Array) -> PyTree:
    """Candidate ``index`` of a stacked theta (works on traced indices too)."""
    k = count(theta)
    if isinstance(index, int) and not -k <= index < k:
        raise IndexError(f"candidates.select: index {index} out of range for K={k}")
    return jax.tree.map(lambda leaf: leaf[index], theta)


def stack(thetas: Sequence[PyTree]) -> PyTree:
    """Stack same-structure thetas on a new leading candidate axis."""
    if not thetas:
        raise ValueError("candidates.stack: need at least one theta")
    structures = {jax.tree.structure(t) for t in thetas}
    if len(structures) != 1:
        raise ValueError("candidates.stack: all thetas must have the same tree structure")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *thetas)


def unstack(theta: PyTree) -> list[PyTree]:
    """The inverse of :func:`stack`."""
    return [select(theta, i) for i in range(count(theta))]
