"""GPT-2 (Radford et al. 2019): a causal language model with a KV cache and named sites.

No GPT-2 weights install offline, so ``load("gpt2", weights=DIR)`` reads a Hugging
Face checkpoint directory (``config.json`` + ``model.safetensors``, as written by
``GPT2LMHeadModel.save_pretrained``); :func:`from_hf` is the same converter.
``apply(params, x, hook=None)`` returns the next-token logits ``(B, V)`` at each
row's last real token; :func:`logits` gives every position, :func:`reprogrammed_logits`
every position of a reprogrammed GPT-2 (prompt positions removed), and :func:`generate`
decodes greedily, with or without the cache.

Sites (module paths the hook sees):

* ``"embeddings"`` — :class:`~jaxreprog.models.text.Embedded` of the whole input
  (token embeddings before position embeddings): soft prompts insert here.
* ``"embeddings_step"`` — the same for generated tokens (a cached decoding step's,
  or all of them when :func:`generate` recomputes without the cache): they follow
  the input and what was inserted into it, so insertion hooks must not act here;
  per-token hooks may.
* ``"layer_{i}/kv"`` — :class:`~jaxreprog.models.text.KeyValues` of layer ``i``:
  all keys a query may see (the cache included). The cache stores the keys
  *before* the hook, so a prefix hook prepends its keys at every step, exactly as
  in a computation without cache.
* ``"layer_{i}"`` — ``(h, cache)`` of layer ``i``; other submodules by path.

Causality reads position ids (``key position <= query position``), not array
order, so left and right padding agree and prompts may sit anywhere in the arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog.core import FrozenModel, Hook, Reprogrammed, Site, TokenSpec, intercept, reprogram
from jaxreprog.models import checkpoint, text
from jaxreprog.models.remat import block as remat_block
from jaxreprog.models.remat import check as check_remat

__all__ = [
    "GPT2",
    "CausalLM",
    "GPT2Config",
    "LMOutput",
    "convert",
    "from_config",
    "from_hf",
    "generate",
    "load",
    "logits",
    "reprogrammed_logits",
]

Cache = tuple[text.KeyValues, ...]


class GPT2Config(NamedTuple):
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    max_positions: int = 1024
    layer_norm_eps: float = 1e-5
    bos_id: int | None = 50256
    eos_id: int | None = 50256

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> GPT2Config:
        """From a Hugging Face ``config.json`` dict (``GPT2Config``)."""
        act = config.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"only activation_function='gelu_new' is supported, got {act!r}")
        if config.get("n_inner") not in (None, 4 * config["n_embd"]):
            raise ValueError(f"only n_inner=None (4 * n_embd) is supported, got {config['n_inner']}")
        if not config.get("scale_attn_weights", True) or config.get("scale_attn_by_inverse_layer_idx", False):
            raise ValueError(
                "only GPT-2's attention scale 1/sqrt(head_dim) is supported (scale_attn_weights=True, "
                "scale_attn_by_inverse_layer_idx=False)"
            )
        vocab = config["vocab_size"]
        ids = {k: config.get(k) for k in ("bos_token_id", "eos_token_id")}
        ids = {k: v if isinstance(v, int) and 0 <= v < vocab else None for k, v in ids.items()}
        return cls(
            vocab_size=vocab,
            hidden_size=config["n_embd"],
            num_layers=config["n_layer"],
            num_heads=config["n_head"],
            max_positions=config["n_positions"],
            layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
            bos_id=ids["bos_token_id"],
            eos_id=ids["eos_token_id"],
        )


class LMOutput(NamedTuple):
    """Logits ``(B, L, V)`` with the mask and positions they were computed at, and the cache."""

    logits: jax.Array
    mask: jax.Array
    positions: jax.Array
    cache: Cache


class Block(nn.Module):
    """Pre-LN decoder block; the keys a query sees pass the ``"kv"`` site."""

    config: GPT2Config

    @nn.compact
    def __call__(self, h, mask, positions, cache: text.KeyValues | None = None, index=None):
        c = self.config
        b, n, d = h.shape
        qkv = nn.Dense(3 * d, name="attn_qkv")(nn.LayerNorm(c.layer_norm_eps, name="ln_1")(h))
        q, k, v = (t.reshape(b, n, c.num_heads, d // c.num_heads) for t in jnp.split(qkv, 3, axis=-1))
        stored = text.KeyValues(k, v, mask, positions)
        if cache is not None:
            stored = text.KeyValues(
                *(
                    jax.lax.dynamic_update_slice_in_dim(old, new, index, axis=1)
                    for old, new in zip(cache, stored)
                )
            )
        kv = Site(name="kv")(stored)
        a = text.attend(q, kv, positions, causal=True).reshape(b, n, d)
        h = h + nn.Dense(d, name="attn_proj")(a)
        m = nn.LayerNorm(c.layer_norm_eps, name="ln_2")(h)
        m = nn.Dense(d, name="mlp_proj")(nn.gelu(nn.Dense(4 * d, name="mlp_fc")(m), approximate=True))
        return h + m, stored


class GPT2(nn.Module):
    """GPT-2: ``x -> LMOutput``; with ``cache`` (and its write ``index``) one decoding step.

    ``generated`` (tokens like ``x``) continues ``x`` without a cache: the hooks see ``x``
    alone at ``"embeddings"`` and the continuation at ``"embeddings_step"``, as in cached
    decoding, so a prompt wraps the input once and generated tokens follow it.
    """

    config: GPT2Config
    remat: str | None = None  # a jaxreprog.models.remat policy for the blocks

    @nn.compact
    def __call__(self, x, cache: Cache | None = None, index=None, generated=None) -> LMOutput:
        c = self.config
        ids, mask = text.check_tokens(x)
        wte = nn.Embed(c.vocab_size, c.hidden_size, name="wte")

        def step(tokens, before: text.Embedded | text.KeyValues) -> text.Embedded:
            """``tokens`` after the last position of ``before``, through the ``"embeddings_step"`` site."""
            last = jnp.where(before.mask, before.positions, -1).max(axis=1, keepdims=True)
            e = text.embed(*text.check_tokens(tokens), wte.embedding)
            return Site(name="embeddings_step")(e._replace(positions=last + 1 + e.positions))

        if cache is None:
            e = Site(name="embeddings")(text.embed(ids, mask, wte.embedding))
            if generated is not None:
                e = text.Embedded(*(jnp.concatenate(pair, axis=1) for pair in zip(e, step(generated, e))))
            length = e.h.shape[1]
        else:
            e = step(x, cache[0])
            length = cache[0].k.shape[1]
        if length > c.max_positions:
            raise ValueError(
                f"the sequence has {length} tokens (prompts and generated tokens included); this "
                f"model has {c.max_positions} positions"
            )
        h = e.h + nn.Embed(c.max_positions, c.hidden_size, name="wpe")(e.positions)
        stored, block = [], remat_block(Block, self.remat)
        for i in range(c.num_layers):
            h, kv = block(c, name=f"layer_{i}")(
                h, e.mask, e.positions, None if cache is None else cache[i], index
            )
            stored.append(kv)
        h = nn.LayerNorm(c.layer_norm_eps, name="ln_f")(h)
        return LMOutput(wte.attend(h), e.mask, e.positions, tuple(stored))


def _last(out: LMOutput) -> jax.Array:
    """Logits at each row's last real token (the highest position), ``(B, V)``."""
    i = jnp.argmax(jnp.where(out.mask, out.positions, -2), axis=1)
    return jnp.take_along_axis(out.logits, i[:, None, None], axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """``apply(params, x, hook=None) -> (B, V)`` next-token logits; keeps its module for
    :func:`logits` and :func:`generate`."""

    module: GPT2

    def run(self, params, x, hook: Hook | None = None, **kwargs) -> LMOutput:
        with intercept(hook):
            return self.module.apply(params, x, **kwargs)

    def __call__(self, params, x, hook: Hook | None = None) -> jax.Array:
        return _last(self.run(params, x, hook))


def _lm(model: FrozenModel) -> CausalLM:
    if not isinstance(model, FrozenModel) or not isinstance(model.apply, CausalLM):
        raise TypeError("model must be a GPT-2 FrozenModel from jr.models.gpt2.load / from_hf")
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
    """Every position's next-token logits ``(B, L, V)`` of a reprogrammed GPT-2, prompt positions removed.

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
    model: FrozenModel, params, x, steps: int, *, hook: Hook | None = None, use_cache: bool = True
) -> jax.Array:
    """Greedy decoding of ``steps`` tokens after each row of ``x``; returns ``(B, steps)`` int32.

    With ``use_cache`` the input (and what the hook inserts) runs once and each step
    feeds one token against the cached keys; without it every step recomputes the
    whole sequence (the reference the cache must equal): the input, which the hook
    sees at ``"embeddings"``, then the tokens generated so far at ``"embeddings_step"``
    (a suffix prompt stays after the input, not after the generated tokens). Works
    under ``jax.jit``.
    """
    lm = _lm(model)
    ids, mask = text.check_tokens(x)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    b = ids.shape[0]
    if not use_cache:
        x = {"input_ids": ids, "attention_mask": mask}
        empty = {
            "input_ids": jnp.zeros((b, steps), ids.dtype),
            "attention_mask": jnp.zeros((b, steps), mask.dtype),
        }

        def recompute(gen, t):
            nxt = jnp.argmax(_last(lm.run(params, x, hook, generated=gen)), axis=-1).astype(ids.dtype)
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
    first = jnp.argmax(_last(out), axis=-1).astype(ids.dtype)

    def step(carry, t):
        cache, tok = carry
        one = {"input_ids": tok[:, None], "attention_mask": jnp.ones((b, 1), mask.dtype)}
        o = lm.run(params, one, hook, cache=cache, index=filled + t)
        nxt = jnp.argmax(o.logits[:, 0], axis=-1).astype(ids.dtype)
        return (o.cache, nxt), tok

    (_, last), toks = jax.lax.scan(step, (cache, first), jnp.arange(steps - 1))
    return jnp.concatenate([toks.T, last[:, None]], axis=1).astype(jnp.int32)


# ------------------------------------------------------------------ checkpoints


def convert(state: dict[str, np.ndarray], config: GPT2Config) -> dict[str, Any]:
    """A Hugging Face GPT-2 state dict -> ``{"params": ...}``.

    GPT-2's ``Conv1D`` weights are already ``(in, out)``; the LM head is tied to ``wte``.
    Every tensor must be used (apart from the causal-mask buffers ``h.{i}.attn.bias`` /
    ``masked_bias`` and an ``lm_head.weight`` equal to ``wte``) and have the config's shape.
    """
    sd = {k.removeprefix("transformer."): v for k, v in state.items()}
    used = {k for k in sd if re.fullmatch(r"h\.\d+\.attn\.(?:masked_)?bias", k)}
    get = checkpoint.getter(
        sd, lambda name: KeyError(f"checkpoint has no tensor {name!r} (is it a GPT-2 checkpoint?)"), used=used
    )
    dense = functools.partial(checkpoint.dense, get, transpose=False)
    norm = functools.partial(checkpoint.layer_norm, get)

    p: dict[str, Any] = {
        "wte": {"embedding": get("wte.weight")},
        "wpe": {"embedding": get("wpe.weight")},
        "ln_f": norm("ln_f"),
    }
    for i in range(config.num_layers):
        t = f"h.{i}"
        p[f"layer_{i}"] = {
            "ln_1": norm(f"{t}.ln_1"),
            "attn_qkv": dense(f"{t}.attn.c_attn"),
            "attn_proj": dense(f"{t}.attn.c_proj"),
            "ln_2": norm(f"{t}.ln_2"),
            "mlp_fc": dense(f"{t}.mlp.c_fc"),
            "mlp_proj": dense(f"{t}.mlp.c_proj"),
        }
    if "lm_head.weight" in sd and np.array_equal(sd["lm_head.weight"], sd["wte.weight"]):
        used.add("lm_head.weight")  # tied; an untied head is reported as unused
    checkpoint.check_unused(sd, used, "GPT-2")
    checkpoint.check_shapes(p, jax.eval_shape(GPT2(config).init, jax.random.key(0), _example())["params"])
    return {"params": jax.tree.map(jnp.asarray, p)}


def from_hf(path: str | os.PathLike, name: str = "gpt2", *, remat: str | None = None) -> FrozenModel:
    """A Hugging Face GPT-2 checkpoint directory (``config.json`` + ``model.safetensors``);
    ``remat``: a :mod:`jaxreprog.models.remat` policy for the blocks."""
    check_remat(remat)
    folder = os.fspath(path)
    folder = os.path.dirname(folder) if os.path.isfile(folder) else folder
    with open(os.path.join(folder, "config.json")) as f:
        config = GPT2Config.from_hf(json.load(f))
    variables = convert(checkpoint.read_safetensors(os.path.join(folder, "model.safetensors")), config)
    return FrozenModel(CausalLM(GPT2(config, remat)), variables, _spec(config, name))


def _spec(config: GPT2Config, name: str) -> TokenSpec:
    """The model's TokenSpec; special ids outside the vocabulary (GPT-2's 50256 in a small
    test config) are dropped, as :meth:`GPT2Config.from_hf` does."""
    bos, eos = (
        i if i is not None and 0 <= i < config.vocab_size else None for i in (config.bos_id, config.eos_id)
    )
    return TokenSpec(
        vocab_size=config.vocab_size,
        max_length=config.max_positions,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        pad_id=eos or 0,
        name=name,
        bos_id=bos,
        eos_id=eos,
        causal=True,
    )


def from_config(config: GPT2Config, key: jax.Array, *, remat: str | None = None) -> FrozenModel:
    """A randomly initialised GPT-2 of any size (tests, ablations)."""
    module = GPT2(config, check_remat(remat))
    return FrozenModel(CausalLM(module), jax.jit(module.init)(key, _example()), _spec(config, "gpt2"))


def _example() -> dict[str, jax.Array]:
    return {"input_ids": jnp.zeros((1, 2), jnp.int32), "attention_mask": jnp.ones((1, 2), jnp.int32)}


def load(
    name: str = "gpt2", weights: str | os.PathLike | None = None, *, remat: str | None = None
) -> FrozenModel:
    """Load GPT-2 from a Hugging Face checkpoint directory (no weights ship offline);
    ``remat``: a :mod:`jaxreprog.models.remat` policy for the blocks (default none)."""
    check_remat(remat)
    if weights is None:
        raise ValueError(
            f"no offline pretrained weights for {name!r}: pass weights=<directory with config.json and "
            "model.safetensors> (e.g. from GPT2LMHeadModel.save_pretrained)"
        )
    return from_hf(weights, name=name, remat=remat)
