"""KV-cache prompts: a trainable per-layer K/V prefix that starts as the frozen model's own cache of a text.

:func:`cartridge` — Eyuboglu et al. 2025, "Cartridges: Lightweight and general-purpose long
context representations via self-study". A *cartridge* is a KV cache ``Z = {(K_Z^i, V_Z^i)}``
of ``P`` tokens per layer ``i``, learned directly (no MLP, no embeddings behind it)::

    h_i = Attn(Q, [K_Z^i; K], [V_Z^i; V])

initialised from the frozen model's cache of the first ``P`` tokens of a text ``T``
(:func:`kv_cache`), so that before training the model with the cartridge reads ``x`` exactly
as the frozen model reads ``T ⊕ x``: ``f(x; Z = cache(T)) = f(T ⊕ x)``. Training (the paper's
*self-study*: context distillation, ``min_Z KL(f(· | T ⊕ x) || f(· | x; Z))`` on synthetic
conversations about the text) then compresses a long ``T`` into a short ``Z``. PEFT's
``CartridgeConfig`` is the same parameterisation, served as ``past_key_values``.

Positions. The cached keys of ``T`` were computed (for RoPE models, rotated; for GPT-2, from
embeddings with position embeddings added) at positions ``0..P-1``; with ``positions=
"after_prefix"`` (the default) the input's tokens sit at ``P..P+n-1``, right after them, exactly
as ``T ⊕ x`` places them — as PEFT (whose cache length moves the position ids of the input) and
the paper's reference code (position ids continue after the trainable cache) do. The prefix keys
themselves are never re-rotated: they carry position ``-1`` (every query, also a causal one and
one in a KV-cached decoding step, sees them). ``positions="from_zero"`` puts the input at
``0..n-1`` instead, which breaks the identity above. A sliding window (Mistral, Gemma's local
layers) does not hide prefix keys, so the identity holds there while ``P + n`` is at most the
window.

Heads. :func:`kv_cache` returns the cache as the model stores it: ``num_kv_heads`` key/value
heads for grouped-query attention (the Llama family), ``num_heads`` for GPT-2. The cartridge
learns those heads and repeats each for the query heads it serves (as the model does), so a
GQA cartridge has the parameter count of PEFT's and of the paper's.

Zero-init (``init="zeros"``): ``K_Z = V_Z = 0``. This is *not* a no-op under softmax
attention: a zero key scores ``q·0 = 0``, so each of the ``P`` prefix keys takes weight
``1 / (Z + P)`` (``Z = Σ_j exp(s_j)`` over the real keys) and contributes the zero value:
every attention output becomes the frozen one times ``Z / (Z + P)``. With ``positions=
"after_prefix"`` it also moves GPT-2's absolute positions. The values are a no-op (they add
nothing to the weighted sum), the keys are not; the paper finds a text's cache a far better
start than random vectors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking
from jaxreprog.core import FrozenModel, SiteHook
from jaxreprog.hidden.prefix import KV_SITES, Positions, check_positions, kv_geometry, kv_prefix_apply
from jaxreprog.hooks import SiteSelection, per_layer
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["cache_of", "cartridge", "kv_cache"]


@functools.partial(jax.jit, static_argnums=0)
def _prefill(lm, params, x):
    """The cache of ``x`` (compiled once per model architecture and text length)."""
    return lm.run(params, x).cache


def kv_cache(model: FrozenModel, params, text, *, layers: Sequence[int] | None = None) -> jax.Array:
    """The frozen causal LM's own KV cache of ``text``: ``(layers, 2, T, H_kv, Dh)`` float32.

    ``text``: ``T`` token ids (1-D), read at positions ``0..T-1`` with no hook; ``params``: the
    frozen parameters (usually ``model.params``). Entry ``[j, 0]`` holds the keys of layer
    ``layers[j]`` (all layers by default) as the model caches them (RoPE applied; ``H_kv`` key/value
    heads), ``[j, 1]`` its values. Pass it as ``init=`` to :func:`cartridge` (with the same
    ``layers``); ``kv_cache(model, params, text)[:, :, :P]`` is the cache of ``text[:P]``.

    Raises ``ValueError`` for an empty text, ids outside the vocabulary, or a text longer than the
    model's positions; ``TypeError`` for a model that is not a causal LM (GPT-2, the Llama family).
    """
    from jaxreprog.models import causal

    lm = causal._lm(model)  # a causal LM, or a TypeError naming the ones that are
    ids = np.asarray(text)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"kv_cache: text must be 1-D integer token ids, got shape {ids.shape} ({ids.dtype})")
    spec = model.spec
    if ids.size == 0:
        raise ValueError("kv_cache: text is empty; a cartridge needs at least one token to start from")
    if ids.size > spec.max_length:
        raise ValueError(
            f"kv_cache: the text has {ids.size} tokens, longer than this model's context of "
            f"{spec.max_length} positions; a cartridge starts from a text that fits (and leaves room for "
            "the input after it): use its first tokens, or more cartridges"
        )
    if ids.min() < 0 or ids.max() >= spec.vocab_size:
        raise ValueError(
            f"kv_cache: text has token ids outside the vocabulary [0, {spec.vocab_size}) "
            f"(from {ids.min()} to {ids.max()}): a tokenizer for another model?"
        )
    chosen, _, _ = kv_geometry(spec, layers)
    x = {"input_ids": jnp.asarray(ids, jnp.int32)[None], "attention_mask": jnp.ones((1, ids.size), jnp.int32)}
    cache = _prefill(lm, params, x)
    return jnp.stack([jnp.stack([cache[i].k[0], cache[i].v[0]]) for i in chosen]).astype(jnp.float32)


def cache_of(theta: Mapping[str, Any]) -> np.ndarray:
    """The cache a cartridge's ``theta`` holds, ``frozen ⊕ kv`` along the tokens: the ``init``
    of a cartridge that starts where ``theta`` is, ``(layers, 2, length, H_kv, Dh)`` float32.
    With ``K`` candidates stacked on a leading axis, the first's."""
    kv = np.asarray(theta["kv"], np.float32)
    if "frozen" in theta:
        kv = np.concatenate([np.asarray(theta["frozen"], np.float32), kv], axis=-3)
    return kv.reshape(-1, *kv.shape[-5:])[0] if kv.ndim > 5 else kv


