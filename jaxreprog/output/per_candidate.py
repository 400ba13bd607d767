"""K alignments as one: candidate ``k`` of a vmapped fit trains with alignment ``k``."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxreprog.core import Alignment, Refit, trainable_mask
from jaxreprog.taxonomy import Origin, Tags

__all__ = ["per_candidate"]


def per_candidate(alignments: Sequence[Alignment]) -> Alignment:
    """K alignments as one, so that candidate ``k`` of a vmapped fit trains with alignment ``k``.

    The state is ``{"which": one-hot (K,), "fits": refits so far, "states": (s_1, ..., s_K)}``;
    ``apply`` runs ``alignments[argmax(which)]`` (``lax.switch``). Each candidate keeps the
    statistics of every alignment (cheap next to the frozen model) and refits each on its
    own schedule: ``EVERY_EPOCH`` ones at every refit, ``ONCE`` ones only at the first
    (``fits == 0``), ``NEVER`` ones never. Used to train K prompts with K different label
    mappings in one vmapped step (one compile, one pass of the data per epoch), each
    exactly as it would train alone: set ``which = e_k`` in candidate ``k``'s theta.
    """
    alignments = tuple(alignments)
    if not alignments or not all(isinstance(a, Alignment) for a in alignments):
        raise ValueError("per_candidate: alignments must be a non-empty sequence of jr.Alignment")
    schedules = {a.schedule for a in alignments}
    schedule = next(
        (s for s in (Refit.EVERY_EPOCH, Refit.ONCE) if s in schedules),
        Refit.NEVER,
    )
    k = len(alignments)

    def init(key):
        keys = jax.random.split(key, k)
        return {
            "which": jax.nn.one_hot(0, k, dtype=jnp.float32),
            "fits": jnp.zeros((), jnp.float32),
            "states": tuple(a.init(kk) for a, kk in zip(alignments, keys)),
        }

    def branch(i):
        return lambda states, logits: alignments[i].apply(states[i], logits)

    branches = [branch(i) for i in range(k)]

    def apply(state, source_logits):
        return jax.lax.switch(jnp.argmax(state["which"]), branches, state["states"], source_logits)

    def stats_init():
        return tuple(a.stats_init() for a in alignments)

    # An alignment whose statistics see transformed logits (jr.output.logit_prompt) needs its own state:
    # then stats_logits gives each alignment what it sees, and stats_update takes that tuple.
    observing = any(a.stats_logits is not None for a in alignments)

    def stats_logits(state, source_logits):
        return tuple(
            source_logits if a.stats_logits is None else a.stats_logits(s, source_logits)
            for a, s in zip(alignments, state["states"])
        )

    def stats_update(stats, source_logits, labels):
        seen = source_logits if isinstance(source_logits, tuple) else (source_logits,) * k
        return tuple(a.stats_update(s, x, labels) for a, s, x in zip(alignments, stats, seen))

    def refit_from_stats(state, stats):
        first = state["fits"] == 0
        new = []
        for a, s, st in zip(alignments, state["states"], stats):
            if a.schedule == Refit.EVERY_EPOCH:
                s = a.refit_from_stats(s, st)
            elif a.schedule == Refit.ONCE:
                s = jax.tree.map(lambda n, o: jnp.where(first, n, o), a.refit_from_stats(s, st), s)
            new.append(s)
        return {**state, "fits": state["fits"] + 1, "states": tuple(new)}

    def trainable(state):
        masks = tuple(trainable_mask(a, s) for a, s in zip(alignments, state["states"]))
        return {"which": False, "fits": False, "states": masks}

    tags = functools.reduce(operator.or_, (a.tags or Tags() for a in alignments))
    origin = Origin("jr.output.per_candidate", {"alignments": alignments})
    return Alignment(
        init,
        apply,
        tags,
        trainable,
        stats_init,
        stats_update,
        refit_from_stats,
        schedule,
        origin,
        stats_logits if observing else None,
    )
