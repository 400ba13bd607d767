"""Shared pieces of the zoo's text transformers: the values at their sites and attention.

Where a token sits in the array never matters; its *position id* and its *mask*
do. Position ids are carried explicitly beside the hidden states, starting from
``cumsum(mask) - 1`` (so left and right padding give the same ids), and a causal
model lets a query see the keys whose position is ``<=`` its own (not the keys to
its left in the array). Inserting prompt tokens is therefore just a concatenation
plus a rewrite of the position ids (:func:`insert`), and K/V prefixes are extra
keys with position ``-1`` that every query sees (:func:`prepend_kv`).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "Embedded",
    "KeyValues",
    "Where",
    "attend",
    "check_tokens",
    "embed",
    "insert",
    "positions_from_mask",
    "prepend_kv",
    "word_embeddings",
]

Array = jax.Array
Where = Literal["prefix", "after_first", "suffix"]


class Embedded(NamedTuple):
    """The value at a text model's ``"embeddings"`` site.

    Attributes:
      h: ``(B, L, D)`` token embeddings, *before* position embeddings are added.
      mask: ``(B, L)`` bool, True on real tokens (False on padding).
      positions: ``(B, L)`` int32 position ids (meaningless on padding).
      prompt: ``(B, L)`` bool, True on inserted prompt tokens (pooling skips them).
    """

    h: Array
    mask: Array
    positions: Array
    prompt: Array


class KeyValues(NamedTuple):
    """The value at a layer's ``"layer_{i}/kv"`` site: the keys a query may attend to.

    Attributes:
      k, v: ``(B, Lk, H, Dh)`` per-head keys and values.
      mask: ``(B, Lk)`` bool, True on keys that may be attended to.
      positions: ``(B, Lk)`` int32 position ids of the keys; ``-1`` for prefix keys,
        which every query sees (also under a causal mask).
    """

    k: Array
    v: Array
    mask: Array
    positions: Array


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
    return ids, mask


def positions_from_mask(mask: Array) -> Array:
    """Position ids ``cumsum(mask) - 1`` (clipped at 0): equal for left and right padding."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def embed(ids: Array, mask: Array, table: Array) -> Embedded:
    """Look token ids up in ``table`` and build the ``"embeddings"`` site value."""
    mask = mask.astype(bool)
    return Embedded(
        h=jnp.take(table, ids, axis=0),
        mask=mask,
        positions=positions_from_mask(mask),
        prompt=jnp.zeros(mask.shape, bool),
    )


def insert(e: Embedded, tokens: Array, where: Where = "prefix") -> Embedded:
    """Insert ``P`` prompt vectors into every sequence and renumber the positions.

    ``tokens`` is ``(P, D)`` (shared) or ``(B, P, D)``. ``where``:

    * ``"prefix"``: prompt positions ``0..P-1``; every token moves up by ``P``.
    * ``"after_first"``: after the first real token ([CLS] / BOS): the prompt takes
      ``1..P`` and tokens from position 1 on move up by ``P``.
    * ``"suffix"``: after the last real token: ``n..n+P-1`` with ``n`` real tokens.

    The prompt is stored at the front of the arrays (at the end for ``"suffix"``);
    storage order is irrelevant because attention reads positions and masks only.
    """
    b, _, d = e.h.shape
    if tokens.ndim == 2:
        tokens = jnp.broadcast_to(tokens, (b, *tokens.shape))
    if tokens.ndim != 3 or tokens.shape[0] != b or tokens.shape[-1] != d:
        raise ValueError(f"insert: tokens must be (P, {d}) or ({b}, P, {d}), got {tokens.shape}")
    p = tokens.shape[1]
    ramp = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    pos = e.positions
    if where == "prefix":
        new, pos = ramp, pos + p
    elif where == "after_first":
        new, pos = ramp + 1, jnp.where(pos >= 1, pos + p, pos)
    elif where == "suffix":
        new = ramp + e.mask.sum(-1, dtype=jnp.int32)[:, None]
    else:
        raise ValueError(f"insert: where must be 'prefix', 'after_first' or 'suffix', got {where!r}")
    ones = jnp.ones((b, p), bool)
    parts = [
        (tokens.astype(e.h.dtype), e.h),
        (ones, e.mask),
        (new, pos),
        (ones, e.prompt),
    ]
    if where == "suffix":
        parts = [(old, added) for added, old in parts]
    return Embedded(*(jnp.concatenate(pair, axis=1) for pair in parts))


def prepend_kv(kv: KeyValues, k: Array, v: Array) -> KeyValues:
    """Prepend ``P`` prefix keys/values ``(P, H, Dh)`` or ``(B, P, H, Dh)``, visible to every query."""
    b, _, h, dh = kv.k.shape
    k = jnp.broadcast_to(k, (b, *k.shape[-3:])) if k.ndim == 3 else k
    v = jnp.broadcast_to(v, (b, *v.shape[-3:])) if v.ndim == 3 else v
    if k.shape[0] != b or k.shape[2:] != (h, dh) or v.shape != k.shape:
        raise ValueError(
            f"prepend_kv: prefix keys/values must be (P, {h}, {dh}) or ({b}, P, {h}, {dh}), "
            f"got {k.shape} and {v.shape}"
        )
    p = k.shape[1]
    return KeyValues(
        k=jnp.concatenate([k.astype(kv.k.dtype), kv.k], axis=1),
        v=jnp.concatenate([v.astype(kv.v.dtype), kv.v], axis=1),
        mask=jnp.concatenate([jnp.ones((b, p), bool), kv.mask], axis=1),
        positions=jnp.concatenate([jnp.full((b, p), -1, jnp.int32), kv.positions], axis=1),
    )


def attend(q: Array, kv: KeyValues, q_positions: Array, *, causal: bool) -> Array:
    """Scaled dot-product attention ``softmax(q kᵀ / √Dh + mask) v`` over ``(B, L, H, Dh)``.

    A query attends to the keys in ``kv.mask``; with ``causal`` only to those whose
    position is ``<=`` its own.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, kv.k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
    allowed = kv.mask[:, None, None, :]
    if causal:
        allowed = allowed & (kv.positions[:, None, None, :] <= q_positions[:, None, :, None])
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), kv.v)


def word_embeddings(params: Any) -> Array:
    """The ``(V, D)`` token-embedding table of a zoo text model's params (BERT, GPT-2),
    e.g. to initialise soft prompts from vocabulary embeddings."""
    p = params.get("params", params)
    for name in ("word_embeddings", "wte"):
        if name in p:
            return p[name]["embedding"]
    raise KeyError(f"no token-embedding table among the params' top-level modules {sorted(p)}")
