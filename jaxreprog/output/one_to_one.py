"""One-to-one label maps: identity, RLM, FLM, ILM.

Each target class ``t`` reads exactly one source logit:
``y_T[:, t] = f(x)[:, π(t)]`` with ``π`` injective. The state stores ``π`` as a
float one-hot ``ω`` of shape ``(num_source, num_target)`` (every state leaf is
floating point, and ``ω`` is the survey's ``O_ω``); ``apply`` gathers the
columns ``argmax(ω, axis=0)``, which is exact, where ``logits @ ω`` would be
rounded by TF32/bf16 matmul precision on GPU/TPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import Alignment, Refit
from jaxreprog.output._alignment import check_omega, counts_stats, first_classes, plain, statistical
from jaxreprog.output._checks import check_class_counts, check_logits
from jaxreprog.output.frequency import greedy_assignment, map_indices
from jaxreprog.taxonomy import OutputAlignment, register

__all__ = ["flm", "identity", "ilm", "rlm"]

Array = jax.Array


@jax.jit
def _gather(omega: Array, source_logits: Array) -> Array:
    return jnp.take(source_logits, map_indices(omega), axis=-1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _random_map(key: Array, num_source: int, num_target: int) -> Array:
    source = jax.random.permutation(key, num_source)[:num_target]
    return jax.nn.one_hot(source, num_source, dtype=jnp.float32).T


@jax.jit
def _store(stats: dict, source_logits: Array, labels: Array) -> dict:
    """Write a batch into the guard's buffer after the ``seen`` rows already there; rows past
    its end are dropped."""
    slots = stats["seen"] + jnp.arange(source_logits.shape[0])
    return {
        **stats,
        "logits": stats["logits"].at[slots].set(source_logits.astype(jnp.float32), mode="drop"),
        "labels": stats["labels"].at[slots].set(labels.astype(jnp.int32), mode="drop"),
        "seen": stats["seen"] + source_logits.shape[0],
    }


@jax.jit
def _guarded_refit(old: Array, stats: dict) -> Array:
    """The greedy map on ``stats["counts"]`` if it scores at least as well as ``old`` on the stored
    samples, else ``old``; score = #correct under ``argmax_t f(x)[π(t)]``."""
    new = greedy_assignment(stats["counts"])
    stored = jnp.arange(stats["labels"].shape[0]) < stats["seen"]

    def score(omega):
        correct = jnp.argmax(_gather(omega, stats["logits"]), axis=-1) == stats["labels"]
        return jnp.sum(correct & stored)

    return jnp.where(score(new) >= score(old), new, old)


def _apply(where: str, num_source: int, num_target: int):
    def apply(state, source_logits):
        omega = check_omega(f"{where}.apply", state, num_source, num_target)
        check_logits(f"{where}.apply", source_logits, num_source)
        return _gather(omega, source_logits)

    return apply


@register(paper="-", alignment=OutputAlignment.IDENTITY)
def identity(num_source: int, num_target: int | None = None) -> Alignment:
    """``y_T = f(x)``: the source logits are the target logits (same label space).

    Args:
      num_source: the frozen model's number of outputs.
      num_target: the task's number of classes; must equal ``num_source``.

    The state is ``()``.
    """
    num_target = num_source if num_target is None else num_target
    check_class_counts("identity", num_source, num_target)
    if num_target != num_source:
        raise ValueError(
            f"identity: num_target must equal num_source, got num_source={num_source}, "
            f"num_target={num_target}; use a label map (jr.output.ilm, blm, ...) between label spaces"
        )

    def apply(state, source_logits):
        check_logits("identity.apply", source_logits, num_source)
        return source_logits

    return plain("identity", init=lambda key: (), apply=apply, num_source=num_source, num_target=num_target)


@register(paper="Elsayed et al. 2019", alignment=OutputAlignment.RULE_BASED)
def rlm(num_source: int, num_target: int) -> Alignment:
    """Random label mapping: ``num_target`` distinct source classes drawn at ``init``.

    ``π = permutation(key, num_source)[:num_target]``; never refitted (the
    baseline of Chen et al., CVPR 2023, and Cai et al., NeurIPS 2024; Elsayed et
    al. 2019 used an arbitrary fixed map).

    Args:
      num_source: the frozen model's number of outputs.
      num_target: the task's number of classes (``<= num_source``).
    """
    check_class_counts("rlm", num_source, num_target, per_target=1)

    def init(key):
        return {"omega": _random_map(key, num_source, num_target)}

    return plain(
        "rlm",
        init=init,
        apply=_apply("rlm", num_source, num_target),
        num_source=num_source,
        num_target=num_target,
    )


