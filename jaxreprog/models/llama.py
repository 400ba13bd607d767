"""Llama-style decoders (Touvron et al. 2023): Llama 2/3.x, Qwen2/2.5, Qwen3, Mistral, Gemma 2/3.

One Flax module covers the family: token embeddings, then per layer
``h += Attn(RMSNorm(h))``, ``h += MLP(RMSNorm(h))``, a final RMSNorm and the LM head.

* **Attention**: rotary position embeddings (RoPE, Su et al. 2021: ``default``,
  ``linear`` and Llama 3.1's ``llama3`` frequency scaling; other ``rope_type`` s are
  refused), grouped-query attention (``num_key_value_heads``: each key/value head
  serves ``num_heads / num_kv_heads`` query heads), optional q/k/v biases (Qwen2),
  RMSNorm of each query and key head (Qwen3, Gemma 3), a sliding window per layer
  (Mistral; Qwen with ``use_sliding_window``; Gemma's alternating local and global
  layers, each with its own RoPE), Gemma 2's ``query_pre_attn_scalar`` and attention
  logit soft-capping.
* **MLP**: gated, ``down(act(gate(x)) * up(x))``: SwiGLU (``silu``) or GeGLU
  (``gelu_pytorch_tanh``, Gemma).
* **Gemma**: embeddings times ``√D``, RMSNorm with ``(1 + w)``, norms after attention
  and MLP too, final logit soft-capping.
* Tied (Gemma, Qwen's small models, Llama 3.2) or separate LM head.

``load(name, weights=DIR)`` reads a Hugging Face checkpoint directory (``config.json``
with ``model.safetensors``, or shards listed in ``model.safetensors.index.json``),
tensor by tensor; ``name`` is ``"llama"``, ``"qwen2"``, ``"qwen3"``, ``"mistral"``,
``"gemma2"`` or ``"gemma3"`` and must agree with the config's ``model_type``. A
config option this module does not implement is refused with its name, never run
wrong.

The model is a causal LM like GPT-2 (:mod:`jaxreprog.models.causal`): ``apply(params, x,
hook=None)`` gives the last real token's next-token logits ``(B, V)``; :func:`logits`,
:func:`reprogrammed_logits` and :func:`generate` (greedy or sampled, with a KV cache)
are shared. Sites: ``"lookup"`` (:class:`~jaxreprog.hooks.Lookup`; Gemma's ``√D`` scale
multiplies what it looks up), ``"embeddings"`` and ``"embeddings_step"``
(:class:`~jaxreprog.models.text.Embedded`, after Gemma's ``√D`` scale: PEFT's
``inputs_embeds``), ``"layer_{i}/kv"`` (:class:`~jaxreprog.models.text.KeyValues` of
``num_heads`` heads: the rotated keys, shared key/value heads repeated for the query
heads they serve, so prefix methods see one key per query head), ``"layer_{i}"`` and
each submodule by path. The cache keeps the ``num_kv_heads`` heads. Positions come from
the mask, so left and right padding agree; prefix keys (position ``-1``) are not
rotated and every query sees them, inside a sliding window too.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, PartitionSpec
from jax.typing import DTypeLike

from jaxreprog.core import FrozenModel, Site, TokenSpec
from jaxreprog.models import causal, checkpoint, text
from jaxreprog.models.causal import Cache, CausalLM, LMOutput, generate, logits, reprogrammed_logits
from jaxreprog.models.checkpoint import CheckpointError
from jaxreprog.models.remat import block as remat_block
from jaxreprog.models.remat import check as check_remat

__all__ = [
    "NAMES",
    "TENSOR_PARALLEL",
    "CausalLM",
    "Decoder",
    "DecoderConfig",
    "LMOutput",
    "Rope",
    "convert",
    "from_config",
    "from_hf",
    "generate",
    "load",
    "logits",
    "reprogrammed_logits",
]

# Megatron-style tensor parallelism for jr.shard(model, mesh, llama.TENSOR_PARALLEL): the q/k/v, gate
# and up projections split by output column over "model", o and down by input row (each layer then
# needs one all-reduce, never a gathered weight), the embeddings and head by vocabulary.
TENSOR_PARALLEL: tuple[tuple[str, PartitionSpec], ...] = (
    *(
        (f"*/{n}/kernel", PartitionSpec(None, "model"))
        for n in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    ),
    *(
        (f"*/{n}/bias", PartitionSpec("model"))
        for n in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    ),
    *((f"*/{n}/kernel", PartitionSpec("model", None)) for n in ("o_proj", "down_proj")),
    ("*/embed_tokens/embedding", PartitionSpec("model", None)),
    ("*/lm_head/kernel", PartitionSpec(None, "model")),
)


class _Family(NamedTuple):
    model_types: tuple[str, ...]
    architecture: str
    defaults: dict[str, Any]


_COMMON = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu", "rope_theta": 10000.0}
_GEMMA = {
    **_COMMON,
    "tie_word_embeddings": True,
    "hidden_activation": "gelu_pytorch_tanh",
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}
# The Hugging Face config classes' defaults for the keys read here (a config.json may leave them out).
_FAMILIES: dict[str, _Family] = {
    "llama": _Family(
        ("llama",),
        "LlamaForCausalLM",
        {**_COMMON, "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2},
    ),
    "qwen2": _Family(("qwen2",), "Qwen2ForCausalLM", {**_COMMON, "max_position_embeddings": 32768}),
    "qwen3": _Family(
        ("qwen3",), "Qwen3ForCausalLM", {**_COMMON, "max_position_embeddings": 32768, "head_dim": 128}
    ),
    "mistral": _Family(
        ("mistral",),
        "MistralForCausalLM",
        {
            **_COMMON,
            "max_position_embeddings": 131072,
            "sliding_window": 4096,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ),
    "gemma2": _Family(
        ("gemma2",),
        "Gemma2ForCausalLM",
        {
            **_GEMMA,
            "max_position_embeddings": 8192,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
    ),
    "gemma3": _Family(
        ("gemma3_text",),
        "Gemma3ForCausalLM",
        {**_GEMMA, "max_position_embeddings": 131072, "rope_theta": 1e6},
    ),
}

NAMES: tuple[str, ...] = tuple(_FAMILIES)
"""The names :func:`load` takes, one per family (``jr.models.load(name, weights=DIR)``)."""

_ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu": lambda x: nn.gelu(x, approximate=False),
}
_ROPE_TYPES = ("default", "linear", "llama3")
_LAYER_TYPES = ("full_attention", "sliding_attention")


class Rope(NamedTuple):
    """Rotary position embeddings of one layer: base ``theta`` and a frequency scaling ``kind``.

    ``"default"``: ``1 / theta^(2i/d)``; ``"linear"`` divides them by ``factor`` (position
    interpolation, Chen et al. 2023); ``"llama3"`` (Llama 3.1) divides the low frequencies
    (wavelength above ``original_max_positions / low_freq_factor``) by ``factor``, keeps the
    high ones (below ``original_max_positions / high_freq_factor``) and blends in between.
    """

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192

    def inv_freq(self, dim: int) -> np.ndarray:
        """``(dim / 2,)`` float32 inverse frequencies, computed as Hugging Face does (float32)."""
        f32 = np.float32
        inv = f32(1.0) / (f32(self.theta) ** (np.arange(0, dim, 2).astype(f32) / f32(dim)))
        if self.kind == "linear":
            return (inv / f32(self.factor)).astype(f32)
        if self.kind == "llama3":
            old, factor = f32(self.original_max_positions), f32(self.factor)
            low_wavelen, high_wavelen = old / f32(self.low_freq_factor), old / f32(self.high_freq_factor)
            wavelen = f32(2 * math.pi) / inv
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (old / wavelen - f32(self.low_freq_factor)) / f32(
                self.high_freq_factor - self.low_freq_factor
            )
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(f32)
        return inv.astype(f32)


class DecoderConfig(NamedTuple):
    """A Llama-family decoder; :meth:`from_hf` reads a Hugging Face ``config.json``.

    ``windows`` / ``ropes``: per layer (empty: no window, the default RoPE everywhere).
    ``gemma``: Gemma's ``√D`` embedding scale, ``(1 + w)`` RMSNorm and norms after
    attention and MLP. ``attn_scale``: the query scale (``None``: ``head_dim**-0.5``).
    """

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    max_positions: int = 2048
    norm_eps: float = 1e-6
    activation: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    gemma: bool = False
    attn_scale: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    windows: tuple[int | None, ...] = ()
    ropes: tuple[Rope, ...] = ()
    tie_embeddings: bool = False
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    def window(self, layer: int) -> int | None:
        return self.windows[layer] if self.windows else None

    def rope(self, layer: int) -> Rope:
        return self.ropes[layer] if self.ropes else Rope()

    @classmethod
    def from_hf(cls, config: dict[str, Any], name: str = "llama") -> DecoderConfig:
        """From a Hugging Face ``config.json`` dict; ``name`` (a family of :data:`NAMES`) must
        agree with its ``model_type`` and ``architectures``. Options this module does not
        implement raise a ``ValueError`` naming them."""
        family = _family(config, name)
        defaults = _FAMILIES[family].defaults

        def get(key: str) -> Any:
            """The config's value, as Hugging Face reads it: an explicit null stays null (Mistral
            v0.2's sliding_window: no window); a missing key takes the config class's default."""
            return config[key] if key in config else defaults.get(key)

        def refuse(what: str) -> ValueError:
            return ValueError(f"{name}: config.json sets {what}, which jaxreprog's {family} does not support")

        if config.get("quantization_config"):
            method = (config["quantization_config"] or {}).get("quant_method", "?")
            raise refuse(f"quantization_config (quant_method={method!r}); load unquantized weights")
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ):
            if not isinstance(config.get(key), int) or config[key] <= 0:
                raise ValueError(
                    f"{name}: config.json needs a positive integer {key}, got {config.get(key)!r}"
                )
        layers, heads, hidden = (
            config["num_hidden_layers"],
            config["num_attention_heads"],
            config["hidden_size"],
        )
        kv_heads = config.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise ValueError(
                f"{name}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        gemma = family.startswith("gemma")
        act = get("hidden_activation" if gemma else "hidden_act")
        if act not in _ACTIVATIONS:
            key = "hidden_activation" if gemma else "hidden_act"
            raise refuse(f"{key}={act!r} (supported: {', '.join(_ACTIVATIONS)})")
        if config.get("use_bidirectional_attention"):
            raise refuse("use_bidirectional_attention=true (an encoder, not a causal LM)")
        if family == "mistral" and config.get("layer_types") is not None:
            raise refuse("layer_types (alternating attention is Ministral's; Mistral slides on every layer)")
        for key in ("partial_rotary_factor",):
            if config.get(key) not in (None, 1, 1.0):
                raise refuse(f"{key}={config[key]} (RoPE on part of each head)")
        head_dim = get("head_dim") or hidden // heads
        layer_types = _layer_types(config, family, layers, get, refuse)
        window = get("sliding_window")
        if family in ("qwen2", "qwen3") and not config.get("use_sliding_window", False):
            window = None
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"{name}: sliding_window must be a positive integer, got {window!r}")
        windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
        ropes = tuple(_rope(config, family, t, get, refuse) for t in layer_types)
        scalar = get("query_pre_attn_scalar") if gemma else None
        vocab = config["vocab_size"]
        ids = {k: _token_id(get(k), vocab) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        # Qwen2 has q/k/v biases always; Llama, Qwen3 and Gemma all four projections' with attention_bias.
        bias = bool(config.get("attention_bias")) and family in ("llama", "qwen3", "gemma2", "gemma3")
        return cls(
            family=family,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=config["intermediate_size"],
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_positions=get("max_position_embeddings") or defaults["max_position_embeddings"],
            norm_eps=float(get("rms_norm_eps") or defaults["rms_norm_eps"]),
            activation=act,
            qkv_bias=bias or family == "qwen2",
            o_bias=bias,
            mlp_bias=bool(config.get("mlp_bias")) and family == "llama",
            qk_norm=family in ("qwen3", "gemma3"),
            gemma=gemma,
            attn_scale=None if scalar is None else float(scalar) ** -0.5,
            attn_softcap=_float_or_none(get("attn_logit_softcapping")) if gemma else None,
            final_softcap=_float_or_none(get("final_logit_softcapping")) if gemma else None,
            windows=windows,
            ropes=ropes,
            tie_embeddings=bool(get("tie_word_embeddings")),
            bos_id=ids["bos_token_id"],
            eos_id=ids["eos_token_id"],
            pad_id=ids["pad_token_id"],
        )


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _token_id(value: Any, vocab: int) -> int | None:
    """A special token id inside the vocabulary (the first of a list, as Llama 3's eos), else ``None``."""
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, int) and 0 <= v < vocab), None)
    return value if isinstance(value, int) and 0 <= value < vocab else None


