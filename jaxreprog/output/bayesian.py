"""Bayesian-guided label mapping, BLM and BLM+ (Cai et al., NeurIPS 2024).

A real-valued many-to-many map estimated from the joint distribution of source
predictions and target labels:

    ω[s, t] = d[s, t] / (Σ_t' d[s, t'] + λ)        (Laplace smoothing λ = 1)
    ω[:, t] ← ω[:, t] / Σ_s ω[s, t]                 (each column sums to 1)
    y_T = f(x) @ ω

BLM's ``d`` is the frequency matrix (top-1 counts over all source classes);
BLM+'s ``d[s, t]`` sums, over samples of class ``t``, the softmax probability of
``s`` when ``s`` is among the sample's top-k. As in the reference implementation
(tmlr-group/BayesianLM), ω multiplies the source *logits*, not probabilities.
Refitted every epoch. A target class with no mass at all (no samples yet) gets
the uniform column ``1 / num_source``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import Alignment, Refit
from jaxreprog.output._alignment import check_omega, counts_stats, first_classes, statistical
from jaxreprog.output._checks import check_batch, check_class_counts, check_logits
from jaxreprog.taxonomy import OutputAlignment, register

__all__ = ["bayesian_weights", "blm", "blm_plus", "top_k_probabilities"]

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def bayesian_weights(d: Array, laplace: float = 1.0) -> Array:
    """BLM's ω from a (soft) frequency matrix ``d`` ``(num_source, num_target)``.

    ``ω[s, t] = d[s, t] / (Σ_t' d[s, t'] + λ)``, then each column divided by its
    sum. A row with ``Σ_t' d + λ = 0`` contributes zeros; a column with zero sum is
    set to ``1 / num_source`` (the target logit is then the mean source logit).
    """
    d = d.astype(jnp.float32)
    row = jnp.sum(d, axis=1, keepdims=True) + laplace
    omega = jnp.where(row > 0, d / jnp.where(row > 0, row, 1.0), 0.0)
    col = jnp.sum(omega, axis=0, keepdims=True)
    return jnp.where(col > 0, omega / jnp.where(col > 0, col, 1.0), 1.0 / d.shape[0])


@functools.partial(jax.jit, static_argnames=("num_target", "k"))
def top_k_probabilities(source_logits: Array, labels: Array, num_target: int, k: int) -> Array:
    """BLM+'s ``d`` of one batch: per sample the top-``k`` softmax probabilities (ties: lowest
    source), the rest zeroed, summed per label; ``(num_source, num_target)`` float32.
    Labels outside ``[0, num_target)`` are dropped."""
    p = jax.nn.softmax(source_logits.astype(jnp.float32), axis=-1)
    top, index = jax.lax.top_k(p, k)
    kept = jnp.zeros_like(p).at[jnp.arange(p.shape[0])[:, None], index].set(top)
    onehot = jax.nn.one_hot(labels, num_target, dtype=jnp.float32)  # out of range: a zero row
    return jnp.matmul(kept.T, onehot, precision=_HIGHEST)


@jax.jit
def _weighted(source_logits: Array, omega: Array) -> Array:
    return jnp.matmul(source_logits, omega, precision=_HIGHEST)


def _bayesian(where: str, num_source: int, num_target: int, laplace: float, stats_init, stats_update):
    if not laplace >= 0:
        raise ValueError(f"{where}: laplace must be >= 0, got {laplace!r}")

    def apply(state, source_logits):
        omega = check_omega(f"{where}.apply", state, num_source, num_target)
        check_logits(f"{where}.apply", source_logits, num_source)
        return _weighted(source_logits, omega)

    def refit_from_stats(state, stats):
        check_omega(f"{where}.refit_from_stats", state, num_source, num_target)
        return {"omega": bayesian_weights(stats["counts"], laplace)}

    return statistical(
        init=lambda key: {"omega": first_classes(num_source, num_target)},
        apply=apply,
        stats_init=stats_init,
        stats_update=stats_update,
        refit_from_stats=refit_from_stats,
        schedule=Refit.EVERY_EPOCH,
    )


@register(paper="Cai et al. 2024", alignment=OutputAlignment.STATISTICAL)
def blm(num_source: int, num_target: int, *, laplace: float = 1.0) -> Alignment:
    """Bayesian-guided label mapping: ``y_T = f(x) @ ω`` with ω from the frequency matrix.

    ``ω[s, t] = d[s, t] / (Σ_t' d[s, t'] + λ)``, columns normalised to sum 1
    (:func:`bayesian_weights`); ``d[s, t]`` = #samples of class ``t`` whose top-1
    source class is ``s`` (Cai et al., NeurIPS 2024). ``schedule = EVERY_EPOCH``.
    The product runs at ``Precision.HIGHEST``. Until the first refit the state
    maps target ``t`` to source ``t``.

    Args:
      num_source: the frozen model's number of outputs.
      num_target: the task's number of classes.
      laplace: the smoothing λ (the reference uses 1).
    """
    check_class_counts("blm", num_source, num_target)
    stats_init, stats_update = counts_stats("blm", num_source, num_target)
    return _bayesian("blm", num_source, num_target, laplace, stats_init, stats_update)


@register(paper="Cai et al. 2024", alignment=OutputAlignment.STATISTICAL)
def blm_plus(num_source: int, num_target: int, *, k: int | None = None, laplace: float = 1.0) -> Alignment:
    """BLM+: BLM with ``d`` aggregated from each sample's top-k softmax probabilities.

    Per sample, ``p = softmax(f(x))``; keep the ``k`` largest entries (ties: lowest
    source index), zero the rest, add the result to column ``y`` of ``d``; then
    ω as in :func:`blm`. ``k = max(1, ⌊0.15 · num_target⌋)`` by default: the
    reference sets ``k = int(0.15 · #target classes)`` (its ``topk_ratio``), which
    is 0 below 7 classes, hence the floor at 1; at most ``num_source``.

    Args:
      num_source: the frozen model's number of outputs.
      num_target: the task's number of classes.
      k: how many source probabilities each sample contributes (``1..num_source``).
      laplace: the smoothing λ (the reference configuration uses 1).
    """
    check_class_counts("blm_plus", num_source, num_target)
    k = min(num_source, max(1, int(0.15 * num_target))) if k is None else k
    k = checking.integer(k, "k (top source classes per target)", who="blm_plus", maximum=num_source)

    def stats_init():
        return {"counts": jnp.zeros((num_source, num_target), jnp.float32)}

    def stats_update(stats, source_logits, labels):
        check_batch("blm_plus.stats_update", source_logits, labels, num_source, num_target)
        return {
            **stats,
            "counts": stats["counts"] + top_k_probabilities(source_logits, labels, num_target, k),
        }

    return _bayesian("blm_plus", num_source, num_target, laplace, stats_init, stats_update)
