"""Choosing a fixed context on validation data: K candidate prefixes in one vmapped call.

Prompt instruction has nothing to train, but it has choices: which instruction,
which demonstrations, in which order. Gao et al. 2021 (LM-BFF) and Zhou et al.
2023 (APE) pick the candidate with the best validation score,

    ĉ = argmax_k  (1/N) Σ_i 1[argmax O(f(insert(x_i, c_k))) = y_i].

Here the K candidates are token prefixes padded to one length
(:func:`jaxreprog.context.stack`); every batch costs one call of
``jax.vmap(..., in_axes=(0, 0, None, None, None))`` — prefixes mapped, frozen
parameters, alignment state and batch shared — instead of K calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxreprog.context.prompt import Side, _merge, insert
from jaxreprog.core import Alignment, FrozenModel, TokenSpec

__all__ = ["Choice", "score_candidates", "select_prefix"]

Array = jax.Array
Batch = tuple[Mapping[str, Array], Array]
Align = Callable[[Any, Array], Array]


class Choice(NamedTuple):
    """The chosen candidate and every candidate's validation accuracy ``(K,)``."""

    index: int
    accuracy: Array


def _identity(state: Any, outputs: Array) -> Array:
    del state
    return outputs


def _batches(data: Batch | Iterable[Batch]) -> Iterable[Batch]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Mapping):
        return (data,)
    return data


class _ByIdentity:
    """A function as a static ``jit`` argument, hashed by identity (so any callable serves)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __hash__(self) -> int:
        return id(self.fn)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.fn is self.fn


@functools.partial(
    jax.jit, static_argnames=("model_apply", "apply_align", "keep_first", "pad_id", "padding_side")
)
def _counts(
    prefixes,
    pmask,
    params,
    state,
    batch,
    suffix,
    *,
    model_apply,
    apply_align,
    keep_first,
    pad_id,
    padding_side,
):
    """Correct predictions of each of K prefixes on one batch: ``(K,)``. One jit at module level,
    the functions static: repeated calls with the same model, alignment and shapes reuse the
    compiled program (a ``jax.jit`` made inside :func:`score_candidates` compiled on every call)."""

    def correct(prefix, pmask):
        x, y = batch
        xi = insert(x, prefix, pmask, suffix, keep_first=keep_first, pad_id=pad_id, padding_side=padding_side)
        scores = apply_align(state, model_apply(params, _merge(x, xi)))
        if scores.shape != (*y.shape, scores.shape[-1]):
            raise ValueError(
                f"align must return (B, C) class scores for labels {y.shape}, got {scores.shape}"
            )
        return jnp.sum(jnp.argmax(scores, -1) == y)

    return jax.vmap(correct)(prefixes, pmask)


def score_candidates(
    model: FrozenModel,
    params: Any,
    prefixes: Array,
    prefix_mask: Array | None,
    data: Batch | Iterable[Batch],
    *,
    align: Alignment | Align | None = None,
    align_state: Any = (),
    suffix: Array | None = None,
    keep_first: int = 1,
    padding_side: Side = "right",
) -> Array:
    """Accuracy of each of K candidate prefixes on ``data``: ``(K,)`` float32.

    Args:
      model: a frozen token model (``model.spec`` a :class:`~jaxreprog.TokenSpec`).
      params: its frozen parameters (an argument of the compiled call, never a constant).
      prefixes: int ``(K, P)`` candidate prefixes; ``prefix_mask`` ``(K, P)`` 0/1 marks
        their real tokens (both from :func:`jaxreprog.context.stack`), ``None`` = all real.
      data: one batch ``(x, y)`` or an iterable of them; ``x`` tokenized
        ``{"input_ids", "attention_mask"}`` ``(B, L)``, ``y`` int ``(B,)``. Other
        per-token keys of ``x`` (e.g. ``token_type_ids``) raise ``ValueError``: the
        insertion moves the tokens, so they would no longer line up.
      align: the output alignment, ``align(state, model_outputs) -> (B, C)`` class
        scores: a :class:`~jaxreprog.Alignment` (its ``apply``; e.g.
        :func:`jaxreprog.output.verbalizer` for a causal LM's next-token logits) or a
        function (e.g. ``lambda d, e: description_logits(e, d)`` for an encoder);
        ``None`` = the identity. ``align_state`` is its state, shared by candidates.
      suffix, keep_first, padding_side: as :func:`jaxreprog.context.insert`.

    Calls with the same ``model.apply`` and ``align`` (the same function object: a new
    lambda per call compiles again) and the same shapes reuse one compiled program.
    """
    spec = model.spec
    if not isinstance(spec, TokenSpec):
        raise TypeError(f"score_candidates needs a token model (jr.TokenSpec), got {type(spec).__name__}")
    prefixes = jnp.asarray(prefixes, jnp.int32)
    if prefixes.ndim != 2:
        raise ValueError(f"prefixes must be (K, P) token ids (see jr.context.stack), got {prefixes.shape}")
    mask = jnp.ones_like(prefixes) if prefix_mask is None else jnp.asarray(prefix_mask, jnp.int32)
    if mask.shape != prefixes.shape:
        raise ValueError(f"prefix_mask must have the shape of prefixes {prefixes.shape}, got {mask.shape}")
    apply_align = _identity if align is None else align.apply if isinstance(align, Alignment) else align
    suffix = None if suffix is None else jnp.asarray(suffix, jnp.int32)
    extra = prefixes.shape[1] + (0 if suffix is None else len(suffix))
    counts_of = functools.partial(
        _counts,
        model_apply=_ByIdentity(model.apply),
        apply_align=_ByIdentity(apply_align),
        keep_first=keep_first,
        pad_id=spec.pad_id,
        padding_side=padding_side,
    )
    total, n = jnp.zeros(prefixes.shape[0], jnp.int32), 0
    for x, y in _batches(data):
        x = {k: jnp.asarray(v) for k, v in x.items()}
        y = jnp.asarray(y, jnp.int32)
        length = x["input_ids"].shape[-1] + extra
        if length > spec.max_length:
            raise ValueError(
                f"a candidate makes the sequence {length} tokens > the model's max_length={spec.max_length}; "
                "shorten the candidates or pad the batch to fewer tokens"
            )
        if y.shape != x["input_ids"].shape[:1]:
            raise ValueError(f"y must be (B,) = {x['input_ids'].shape[:1]}, got {y.shape}")
        total = total + counts_of(prefixes, mask, params, align_state, (x, y), suffix)
        n += y.shape[0]
    if n == 0:
        raise ValueError("score_candidates: data has no examples")
    return total / n


def select_prefix(
    model: FrozenModel,
    params: Any,
    prefixes: Array,
    prefix_mask: Array | None,
    data: Batch | Iterable[Batch],
    **kwargs: Any,
) -> Choice:
    """The candidate with the best accuracy on ``data`` (validation; ties: the lowest index).

    Arguments as :func:`score_candidates`. Example::

        >>> ids, mask = jr.context.stack([tok.encode(t, add_special_tokens=False).ids for t in texts])
        >>> choice = jr.context.select_prefix(model, model.params, ids, mask, (x_val, y_val),
        ...                                   align=lambda d, e: jr.context.description_logits(e, d),
        ...                                   align_state=description_embeddings)
        >>> best = texts[choice.index]
    """
    accuracy = score_candidates(model, params, prefixes, prefix_mask, data, **kwargs)
    return Choice(int(jnp.argmax(accuracy)), accuracy)