def _family(config: dict[str, Any], name: str) -> str:
    """The family ``name`` loads, checked against the config's ``model_type`` and ``architectures``."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown Llama-family name {name!r}; known: {', '.join(NAMES)}")
    want = _FAMILIES[name]
    model_type = config.get("model_type")
    if model_type not in want.model_types:
        other = next((n for n, f in _FAMILIES.items() if model_type in f.model_types), None)
        if other:
            hint = f"; load it as jr.models.load({other!r}, weights=...)"
        elif model_type == "gemma3":
            hint = " (multimodal Gemma 3: only text-only checkpoints, model_type 'gemma3_text', load)"
        else:
            hint = f"; supported: {', '.join(t for f in _FAMILIES.values() for t in f.model_types)}"
        raise ValueError(
            f"{name}: config.json has model_type {model_type!r}, not {want.model_types[0]!r}{hint}"
        )
    architectures = config.get("architectures")
    if architectures and want.architecture not in architectures:
        raise ValueError(
            f"{name}: config.json's architectures are {architectures}; only {want.architecture} (a causal LM "
            "with its LM head) is supported"
        )
    return name


def _layer_types(config, family, layers, get, refuse) -> tuple[str, ...]:
    types = config.get("layer_types")
    if types is None:
        if family == "mistral":
            types = ["sliding_attention"] * layers
        elif family in ("qwen2", "qwen3"):
            start = config.get("max_window_layers", 28)
            types = ["sliding_attention" if i >= start else "full_attention" for i in range(layers)]
        elif family == "gemma2":
            types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
        elif family == "gemma3":
            pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
        else:
            types = ["full_attention"] * layers
    if not isinstance(types, list) or len(types) != layers:
        raise ValueError(f"config.json's layer_types must list {layers} layer types, got {types!r:.80}")
    unknown = sorted({t for t in types if t not in _LAYER_TYPES}, key=str)
    if unknown:
        raise refuse(f"layer_types {unknown} (supported: {', '.join(_LAYER_TYPES)})")
    return tuple(types)


def _rope(config, family, layer_type, get, refuse) -> Rope:
    """The RoPE of a layer type from ``rope_parameters`` (transformers 5) or the older
    ``rope_theta`` / ``rope_scaling`` (/ Gemma 3's ``rope_local_base_freq``)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ValueError(f"config.json's rope_parameters must be a dict, got {params!r:.80}")
    local = family == "gemma3" and layer_type == "sliding_attention"
    if set(params) & set(_LAYER_TYPES):  # one per layer type (Gemma 3 in transformers 5)
        params = params.get(layer_type) or {}
        theta = 10000.0 if local else get("rope_theta") or _FAMILIES[family].defaults["rope_theta"]
    elif local:  # older Gemma 3: rope_scaling and rope_theta are the global layers'
        params, theta = {}, config.get("rope_local_base_freq") or 10000.0
    else:
        theta = get("rope_theta") or _FAMILIES[family].defaults["rope_theta"]
    theta = params.get("rope_theta") or theta
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_TYPES:
        raise refuse(f"rope_type {kind!r} (supported: {', '.join(_ROPE_TYPES)})")
    if params.get("partial_rotary_factor") not in (None, 1, 1.0):
        raise refuse(f"partial_rotary_factor={params['partial_rotary_factor']} (RoPE on part of each head)")
    if params.get("attention_factor") not in (None, 1, 1.0):
        raise refuse(f"rope attention_factor={params['attention_factor']}")
    rope = Rope(theta=float(theta), kind=kind)
    if kind == "default":
        return rope
    factor = params.get("factor")
    if not isinstance(factor, int | float) or factor <= 0:
        raise ValueError(f"config.json's {kind} RoPE scaling needs a positive factor, got {factor!r}")
    if kind == "linear":
        return rope._replace(factor=float(factor))
    missing = [
        k for k in ("low_freq_factor", "high_freq_factor") if not isinstance(params.get(k), int | float)
    ]
    if missing:
        raise ValueError(f"config.json's llama3 RoPE scaling lacks {missing}")
    original = params.get("original_max_position_embeddings") or get("max_position_embeddings")
    return rope._replace(
        factor=float(factor),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_positions=int(original),
    )


# ---------------------------------------------------------------------- the model


class RMSNorm(nn.Module):
    """``x / rms(x) · w`` over the last axis (Zhang & Sennrich 2019); Gemma's ``· (1 + w)``."""

    eps: float
    gemma: bool = False

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.gemma else nn.initializers.ones
        w = self.param("scale", init, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (1 + w if self.gemma else w)).astype(x.dtype)


def rotate(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """RoPE of ``x`` ``(B, L, H, Dh)`` at ``positions`` ``(B, L)``, halves rotated as in Hugging Face."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class Layer(nn.Module):
    """One decoder layer; the keys a query sees pass the ``"kv"`` site (``num_heads`` heads)."""

    config: DecoderConfig
    index: int

    @nn.compact
    def __call__(self, h, mask, positions, cache: text.KeyValues | None = None, index=None):
        c, i = self.config, self.index
        b, n, d = h.shape
        norm = lambda name: RMSNorm(c.norm_eps, c.gemma, name=name)  # noqa: E731
        x = norm("input_layernorm")(h)
        q = nn.Dense(c.num_heads * c.head_dim, use_bias=c.qkv_bias, name="q_proj")(x)
        k = nn.Dense(c.num_kv_heads * c.head_dim, use_bias=c.qkv_bias, name="k_proj")(x)
        v = nn.Dense(c.num_kv_heads * c.head_dim, use_bias=c.qkv_bias, name="v_proj")(x)
        q = q.reshape(b, n, c.num_heads, c.head_dim)
        k = k.reshape(b, n, c.num_kv_heads, c.head_dim)
        v = v.reshape(b, n, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = norm("q_norm")(q), norm("k_norm")(k)
        inv_freq = c.rope(i).inv_freq(c.head_dim)
        q, k = rotate(q, positions, inv_freq), rotate(k, positions, inv_freq)
        stored = text.KeyValues(k, v, mask, positions)
        if cache is not None:
            stored = text.KeyValues(
                *(
                    jax.lax.dynamic_update_slice_in_dim(old, new, index, axis=1)
                    for old, new in zip(cache, stored)
                )
            )
        group = c.num_heads // c.num_kv_heads
        kv = Site(name="kv")(
            stored._replace(k=jnp.repeat(stored.k, group, axis=2), v=jnp.repeat(stored.v, group, axis=2))
        )
        a = text.attend(
            q, kv, positions, causal=True, scale=c.attn_scale, softcap=c.attn_softcap, window=c.window(i)
        )
        a = nn.Dense(d, use_bias=c.o_bias, name="o_proj")(a.reshape(b, n, c.num_heads * c.head_dim))
        if c.gemma:
            a = norm("post_attention_layernorm")(a)
        h = h + a
        x = norm("pre_feedforward_layernorm" if c.gemma else "post_attention_layernorm")(h)
        gate = nn.Dense(c.intermediate_size, use_bias=c.mlp_bias, name="gate_proj")(x)
        up = nn.Dense(c.intermediate_size, use_bias=c.mlp_bias, name="up_proj")(x)
        m = nn.Dense(d, use_bias=c.mlp_bias, name="down_proj")(_ACTIVATIONS[c.activation](gate) * up)
        if c.gemma:
            m = norm("post_feedforward_layernorm")(m)
        return h + m, stored


class Embed(nn.Module):
    """The token table ``embedding`` ``(V, D)``; Gemma's also a ``scale`` (``√D``) that multiplies
    the looked-up vectors (not the LM head), kept beside the table so that
    :func:`~jaxreprog.models.text.word_embeddings` gives what the ``"embeddings"`` site carries."""

    vocab_size: int
    hidden_size: int
    scaled: bool = False

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.initializers.normal(0.02), (self.vocab_size, self.hidden_size), jnp.float32
        )
        if self.scaled:
            self.scale = self.param("scale", lambda *_: jnp.asarray(self.hidden_size**0.5, jnp.float32), ())

    def __call__(self, ids, mask) -> text.Embedded:
        e = text.embed(ids, mask, self.embedding)
        return e._replace(h=e.h * self.scale.astype(e.h.dtype)) if self.scaled else e

    def attend(self, h):
        return h @ self.embedding.T.astype(h.dtype)


class Decoder(nn.Module):
    """A Llama-family decoder: ``x -> LMOutput``; with ``cache`` (and its write ``index``) one
    decoding step; ``generated`` continues ``x`` without a cache (as GPT-2's)."""

    config: DecoderConfig
    remat: str | None = None  # a jaxreprog.models.remat policy for the layers

    @nn.compact
    def __call__(self, x, cache: Cache | None = None, index=None, generated=None, last=False) -> LMOutput:
        c = self.config
        embed = Embed(c.vocab_size, c.hidden_size, c.gemma, name="embed_tokens")
        # The "lookup" site (token replacement, templates): the table, and Gemma's scale after it.
        scale = embed.scale if c.gemma else None
        e = causal.embed_input(
            x, cache, generated, embed, c.max_positions, table=embed.embedding, scale=scale
        )
        h, stored, layer = e.h, [], remat_block(Layer, self.remat)
        for i in range(c.num_layers):
            h, kv = layer(c, i, name=f"layer_{i}")(
                h, e.mask, e.positions, None if cache is None else cache[i], index
            )
            stored.append(kv)
        result = LMOutput(None, e.mask, e.positions, tuple(stored))
        if last:  # the head at each row's last real token only (CausalLM.__call__)
            h, result = causal.last_position(h, result)
        h = RMSNorm(c.norm_eps, c.gemma, name="norm")(h)
        if c.tie_embeddings:
            out = embed.attend(h)
        else:
            out = nn.Dense(c.vocab_size, use_bias=False, name="lm_head")(h)
        if c.final_softcap is not None:
            out = c.final_softcap * jnp.tanh(out / c.final_softcap)
        return result._replace(logits=out)


# ------------------------------------------------------------------ checkpoints


def convert(
    state: Any,
    config: DecoderConfig,
    *,
    dtype: DTypeLike = jnp.float32,
    shardings: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """A Hugging Face state dict -> ``{"params": ...}``, tensor by tensor.

    ``state`` is any mapping (e.g. a lazy :class:`~jaxreprog.models.checkpoint.SafetensorsReader`);
    each tensor is read, cast to ``dtype``, checked against the config's shape and placed before
    the next is read: on the default device, or with ``shardings`` (the parameters' shapes -> a
    sharding per leaf, e.g. :func:`jaxreprog.train.sharding.shardings` over a mesh) straight onto
    its devices, so no device and no host ever holds more than one whole tensor at a time.

    Every tensor must be used (an ``lm_head.weight`` equal to the embeddings of a tied
    model apart; the rotary ``inv_freq`` buffers older checkpoints hold are skipped).
    """
    names = set(state)
    used = {n for n in names if n.endswith("rotary_emb.inv_freq")}
    read = checkpoint.getter(
        state,
        lambda name: KeyError(f"checkpoint has no tensor {name!r} (is it a {config.family} checkpoint?)"),
        used=used,
    )
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"convert: dtype must be a floating dtype (float32, bfloat16, ...), got {dtype}")

    def get(name: str) -> Callable[[], np.ndarray]:
        return lambda: np.asarray(read(name), dtype)  # read when placed, one tensor at a time

    def transposed(name: str) -> Callable[[], np.ndarray]:
        return lambda: np.asarray(read(name), dtype).T

    def dense(name: str, bias: bool) -> dict[str, jax.Array]:
        return {"kernel": transposed(f"{name}.weight"), **({"bias": get(f"{name}.bias")} if bias else {})}

    def norm(name: str) -> dict[str, jax.Array]:
        return {"scale": get(f"{name}.weight")}

    embed: dict[str, Any] = {"embedding": get("model.embed_tokens.weight")}
    if config.gemma:
        embed["scale"] = lambda: np.asarray(config.hidden_size**0.5, dtype)
    p: dict[str, Any] = {"embed_tokens": embed}
    for i in range(config.num_layers):
        t = f"model.layers.{i}"
        layer = {
            "input_layernorm": norm(f"{t}.input_layernorm"),
            "q_proj": dense(f"{t}.self_attn.q_proj", config.qkv_bias),
            "k_proj": dense(f"{t}.self_attn.k_proj", config.qkv_bias),
            "v_proj": dense(f"{t}.self_attn.v_proj", config.qkv_bias),
            "o_proj": dense(f"{t}.self_attn.o_proj", config.o_bias),
            "post_attention_layernorm": norm(f"{t}.post_attention_layernorm"),
            "gate_proj": dense(f"{t}.mlp.gate_proj", config.mlp_bias),
            "up_proj": dense(f"{t}.mlp.up_proj", config.mlp_bias),
            "down_proj": dense(f"{t}.mlp.down_proj", config.mlp_bias),
        }
        if config.qk_norm:
            layer["q_norm"] = norm(f"{t}.self_attn.q_norm")
            layer["k_norm"] = norm(f"{t}.self_attn.k_norm")
        if config.gemma:
            layer["pre_feedforward_layernorm"] = norm(f"{t}.pre_feedforward_layernorm")
            layer["post_feedforward_layernorm"] = norm(f"{t}.post_feedforward_layernorm")
        p[f"layer_{i}"] = layer
    p["norm"] = norm("model.norm")
    if not config.tie_embeddings:
        p["lm_head"] = {"kernel": transposed("lm_head.weight")}
    elif "lm_head.weight" in names and np.array_equal(
        np.asarray(state["lm_head.weight"]), np.asarray(state["model.embed_tokens.weight"])
    ):
        used.add("lm_head.weight")  # tied; an untied head is reported as unused
    shapes = jax.eval_shape(Decoder(config).init, jax.random.key(0), _example())
    where = shardings(shapes) if shardings is not None else jax.tree.map(lambda _: None, shapes)
    # Thunks are leaves: read, cast, check and place each tensor before the next is read.
    params = jax.tree_util.tree_map_with_path(_place, p, shapes["params"], where["params"])
    checkpoint.check_unused(names, used, config.family)
    return {"params": params}


def _place(path: Any, thunk: Callable[[], np.ndarray], want: Any, sharding: Any) -> jax.Array:
    array = thunk()
    if array.shape != want.shape:
        raise ValueError(
            f"shape mismatch for parameter {jax.tree_util.keystr(path)}: checkpoint has {array.shape}, "
            f"the model expects {want.shape}"
        )
    if sharding is None:
        return jax.device_put(array, may_alias=False)
    from jaxreprog.train.sharding import put  # models never import train at module level

    return put(array, sharding)


def _spec(config: DecoderConfig, name: str) -> TokenSpec:
    """The model's TokenSpec (``head_size`` where the heads are not ``hidden_size / num_heads``
    wide); pads with the config's pad token, else its eos, else 0."""
    standard = config.hidden_size % config.num_heads == 0 and (
        config.hidden_size // config.num_heads == config.head_dim
    )
    return TokenSpec(
        vocab_size=config.vocab_size,
        max_length=config.max_positions,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        pad_id=next((i for i in (config.pad_id, config.eos_id) if i is not None), 0),
        name=name,
        bos_id=config.bos_id,
        eos_id=config.eos_id,
        causal=True,
        head_size=None if standard else config.head_dim,
        num_kv_heads=None if config.num_kv_heads == config.num_heads else config.num_kv_heads,
    )


def _example() -> dict[str, jax.Array]:
    return {"input_ids": jnp.zeros((1, 2), jnp.int32), "attention_mask": jnp.ones((1, 2), jnp.int32)}


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory (or of the directory holding a weight file)."""
    folder = os.fspath(path)
    folder = os.path.dirname(folder) if os.path.isfile(folder) else folder
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {folder} (a Hugging Face checkpoint directory is needed)")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not a JSON config ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    return config


def from_hf(
    path: str | os.PathLike,
    name: str = "llama",
    *,
    remat: str | None = None,
    dtype: DTypeLike = jnp.float32,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, PartitionSpec]] | None = None,
) -> FrozenModel:
    """A Hugging Face checkpoint directory: ``config.json`` and ``model.safetensors`` or
    ``model.safetensors.index.json`` with its shards, read tensor by tensor.

    Args:
      path: the directory (or a file in it).
      name: the family (:data:`NAMES`), checked against the config.
      remat: a :mod:`jaxreprog.models.remat` policy for the layers.
      dtype: what the weights are stored as (``jnp.bfloat16`` halves a float32 model's memory;
        the computation follows the weights' dtype, RMSNorm's statistics in float32; logits
        within about 5% of float32's largest).
      mesh: a ``("data", "model")`` mesh (:func:`jaxreprog.train.mesh`): each tensor goes
        straight onto its devices as :func:`jaxreprog.shard` would place it (with ``rules``,
        e.g. :data:`TENSOR_PARALLEL`), so a model larger than one device loads.
    """
    check_remat(remat)
    folder = os.fspath(path)
    folder = os.path.dirname(folder) if os.path.isfile(folder) else folder
    config = DecoderConfig.from_hf(read_config(folder), name)
    placement = None
    if mesh is not None:
        from jaxreprog.train.sharding import shardings  # models never import train at module level

        placement = functools.partial(shardings, mesh=mesh, rules=rules)
    elif rules is not None:
        raise ValueError("from_hf: rules= places the weights over a mesh: pass mesh= too")
    variables = convert(checkpoint.open_safetensors(folder), config, dtype=dtype, shardings=placement)
    return FrozenModel(CausalLM(Decoder(config, remat)), variables, _spec(config, name))


def from_config(config: DecoderConfig, key: jax.Array, *, remat: str | None = None) -> FrozenModel:
    """A randomly initialised decoder of any size (tests, ablations)."""
    module = Decoder(config, check_remat(remat))
    return FrozenModel(CausalLM(module), jax.jit(module.init)(key, _example()), _spec(config, config.family))


def load(name: str = "llama", weights: str | os.PathLike | None = None, **kwargs: Any) -> FrozenModel:
    """Load a Llama-family decoder (``name`` in :data:`NAMES`) from a Hugging Face checkpoint
    directory (no weights ship offline); ``kwargs`` as :func:`from_hf` (``remat``, ``dtype``,
    ``mesh``, ``rules``)."""
    if weights is None:
        raise ValueError(
            f"no offline pretrained weights for {name!r}: pass weights=<directory with config.json and "
            "model.safetensors or model.safetensors.index.json> (e.g. from save_pretrained)"
        )
    return from_hf(weights, name=name, **kwargs)
