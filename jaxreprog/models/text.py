"""Shared pieces of the zoo's text transformers: embedding, attention, and the values at their sites.

Where a token sits in the array never matters; its *position id* and its *mask*
do. Position ids are carried explicitly beside the hidden states, starting from
``cumsum(mask) - 1`` (so left and right padding give the same ids), and a causal
model lets a query see the keys whose position is ``<=`` its own (not the keys to
its left in the array). Inserting prompt tokens is therefore just a concatenation
plus a rewrite of the position ids (:func:`insert`), and K/V prefixes are extra
keys with position ``-1`` that every query sees (:func:`prepend_kv`). The site
values (:class:`Lookup`, :class:`Embedded`, :class:`KeyValues`) and those two operations live in
:mod:`jaxreprog.hooks`, beside the core, so methods need not import the zoo; they are
re-exported here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreprog.checking import check
from jaxreprog.hooks import Embedded, KeyValues, Lookup, Where, insert, prepend_kv

__all__ = [
    "Embedded",
    "KeyValues",
    "Lookup",
    "Where",
    "attend",
    "check_tokens",
    "embed",
    "embed_lookup",
    "insert",
    "lookup",
    "positions_from_mask",
    "prepend_kv",
    "word_embeddings",
]

Array = jax.Array


def check_tokens(x: Any, max_positions: int | None = None) -> tuple[Array, Array]:
    """``x = {"input_ids", "attention_mask"}`` (int ``(B, L)``) -> ``(ids, mask)``, or a clear error.

    Nested lists are taken as arrays. With ``max_positions``, ``L`` may not exceed it.
    """
    if not isinstance(x, dict) or not {"input_ids", "attention_mask"} <= set(x):
        raise ValueError("x must be a dict with 'input_ids' and 'attention_mask' (int (B, L) arrays)")
    try:
        ids, mask = jnp.asarray(x["input_ids"]), jnp.asarray(x["attention_mask"])
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"x['input_ids'] and x['attention_mask'] must be (B, L) integer arrays: {err}"
        ) from err
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"x['input_ids'] and x['attention_mask'] must both be (B, L), got {ids.shape} and {mask.shape}"
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"x['input_ids'] must be integer token ids, got dtype {ids.dtype}")
    if max_positions is not None and ids.shape[1] > max_positions:
        raise ValueError(f"x has {ids.shape[1]} tokens; this model has {max_positions} positions")
    if not (jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
        raise TypeError(f"x['attention_mask'] must be 0/1 integers or bools, got dtype {mask.dtype}")
    check(
        (mask == 0) | (mask == 1),
        "x['attention_mask'] must hold only 0 and 1 (got values from {lo} to {hi})",
        lo=jnp.min(mask),
        hi=jnp.max(mask),
    )
    empty = jnp.logical_not(jnp.any(mask != 0, axis=-1))
    check(
        ~empty,
        "x['attention_mask'] has {n} all-zero row(s) (first: row {row}): every example needs a real token",
        n=jnp.sum(empty),
        row=jnp.argmax(empty),
    )
    return ids, mask


def positions_from_mask(mask: Array) -> Array:
    """Position ids ``cumsum(mask) - 1`` (clipped at 0): equal for left and right padding."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def lookup(ids: Array, mask: Array, table: Array) -> Lookup:
    """The ``"lookup"`` site value of a batch: ids, mask, positions from the mask, no prompt, table."""
    mask = mask.astype(bool)
    return Lookup(ids, mask, positions_from_mask(mask), jnp.zeros(mask.shape, bool), table)


def embed(ids: Array, mask: Array, table: Array) -> Embedded:
    """Look token ids up in ``table`` and build the ``"embeddings"`` site value
    (:func:`embed_lookup` of :func:`lookup`)."""
    return embed_lookup(lookup(ids, mask, table))


def embed_lookup(value: Lookup) -> Embedded:
    """The ``"embeddings"`` site value: ``value.table[value.ids]`` with the mask, positions and flags.

    Ids must lie in ``[0, vocab)`` of that table: eager calls raise, ``jr.checked`` catches them
    under ``jit`` (unchecked: NaN past the table, -1 its last row; :mod:`jaxreprog.checking`).
    """
    ids, table = value.ids, value.table
    vocab = table.shape[0]
    bad = (ids < 0) | (ids >= vocab)
    check(
        ~bad,
        f"x['input_ids'] must be token ids in [0, {vocab}) (the vocabulary): got {{n}} outside it, "
        "e.g. {first} (a tokenizer for another model, or -1 padding?)",
        n=jnp.sum(bad),
        first=ids.reshape(-1)[jnp.argmax(bad.reshape(-1))],
    )
    return Embedded(
        h=jnp.take(table, ids, axis=0), mask=value.mask, positions=value.positions, prompt=value.prompt
    )


def attend(
    q: Array,
    kv: KeyValues,
    q_positions: Array,
    *,
    causal: bool,
    scale: float | None = None,
    softcap: float | None = None,
    window: int | None = None,
) -> Array:
    """Scaled dot-product attention ``softmax(q kᵀ / √Dh + mask) v`` over ``(B, L, H, Dh)``.

    A query attends to the keys in ``kv.mask``; with ``causal`` only to those whose
    position is ``<=`` its own. ``scale`` replaces ``1/√Dh`` (Gemma's
    ``query_pre_attn_scalar**-0.5``); ``softcap`` caps the scores at ``±softcap`` by
    ``softcap · tanh(s / softcap)`` (Gemma 2); with ``window`` a query at position ``p``
    sees keys at positions ``> p - window`` only (a sliding window: Mistral, Gemma), besides
    the prefix keys at negative positions, which every query sees.
    """
    # Heads folded into the batch, (B, H, L, Dh), so both products are plain batched matmuls; the
    # scale applied to q (L·Dh values, not L·L scores) and the mask added as a bias: on XLA:CPU this
    # is 1.2x faster than einsums over (B, L, H, Dh) with a select (MiniLM's step: 1.44 -> 1.21 s).
    q = q * jnp.asarray(q.shape[-1] ** -0.5 if scale is None else scale, q.dtype)
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, kv.k, kv.v))
    scores = q @ jnp.swapaxes(k, -1, -2)
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    allowed = kv.mask[:, None, None, :]
    k_pos, q_pos = kv.positions[:, None, None, :], q_positions[:, None, :, None]
    if causal:
        allowed = allowed & (k_pos <= q_pos)
    if window is not None:
        allowed = allowed & ((k_pos > q_pos - window) | (k_pos < 0))
    bias = jnp.where(allowed, 0.0, jnp.finfo(scores.dtype).min / 2).astype(scores.dtype)
    return jnp.swapaxes(jax.nn.softmax(scores + bias, axis=-1) @ v, 1, 2)


def word_embeddings(params: Any) -> Array:
    """The ``(V, D)`` token-embedding table of a zoo text model's params (BERT, GPT-2, the Llama
    family), e.g. to initialise soft prompts from vocabulary embeddings: the vectors its
    ``"embeddings"`` site carries for each token (Gemma's table times its ``scale``, √D)."""
    p = params.get("params", params)
    for name in ("word_embeddings", "wte", "embed_tokens"):
        if name in p:
            table = p[name]["embedding"]
            return table * p[name]["scale"] if "scale" in p[name] else table
    raise KeyError(f"no token-embedding table among the params' top-level modules {sorted(p)}")
