"""GPT-2 (Radford et al. 2019): a causal language model with a KV cache and named sites.

No GPT-2 weights install offline, so ``load("gpt2", weights=DIR)`` reads a Hugging
Face checkpoint directory (``config.json`` + ``model.safetensors``, as written by
``GPT2LMHeadModel.save_pretrained``); :func:`from_hf` is the same converter.
``apply(params, x, hook=None)`` returns the next-token logits ``(B, V)`` at each
row's last real token; :func:`logits` gives every position, :func:`reprogrammed_logits`
every position of a reprogrammed GPT-2 (prompt positions removed), and :func:`generate`
decodes greedily (or samples, with a key), with or without the cache; these are
:mod:`jaxreprog.models.causal`'s, shared with the Llama family.

Sites (module paths the hook sees):

* ``"lookup"`` — :class:`~jaxreprog.hooks.Lookup` of the whole input: its ids and the
  token-embedding table they are about to be looked up in. Token replacement swaps the
  table here (the tied output head keeps the frozen one, so the logits stay over GPT-2's
  vocabulary); a template inserts ids. Generated tokens, GPT-2's own, do not pass it.
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

import functools
import json
import os
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog.core import FrozenModel, Site, TokenSpec
from jaxreprog.models import causal, checkpoint, text
from jaxreprog.models.causal import Cache, CausalLM, LMOutput, generate, logits, reprogrammed_logits
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
    def __call__(self, x, cache: Cache | None = None, index=None, generated=None, last=False) -> LMOutput:
        c = self.config
        wte = nn.Embed(c.vocab_size, c.hidden_size, name="wte")
        e = causal.embed_input(
            x,
            cache,
            generated,
            lambda ids, mask: text.embed(ids, mask, wte.embedding),
            c.max_positions,
            table=wte.embedding,
        )
        h = e.h + nn.Embed(c.max_positions, c.hidden_size, name="wpe")(e.positions)
        stored, block = [], remat_block(Block, self.remat)
        for i in range(c.num_layers):
            h, kv = block(c, name=f"layer_{i}")(
                h, e.mask, e.positions, None if cache is None else cache[i], index
            )
            stored.append(kv)
        out = LMOutput(None, e.mask, e.positions, tuple(stored))
        if last:  # the head at each row's last real token only (CausalLM.__call__)
            h, out = causal.last_position(h, out)
        h = nn.LayerNorm(c.layer_norm_eps, name="ln_f")(h)
        return out._replace(logits=wte.attend(h))


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
    return {"params": jax.device_put(p, may_alias=False)}


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
