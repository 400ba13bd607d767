"""Black-box (zeroth-order) reprogramming: BAR (Tsai, Chen & Ho, ICML 2020) and SPSA-GC
(BlackVIP, Oh et al. CVPR 2023).

When only the frozen model's outputs can be queried, the gradient of the loss
``L`` w.r.t. the prompt θ (d trainable numbers) is estimated from ``q`` random
directions.

BAR's one-sided randomised gradient-free estimate (:func:`zo_gradient`)::

    g = (b / q) Σ_j [(L(θ + μ u_j) − L(θ)) / μ] u_j

with ``u_j`` uniform on the unit sphere and ``b = d``, or ``u_j ~ N(0, I)`` and
``b = 1`` (Gaussian smoothing): ``q + 1`` loss evaluations per step.

SPSA-GC (:func:`spsa_gradient` + the momentum of ``make_step``): Spall's two-sided
simultaneous-perturbation estimate with ``Δ_j ∈ {−1, +1}^d`` (Rademacher), at a
look-ahead point, with its own momentum ``m`` (Nesterov's gradient correction)::

    ĝ_i     = (1 / q) Σ_j [(L(φ + c_i Δ_j) − L(φ − c_i Δ_j)) / (2 c_i)] Δ_j⁻¹,   φ = θ_i + β m_i
    m_{i+1} = β m_i − a_i ĝ_i
    θ_{i+1} = θ_i + m_{i+1}

with ``c_i = c / (i + 1)^γ`` and the gain ``a_i = a / (i + 1 + A)^α`` (:func:`spsa_gain`,
the optimiser's learning rate): ``2q`` evaluations for the estimate, plus one at θ_i for
the step's reported loss, accuracy and alignment statistics.

Each estimate's queries are one vmapped call. An estimate is a plain gradient pytree,
so any optax optimiser consumes it; :func:`jaxreprog.train.fit` uses it with
``gradient=ZerothOrder(...)`` and counts queries against a budget
(:attr:`ZerothOrder.evaluations` per example per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxreprog import checking

__all__ = [
    "LookAheadState",
    "ZerothOrder",
    "look_ahead_momentum",
    "spsa_gain",
    "spsa_gradient",
    "zo_gradient",
]

PyTree = Any

_DIRECTIONS = {"bar": ("sphere", "gaussian"), "spsa_gc": ("rademacher", "segmented")}


class ZerothOrder(NamedTuple):
    """Configuration of the black-box gradient estimate used by ``fit(gradient=...)``.

    Attributes:
      queries: ``q``, random directions per step.
      smoothing: ``μ`` (BAR) or ``c`` (SPSA-GC), the finite-difference step.
      directions: the direction law: BAR ``"sphere"`` (default, ``b = d``) or ``"gaussian"``
        (``b = 1``); SPSA-GC ``"rademacher"`` (default, the paper's ±1) or ``"segmented"``
        (sign × U[0.5, 1], what BlackVIP's released code samples).
      budget: the most black-box queries (examples sent to the model) training may
        spend; ``None`` for no limit. A step costs :attr:`evaluations` ``· batch``; a
        statistical alignment's forward-only mapping pass (before epoch 1; every epoch with
        ``refit_pass="fresh"``) one per training example, counted when it has run (it is
        never cut short). Training stops before a step would exceed the budget; a budget
        that leaves no room for the first step is an error.
      estimator: ``"bar"`` (one-sided, Tsai et al. 2020) or ``"spsa_gc"`` (two-sided SPSA
        with gradient correction, Oh et al. 2023).
      momentum: SPSA-GC's ``β`` in ``[0, 1)`` (default 0.9, BlackVIP's); BAR takes none
        (use the optimiser's momentum).
      smoothing_decay: ``γ`` in ``c_i = c / (i + 1)^γ``; default 0 for BAR, 0.1 for SPSA-GC
        (BlackVIP's configs use 0.1-0.2 with ``c`` = 0.005-0.02 and ``q`` = 5).
    """

    queries: int = 10
    smoothing: float = 0.005
    directions: str | None = None
    budget: int | None = None
    estimator: str = "bar"
    momentum: float | None = None
    smoothing_decay: float | None = None

    @property
    def evaluations(self) -> int:
        """Loss evaluations (queries per example) of one step: ``q + 1`` for BAR, ``2q + 1`` for SPSA-GC."""
        return (2 if self.estimator == "spsa_gc" else 1) * self.queries + 1

    def resolved(self) -> ZerothOrder:
        """This config with the estimator's defaults filled in for ``None`` fields."""
        gc = self.estimator == "spsa_gc"
        return self._replace(
            directions=self.directions or _DIRECTIONS.get(self.estimator, ("sphere",))[0],
            momentum=(0.9 if gc else 0.0) if self.momentum is None else self.momentum,
            smoothing_decay=(0.1 if gc else 0.0) if self.smoothing_decay is None else self.smoothing_decay,
        )


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def check_zeroth_order(config: ZerothOrder, who: str) -> None:
    """Raise a one-line error naming the first bad field of ``config``."""
    if config.estimator not in _DIRECTIONS:
        raise ValueError(
            f"{who}: ZerothOrder.estimator must be 'bar' or 'spsa_gc', got {config.estimator!r:.40}"
        )
    q, mu, budget = config.queries, config.smoothing, config.budget
    checking.integer(q, "ZerothOrder.queries", who=who)
    if not _number(mu) or mu <= 0:
        raise ValueError(f"{who}: ZerothOrder.smoothing must be a finite number > 0, got {mu!r:.40}")
    allowed = _DIRECTIONS[config.estimator]
    if config.directions is not None and config.directions not in allowed:
        raise ValueError(
            f"{who}: ZerothOrder.directions must be {' or '.join(map(repr, allowed))} for "
            f"estimator={config.estimator!r}, got {config.directions!r:.40}"
        )
    if config.momentum is not None:
        if config.estimator == "bar":
            raise ValueError(
                f"{who}: ZerothOrder.momentum is SPSA-GC's (estimator='spsa_gc'); BAR takes none "
                "(give the optimiser a momentum instead)"
            )
        if not _number(config.momentum) or not 0 <= config.momentum < 1:
            raise ValueError(
                f"{who}: ZerothOrder.momentum must be a number in [0, 1), got {config.momentum!r:.40}"
            )
    decay = config.smoothing_decay
    if decay is not None and (not _number(decay) or decay < 0):
        raise ValueError(
            f"{who}: ZerothOrder.smoothing_decay must be a finite number >= 0, got {decay!r:.40}"
        )
    if budget is not None:
        checking.integer(budget, "ZerothOrder.budget", who=who)
    if budget is not None and budget < config.evaluations:
        raise ValueError(
            f"{who}: ZerothOrder.budget={budget} is below one step: a step costs "
            f"{config.evaluations} queries per example "
            f"({'2q + 1' if config.estimator == 'spsa_gc' else 'q + 1'} with q={q})"
        )


def spsa_gain(a: float = 0.01, *, offset: float = 1.0, decay: float = 0.4) -> optax.Schedule:
    """SPSA's gain sequence ``a_i = a / (i + 1 + A)^α`` (Spall 1998) as an optax schedule.

    The defaults are BlackVIP's (``a`` = 0.01, ``A`` = 1, ``α`` = 0.4; Oh et al. CVPR 2023).
    ``fit`` trains SPSA-GC with ``optax.sgd`` on this gain (``a = learning_rate``) unless
    given an optimiser.
    """
    for name, value, ok, bound in (
        ("a", a, lambda v: v > 0, "> 0"),
        ("offset", offset, lambda v: v > -1, "> -1"),
        ("decay", decay, lambda v: v >= 0, ">= 0"),
    ):
        if not _number(value) or not ok(value):
            raise ValueError(f"spsa_gain: {name} must be a finite number {bound}, got {value!r:.40}")

    def schedule(count):
        return a / (jnp.asarray(count, jnp.float32) + 1.0 + offset) ** decay

    return schedule


class LookAheadState(NamedTuple):
    """The state of :func:`look_ahead_momentum`: the wrapped optimiser's, and ``m``."""

    inner: optax.OptState
    momentum: PyTree


def look_ahead_momentum(inner: optax.GradientTransformation, beta: float) -> optax.GradientTransformation:
    """SPSA-GC's momentum around any optimiser: ``m ← β m + inner(g)``; the update is ``m``.

    With ``inner = optax.sgd(a_i)`` this is ``m_{i+1} = β m_i − a_i ĝ_i``, ``θ_{i+1} = θ_i + m_{i+1}``;
    the step evaluates ``ĝ_i`` at the look-ahead point ``θ_i + β m_i`` (``state.momentum``).
    """

    def init(params):
        return LookAheadState(inner.init(params), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        step, inner_state = inner.update(updates, state.inner, params)
        m = jax.tree.map(lambda m, u: beta * m + u, state.momentum, step)
        return m, LookAheadState(inner_state, m)

    return optax.GradientTransformation(init, update)


def _flat(theta: PyTree, mask: PyTree | None, who: str):
    """The learnable leaves of ``theta`` as one vector, and the map back (masked leaves kept)."""
    leaves, treedef = jax.tree.flatten(theta)
    flags = [True] * len(leaves) if mask is None else jax.tree.leaves(mask)
    if len(flags) != len(leaves):
        raise ValueError(f"{who}: mask must have the same tree structure as theta")
    vector, unravel = ravel_pytree([leaf for leaf, f in zip(leaves, flags) if f])
    if vector.size == 0:
        raise ValueError(f"{who}: theta has no trainable leaves to perturb")

    def rebuild(v, base=leaves):
        it = iter(unravel(v))
        return jax.tree.unflatten(treedef, [next(it) if f else leaf for leaf, f in zip(base, flags)])

    def as_grad(v):  # zeros on the masked-out leaves
        return rebuild(v, [jnp.zeros_like(leaf) for leaf in leaves])

    def ravel(tree):
        return ravel_pytree([leaf for leaf, f in zip(jax.tree.leaves(tree), flags) if f])[0]

    return vector, rebuild, as_grad, ravel


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
    vector, rebuild, as_grad, _ = _flat(theta, mask, "zo_gradient")
    d = vector.size
    u = jax.random.normal(key, (queries, d), vector.dtype)
    if directions == "sphere":
        u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
        b = d
    else:
        b = 1.0
    loss, aux = loss_fn(theta)
    perturbed = jax.vmap(lambda uj: loss_fn(rebuild(vector + smoothing * uj))[0])(u)
    coefficients = (b / queries) * (perturbed - loss) / smoothing
    return (loss, aux), as_grad(coefficients @ u)


def spsa_gradient(
    loss_fn: Callable[[PyTree], tuple[jax.Array, Any]],
    theta: PyTree,
    key: jax.Array,
    *,
    queries: int = 5,
    smoothing: float | jax.Array = 0.01,
    directions: str = "rademacher",
    mask: PyTree | None = None,
    shift: PyTree | None = None,
) -> tuple[tuple[jax.Array, Any], PyTree]:
    """SPSA's two-sided estimate (Spall 1992), averaged over ``queries`` perturbations, as BlackVIP's
    SPSA-GC uses it (Oh et al. CVPR 2023, Eq. 3-4)::

        ĝ = (1 / q) Σ_j [(L(φ + c Δ_j) − L(φ − c Δ_j)) / (2c)] Δ_j⁻¹,   φ = θ + shift

    Args:
      loss_fn: ``loss_fn(theta) -> (loss, aux)``: only its values are used.
      theta: the iterate; ``loss`` and ``aux`` are returned at ``theta`` (one more evaluation).
      key: PRNG key for the perturbations ``Δ_j``.
      queries: ``q`` (``2q`` perturbed evaluations, one vmapped call).
      smoothing: ``c`` (may be a traced scalar: ``c_i`` of a decaying schedule).
      directions: ``"rademacher"`` (±1, the paper) or ``"segmented"`` (sign × U[0.5, 1],
        BlackVIP's released code).
      mask: pytree of bools like ``theta``; default all True. Masked leaves are never perturbed.
      shift: the gradient correction's look-ahead ``β m`` (a pytree like ``theta``): the
        estimate is taken at ``θ + shift``; ``None`` for plain SPSA.

    Returns:
      ``((loss, aux), grad)`` with ``loss``/``aux`` at ``theta`` and zeros on masked-out leaves.
    """
    if isinstance(smoothing, int | float):
        check_zeroth_order(ZerothOrder(queries, smoothing, directions, estimator="spsa_gc"), "spsa_gradient")
    else:
        checking.integer(queries, "queries", who="spsa_gradient")
        if directions not in _DIRECTIONS["spsa_gc"]:
            raise ValueError(
                f"spsa_gradient: directions must be 'rademacher' or 'segmented', got {directions!r:.40}"
            )
    vector, rebuild, as_grad, ravel = _flat(theta, mask, "spsa_gradient")
    point = vector if shift is None else vector + ravel(shift).astype(vector.dtype)
    sign_key, size_key = jax.random.split(key)
    delta = jax.random.rademacher(sign_key, (queries, vector.size), vector.dtype)
    if directions == "segmented":
        delta = delta * jax.random.uniform(size_key, delta.shape, vector.dtype, 0.5, 1.0)
    c = jnp.asarray(smoothing, vector.dtype)
    both = jnp.concatenate([point + c * delta, point - c * delta])
    values = jax.vmap(lambda v: loss_fn(rebuild(v))[0])(both)
    differences = (values[:queries] - values[queries:]) / (2 * c)
    grad = jnp.mean(differences[:, None] / delta, axis=0)
    return loss_fn(theta), as_grad(grad)
