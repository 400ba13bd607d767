"""Private builders shared by the output alignments: map states and streaming statistics."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxreprog.core import Alignment, Refit
from jaxreprog.output._checks import check_batch
from jaxreprog.output.frequency import frequency_matrix

PyTree = Any
Array = jax.Array


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def first_classes(num_source: int, num_target: int, per_target: int = 1) -> Array:
    """Placeholder map before the first refit: target ``t`` <- sources ``[t·m, (t+1)·m)``."""
    target = jnp.arange(num_target * per_target) // per_target  # of sources 0, 1, ..., m·C - 1
    return jnp.zeros((num_source, num_target), jnp.float32).at[jnp.arange(target.size), target].set(1.0)


def check_omega(where: str, state: PyTree, num_source: int, num_target: int) -> Array:
    """``state["omega"]`` of shape ``(num_source, num_target)``."""
    if not isinstance(state, dict) or "omega" not in state:
        raise ValueError(f"{where}: state must be a dict with key 'omega' (from init), got {state!r:.80}")
    omega = state["omega"]
    if jnp.shape(omega) != (num_source, num_target):
        raise ValueError(
            f"{where}: state['omega'] must have shape (num_source, num_target)=({num_source}, "
            f"{num_target}), got {jnp.shape(omega)} (a candidate axis belongs outside: jax.vmap)"
        )
    return omega


@jax.jit
def _add_counts(counts: Array, source_logits: Array, labels: Array) -> Array:
    return counts + frequency_matrix(source_logits, labels, counts.shape[1])


def counts_stats(where: str, num_source: int, num_target: int):
    """``stats_init``/``stats_update`` accumulating the frequency matrix ``{"counts": d}``."""

    def stats_init():
        return {"counts": jnp.zeros((num_source, num_target), jnp.float32)}

    def stats_update(stats, source_logits, labels):
        check_batch(f"{where}.stats_update", source_logits, labels, num_source, num_target)
        return {**stats, "counts": _add_counts(stats["counts"], source_logits, labels)}

    return stats_init, stats_update


def statistical(
    *,
    init: Callable[[jax.Array], PyTree],
    apply: Callable[[PyTree, Array], Array],
    stats_init: Callable[[], PyTree],
    stats_update: Callable[[PyTree, Array, Array], PyTree],
    refit_from_stats: Callable[[PyTree, PyTree], PyTree],
    schedule: Refit,
) -> Alignment:
    """An :class:`Alignment` refitted from streaming statistics, never by gradient."""
    return Alignment(
        init=init,
        apply=apply,
        trainable=False,
        stats_init=stats_init,
        stats_update=stats_update,
        refit_from_stats=refit_from_stats,
        schedule=schedule,
    )


def plain(
    where: str,
    *,
    init: Callable[[jax.Array], PyTree],
    apply: Callable[[PyTree, Array], Array],
    num_source: int,
    num_target: int,
    trainable: bool = False,
) -> Alignment:
    """An :class:`Alignment` with no statistics: ``refit`` checks its inputs and returns ``state``."""

    def stats_update(stats, source_logits, labels):
        check_batch(f"{where}.refit", source_logits, labels, num_source, num_target)
        return stats

    return Alignment(init=init, apply=apply, trainable=trainable, stats_update=stats_update)
