"""Token replacement: the target vocabulary's tokens become learned mixtures of the source's.

Neekhara et al. 2019, "Adversarial Reprogramming of Text Classification Neural Networks"
(EMNLP): ``e'(t) = softmax(θ_t / τ) E_src`` with ``θ ∈ R^{V_t×V_s}``, so a target token ``t``
enters the frozen model as a (relaxed) source token. It acts at a zoo text model's
``"lookup"`` site (:class:`~jaxreprog.hooks.Lookup`), whose table it replaces by the
``(V_t, D)`` one, so the target ids are looked up in it.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking
from jaxreprog.core import SiteHook
from jaxreprog.embedding.soft_prompt import _token_spec
from jaxreprog.hooks import Lookup, SiteSelection, select
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["token_replacement"]


@register(
    paper="Neekhara et al. 2019",
    modality="text",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.REPLACEMENT,
)
def token_replacement(
    num_target: int,
    *,
    temperature: float = 1.0,
    hard: bool = False,
    init: Literal["normal"] | np.ndarray | jax.Array = "normal",
    std: float = 1.0,
    sites: SiteSelection = "lookup",
) -> SiteHook:
    """Token replacement (Neekhara et al., EMNLP 2019): each target token is replaced by a learned
    mixture of the frozen model's token embeddings,

        ``e'(t) = softmax(θ_t / τ) E_src``,  ``θ ∈ R^{V_t×V_s}``, ``E_src`` the frozen ``(V_s, D)`` table,

    so inputs are token ids of the *target* vocabulary, ``[0, V_t)`` (checked: the model looks
    them up in the replaced table). With ``hard=True`` the forward pass uses the one-hot argmax
    of each row (a discrete source token per target token, the paper's goal) and the gradient
    the softmax's (straight-through). The paper trains θ through Gumbel-softmax samples; a site
    hook receives no random key, so here the relaxation is deterministic: anneal ``τ``, or use
    ``hard``. This is the paper's context-free vocabulary remapping: its context-based variant
    (θ read from a window of neighbouring target tokens) is not implemented.

    It acts at the ``"lookup"`` site of the zoo's text models (:class:`~jaxreprog.hooks.Lookup`),
    where the frozen table arrives as the site's value (an argument of ``apply``, never closed
    over). Only the input side changes: GPT-2's tied output head keeps the frozen table, so
    the outputs stay over the source vocabulary (map them with an alignment). ``theta =
    {"logits": θ}``; ``θ`` has ``V_t·V_s`` entries (for BERT's 30,522 tokens and a 2,000-word
    target vocabulary, 61M floats).

    Args:
      num_target: ``V_t``, the target vocabulary's size.
      temperature: ``τ > 0``.
      hard: straight-through one-hot rows (see above).
      init: ``"normal"`` (``θ ~ N(0, std²)``) or an array ``(V_t, V_s)`` of logits (e.g. a large
        multiple of a one-hot map, to start from chosen source tokens).
      std: the standard deviation of ``"normal"``.
      sites: the site(s) whose :class:`~jaxreprog.hooks.Lookup` gets the replaced table.

    Example::

        >>> emb = jr.embedding.token_replacement(num_target=2000, temperature=0.5)
        >>> program = jr.reprogram(model, embedding=emb, output=jr.output.linear(384, 4))
    """
    num_target = checking.integer(num_target, "num_target (V_t)", who="token_replacement")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"token_replacement: temperature τ must be a number > 0, got {temperature!r}")
    if not isinstance(std, int | float) or not std >= 0:
        raise ValueError(f"token_replacement: std must be a number >= 0, got {std!r}")
    selector = select(sites)
    if isinstance(init, str):
        if init != "normal":
            raise ValueError(f"token_replacement: init must be 'normal' or a (V_t, V_s) array, got {init!r}")
    else:
        saved = jnp.asarray(init, jnp.float32)
        if saved.ndim != 2 or saved.shape[0] != num_target:
            raise ValueError(
                f"token_replacement: init must be (V_t={num_target}, V_s) logits, got shape {saved.shape}"
            )

    def init_fn(key, spec):
        v_s = _token_spec(spec, "token_replacement").vocab_size
        if isinstance(init, str):
            return {"logits": std * jax.random.normal(key, (num_target, v_s), jnp.float32)}
        if saved.shape[1] != v_s:
            raise ValueError(
                f"token_replacement: init has {saved.shape[1]} columns; the model's vocabulary has {v_s}"
            )
        return {"logits": saved}

    def apply(theta, site, value, spec):
        if not selector.matches(site):
            return value
        return value._replace(table=replaced(theta["logits"], _lookup(site, value).table))

    def replaced(logits: jax.Array, table: jax.Array) -> jax.Array:
        if logits.shape != (num_target, table.shape[0]):
            raise ValueError(
                f"token_replacement: theta['logits'] must be (V_t={num_target}, V_s={table.shape[0]}), "
                f"got {logits.shape} (a candidate axis belongs outside: jax.vmap)"
            )
        weights = jax.nn.softmax(logits / temperature, axis=-1)
        if hard:
            one_hot = jax.nn.one_hot(jnp.argmax(weights, axis=-1), table.shape[0], dtype=weights.dtype)
            weights = one_hot + (weights - jax.lax.stop_gradient(weights))  # forward: one_hot exactly
        mixed = jnp.matmul(weights, table.astype(weights.dtype), precision=jax.lax.Precision.HIGHEST)
        return mixed.astype(table.dtype)

    return SiteHook(init_fn, apply, sites=selector)


def _lookup(site: str, value: Any) -> Lookup:
    if not isinstance(value, Lookup):
        raise TypeError(
            f"site {site!r} carries {type(value).__name__}, expected jaxreprog.hooks.Lookup (a zoo text "
            "model's 'lookup' site)"
        )
    return value
