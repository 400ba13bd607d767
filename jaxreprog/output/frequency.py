"""The frequency matrix and the greedy assignment behind FLM, ILM and FreqMap.

``d[s, t]`` = the number of training samples of target class ``t`` whose top-1
source prediction (argmax over *all* ``num_source`` logits) is ``s``
(Tsai et al. 2020; Chen et al., ILM-VP, CVPR 2023). It is a sum over samples, so
it accumulates batch by batch (:func:`frequency_matrix` of each batch, added).

The greedy assignment repeats ``per_target * C`` times: take the largest open
entry ``(s, t)`` of ``d``, map ``s -> t``, close row ``s`` (each source class is
used once) and, once ``t`` holds ``per_target`` sources, close column ``t``.
``per_target = 1`` is the one-to-one map of FLM/ILM, ``per_target = m`` AutoVP's
many-to-one FreqMap.

**Ties** go to the lowest index: ``jnp.argmax`` over the row-major flattened
``(num_source, num_target)`` matrix returns the first maximum, i.e. the lowest
source class and, within it, the lowest target class (the reference
implementations' ``argmax`` over ``d.flatten()`` does the same).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["frequency_matrix", "greedy_assignment", "map_indices"]

Array = jax.Array


@functools.partial(jax.jit, static_argnames="num_target")
def frequency_matrix(source_logits: Array, labels: Array, num_target: int) -> Array:
    """``d[s, t]`` of one batch: float32 counts, shape ``(num_source, num_target)``.

    Top-1 ties go to the lowest source class (``jnp.argmax``). A scatter-add of
    ones, so the counts are exact (below 2**24 samples per entry) whatever the
    summation order. Labels outside ``[0, num_target)`` are dropped (negative ones too:
    ``.at[]`` would wrap ``-1`` to the last class, so they are sent past the end first).
    """
    num_source = source_logits.shape[-1]
    top1 = jnp.argmax(source_logits, axis=-1)
    labels = jnp.where(labels < 0, num_target, labels)
    return jnp.zeros((num_source, num_target), jnp.float32).at[top1, labels].add(1.0, mode="drop")


@functools.partial(jax.jit, static_argnames="per_target")
def greedy_assignment(d: Array, per_target: int = 1) -> Array:
    """Greedy assignment on a score matrix ``d`` ``(num_source, num_target)``.

    Returns ``ω``, float32 ``(num_source, num_target)`` with ``per_target`` ones in
    every column and at most one in every row. Runs in ``lax.fori_loop`` (jit- and
    vmap-safe); each of the ``per_target * num_target`` steps costs one argmax over
    ``d``, ``O(num_source * num_target)``. Ties go to the lowest (source, target)
    index, see the module docstring.
    """
    num_source, num_target = d.shape
    if per_target * num_target > num_source:
        raise ValueError(
            f"greedy_assignment: {per_target} source classes for each of {num_target} targets need "
            f"{per_target * num_target} source classes, d has {num_source}"
        )
    closed = -jnp.inf

    def step(_, carry):
        omega, score, is_open = carry
        best = jnp.argmax(score)  # first maximum: lowest (s, t)
        # a -inf score ties with the closed entries: then take the first open entry
        s, t = jnp.divmod(jnp.where(is_open.ravel()[best], best, jnp.argmax(is_open)), num_target)
        omega = omega.at[s, t].set(1.0)
        full = jnp.sum(omega[:, t]) >= per_target
        is_open = is_open.at[s, :].set(False)
        is_open = is_open.at[:, t].set(is_open[:, t] & ~full)
        return omega, jnp.where(is_open, score, closed), is_open

    omega = jnp.zeros((num_source, num_target), jnp.float32)
    is_open = jnp.ones((num_source, num_target), bool)
    carry = (omega, d.astype(jnp.float32), is_open)
    omega, _, _ = jax.lax.fori_loop(0, per_target * num_target, step, carry)
    return omega


@functools.partial(jax.jit, static_argnames="per_target")
def map_indices(omega: Array, per_target: int = 1) -> Array:
    """The source classes of each target column of a 0/1 map ``ω``.

    ``(num_target,)`` int32 for ``per_target == 1`` (``argmax`` over sources),
    ``(num_target, per_target)`` otherwise (``top_k``, ascending source order
    among equal entries). Applying a map as a gather of these indices is exact,
    unlike ``logits @ ω``, which TF32/bf16 matmul precision would round.
    """
    if per_target == 1:
        return jnp.argmax(omega, axis=0).astype(jnp.int32)
    return jax.lax.top_k(omega.T, per_target)[1].astype(jnp.int32)
