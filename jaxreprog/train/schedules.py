"""Learning-rate schedules and per-candidate hyperparameters.

The visual-reprogramming standard (ILM-VP, Chen et al. CVPR 2023; SMM, Cai et al.
ICML 2024): Adam at ``lr = 0.01`` for ``E`` epochs, multiplied by 0.1 at 50% and
72% of training (epochs 100 and 144 of 200). Here the milestones are fractions of
the ``T`` optimiser *steps*:

    lr_t = lr · 0.1^{[t ≥ ⌊0.5 T⌋] + [t ≥ ⌊0.72 T⌋]}

The references decay per epoch (``MultiStepLR([⌊0.5 E⌋, ⌊0.72 E⌋])``); the two agree
when ``0.5 E`` and ``0.72 E`` are whole (E = 200, 100, 50), and otherwise differ by
less than an epoch (E = 10: the second decay after 7.2 epochs here, after 7 there).

:func:`vr_adam` builds it with the base ``learning_rate`` injected as a
hyperparameter (``optax.inject_hyperparams``), so a stacked optimiser state can
carry a different learning rate per candidate (:func:`set_hyperparams`) while the
multistep factor stays shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["hyperparams", "set_hyperparams", "vr_adam", "vr_multistep"]

PyTree = Any


def vr_multistep(
    init_value: float,
    total_steps: int,
    milestones: Sequence[float] = (0.5, 0.72),
    factor: float = 0.1,
) -> optax.Schedule:
    """``init_value`` times ``factor`` at each milestone (fractions of ``total_steps``)."""
    if total_steps <= 0:
        raise ValueError(f"vr_multistep: total_steps must be positive, got {total_steps}")
    if any(not 0 < m < 1 for m in milestones):
        raise ValueError(f"vr_multistep: milestones must be fractions in (0, 1), got {tuple(milestones)}")
    boundaries: dict[int, float] = {}
    for m in milestones:
        b = int(m * total_steps)
        boundaries[b] = boundaries.get(b, 1.0) * factor
    return optax.piecewise_constant_schedule(init_value, boundaries)


def vr_adam(
    learning_rate: float = 1e-2,
    total_steps: int | None = None,
    milestones: Sequence[float] = (0.5, 0.72),
    factor: float = 0.1,
) -> optax.GradientTransformation:
    """Adam with the VR multistep schedule; ``learning_rate`` is an injected hyperparameter.

    Update: ``u_t = -learning_rate · s(t) · adam(g)_t`` with ``s`` the multistep factor
    (:func:`vr_multistep` with ``init_value=1``); without ``total_steps``, ``s = 1``.
    """
    parts = [
        optax.scale_by_adam(),
        optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=learning_rate),
    ]
    if total_steps is not None:  # injected too, so the state holds the current factor (history's "lr")
        schedule = vr_multistep(1.0, total_steps, milestones, factor)
        parts.append(optax.inject_hyperparams(optax.scale)(step_size=schedule))
    return optax.chain(*parts)


def hyperparams(opt_state: PyTree, name: str) -> Any:
    """The injected hyperparameter ``name`` in ``opt_state`` (``None`` when absent)."""

    def is_array(_, value):  # a scheduled hyperparameter also names its schedule's state
        return isinstance(value, jax.Array)

    try:
        return optax.tree_utils.tree_get(opt_state, name, filtering=is_array)
    except KeyError:
        return None


def set_hyperparams(opt_state: PyTree, values: Mapping[str, Any]) -> PyTree:
    """Replace injected hyperparameters (``optax.inject_hyperparams``) in ``opt_state``.

    ``values[name]`` may be a scalar, or an array of shape ``(K,)`` for a stacked
    (per-candidate) state. Raises a clear error when the optimiser does not inject
    ``name``.
    """
    for name in values:
        if hyperparams(opt_state, name) is None:
            raise ValueError(
                f"the optimiser has no injected hyperparameter {name!r}; build it with "
                f"optax.inject_hyperparams (e.g. jr.train.vr_adam) to vary it per candidate"
            )
    current = {name: optax.tree_utils.tree_get(opt_state, name) for name in values}
    new = {
        name: jnp.broadcast_to(jnp.asarray(v, jnp.result_type(current[name])), jnp.shape(current[name]))
        for name, v in values.items()
    }
    return optax.tree_utils.tree_set(opt_state, **new)