def _frequency_map(where: str, num_source: int, num_target: int, schedule: Refit) -> Alignment:
    check_class_counts(where, num_source, num_target, per_target=1)
    stats_init, stats_update = counts_stats(where, num_source, num_target)

    def refit_from_stats(state, stats):
        check_omega(f"{where}.refit_from_stats", state, num_source, num_target)
        return {"omega": greedy_assignment(stats["counts"])}

    return statistical(
        init=lambda key: {"omega": first_classes(num_source, num_target)},
        apply=_apply(where, num_source, num_target),
        stats_init=stats_init,
        stats_update=stats_update,
        refit_from_stats=refit_from_stats,
        schedule=schedule,
    )


@register(paper="Tsai et al. 2020", alignment=OutputAlignment.STATISTICAL)
def flm(num_source: int, num_target: int) -> Alignment:
    """Frequency label mapping: the greedy one-to-one map on ``d``, fitted once.

    ``d[s, t]`` = #samples of class ``t`` whose top-1 source class is ``s``; the
    map takes the largest open entry ``num_target`` times, closing its row and
    column (:func:`jaxreprog.output.greedy_assignment`; ties go to the lowest
    source, then target, index). ``schedule = Refit.ONCE``: a trainer refits it
    from the initial prompt's logits (Tsai et al. 2020; FLM in Chen et al. 2023).

    Until the first refit the state maps target ``t`` to source ``t``.

    Example::

        >>> align = jr.output.flm(num_source=1000, num_target=10)
        >>> state = align.refit(align.init(key), source_logits, labels)
        >>> target_logits = align.apply(state, source_logits)  # (N, 10)
    """
    return _frequency_map("flm", num_source, num_target, Refit.ONCE)


@register(paper="Chen et al. 2023", alignment=OutputAlignment.STATISTICAL)
def ilm(num_source: int, num_target: int, *, guarded: bool = False, guard_samples: int = 2048) -> Alignment:
    """Iterative label mapping (ILM-VP, Chen et al. CVPR 2023): FLM's greedy map, refitted every epoch.

    ``d[s, t]`` counts top-1 predictions over *all* ``num_source`` classes, as the
    reference does; ``π`` is the greedy one-to-one assignment on ``d`` (ties: lowest
    source, then target, index). ``schedule = Refit.EVERY_EPOCH``.

    **The reference can collapse.** Training's cross-entropy only ranks the mapped
    classes among themselves, so nothing stops *unmapped* source classes from
    taking the top-1 over all classes. A measured probe (EfficientNet-Lite0 →
    MNIST, 96 px canvas) went from 59.6% test accuracy with the old map to 9.6%
    after one ILM remap: the remap was driven by source classes the prompt had
    never been trained against.

    ``guarded=True`` (beyond the papers) keeps the new map only if it scores at
    least as well as the current one on the statistics just collected. The score
    of a map ``π`` is its number of correct predictions under the training rule,
    ``argmax_t f(x)[π(t)] == y`` (top-1 among the *mapped* classes only; ties to
    the lowest target), counted on the first ``guard_samples`` samples of the pass
    (stored as logits in the statistics: ``guard_samples × num_source`` float32;
    the first samples of a shuffled epoch are a uniform subset of it). The
    frequency matrix still uses every sample.

    Args:
      num_source: the frozen model's number of outputs.
      num_target: the task's number of classes (``<= num_source``).
      guarded: keep the old map unless the new one scores at least as well.
      guard_samples: how many samples the guard scores both maps on.

    Until the first refit the state maps target ``t`` to source ``t``.
    """
    if not guarded:
        return _frequency_map("ilm", num_source, num_target, Refit.EVERY_EPOCH)
    check_class_counts("ilm", num_source, num_target, per_target=1)
    guard_samples = checking.integer(guard_samples, "guard_samples", who="ilm")
    counts_init, counts_update = counts_stats("ilm", num_source, num_target)

    def stats_init():
        return {
            **counts_init(),
            "logits": jnp.zeros((guard_samples, num_source), jnp.float32),
            "labels": jnp.zeros((guard_samples,), jnp.int32),
            "seen": jnp.zeros((), jnp.int32),
        }

    def stats_update(stats, source_logits, labels):
        return _store(counts_update(stats, source_logits, labels), source_logits, labels)

    def refit_from_stats(state, stats):
        old = check_omega("ilm.refit_from_stats", state, num_source, num_target)
        return {"omega": _guarded_refit(old, stats)}

    return statistical(
        init=lambda key: {"omega": first_classes(num_source, num_target)},
        apply=_apply("ilm", num_source, num_target),
        stats_init=stats_init,
        stats_update=stats_update,
        refit_from_stats=refit_from_stats,
        schedule=Refit.EVERY_EPOCH,
    )
