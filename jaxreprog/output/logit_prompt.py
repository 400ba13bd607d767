"""An output-space prompt: a learned shift of the frozen model's logits, before any label mapping.

``y_T = O(f(x) + δ)``, ``δ ∈ R^{num_source}`` learned by gradient (zero-initialised), ``O`` any
other alignment. The survey's taxonomy has a cell for it (format learnable, location output,
operator additive) that no method of its table fills; this is the plainest member of that cell.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import IDENTITY, Alignment, trainable_mask
from jaxreprog.output._checks import check_logits
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["logit_prompt"]


@register(
    paper="cf. Zhao et al. 2021",
    format=Format.LEARNABLE,
    location=Location.OUTPUT,
    operator=Operator.ADDITIVE,
)
def logit_prompt(num_source: int, inner: Alignment | None = None) -> Alignment:
    """A learned prompt in the frozen model's output space: ``y_T = O(f(x) + δ)``.

    ``δ ∈ R^{num_source}`` is added to the source logits and learned by gradient with the rest
    of the program; it starts at zero, so an untrained program is ``inner`` alone. ``inner``
    (default: the identity) maps the shifted logits to the target task; its own state learns,
    or refits, as it would alone.

    What it is, honestly: a per-class bias on the frozen model's outputs, the additive operator
    applied at the output location. It is related to, but not, contextual calibration (Zhao et
    al., "Calibrate Before Use", ICML 2021), which rescales an LLM's label probabilities with
    ``W p + b`` (``W = diag(p_cf)^{-1}``, ``b = 0``) estimated from a content-free input rather
    than learned; with a linear ``inner`` the shift folds into its bias (``(f + δ) W + b``), so
    it adds something only before a non-linear or statistical map (``ilm``, ``blm``,
    ``verbalizer``, where it reweighs the source classes the map reads).

    Statistics: a statistical ``inner`` refits on the *shifted* logits (``stats_logits`` gives
    ``f(x) + δ`` to its ``stats_update``), so it maps what it is fed; ``schedule`` is the
    inner's. State ``{"delta": (num_source,), "inner": inner's state}``; ``trainable``: ``delta``,
    and the inner's own flags for its state. Tags: learnable · output · additive, and the
    inner's alignment.

    Args:
      num_source: the frozen model's number of outputs.
      inner: the alignment that maps the shifted logits (any :class:`jaxreprog.Alignment`).

    Example::

        >>> align = jr.output.logit_prompt(1000, jr.output.ilm(1000, 10))
        >>> program = jr.reprogram(model, input=jr.input.pad(28), output=align)
    """
    num_source = checking.integer(num_source, "num_source", who="logit_prompt")
    inner = IDENTITY if inner is None else inner
    if not isinstance(inner, Alignment):
        raise TypeError(f"logit_prompt: inner must be a jr.Alignment, got {type(inner).__name__}")

    def init(key):
        return {"delta": jnp.zeros((num_source,), jnp.float32), "inner": inner.init(key)}

    def shifted(state, source_logits):
        check_logits("logit_prompt.apply", source_logits, num_source)
        if not isinstance(state, dict) or set(state) != {"delta", "inner"}:
            raise ValueError("logit_prompt: state must be a dict with 'delta' and 'inner' (from init)")
        if jnp.shape(state["delta"]) != (num_source,):
            raise ValueError(
                f"logit_prompt: state['delta'] must have shape ({num_source},), got "
                f"{jnp.shape(state['delta'])} (a candidate axis belongs outside: jax.vmap)"
            )
        return source_logits + state["delta"]

    def apply(state, source_logits):
        return inner.apply(state["inner"], shifted(state, source_logits))

    def stats_logits(state, source_logits):
        seen = shifted(state, source_logits)
        return seen if inner.stats_logits is None else inner.stats_logits(state["inner"], seen)

    def refit_from_stats(state, stats):
        return {**state, "inner": inner.refit_from_stats(state["inner"], stats)}

    def trainable(state):
        return {"delta": True, "inner": trainable_mask(inner, state["inner"])}

    return Alignment(
        init,
        apply,
        inner.tags,
        trainable,
        inner.stats_init,
        inner.stats_update,
        refit_from_stats,
        inner.schedule,
        None,
        stats_logits,
    )