@register(
    paper="Eyuboglu et al. 2025",
    modality="text",
    format=Format.LEARNABLE,
    location=Location.HIDDEN,
    operator=Operator.CONCATENATIVE,
    held=("init", cache_of),
)
def cartridge(
    init: Literal["zeros"] | np.ndarray | jax.Array = "zeros",
    *,
    length: int | None = None,
    kv_heads: int | None = None,
    frozen: int = 1,
    layers: Sequence[int] | None = None,
    sites: SiteSelection = KV_SITES,
    positions: Positions = "after_prefix",
) -> SiteHook:
    """Cartridges (Eyuboglu et al. 2025): a learned KV cache ``Z``, ``h_i = Attn(Q, [K_Z^i; K], [V_Z^i; V])``.

    ``init``: the frozen model's cache of a text, :func:`kv_cache` ``(layers, 2, T, H_kv, Dh)``,
    of which the first ``length`` tokens are used (default all ``T``); or ``"zeros"`` (``length``
    required; ``kv_heads`` key/value heads, default the spec's ``num_kv_heads``, else its
    ``num_heads``; see the module's docstring: zero keys are not a no-op). Initialised from the
    cache of ``T``, the program reads ``x`` as the frozen model reads ``T[:length] ⊕ x``
    (``positions="after_prefix"``, the default, as PEFT and the paper: ``x`` at positions
    ``length..``).

    Why an array: a site hook's ``init(key, spec)`` sees the model's spec but not its
    parameters, so the cache is computed beforehand by :func:`kv_cache` (one forward pass of the
    frozen model) and carried here; ``program.init(key)`` then starts from it, as every trainer
    does. ``jr.save`` does not write the array again beside the theta that starts as it: the
    loaded cartridge's ``init`` is its saved theta (:func:`cache_of`), so ``program.init`` after
    ``jr.load`` restarts from the saved prompt, not from the text's cache.

    ``frozen``: the first ``frozen`` tokens stay fixed (PEFT's ``num_frozen_tokens``, default 1:
    the paper keeps the first token, the attention sink, frozen for stable training); ``jr.fixed``
    holds all of them. ``layers``, ``sites``: as for :func:`jaxreprog.hidden.prefix_tuning`.

    ``theta``: ``{"kv": (layers, 2, length - frozen, H_kv, Dh)}`` and, with ``frozen``,
    ``{"frozen": (layers, 2, frozen, H_kv, Dh)}`` (not trained). An init array computed on a model
    of another shape (layers, heads, head width) is refused by ``init`` (so by ``jr.reprogram``'s
    ``program.init``); one of the same shape but other weights cannot be told apart.

    Example::

        >>> cache = jr.hidden.kv_cache(model, model.params, doc_ids)          # (layers, 2, T, H_kv, Dh)
        >>> program = jr.reprogram(model, hidden=jr.hidden.cartridge(cache, length=128))
        >>> theta = program.init(jax.random.key(0))      # reads x as the model reads doc_ids[:128] + x
        >>> gpt2.generate(model, model.params, x, 20, hook=lambda s, v: program.parts["hidden"].apply(
        ...     theta["hidden"], s, v, model.spec))
    """
    who = "cartridge"
    check_positions(positions, who)
    selector = per_layer(sites, who)
    if kv_heads is not None:
        kv_heads = checking.integer(kv_heads, "kv_heads", who=who)
    if isinstance(init, str):
        if init != "zeros":
            raise ValueError(f"cartridge: init must be 'zeros' or a kv_cache array, got {init!r}")
        if length is None:
            raise ValueError("cartridge: init='zeros' needs length= (prefix tokens per layer)")
        saved = None
        length = checking.integer(length, "length", who=who)
    else:
        try:
            saved = np.asarray(init, np.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"cartridge: init must be 'zeros' or a kv_cache array: {err}") from None
        if saved.ndim != 5 or saved.shape[1] != 2 or 0 in saved.shape:
            raise ValueError(
                "cartridge: init must be a kv_cache array (layers, 2, tokens, kv_heads, head_dim) with "
                f"at least one token, got shape {saved.shape}"
            )
        if not np.isfinite(saved).all():
            raise ValueError("cartridge: init has NaN or infinite entries")
        if kv_heads is not None and kv_heads != saved.shape[3]:
            raise ValueError(f"cartridge: kv_heads={kv_heads}, but init has {saved.shape[3]} key/value heads")
        total = saved.shape[2]
        length = total if length is None else checking.integer(length, "length", who=who)
        if length > total:
            raise ValueError(f"cartridge: length={length}, but init caches {total} tokens")
        saved = saved[:, :, :length]
    frozen = checking.integer(frozen, "frozen", who=who, minimum=0)
    if frozen >= length:
        raise ValueError(
            f"cartridge: frozen={frozen} leaves none of the {length} tokens to train; pass fewer (or "
            "hold the whole cartridge with jr.fixed)"
        )

    def shape(spec) -> tuple[tuple[int, ...], int, int, int]:
        chosen, h, dh = kv_geometry(spec, layers)
        heads = (kv_heads or getattr(spec, "num_kv_heads", None) or h) if saved is None else saved.shape[3]
        if saved is not None and (saved.shape[0] != len(chosen) or saved.shape[4] != dh or h % heads):
            raise ValueError(
                f"cartridge: init is a KV cache of shape {saved.shape} (layers, 2, tokens, kv_heads, "
                f"head_dim), but {spec.name or 'this model'!r} needs ({len(chosen)}, 2, tokens, a divisor "
                f"of its {h} heads, {dh}) for layers {list(chosen)}: was it computed by another model "
                "(or for other layers=)?"
            )
        if h % heads:
            raise ValueError(f"cartridge: kv_heads={heads} does not divide the model's {h} heads")
        return chosen, h, heads, dh

    def init_fn(key, spec):
        del key  # deterministic: the text's cache, or zeros
        chosen, _, heads, dh = shape(spec)
        if positions == "after_prefix" and length >= spec.max_length:
            raise ValueError(
                f"cartridge: {length} prefix tokens take positions 0..{length - 1}, leaving no room in "
                f"{spec.name or 'this model'!r}'s {spec.max_length} positions for the input: cache a "
                "shorter text (length=)"
            )
        kv = (
            jnp.zeros((len(chosen), 2, length, heads, dh), jnp.float32)
            if saved is None
            else jnp.asarray(saved)
        )
        if not frozen:
            return {"kv": kv}
        return {"frozen": kv[:, :, :frozen], "kv": kv[:, :, frozen:]}

    def prefix(theta, spec, j):
        _, h, heads, _ = shape(spec)
        kv = theta["kv"][j]
        if "frozen" in theta:
            kv = jnp.concatenate([theta["frozen"][j], kv], axis=1)
        return jnp.repeat(kv, h // heads, axis=2)  # each key/value head serves h // heads query heads

    def trainable(theta):
        return {name: name == "kv" for name in theta}

    return SiteHook(
        init_fn,
        kv_prefix_apply(length, layers, selector, positions, who, prefix),
        trainable=trainable,
        sites=selector,
    )
