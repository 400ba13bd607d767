"""The candidate axis: K prompts, mappings or hyperparameters as one stacked theta.

Training K candidates is one vmapped step, not K runs: theta carries a leading
axis of size K while the frozen parameters and the batch are shared
(``jax.vmap(apply, in_axes=(0, None, None))``).

Example::

    >>> thetas = jr.candidates.init(program, jax.random.split(key, 16))
    >>> logits = jr.candidates.apply(program, thetas, model.params, x)  # (16, B, C)
    >>> best = jr.candidates.select(thetas, int(jnp.argmax(accuracies)))
    >>> scores = jr.candidates.ensemble(program, thetas, model.params, x)  # (B, C): all 16 at once
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxreprog.core import Reprogrammed
from jaxreprog.taxonomy import OutputAlignment, register

__all__ = ["apply", "count", "ensemble", "init", "select", "stack", "unstack"]

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


Combine = Literal["logits", "probs", "vote"]


@register(
    paper="Lester et al. 2021 (prompt ensembling)", alignment=OutputAlignment.RULE_BASED, kind="combinator"
)
def ensemble(
    program: Reprogrammed,
    theta: PyTree,
    frozen_params: PyTree,
    x: Any,
    key: jax.Array | None = None,
    *,
    how: Combine = "logits",
    weights: jax.Array | Sequence[float] | None = None,
) -> jax.Array:
    """Prompt ensembles: K trained prompts as one classifier, in one vmapped forward pass.

    Lester et al. EMNLP 2021 ("The Power of Scale for Parameter-Efficient Prompt Tuning", §6):
    K prompts tuned on one task share the frozen model, so one batched pass runs all of them,
    and their majority vote beats the average prompt; VPT (Jia et al. ECCV 2022) averages its
    prompts' logits. With ``z_k = program.apply(θ_k, frozen_params, x)`` and weights ``w_k``
    (default equal; e.g. the candidates' validation accuracies), normalised to sum to 1, the
    ``(B, C)`` scores are

    * ``"logits"``: ``Σ_k w_k z_k`` (logit averaging);
    * ``"probs"``: ``log Σ_k w_k softmax(z_k)``, the mixture's log-probabilities;
    * ``"vote"``: ``Σ_k w_k [argmax z_k = c] + ε·Σ_k w_k softmax(z_k)_c``, the (weighted)
      majority vote, ties broken by the mean probability (``ε = 1e-3 / K``, too small to
      change a majority).

    ``argmax(-1)`` of the result is the ensemble's prediction. Works under ``jax.jit``,
    ``jax.grad`` (``"vote"``'s gradient is its tie-break term's: the vote counts are piecewise
    constant) and ``jax.vmap`` (tests/test_transforms.py, with every registered method).

    A combinator, not a part (its registry record has ``kind="combinator"``): it runs the whole
    program once per candidate, each with its own prompt *and* its own alignment state (an ILM
    map refitted per candidate), then combines the K outputs over the candidate axis. No part
    sees that axis (a part acts inside one call of ``program.apply``; the candidate axis is the
    ``vmap`` around it), so an output part could not do this, and this function stays the one
    way to ensemble. The K prompts persist as a stacked artifact: ``jr.save(path, program,
    theta)``, and ``jr.load`` returns them stacked for this call (``how`` and ``weights`` are
    the call's; keep the weights in ``metadata=`` if they are not equal).

    Args:
      program: a :func:`jaxreprog.reprogram` program whose ``apply`` gives ``(B, C)`` logits.
      theta: K thetas stacked on a leading axis (:func:`init`, :func:`stack`,
        ``jr.train.fit(..., candidates=K)``).
      frozen_params, x, key: as for ``program.apply``, shared by the K candidates.
      how: ``"logits"``, ``"probs"`` or ``"vote"``.
      weights: ``(K,)`` non-negative, not all zero.

    Example::

        >>> thetas, history = jr.train.fit(program, model, train, candidates=8, ...)
        >>> scores = jr.candidates.ensemble(program, thetas, model.params, x, how="vote")
        >>> predicted = scores.argmax(-1)
    """
    if how not in ("logits", "probs", "vote"):
        raise ValueError(f"ensemble: how must be 'logits', 'probs' or 'vote', got {how!r}")
    k = count(theta)
    if weights is None:
        w = jnp.full((k,), 1.0 / k)
    else:
        w = jnp.asarray(weights, jnp.float32)
        if w.shape != (k,):
            raise ValueError(f"ensemble: weights must have shape ({k},) (one per candidate), got {w.shape}")
        if not isinstance(w, jax.core.Tracer) and (not bool(jnp.all(w >= 0)) or not float(w.sum()) > 0):
            raise ValueError("ensemble: weights must be non-negative and not all zero")
        w = w / w.sum()
    z = apply(program, theta, frozen_params, x, key)  # (K, B, C)
    if z.ndim != 3:
        raise ValueError(f"ensemble: the program must give (B, C) logits per candidate, got {z.shape[1:]}")
    if how == "logits":
        return jnp.einsum("k,kbc->bc", w, z)
    probs = jnp.einsum("k,kbc->bc", w, jax.nn.softmax(z, axis=-1))
    if how == "probs":
        return jnp.log(probs)
    votes = jnp.einsum("k,kbc->bc", w, jax.nn.one_hot(jnp.argmax(z, axis=-1), z.shape[-1], dtype=w.dtype))
    return votes + (1e-3 / k) * probs


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
