"""Fixed context as a manipulation: token ids concatenated around the query.

Prompt instruction is ``I(x, c) = [c_prefix; x; c_suffix]`` with a fixed, hand-
written ``c`` (format fixed, location input, operator concatenative; the survey's
"prompt instruction"). :func:`insert` does the concatenation on padded token
batches — any padding side in, the chosen side out, attention masks rebuilt — so
it runs under ``jit`` and ``vmap`` (e.g. over K candidate prefixes, padded to one
length with :func:`stack`).

The fixed contexts (:func:`instruction`, :func:`demonstrations`,
:func:`chain_of_thought`) pass other keys of ``x`` through, but refuse per-token
ones besides ``input_ids``/``attention_mask`` (``(B, L, ...)``, e.g.
``token_type_ids``) with a ``ValueError``: the insertion moves the tokens, so they
would no longer line up. The zoo's text models read only those two keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking
from jaxreprog.core import InputTransform, TokenSpec
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["chain_of_thought", "demonstrations", "insert", "instruction", "stack"]

Array = jax.Array
Side = Literal["right", "left"]


def _pack(ids: Array, mask: Array, side: Side) -> tuple[Array, Array]:
    """Move the real tokens (mask 1) of each row to one side, keeping their order."""
    key = mask if side == "left" else 1 - mask  # stable sort: zeros first
    perm = jnp.argsort(key, axis=-1, stable=True)
    return jnp.take_along_axis(ids, perm, -1), jnp.take_along_axis(mask, perm, -1)


def _merge(x: Mapping[str, Array], tokens: Mapping[str, Array]) -> dict[str, Array]:
    """``x`` with its ``input_ids``/``attention_mask`` replaced by ``tokens`` (from :func:`insert`).

    Other keys pass through, but not per-token ones (``(B, L, ...)`` like ``input_ids``, e.g.
    ``token_type_ids``): the insertion moves tokens, so they would no longer line up. The zoo's
    text models read only ``input_ids`` and ``attention_mask``; drop such keys first.
    """
    shape = np.shape(x["input_ids"])
    stale = sorted(k for k, v in x.items() if k not in tokens and np.shape(v)[:2] == shape)
    if stale:
        raise ValueError(
            f"x has per-token keys {stale} besides input_ids/attention_mask; inserting a context moves the "
            "tokens, so they would no longer line up. Drop them (the zoo's models read only input_ids and "
            "attention_mask)"
        )
    return {**x, **tokens}


def insert(
    x: Mapping[str, Array],
    prefix: Array,
    prefix_mask: Array | None = None,
    suffix: Array | None = None,
    *,
    keep_first: int = 0,
    pad_id: int = 0,
    padding_side: Side = "right",
) -> dict[str, Array]:
    """``[x[:keep_first]; prefix; x[keep_first:]; suffix]`` per row, re-padded.

    Args:
      x: ``{"input_ids", "attention_mask"}``, int ``(B, L)``, any padding side.
      prefix: int ``(P,)`` token ids.
      prefix_mask: ``(P,)`` 0/1, for candidate prefixes padded to one length.
      suffix: int ``(S,)`` ids placed right after each row's last real token
        (e.g. an answer cue "Answer:"), wherever the padding is.
      keep_first: an int >= 0, the real tokens kept in front of the prefix
        (``1`` keeps a [CLS]/BOS first).
      pad_id: the id written at padded positions.
      padding_side: where the output's padding goes.

    Returns ``{"input_ids", "attention_mask"}`` of length ``L + P + S``.
    """
    ids, mask = jnp.asarray(x["input_ids"]), jnp.asarray(x["attention_mask"]).astype(jnp.int32)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"x['input_ids'] and x['attention_mask'] must be (batch, length) of one shape, "
            f"got {ids.shape} and {mask.shape}"
        )
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    prefix = jnp.asarray(prefix, ids.dtype)
    pmask = jnp.ones(prefix.shape, jnp.int32) if prefix_mask is None else jnp.asarray(prefix_mask, jnp.int32)
    if prefix.ndim != 1 or pmask.shape != prefix.shape:
        raise ValueError(f"prefix and prefix_mask must be (P,), got {prefix.shape} and {pmask.shape}")
    suffix = jnp.zeros((0,), ids.dtype) if suffix is None else jnp.asarray(suffix, ids.dtype)
    if suffix.ndim != 1:
        raise ValueError(f"suffix must be (S,) token ids, got shape {suffix.shape}")
    keep_first = checking.integer(keep_first, "keep_first", who="insert", minimum=0)
    b = ids.shape[0]
    ids, mask = _pack(ids, mask, "right")
    pieces = [
        (ids[:, :keep_first], mask[:, :keep_first]),
        (jnp.broadcast_to(prefix, (b, *prefix.shape)), jnp.broadcast_to(pmask, (b, *pmask.shape))),
        (ids[:, keep_first:], mask[:, keep_first:]),
    ]
    out_ids = jnp.concatenate([p[0] for p in pieces], -1)
    out_mask = jnp.concatenate([p[1] for p in pieces], -1)
    out_ids, out_mask = _pack(out_ids, out_mask, "right")
    if suffix.shape[0]:
        # Right-packed: row r's real tokens end at n_r; write the suffix at n_r.. n_r + S.
        n = out_mask.sum(-1, keepdims=True)
        out_ids = jnp.concatenate([out_ids, jnp.full((b, suffix.shape[0]), pad_id, ids.dtype)], -1)
        out_mask = jnp.concatenate([out_mask, jnp.zeros((b, suffix.shape[0]), jnp.int32)], -1)
        pos = jnp.arange(out_ids.shape[1])[None, :] - n
        in_suffix = (pos >= 0) & (pos < suffix.shape[0])
        out_ids = jnp.where(in_suffix, suffix[jnp.clip(pos, 0, suffix.shape[0] - 1)], out_ids)
        out_mask = jnp.where(in_suffix, 1, out_mask)
    out_ids, out_mask = _pack(out_ids, out_mask, padding_side)
    return {"input_ids": jnp.where(out_mask == 1, out_ids, pad_id), "attention_mask": out_mask}


def stack(prefixes: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Array, Array]:
    """K candidate prefixes of different lengths -> ``(ids (K, P), mask (K, P))``
    for one vmapped call over candidates (``jax.vmap`` over :func:`insert`'s
    ``prefix`` and ``prefix_mask``)."""
    if not prefixes:
        raise ValueError("stack: need at least one prefix")
    p = max(len(ids) for ids in prefixes)
    ids = np.full((len(prefixes), p), pad_id, np.int32)
    mask = np.zeros((len(prefixes), p), np.int32)
    for i, row in enumerate(prefixes):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return jnp.asarray(ids), jnp.asarray(mask)


def _fixed_context(
    prefix: Sequence[int], suffix: Sequence[int], keep_first: int, padding_side: Side
) -> InputTransform:
    prefix_np = np.asarray(prefix, np.int32).reshape(-1)
    suffix_np = np.asarray(suffix, np.int32).reshape(-1)
    if prefix_np.size + suffix_np.size == 0:
        raise ValueError("a fixed context needs a non-empty prefix or suffix")

    def init(key, spec):
        del key, spec
        return ()

    def apply(theta, x, spec, *, key=None):
        del theta, key
        if not isinstance(spec, TokenSpec):
            raise TypeError(
                f"context manipulations need a model with a jr.TokenSpec, got {type(spec).__name__}"
            )
        if not isinstance(x, Mapping) or not {"input_ids", "attention_mask"} <= set(x):
            raise ValueError("x must be a dict with 'input_ids' and 'attention_mask' (see jr.data.tokenize)")
        length = x["input_ids"].shape[-1] + prefix_np.size + suffix_np.size
        if length > spec.max_length:
            raise ValueError(
                f"context makes the sequence {length} tokens > the model's max_length={spec.max_length}; "
                "shorten the context or pad the batch to fewer tokens"
            )
        out = insert(
            x,
            prefix_np,
            None,
            suffix_np,
            keep_first=keep_first,
            pad_id=spec.pad_id,
            padding_side=padding_side,
        )
        return _merge(x, out)

    return InputTransform(init, apply, trainable=False)


@register(
    paper="Mishra et al. 2022; Wei et al. 2022 (FLAN)",
    modality="text",
    format=Format.FIXED,
    location=Location.INPUT,
    operator=Operator.CONCATENATIVE,
)
def instruction(
    ids: Sequence[int], *, suffix: Sequence[int] = (), keep_first: int = 1, padding_side: Side = "right"
) -> InputTransform:
    """A fixed, hand-written instruction placed before the query.

    ``x -> [x_0; instruction; x_1..n; suffix]`` with ``keep_first=1`` keeping the
    model's [CLS]/BOS token first. ``ids`` come from :func:`jaxreprog.context.encode`
    or a tokenizer.
    """
    return _fixed_context(ids, suffix, keep_first, padding_side)


@register(
    paper="Brown et al. 2020",
    modality="text",
    format=Format.FIXED,
    location=Location.INPUT,
    operator=Operator.CONCATENATIVE,
)
def demonstrations(
    ids: Sequence[int], *, suffix: Sequence[int] = (), keep_first: int = 1, padding_side: Side = "right"
) -> InputTransform:
    """k input–answer demonstrations (rendered by a :class:`Template`) before the query.

    Choose them with :mod:`jaxreprog.context.select` (random, k-NN, balanced).
    """
    return _fixed_context(ids, suffix, keep_first, padding_side)


@register(
    paper="Wei et al. 2022",
    modality="text",
    format=Format.FIXED,
    location=Location.INPUT,
    operator=Operator.CONCATENATIVE,
)
def chain_of_thought(
    ids: Sequence[int], *, suffix: Sequence[int] = (), keep_first: int = 1, padding_side: Side = "right"
) -> InputTransform:
    """Demonstrations with worked rationales ("... so the answer is X") before the
    query; parse the generated answer with :func:`jaxreprog.context.extract`."""
    return _fixed_context(ids, suffix, keep_first, padding_side)
