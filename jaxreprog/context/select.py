"""Choosing and ordering in-context demonstrations.

Random (seeded) selection as in Brown et al. 2020; nearest neighbours of the query
in a frozen encoder's embedding space ("KATE", Liu et al. 2022, *What Makes Good
In-Context Examples for GPT-3?*); class-balanced selection; and ordering
policies (Lu et al. 2022 show the order matters; KATE puts the nearest last).
All selectors are pure and jit-able given static ``k``.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.context.scoring import _unit

__all__ = ["balanced", "knn", "order", "random"]

Array = jax.Array


def random(key: jax.Array, pool_size: int, k: int) -> Array:
    """``k`` distinct indices into a pool of ``pool_size``, uniformly at random."""
    if not 0 < k <= pool_size:
        raise ValueError(f"k must be in [1, pool_size={pool_size}], got {k}")
    return jax.random.choice(key, pool_size, (k,), replace=False)


def knn(query_emb: Array, pool_emb: Array, k: int) -> tuple[Array, Array]:
    """The ``k`` pool items most cosine-similar to each query: ``(indices, sims)``.

    Shapes: query ``(Q, D)``, pool ``(N, D)`` -> ``(Q, k)`` each, most similar
    first; ties go to the lower pool index. A zero vector has similarity 0 with
    everything (not NaN).
    """
    if query_emb.ndim != 2 or pool_emb.ndim != 2 or query_emb.shape[1] != pool_emb.shape[1]:
        raise ValueError(
            f"knn: query_emb (Q, D) and pool_emb (N, D) must share D; got {query_emb.shape}, {pool_emb.shape}"
        )
    if not 0 < k <= pool_emb.shape[0]:
        raise ValueError(f"k must be in [1, pool size {pool_emb.shape[0]}], got {k}")
    sims, idx = jax.lax.top_k(_unit(query_emb) @ _unit(pool_emb).T, k)
    return idx, sims


def balanced(key: jax.Array, labels: Array, per_class: int, num_classes: int) -> Array:
    """``per_class`` random examples of every class (``num_classes * per_class``
    indices, grouped by class, then shuffled); ``labels`` ``(N,)`` ints in ``[0, num_classes)``."""
    labels = jnp.asarray(labels)
    counts = jnp.bincount(labels, length=num_classes)
    if not isinstance(labels, jax.core.Tracer):  # checked in numpy: jnp ops inside jit give tracers
        concrete = np.asarray(labels)
        if concrete.size and not 0 <= concrete.min() <= concrete.max() < num_classes:
            raise ValueError(
                f"balanced: labels must be in [0, num_classes={num_classes}), "
                f"got values in [{concrete.min()}, {concrete.max()}]"
            )
        fewest = np.bincount(concrete, minlength=num_classes).min()
        if fewest < per_class:
            raise ValueError(f"balanced: a class has {fewest} examples < per_class={per_class}")
    k1, k2 = jax.random.split(key)
    noise = jax.random.uniform(k1, labels.shape)
    # Sort by (class, noise): each class's examples in random order, then take the first per_class.
    perm = jnp.lexsort((noise, labels))
    starts = jnp.concatenate([jnp.zeros(1, counts.dtype), jnp.cumsum(counts)[:-1]])
    picks = (starts[:, None] + jnp.arange(per_class)[None, :]).reshape(-1)
    return jax.random.permutation(k2, perm[picks])


def order(
    indices: Array,
    policy: Literal["nearest_last", "nearest_first", "random"] = "nearest_last",
    key: jax.Array | None = None,
) -> Array:
    """Order selected demonstrations (last axis) for the prompt.

    ``indices`` come most-similar-first, as :func:`knn` returns them;
    ``nearest_last`` puts the most similar demonstration next to the query
    (KATE's default order).
    """
    if policy == "nearest_first":
        return indices
    if policy == "nearest_last":
        return indices[..., ::-1]
    if policy == "random":
        if key is None:
            raise ValueError("order(policy='random') needs a key")
        return jax.random.permutation(key, indices, axis=-1, independent=True)
    raise ValueError(f"unknown order policy {policy!r}; use 'nearest_last', 'nearest_first' or 'random'")
