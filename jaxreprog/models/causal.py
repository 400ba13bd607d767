"""What the zoo's causal LMs share: the input's sites, the wrapper, every-position logits, decoding.

A causal LM here is a linen module ``module(x, cache=None, index=None, generated=None) ->
LMOutput`` (GPT-2, the Llama family) that embeds its input with :func:`embed_input`, so
that every such model has the same sites and the same decoding:

* ``"lookup"`` — :class:`~jaxreprog.hooks.Lookup` of the input (the ids and the token table
  they are about to be looked up in), for models that pass ``table=`` (GPT-2): token
  replacement and templates act here.
* ``"embeddings"`` — :class:`~jaxreprog.models.text.Embedded` of the whole input: soft
  prompts insert here.
* ``"embeddings_step"`` — the same for generated tokens (a cached decoding step's, or all
  of them when :func:`generate` recomputes without the cache): they follow the input and
  what was inserted into it, so insertion hooks must not act here; per-token hooks may.
* ``"layer_{i}/kv"`` — :class:`~jaxreprog.models.text.KeyValues`: all keys a query of
  layer ``i`` may see (the cache included), ``(B, K, num_heads, head_dim)``. The cache
  stores the keys *before* the hook, so a prefix hook prepends its keys at every step,
  exactly as in a computation without cache.

:class:`CausalLM` is the ``apply`` of such a :class:`~jaxreprog.FrozenModel`: the last
real token's next-token logits ``(B, V)``. :func:`logits` gives every position,
:func:`reprogrammed_logits` every position of a reprogrammed model (prompt positions
removed), :func:`generate` decodes greedily or by sampling, with or without the cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxreprog.core import FrozenModel, Hook, Reprogrammed, Site, intercept, reprogram
from jaxreprog.models import text

__all__ = [
    "Cache",
    "CausalLM",
    "LMOutput",
    "embed_input",
    "generate",
    "last_logits",
    "logits",
    "reprogrammed_logits",
]

Cache = tuple[text.KeyValues, ...]


class LMOutput(NamedTuple):
    """Logits ``(B, L, V)`` with the mask and positions they were computed at, and the cache."""

    logits: jax.Array
    mask: jax.Array
    positions: jax.Array
    cache: Cache


def embed_input(
    x,
    cache: Cache | None,
    generated,
    embed: Callable[[jax.Array, jax.Array], text.Embedded],
    max_positions: int,
    *,
    table: jax.Array | None = None,
    scale: jax.Array | None = None,
) -> text.Embedded:
    """A causal LM's input through its ``"embeddings"`` / ``"embeddings_step"`` sites (call it
    inside the model's compact ``__call__``).

    Without ``cache``: ``embed(ids, mask)`` of ``x`` through ``"embeddings"``, then
    ``generated`` (tokens like ``x``, or ``None``) after it through ``"embeddings_step"``.
    With ``cache``: ``x`` is a decoding step after the cache's last position, through
    ``"embeddings_step"``. The sequence (prompts, cache and generated tokens included)
    may not be longer than ``max_positions``.

    With ``table`` (for a model whose ``embed`` is the lookup ``text.embed(ids, mask, table)``,
    times ``scale`` where given: Gemma's ``√D``), the input's ids are looked up through the
    ``"lookup"`` site first (:class:`~jaxreprog.hooks.Lookup`: token replacement swaps the
    table there, a template inserts ids); generated tokens, the model's own, are not.
    """
    ids, mask = text.check_tokens(x)

    def step(tokens, before: text.Embedded | text.KeyValues) -> text.Embedded:
        """``tokens`` after the last position of ``before``, through the ``"embeddings_step"`` site."""
        last = jnp.where(before.mask, before.positions, -1).max(axis=1, keepdims=True)
        e = embed(*text.check_tokens(tokens))
        return Site(name="embeddings_step")(e._replace(positions=last + 1 + e.positions))

    if cache is None:
        if table is None:
            e = Site(name="embeddings")(embed(ids, mask))
        else:
            tokens = Site(name="lookup")(text.lookup(ids, mask, table))
            e = text.embed_lookup(tokens)
            e = e if scale is None else e._replace(h=e.h * scale.astype(e.h.dtype))
            e = Site(name="embeddings")(e)
        if generated is not None:
            e = text.Embedded(*(jnp.concatenate(pair, axis=1) for pair in zip(e, step(generated, e))))
        length = e.h.shape[1]
    else:
        e = step(x, cache[0])
        length = cache[0].k.shape[1]
    if length > max_positions:
        raise ValueError(
            f"the sequence has {length} tokens (prompts and generated tokens included); this "
            f"model has {max_positions} positions"
        )
    return e


def last_position(h: jax.Array, out: LMOutput) -> tuple[jax.Array, LMOutput]:
    """``h`` ``(B, L, D)`` at each row's last real token, ``(B, 1, D)``, and ``out`` cut to match:
    a model applies its head there only when just the next-token logits are wanted (the head over
    every position is ``L`` times the work: for GPT-2 on 64 tokens, about a third of the step)."""
    i = jnp.argmax(jnp.where(out.mask, out.positions, -2), axis=1)[:, None]
    take = lambda a: jnp.take_along_axis(a, i if a.ndim == 2 else i[..., None], axis=1)  # noqa: E731
    return take(h), out._replace(mask=take(out.mask), positions=take(out.positions))


def last_logits(out: LMOutput) -> jax.Array:
    """Logits at each row's last real token (the highest position), ``(B, V)``."""
    i = jnp.argmax(jnp.where(out.mask, out.positions, -2), axis=1)
    return jnp.take_along_axis(out.logits, i[:, None, None], axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """``apply(params, x, hook=None) -> (B, V)`` next-token logits; keeps its module for
    :func:`logits` and :func:`generate`."""

    module: nn.Module

    def run(self, params, x, hook: Hook | None = None, **kwargs) -> LMOutput:
        with intercept(hook):
            return self.module.apply(params, x, **kwargs)

    def __call__(self, params, x, hook: Hook | None = None) -> jax.Array:
        return last_logits(self.run(params, x, hook, last=True))


def _lm(model: FrozenModel) -> CausalLM:
    if not isinstance(model, FrozenModel) or not isinstance(model.apply, CausalLM):
        raise TypeError(
            "model must be a causal LM: a GPT-2 FrozenModel from jr.models.gpt2.load / from_hf, or a "
            "Llama-family one from jr.models.llama.load"
        )
    return model.apply


def logits(model: FrozenModel, params, x, hook: Hook | None = None) -> LMOutput:
    """Every position's logits, with the mask and positions after the hooks' insertions."""
    return _lm(model).run(params, x, hook)


@dataclasses.dataclass(frozen=True)
class _EveryPosition:
    """``apply(params, x, hook)`` -> ``(B, L, V)``: the logits at ``x``'s own ``L`` positions.

    The hook's insertions are dropped: the value the ``"embeddings"`` site returns flags
    them (:attr:`~jaxreprog.models.text.Embedded.prompt`), and an insertion keeps the
    input's tokens in order, so each row's unflagged entries are ``x``'s, in ``x``'s order.
    """

    lm: CausalLM

    def __call__(self, params, x, hook: Hook | None = None) -> jax.Array:
        embedded: list[text.Embedded] = []

        def recording(site, value):
            value = value if hook is None else hook(site, value)
            if site == "embeddings":
                embedded.append(value)
            return value

        out = self.lm.run(params, x, recording)
        n = text.check_tokens(x)[0].shape[1]
        keep = jnp.argsort(embedded[-1].prompt.astype(jnp.int8), axis=1, stable=True)[:, :n]
        return jnp.take_along_axis(out.logits, keep[..., None], axis=1)


def reprogrammed_logits(
    model: FrozenModel, program: Reprogrammed, theta, params, x, key: jax.Array | None = None
) -> jax.Array:
    """Every position's next-token logits ``(B, L, V)`` of a reprogrammed causal LM, prompt positions removed.

    ``out[b, i]`` is the frozen model's prediction after token ``i`` of the model's input
    (``x`` after the program's input part, if any), with the program's embedding and hidden
    parts acting as in ``program.apply`` (``program.apply`` gives the last real token's
    only). Soft-prompt tokens are removed; padded positions are computed like the others
    (mask them with ``x["attention_mask"]``). The output part is not applied: it maps
    ``(N, V)`` logits, so ``program.align(theta, out.reshape(-1, V))`` gives target logits
    per position. For prompt tuning / P-tuning this is PEFT's ``logits[:, p:]``, for prefix
    tuning PEFT's ``logits`` (Lester et al. 2021; Liu et al. 2021; Li & Liang 2021). Works
    under ``jax.jit``, ``jax.grad`` w.r.t. ``theta`` and ``jax.vmap`` over candidate thetas.

    Example::

        >>> program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(8))
        >>> logits = gpt2.reprogrammed_logits(model, program, theta, model.params, x)  # (B, L, V)
    """
    lm = _lm(model)
    if not isinstance(program, Reprogrammed):
        raise TypeError(f"program must be a jr.Reprogrammed (jr.reprogram), got {type(program).__name__}")
    if program.spec != model.spec:
        raise ValueError(
            f"program was built for {program.spec.name or 'another model'!r}, not {model.spec.name!r}"
        )
    every = FrozenModel(_EveryPosition(lm), model.params, model.spec)
    return reprogram(every, **program.parts).source_logits(theta, params, x, key)


def generate(
    model: FrozenModel,
    params,
    x,
    steps: int,
    *,
    hook: Hook | None = None,
    use_cache: bool = True,
    key: jax.Array | None = None,
    temperature: float = 1.0,
) -> jax.Array:
    """Decode ``steps`` tokens after each row of ``x``; returns ``(B, steps)`` int32.

    Greedy (the most likely token) by default; with a PRNG ``key``, sampled from
    ``softmax(logits / temperature)``, step ``t`` with ``jax.random.fold_in(key, t)`` (so
    the cache does not change the draws). With ``use_cache`` the input (and what the hook
    inserts) runs once and each step feeds one token against the cached keys; without it
    every step recomputes the whole sequence (the reference the cache must equal): the
    input, which the hook sees at ``"embeddings"``, then the tokens generated so far at
    ``"embeddings_step"`` (a suffix prompt stays after the input, not after the generated
    tokens). Works under ``jax.jit``.
    """
    lm = _lm(model)
    ids, mask = text.check_tokens(x)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if key is not None and not (isinstance(temperature, int | float) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    b = ids.shape[0]

    def pick(logits, t):
        if key is None:
            return jnp.argmax(logits, axis=-1).astype(ids.dtype)
        draw = jax.random.categorical(jax.random.fold_in(key, t), logits / temperature, axis=-1)
        return draw.astype(ids.dtype)

    if not use_cache:
        x = {"input_ids": ids, "attention_mask": mask}
        empty = {
            "input_ids": jnp.zeros((b, steps), ids.dtype),
            "attention_mask": jnp.zeros((b, steps), mask.dtype),
        }

        def recompute(gen, t):
            nxt = pick(last_logits(lm.run(params, x, hook, generated=gen)), t)
            gen = {
                "input_ids": gen["input_ids"].at[:, t].set(nxt),
                "attention_mask": gen["attention_mask"].at[:, t].set(1),
            }
            return gen, nxt

        return jax.lax.scan(recompute, empty, jnp.arange(steps))[1].T.astype(jnp.int32)

    out = lm.run(params, x, hook)
    filled = out.cache[0].k.shape[1]

    def grow(kv):
        pad = lambda a, v: jnp.concatenate([a, jnp.full((b, steps, *a.shape[2:]), v, a.dtype)], 1)  # noqa: E731
        return text.KeyValues(pad(kv.k, 0), pad(kv.v, 0), pad(kv.mask, False), pad(kv.positions, 0))

    cache = tuple(grow(kv) for kv in out.cache)
    first = pick(last_logits(out), 0)

    def step(carry, t):
        cache, tok = carry
        one = {"input_ids": tok[:, None], "attention_mask": jnp.ones((b, 1), mask.dtype)}
        o = lm.run(params, one, hook, cache=cache, index=filled + t)
        return (o.cache, pick(o.logits[:, 0], t + 1)), tok

    (_, last), toks = jax.lax.scan(step, (cache, first), jnp.arange(steps - 1))
    return jnp.concatenate([toks.T, last[:, None]], axis=1).astype(jnp.int32)
