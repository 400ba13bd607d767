"""Learned key/value prefixes at every attention layer of a frozen transformer.

* :func:`prefix_tuning` — Li & Liang 2021, "Prefix-Tuning": each layer ``i`` attends
  to ``[P_k^i; K]`` and ``[P_v^i; V]``; the prefixes are reparameterised during
  training, ``P = MLP(P')`` with a smaller ``P'`` and ``MLP = Linear → tanh → Linear``.
* :func:`p_tuning_v2` — Liu et al. 2022, "P-Tuning v2": "deep prompt tuning", i.e.
  prompts at every layer. Its reference code realises them as per-layer
  ``past_key_values`` — the same K/V prefixes — with the reparameterisation off by
  default (the paper finds it task-dependent). So here it is prefix tuning
  without the MLP; the difference between the two papers is their defaults.

Both act at the sites ``sites=`` selects (globs, :func:`jaxreprog.select`), by default
the ``"layer_{i}/kv"`` sites (:class:`~jaxreprog.hooks.KeyValues`) of the zoo's text
models; a site's layer number is what the glob's ``*`` matches there
(:meth:`~jaxreprog.Selector.layer`: ``"layer_*/kv"`` at ``"layer_3/kv"`` is layer 3).
Prefix keys get position ``-1``, so every query sees them (also under a causal mask
and with a KV cache), and the key mask grows by ``length``.

Where the real tokens sit (``positions=``): with ``P = length`` prefix keys,

* ``"after_prefix"`` (default) — at ``P..P+n-1``, as in PEFT and Hugging Face models,
  where the prefix is ``past_key_values`` of length ``P`` and position ids start after
  the cache (PEFT also adds ``P`` to ``position_ids`` a caller passes, e.g.
  ``cumsum(mask) - 1`` for left padding; here positions never depend on the padding
  side). The hook shifts the position ids at the ``"embeddings"`` site
  (:class:`~jaxreprog.hooks.Embedded`; also ``"*/embeddings"``) by ``P``, so absolute
  position embeddings (GPT-2's, BERT's) are read at ``P..P+n-1``; prefix keys keep
  position ``-1``, so a causal query still sees all ``P`` of them. The ``n`` tokens,
  the prefix and any generated tokens must fit in the model's positions (else a
  ``ValueError``). Soft prompts inserted before it move with the tokens; two chained
  prefix methods shift by the sum of their lengths.
* ``"from_zero"`` — at ``0..n-1``, as if the prefix had no positions (the behaviour
  of jaxreprog 0.2); the embeddings are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import SiteHook, TokenSpec
from jaxreprog.hooks import Embedded, KeyValues, SiteSelection, per_layer, prepend_kv, select, site_layer
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["p_tuning_v2", "prefix_tuning"]

KV_SITES = ("layer_*/kv", "*/layer_*/kv")
"""The default sites: every layer's keys and values in the zoo's text models."""

EMBEDDING_SITES = select(("embeddings", "*/embeddings"))
"""Where ``positions="after_prefix"`` shifts the position ids (the values there that are
:class:`~jaxreprog.hooks.Embedded`)."""

Positions = Literal["after_prefix", "from_zero"]


def check_positions(positions: str, who: str) -> None:
    if positions not in ("after_prefix", "from_zero"):
        raise ValueError(f"{who}: positions must be 'after_prefix' or 'from_zero', got {positions!r}")


def kv_geometry(spec, layers: Sequence[int] | None) -> tuple[tuple[int, ...], int, int]:
    """The chosen layer numbers, ``num_heads`` and ``head_dim`` of a text model's spec (or an error)."""
    if not isinstance(spec, TokenSpec) or not spec.num_layers or not spec.num_heads:
        raise TypeError("K/V prefixes need a text model whose jr.TokenSpec has num_layers and num_heads")
    chosen = tuple(range(spec.num_layers)) if layers is None else tuple(layers)
    bad = [i for i in chosen if not 0 <= i < spec.num_layers]
    if bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"layers must be distinct indices in [0, {spec.num_layers}), got {layers}")
    return chosen, spec.num_heads, spec.head_dim


def kv_prefix_apply(
    length: int,
    layers: Sequence[int] | None,
    selector,
    positions: Positions,
    who: str,
    prefix,
):
    """The ``apply`` of a per-layer K/V prefix of ``length`` keys: at the selected ``KeyValues`` sites,
    ``prefix(theta, spec, j) -> (2, length, num_heads, head_dim)`` (``j``: the layer's index among the
    chosen ones) is prepended; with ``positions="after_prefix"`` the input's position ids are shifted
    by ``length`` at the embeddings site (see the module's docstring)."""

    def apply(theta, site, value, spec):
        if isinstance(value, Embedded) and EMBEDDING_SITES.matches(site):
            if positions == "from_zero" or not kv_geometry(spec, layers)[0]:
                return value
            return value._replace(positions=value.positions + length)  # the tokens at length..
        layer = site_layer(selector, site, who)  # the number the glob's "*" matches
        if layer is None:
            return value
        chosen, _, _ = kv_geometry(spec, layers)
        if layer not in chosen:
            return value
        if not isinstance(value, KeyValues):
            raise TypeError(
                f"site {site!r} carries {type(value).__name__}, expected jaxreprog.hooks.KeyValues"
            )
        keys = value.k.shape[1]  # the input's tokens and, when decoding, the cache's
        if positions == "after_prefix" and keys + length > spec.max_length:
            raise ValueError(
                f"{who}: positions='after_prefix' puts {keys} tokens at positions {length}.."
                f"{length + keys - 1}, past this model's {spec.max_length} positions; shorten the "
                "input (or the generation) or the prefix, or pass positions='from_zero'"
            )
        kv = prefix(theta, spec, chosen.index(layer))
        return prepend_kv(value, kv[0], kv[1])

    return apply


