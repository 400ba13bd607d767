"""Many-to-one frequency mapping, AutoVP's FreqMap (Tsao et al., ICLR 2024).

Each target class ``t`` owns ``m`` source classes ``S_t`` (disjoint), chosen by
the greedy assignment on the frequency matrix with ``m`` per column, and reads
their mean logit: ``y_T[:, t] = mean_{s ∈ S_t} f(x)[:, s]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import Alignment, Refit
from jaxreprog.output._alignment import check_omega, counts_stats, first_classes, statistical
from jaxreprog.output._checks import check_class_counts, check_logits
from jaxreprog.output.frequency import greedy_assignment, map_indices
from jaxreprog.taxonomy import OutputAlignment, register

__all__ = ["freqmap"]


@functools.partial(jax.jit, static_argnames="per_target")
def _mean_of_mapped(omega: jax.Array, source_logits: jax.Array, per_target: int) -> jax.Array:
    index = map_indices(omega, per_target).reshape(omega.shape[1], per_target)  # (num_target, m), m = 1 too
    return jnp.mean(jnp.take(source_logits, index, axis=-1), axis=-1)


@register(paper="Tsao et al. 2024", alignment=OutputAlignment.STATISTICAL)
def freqmap(
    num_source: int, num_target: int, *, per_target: int = 5, schedule: Refit = Refit.ONCE
) -> Alignment:
    """AutoVP's FreqMap: ``m`` source classes per target, each used once; target logit = their mean.

    The greedy step takes the largest open entry ``(s, t)`` of the frequency
    matrix ``d``, gives ``s`` to ``t``, closes row ``s`` and closes column ``t`` once
    it holds ``m`` sources (:func:`jaxreprog.output.greedy_assignment`; ties go to
    the lowest source, then target, index). The state is the 0/1 ``ω`` with ``m``
    ones per column; ``apply`` gathers the ``m`` logits and averages them (exact).

    Args:
      num_source: the frozen model's number of outputs.
      num_target: the task's number of classes (``m · num_target <= num_source``).
      per_target: ``m``, source classes per target class (AutoVP's default 5 here).
      schedule: when a trainer refits it (``Refit.ONCE``: from the initial prompt).

    Until the first refit target ``t`` reads sources ``[t·m, (t+1)·m)``.
    """
    per_target = checking.integer(per_target, "per_target", who="freqmap")
    if not isinstance(schedule, Refit):
        raise TypeError(f"freqmap: schedule must be a jr.Refit, got {schedule!r}")
    check_class_counts("freqmap", num_source, num_target, per_target=per_target)
    stats_init, stats_update = counts_stats("freqmap", num_source, num_target)

    def apply(state, source_logits):
        omega = check_omega("freqmap.apply", state, num_source, num_target)
        check_logits("freqmap.apply", source_logits, num_source)
        return _mean_of_mapped(omega, source_logits, per_target)

    def refit_from_stats(state, stats):
        check_omega("freqmap.refit_from_stats", state, num_source, num_target)
        return {"omega": greedy_assignment(stats["counts"], per_target)}

    return statistical(
        init=lambda key: {"omega": first_classes(num_source, num_target, per_target)},
        apply=apply,
        stats_init=stats_init,
        stats_update=stats_update,
        refit_from_stats=refit_from_stats,
        schedule=schedule,
    )
