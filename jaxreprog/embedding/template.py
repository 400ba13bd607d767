"""A hand-written template with learnable slots: fixed anchor tokens and learned pseudo tokens.

P-tuning's original template (Liu et al. 2021, "GPT Understands, Too") is
``T = [P_0..P_i] x [P_{i+1}..P_m]`` with *anchor* tokens of the frozen vocabulary kept among
learned *pseudo* tokens; PTR (Han et al. 2021, "PTR: Prompt Tuning with Rules for Text
Classification") likewise mixes fixed rule tokens with learnable ones. The format is both
fixed and learnable (``Format.FIXED | Format.LEARNABLE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.checking import check
from jaxreprog.core import SiteHook
from jaxreprog.embedding.replacement import _lookup
from jaxreprog.embedding.soft_prompt import _token_spec
from jaxreprog.hooks import SiteSelection, insert, select
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["prompt_template"]


def _entries(tokens: Sequence[int | None], name: str) -> list[int | None]:
    out: list[int | None] = []
    for t in tokens:
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 0):
            raise ValueError(
                f"prompt_template: {name} must hold token ids (ints >= 0) and None for the slots, got {t!r}"
            )
        out.append(None if t is None else int(t))
    return out


@register(
    paper="Liu et al. 2021; Han et al. 2021 (PTR)",
    modality="text",
    format=Format.FIXED | Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.CONCATENATIVE,
)
def prompt_template(
    template: Sequence[int | None],
    *,
    suffix: Sequence[int | None] = (),
    where: Literal["prefix", "after_first"] = "prefix",
    init: Literal["uniform"] | np.ndarray | jax.Array = "uniform",
    scale: float = 0.5,
    sites: SiteSelection = "lookup",
) -> SiteHook:
    """A fixed template with learnable slots (P-tuning's template of anchor and pseudo tokens,
    Liu et al. 2021; PTR, Han et al. 2021):

        ``[e(x_0..x_n)] -> [T; e(x_0..x_n); S]``,  ``T_j = E[template_j]`` for a token id,
        ``T_j = θ_k`` for the ``k``-th slot (``None``); ``S`` likewise from ``suffix``,

    with ``E`` the frozen token-embedding table and ``θ ∈ R^{k×D}`` learned (``k`` = the number of
    ``None`` entries in ``template`` and ``suffix``, numbered in that order).

    It acts at the ``"lookup"`` site of the zoo's text models (:class:`~jaxreprog.hooks.Lookup`):
    the slot vectors become rows ``V..V+k-1`` after the frozen table (which arrives as the site's
    value, an argument, never closed over), and the template's ids, a slot's being its row, are
    inserted with :func:`~jaxreprog.hooks.insert` (``where``: ``"prefix"``, or ``"after_first"``
    the [CLS]/BOS token; ``suffix`` after the last real token). The fixed tokens' embeddings
    therefore come from the frozen table itself, the slots' from theta. Like a soft prompt's, the
    template's tokens (fixed ones included) are flagged as prompt tokens: sentence pooling skips
    them, and GPT-2's :func:`~jaxreprog.models.gpt2.reprogrammed_logits` drops their positions.
    The input's ids must lie in ``[0, V)`` (checked eagerly, and under ``jit`` by ``jr.checked``).

    With no slot it would be :func:`jaxreprog.context.instruction` (a fixed context; an error
    here). With slots equal to the embeddings of tokens ``u`` it computes what
    ``instruction`` with those tokens in the slots computes, up to the prompt flags (equal for
    a causal LM's last-token logits and for [CLS] pooling), and exactly what
    :func:`~jaxreprog.embedding.soft_prompt` computes with those vectors.

    ``theta = {"slots": (k, D)}``.

    Args:
      template: token ids of the frozen vocabulary and ``None`` for each learnable slot,
        placed before the input.
      suffix: the same, placed after the input's last real token (e.g. an answer cue).
      where: ``"prefix"`` (the template first) or ``"after_first"`` (after [CLS]/BOS).
      init: ``"uniform"`` (``U(-scale, scale)``, as :func:`~jaxreprog.embedding.soft_prompt`)
        or an array ``(k, D)`` of slot vectors.
      scale: the range of ``"uniform"``.
      sites: the site(s) whose :class:`~jaxreprog.hooks.Lookup` gets the template.

    Example::

        >>> # "[P] [P] Question: x [P] Answer:" with three learned slots
        >>> emb = jr.embedding.prompt_template([None, None, *ids("Question:")],
        ...                                    suffix=[None, *ids("Answer:")])
        >>> program = jr.reprogram(model, embedding=emb, output=jr.output.verbalizer(...))
    """
    prefix_entries, suffix_entries = _entries(template, "template"), _entries(suffix, "suffix")
    entries = prefix_entries + suffix_entries
    num_slots = sum(t is None for t in entries)
    if num_slots == 0:
        raise ValueError(
            "prompt_template: the template has no slot (None); a template of fixed tokens only is "
            "jr.context.instruction"
        )
    if where not in ("prefix", "after_first"):
        raise ValueError(f"prompt_template: where must be 'prefix' or 'after_first', got {where!r}")
    fixed_ids = [t for t in entries if t is not None]
    selector = select(sites)
    if isinstance(init, str):
        if init != "uniform":
            raise ValueError(f"prompt_template: init must be 'uniform' or a (k, D) array, got {init!r}")
    else:
        saved = jnp.asarray(init, jnp.float32)
        if saved.ndim != 2 or saved.shape[0] != num_slots:
            raise ValueError(f"prompt_template: init must be ({num_slots} slots, D), got shape {saved.shape}")

    def check_ids(vocab: int) -> None:
        if fixed_ids and max(fixed_ids) >= vocab:
            raise ValueError(
                f"prompt_template: the template's token ids must lie in the model's vocabulary [0, {vocab}), "
                f"got {max(fixed_ids)}"
            )

    def init_fn(key, spec):
        spec = _token_spec(spec, "prompt_template")
        check_ids(spec.vocab_size)
        d = spec.hidden_size
        if isinstance(init, str):
            return {"slots": jax.random.uniform(key, (num_slots, d), jnp.float32, -scale, scale)}
        if saved.shape[1] != d:
            raise ValueError(f"prompt_template: init has width {saved.shape[1]}; the model's is {d}")
        return {"slots": saved}

    def ids(entries: list[int | None], first: int, vocab: int) -> np.ndarray:
        """``entries`` with the slots numbered ``vocab + first, vocab + first + 1, ...``."""
        slot = iter(range(vocab + first, vocab + num_slots))
        return np.asarray([next(slot) if t is None else t for t in entries], np.int32)

    def apply(theta, site, value, spec):
        if not selector.matches(site):
            return value
        value = _lookup(site, value)
        vocab, d = value.table.shape
        check_ids(vocab)
        slots = theta["slots"]
        if slots.shape != (num_slots, d):
            raise ValueError(
                f"prompt_template: theta['slots'] must be ({num_slots}, {d}), got {slots.shape} "
                "(a candidate axis belongs outside: jax.vmap)"
            )
        bad = (value.ids < 0) | (value.ids >= vocab)
        check(
            ~bad,
            f"x['input_ids'] must be token ids in [0, {vocab}) (the vocabulary): got {{n}} outside it, "
            "e.g. {first}",
            n=jnp.sum(bad),
            first=value.ids.reshape(-1)[jnp.argmax(bad.reshape(-1))],
        )
        value = value._replace(table=jnp.concatenate([value.table, slots.astype(value.table.dtype)]))
        before = sum(t is None for t in prefix_entries)
        if prefix_entries:
            value = insert(value, ids(prefix_entries, 0, vocab), where)
        if suffix_entries:
            value = insert(value, ids(suffix_entries, before, vocab), "suffix")
        return value

    return SiteHook(init_fn, apply, sites=selector)