def _prefixes(
    length: int,
    reparameterize: int | None,
    layers: Sequence[int] | None,
    std: float,
    sites: SiteSelection,
    positions: Positions,
    who: str,
):
    check_positions(positions, who)
    length = checking.integer(length, "length (prefix tokens per layer)", who=who)
    if reparameterize is not None:
        reparameterize = checking.integer(reparameterize, "reparameterize (MLP hidden width)", who=who)
    selector = per_layer(sites, who)

    def init(key, spec):
        chosen, h, dh = kv_geometry(spec, layers)
        n = len(chosen)
        if reparameterize is None:
            return {"kv": std * jax.random.normal(key, (n, 2, length, h, dh), jnp.float32)}
        d = h * dh
        k0, k1, k2 = jax.random.split(key, 3)
        return {
            "inputs": jax.random.normal(k0, (length, d), jnp.float32),
            "w1": jax.random.normal(k1, (d, reparameterize), jnp.float32) / jnp.sqrt(d),
            "b1": jnp.zeros((reparameterize,), jnp.float32),
            "w2": std * jax.random.normal(k2, (reparameterize, n * 2 * d), jnp.float32),
            "b2": jnp.zeros((n * 2 * d,), jnp.float32),
        }

    def prefix(theta, spec, j):
        """Layer ``j``'s ``(2, length, H, Dh)`` prefix (of the MLP's output when reparameterised)."""
        if reparameterize is None:
            return theta["kv"][j]
        chosen, h, dh = kv_geometry(spec, layers)
        out = jnp.tanh(theta["inputs"] @ theta["w1"] + theta["b1"]) @ theta["w2"] + theta["b2"]
        return out.reshape(length, len(chosen), 2, h, dh).transpose(1, 2, 0, 3, 4)[j]

    return init, kv_prefix_apply(length, layers, selector, positions, who, prefix), selector


@register(
    paper="Li & Liang 2021",
    modality="text",
    format=Format.LEARNABLE,
    location=Location.HIDDEN,
    operator=Operator.CONCATENATIVE,
)
def prefix_tuning(
    length: int = 10,
    *,
    reparameterize: int | None = 512,
    layers: Sequence[int] | None = None,
    std: float = 0.02,
    sites: SiteSelection = KV_SITES,
    positions: Positions = "after_prefix",
) -> SiteHook:
    """Prefix-tuning (Li & Liang 2021): layer ``i`` attends over ``[P_k^i; K]``, ``[P_v^i; V]``.

    ``h_i = Attn(Q, [P_k^i; K], [P_v^i; V])`` with ``length`` learned prefix vectors per
    layer, reparameterised as ``P = MLP(P') = tanh(P' W_1 + b_1) W_2 + b_2`` of width
    ``reparameterize`` (``None``: free prefixes). ``layers`` defaults to all. Matches
    PEFT's ``PrefixTuningConfig`` (``prefix_projection=True``, ``encoder_hidden_size=
    reparameterize``; ``reparameterize=None``: ``prefix_projection=False``), whose
    prefix is ``(length, layers, 2, H, Dh)`` in the same order.

    ``positions``: ``"after_prefix"`` (PEFT / Hugging Face: the input's tokens at
    positions ``length..length+n-1``, after the prefix) or ``"from_zero"`` (``0..n-1``;
    see the module's docstring).

    ``sites``: globs (:func:`jaxreprog.select`) of the :class:`~jaxreprog.hooks.KeyValues`
    sites, each with a ``*`` where the layer number is (default ``"layer_*/kv"`` and
    ``"*/layer_*/kv"``); ``layers`` are layer numbers (``layers=[1]``: the site whose
    ``*`` matches ``1``, e.g. ``"layer_1/kv"``). A predicate names no layer number: an
    error.

    ``theta``: ``{"kv": (layers, 2, length, H, Dh)}`` without reparameterisation;
    ``{"inputs", "w1", "b1", "w2", "b2"}`` with it (Li & Liang drop the MLP after
    training and keep its output).
    """
    init, apply, selector = _prefixes(length, reparameterize, layers, std, sites, positions, "prefix_tuning")
    return SiteHook(init, apply, sites=selector)


@register(
    paper="Liu et al. 2022",
    modality="text",
    format=Format.LEARNABLE,
    location=Location.HIDDEN,
    operator=Operator.CONCATENATIVE,
)
def p_tuning_v2(
    length: int = 20,
    *,
    reparameterize: int | None = None,
    layers: Sequence[int] | None = None,
    std: float = 0.02,
    sites: SiteSelection = KV_SITES,
    positions: Positions = "after_prefix",
) -> SiteHook:
    """P-Tuning v2 (Liu et al. 2022), deep prompt tuning: ``length`` learned K/V prompts at every layer.

    ``h_i = Attn(Q, [P_k^i; K], [P_v^i; V])`` with free prompts ``P^i`` (no MLP by
    default; ``reparameterize`` as for :func:`prefix_tuning`). ``layers``, ``sites``
    and ``positions`` (default ``"after_prefix"``, as PEFT's ``past_key_values``) as for
    :func:`prefix_tuning`.
    """
    init, apply, selector = _prefixes(length, reparameterize, layers, std, sites, positions, "p_tuning_v2")
    return SiteHook(init, apply, sites=selector)
