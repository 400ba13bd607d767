"""Black-box (zeroth-order) reprogramming: BAR (Tsai, Chen & Ho, ICML 2020).

When only the frozen model's outputs can be queried, the gradient of the loss
``L`` w.r.t. the prompt θ (d trainable numbers) is estimated from ``q`` random
directions ``u_j``:

    g = (b / q) Σ_j [(L(θ + μ u_j) − L(θ)) / μ] u_j

with ``u_j`` uniform on the unit sphere and ``b = d`` (BAR's one-sided
randomised gradient-free estimate), or ``u_j ~ N(0, I)`` and ``b = 1`` (Gaussian
smoothing). The ``q`` queries are one vmapped call. The estimate is a plain
gradient pytree, so any optax optimiser consumes it; :func:`jaxreprog.train.fit`
uses it with ``gradient=ZerothOrder(...)`` and counts queries against a budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["ZerothOrder", "zo_gradient"]

PyTree = Any


class ZerothOrder(NamedTuple):
    """Configuration of the black-box gradient estimate used by ``fit(gradient=...)``.

    Attributes:
      queries: ``q``, random directions per step (each costs one batch of queries).
      smoothing: ``μ``, the finite-difference step.
      directions: ``"sphere"`` (BAR, ``b = d``) or ``"gaussian"`` (``b = 1``).
      budget: the most black-box queries (examples sent to the model) training may
        spend; ``None`` for no limit. A step costs ``(queries + 1) · batch``; a statistical
        alignment's forward-only mapping pass (before epoch 1; every epoch with
        ``refit_pass="fresh"``) one per training example, counted when it has run (it is
        never cut short). Training stops before a step would exceed the budget.
    """

    queries: int = 10
    smoothing: float = 0.005
    directions: str = "sphere"
    budget: int | None = None


def check_zeroth_order(config: ZerothOrder, who: str) -> None:
    """Raise a one-line error naming the first bad field of ``config``."""
    q, mu, directions, budget = config
    if isinstance(q, bool) or not isinstance(q, int) or q < 1:
        raise ValueError(f"{who}: ZerothOrder.queries must be an int >= 1, got {q!r:.40}")
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not 0 < mu < float("inf"):
        raise ValueError(f"{who}: ZerothOrder.smoothing must be a finite number > 0, got {mu!r:.40}")
    if directions not in ("sphere", "gaussian"):
        raise ValueError(
            f"{who}: ZerothOrder.directions must be 'sphere' or 'gaussian', got {directions!r:.40}"
        )
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"{who}: ZerothOrder.budget must be None or an int >= 1, got {budget!r:.40}")


def zo_gradient(
    loss_fn: Callable[[PyTree], tuple[jax.Array, Any]],
    theta: PyTree,
    key: jax.Array,
    *,
    queries: int = 10,
    smoothing: float = 0.005,
    directions: str = "sphere",
    mask: PyTree | None = None,
) -> tuple[tuple[jax.Array, Any], PyTree]:
    """BAR's gradient estimate of ``loss_fn`` at ``theta`` from ``queries`` directions.

    Args:
      loss_fn: ``loss_fn(theta) -> (loss, aux)``: only its values are used.
      theta: the point; only leaves where ``mask`` is True are perturbed.
      key: PRNG key for the directions.
      queries, smoothing, directions: ``q``, ``μ`` and the direction law (see module doc).
      mask: pytree of bools like ``theta`` (``Reprogrammed.trainable``); default all True.

    Returns:
      ``((loss, aux), grad)`` as ``jax.value_and_grad(loss_fn, has_aux=True)`` does,
      with zeros on masked-out leaves. ``loss`` and ``aux`` are at ``theta``.
    """
    check_zeroth_order(ZerothOrder(queries, smoothing, directions), "zo_gradient")
    leaves, treedef = jax.tree.flatten(theta)
    flags = [True] * len(leaves) if mask is None else jax.tree.leaves(mask)
    if len(flags) != len(leaves):
        raise ValueError("zo_gradient: mask must have the same tree structure as theta")
    learn = [leaf for leaf, f in zip(leaves, flags) if f]
    vector, unravel = ravel_pytree(learn)
    d = vector.size
    if d == 0:
        raise ValueError("zo_gradient: theta has no trainable leaves to perturb")

    def rebuild(v):
        it = iter(unravel(v))
        return jax.tree.unflatten(treedef, [next(it) if f else leaf for leaf, f in zip(leaves, flags)])

    u = jax.random.normal(key, (queries, d), vector.dtype)
    if directions == "sphere":
        u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
        b = d
    else:
        b = 1.0
    loss, aux = loss_fn(theta)
    perturbed = jax.vmap(lambda uj: loss_fn(rebuild(vector + smoothing * uj))[0])(u)
    coefficients = (b / queries) * (perturbed - loss) / smoothing
    grad = rebuild(coefficients @ u)
    grad = jax.tree.map(lambda g, f: g if f else jnp.zeros_like(g), grad, jax.tree.unflatten(treedef, flags))
    return (loss, aux), grad
