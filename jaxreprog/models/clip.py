"""CLIP (Radford et al., ICML 2021): contrastive image and text towers in Flax linen.

``logits[b, c] = exp(t) · cos(g(x_b), h(prompt_c))``: a pre-LN ViT ``g`` (class token,
``quick_gelu``) and a causal text transformer ``h`` pooled at the end-of-text (EOT)
token, each followed by a bias-free linear projection into a shared space, with a
learned temperature ``t``. Converted from Hugging Face ``CLIPModel`` checkpoints
(:func:`from_hf`: ``config.json`` + ``model.safetensors``); numerically matches
``transformers`` (tests compare against small random configs).

The zero-shot classifier (:func:`classifier`) is a :class:`~jaxreprog.FrozenModel`
whose ``apply(params, images, hook)`` returns ``(B, num_classes)`` logits against a
fixed set of class prompts. The prompts' token ids and EOT positions are *constants
of the FrozenModel* (small int arrays, like a label set); the weights stay in
``params``. The text tower runs on all class prompts in every call, which is what
CoOp needs (its context vectors change the class text features).

Sites (``hook(site, value)``; every submodule's ``__call__`` output is a site):

* ``"text/embeddings"`` — a :class:`~jaxreprog.hooks.PromptEmbeddings`: the token embeddings
  ``embeds (N, L, D)`` *before* position embeddings are added, the EOT positions
  ``eot_index (N,)`` and, inside :func:`classifier`, the L2-normalised image
  features ``image_features (B, E)`` (``None`` when the text tower runs alone).
  A hook may replace tokens (CoOp), change ``L`` (insert tokens; it must then
  update ``eot_index``), or add a leading image axis, ``embeds (B, N, L, D)``
  (CoCoOp: per-image prompts). Position ids ``0..L-1`` and the causal mask are
  built *after* the hook, from whatever length it returns.
* ``"text/layer_{i}/input"``, ``"text/layer_{i}"`` — the residual stream
  ``(N', L, D)`` into and out of text layer ``i`` (``N' = N``, or ``B·N`` for
  per-image prompts); hooks here must keep ``L`` (the EOT positions are fixed).
* ``"vision/embeddings"`` — ``(B, 1 + P, D)`` class + patch tokens with position
  embeddings added, before the pre-LayerNorm (where VPT-shallow inserts tokens:
  ``jr.embedding.vpt_shallow(p, sites="vision/embeddings")`` reads the sizes from
  the classifier's :class:`CLIPSpec`).
* ``"vision/layer_{i}/input"``, ``"vision/layer_{i}"`` — the residual stream into
  and out of vision layer ``i`` (any length: the pooled token is the first).

Example::

    >>> module, params = clip.from_hf("path/to/clip-vit-base-patch32")
    >>> tokenizer = tokenizers.Tokenizer.from_file("path/to/clip-vit-base-patch32/tokenizer.json")
    >>> ids, eot = clip.tokenize(tokenizer, [f"a photo of a {c}." for c in names])
    >>> zero_shot = clip.classifier(module, params, ids, eot, class_names=names)
    >>> logits = zero_shot.apply(zero_shot.params, zero_shot.spec.normalize(images01))
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog.core import FrozenModel, ImageSpec, Site, from_linen
from jaxreprog.hooks import PromptEmbeddings
from jaxreprog.models import checkpoint

__all__ = [
    "CLIP",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "CLIPSpec",
    "Config",
    "PromptEmbeddings",
    "TextConfig",
    "VisionConfig",
    "class_prompts",
    "classifier",
    "convert",
    "eot_positions",
    "from_hf",
    "init_params",
    "load",
    "token_embeddings",
    "tokenize",
]

Array = jax.Array
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------ config


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The causal text transformer (defaults: ViT-B/32's text tower)."""

    vocab_size: int = 49408
    width: int = 512
    mlp_dim: int = 2048
    depth: int = 12
    num_heads: int = 8
    context_length: int = 77
    eos_token_id: int = 49407
    act: str = "quick_gelu"
    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The pre-LN ViT image tower (defaults: ViT-B/32)."""

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    mlp_dim: int = 3072
    depth: int = 12
    num_heads: int = 12
    channels: int = 3
    act: str = "quick_gelu"
    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class Config:
    """Both towers and the shared embedding size ``embed_dim`` (HF ``projection_dim``)."""

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    embed_dim: int = 512

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> Config:
        """From a ``transformers`` ``CLIPConfig`` dict (``config.json``)."""
        t, v = hf.get("text_config") or {}, hf.get("vision_config") or {}
        td, vd = TextConfig(), VisionConfig()
        text = TextConfig(
            vocab_size=t.get("vocab_size", td.vocab_size),
            width=t.get("hidden_size", td.width),
            mlp_dim=t.get("intermediate_size", td.mlp_dim),
            depth=t.get("num_hidden_layers", td.depth),
            num_heads=t.get("num_attention_heads", td.num_heads),
            context_length=t.get("max_position_embeddings", td.context_length),
            eos_token_id=t.get("eos_token_id", td.eos_token_id),
            act=t.get("hidden_act", td.act),
            eps=t.get("layer_norm_eps", td.eps),
        )
        vision = VisionConfig(
            image_size=v.get("image_size", vd.image_size),
            patch_size=v.get("patch_size", vd.patch_size),
            width=v.get("hidden_size", vd.width),
            mlp_dim=v.get("intermediate_size", vd.mlp_dim),
            depth=v.get("num_hidden_layers", vd.depth),
            num_heads=v.get("num_attention_heads", vd.num_heads),
            channels=v.get("num_channels", vd.channels),
            act=v.get("hidden_act", vd.act),
            eps=v.get("layer_norm_eps", vd.eps),
        )
        return cls(text, vision, hf.get("projection_dim", 512))


_PRESETS = {"clip_vit_b32": Config()}


@dataclasses.dataclass(frozen=True)
class CLIPSpec(ImageSpec):
    """An :class:`~jaxreprog.ImageSpec` plus the sizes prompt methods read: the text
    tower's (CoOp's context width ``text_width``, CoCoOp's image-feature size
    ``embed_dim``, MaPLe's depth check ``text_layers``) and the vision tower's, under the
    names VPT reads from a ViT spec."""

    text_width: int = 0
    text_layers: int = 0
    embed_dim: int = 0
    context_length: int = 0
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    patch_size: int = 0


# ------------------------------------------------------------------------ layers


def _activation(name: str):
    acts = {
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
    }
    if name not in acts:
        raise ValueError(f"CLIP: unsupported hidden_act {name!r}; expected one of {sorted(acts)}")
    return acts[name]


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


class Attention(nn.Module):
    """Multi-head self-attention; ``mask (L, L)`` is True where a query may attend."""

    num_heads: int

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        *lead, length, width = x.shape
        head_dim = width // self.num_heads

        def heads(name):
            return nn.Dense(width, name=name)(x).reshape(*lead, length, self.num_heads, head_dim)

        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) * head_dim**-0.5
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        out = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, axis=-1), v)
        return nn.Dense(width, name="out_proj")(out.reshape(*lead, length, width))


class MLP(nn.Module):
    mlp_dim: int
    act: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = _activation(self.act)(nn.Dense(self.mlp_dim, name="fc1")(x))
        return nn.Dense(x.shape[-1], name="fc2")(h)


class EncoderLayer(nn.Module):
    """Pre-LN block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    num_heads: int
    mlp_dim: int
    act: str
    eps: float

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None) -> Array:
        x = Site(name="input")(x)
        x = x + Attention(self.num_heads, name="self_attn")(_layer_norm(self.eps, "layer_norm1")(x), mask)
        return x + MLP(self.mlp_dim, self.act, name="mlp")(_layer_norm(self.eps, "layer_norm2")(x))


def _layers(cfg: TextConfig | VisionConfig, x: Array, mask: Array | None) -> Array:
    for i in range(cfg.depth):
        x = EncoderLayer(cfg.num_heads, cfg.mlp_dim, cfg.act, cfg.eps, name=f"layer_{i}")(x, mask)
    return x


class TextTower(nn.Module):
    """Causal transformer over token ids, pooled at the EOT token after the final LN."""

    config: TextConfig

    @nn.compact
    def __call__(self, token_ids: Array, eot_index: Array, image_features: Array | None = None) -> Array:
        cfg = self.config
        embeds = nn.Embed(cfg.vocab_size, cfg.width, name="token_embedding")(token_ids)
        seq = Site(name="embeddings")(PromptEmbeddings(embeds, eot_index, image_features))
        h, eot = seq.embeds, seq.eot_index
        *lead, length, width = h.shape
        if width != cfg.width or length > cfg.context_length or not lead:
            raise ValueError(
                f"text embeddings after site 'text/embeddings' must be (..., L, {cfg.width}) with "
                f"L <= context_length={cfg.context_length}, got {h.shape}"
            )
        positions = self.param(
            "position_embedding", nn.initializers.normal(0.01), (cfg.context_length, cfg.width)
        )
        h = (h + positions[:length]).reshape(-1, length, width)  # position ids 0..L-1, rebuilt here
        causal = jnp.tril(jnp.ones((length, length), bool))
        h = _layers(cfg, h, causal)
        if h.shape[-2] != length:
            raise ValueError(f"hooks at text/layer_i must keep the sequence length {length}, got {h.shape}")
        h = _layer_norm(cfg.eps, "final_layer_norm")(h).reshape(*lead, length, width)
        eot = jnp.broadcast_to(jnp.asarray(eot, jnp.int32), tuple(lead))
        return jnp.take_along_axis(h, eot[..., None, None], axis=-2)[..., 0, :]


class VisionTower(nn.Module):
    """Pre-LN ViT: patch embedding, class token, positions, layers, LN of the class token."""

    config: VisionConfig

    @nn.compact
    def __call__(self, images: Array) -> Array:
        cfg, p = self.config, self.config.patch_size
        expected = (cfg.image_size, cfg.image_size, cfg.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"CLIP images must be (B, *{expected}) NHWC, got {images.shape}")
        b, g = images.shape[0], cfg.image_size // p
        kernel = self.param(
            "patch_embedding", nn.initializers.lecun_normal(), (p, p, cfg.channels, cfg.width)
        )
        patches = images.reshape(b, g, p, g, p, cfg.channels).transpose(0, 1, 3, 2, 4, 5)
        h = patches.reshape(b, g * g, -1) @ kernel.reshape(-1, cfg.width)  # stride-p conv as a matmul
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.width,))
        positions = self.param("position_embedding", nn.initializers.normal(0.02), (g * g + 1, cfg.width))
        h = jnp.concatenate([jnp.broadcast_to(cls.astype(h.dtype), (b, 1, cfg.width)), h], axis=1) + positions
        h = Site(name="embeddings")(h)
        h = _layers(cfg, _layer_norm(cfg.eps, "pre_layernorm")(h), None)
        return _layer_norm(cfg.eps, "post_layernorm")(h[:, 0])


def _l2_normalize(x: Array) -> Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class CLIP(nn.Module):
    """Both towers, their projections and the logit scale (stored as ``log t``)."""

    config: Config

    def setup(self):
        cfg = self.config
        self.text = TextTower(cfg.text)
        self.vision = VisionTower(cfg.vision)
        self.text_projection = nn.Dense(cfg.embed_dim, use_bias=False)
        self.visual_projection = nn.Dense(cfg.embed_dim, use_bias=False)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())

    def encode_image(self, images: Array) -> Array:
        """``(B, H, W, C)`` normalised images -> ``(B, E)`` projected features (not normalised)."""
        return self.visual_projection(self.vision(images))

    def encode_text(self, token_ids: Array, eot_index: Array, image_features: Array | None = None) -> Array:
        """``(N, L)`` ids -> ``(N, E)`` projected features; ``(B, N, E)`` for per-image prompts."""
        return self.text_projection(self.text(token_ids, eot_index, image_features))

    def __call__(self, images: Array, token_ids: Array, eot_index: Array) -> tuple[Array, Array, Array]:
        """HF ``CLIPModel.forward``: ``(logits_per_image (B, N), image_embeds, text_embeds)``, normalised."""
        image = _l2_normalize(self.encode_image(images))
        text = _l2_normalize(self.encode_text(token_ids, eot_index))
        return jnp.exp(self.logit_scale) * image @ text.T, image, text

    def classify(self, images: Array, token_ids: Array, eot_index: Array) -> Array:
        """Zero-shot logits ``(B, N)``; the text path sees the image features (CoCoOp)."""
        image = _l2_normalize(self.encode_image(images))
        text = _l2_normalize(self.encode_text(token_ids, eot_index, image))
        scale = jnp.exp(self.logit_scale)
        if text.ndim == 2:
            return scale * image @ text.T
        if text.shape[0] != image.shape[0]:
            raise ValueError(f"per-image text features {text.shape} do not match {image.shape[0]} images")
        return scale * jnp.einsum("be,bne->bn", image, text)


# ------------------------------------------------------------------------ tokens


def eot_positions(token_ids: Any, eos_token_id: int) -> np.ndarray:
    """EOT positions as ``transformers`` pools them: the first ``eos_token_id`` in each
    row, or, for legacy configs with ``eos_token_id == 2``, the largest id (the
    original CLIP vocabulary's EOT is its largest token)."""
    ids = np.asarray(token_ids)
    if ids.ndim != 2:
        raise ValueError(f"token_ids must be (N, L), got shape {ids.shape}")
    if eos_token_id == 2:
        return ids.argmax(-1).astype(np.int32)
    hit = ids == eos_token_id
    missing = np.flatnonzero(~hit.any(-1))
    if missing.size:
        raise ValueError(f"token_ids rows {missing.tolist()} contain no eos_token_id={eos_token_id}")
    return hit.argmax(-1).astype(np.int32)


def class_prompts(
    names: Sequence[Sequence[int]],
    *,
    sos_id: int,
    eos_id: int,
    context_length: int,
    prefix: Sequence[int] = (),
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[SOS, *prefix, *name, EOS, pad...]`` per class, and the EOT positions.

    The tokenizer-free way to build class prompts: ``prefix`` is the template's ids
    ("a photo of a") or CoOp's ``M`` placeholder ids ("X X X X"); ``names`` the
    class names' ids (with the trailing "." if wanted).
    """
    if not names:
        raise ValueError("class_prompts: names must hold at least one class")
    ids = np.full((len(names), context_length), pad_id, np.int32)
    eot = np.zeros(len(names), np.int32)
    for i, name in enumerate(names):
        row = [sos_id, *prefix, *name, eos_id]
        if len(row) > context_length:
            raise ValueError(
                f"class_prompts: prompt {i} has {len(row)} tokens > context_length={context_length}"
            )
        ids[i, : len(row)] = row
        eot[i] = len(row) - 1
    return ids, eot


def tokenize(
    tokenizer: Any, texts: Sequence[str], context_length: int = 77, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``texts`` with a ``tokenizers.Tokenizer`` (e.g. a CLIP ``tokenizer.json``,
    whose post-processor adds SOS/EOS) -> ``(ids (N, context_length) int32, eot (N,))``.

    Too-long prompts are cut to ``context_length`` keeping their last (EOT) token,
    as OpenAI's ``clip.tokenize(truncate=True)`` does.
    """
    if isinstance(texts, str):
        raise TypeError("tokenize: texts must be a sequence of strings, not one string")
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.full((len(encodings), context_length), pad_id, np.int32)
    eot = np.zeros(len(encodings), np.int32)
    for i, enc in enumerate(encodings):
        row = list(enc.ids)
        if not row:
            raise ValueError(f"tokenize: text {i} encodes to no tokens")
        if len(row) > context_length:
            row = [*row[: context_length - 1], row[-1]]
        ids[i, : len(row)] = row
        eot[i] = len(row) - 1
    return ids, eot


def token_embeddings(params: Mapping[str, Any], token_ids: Any) -> Array:
    """Rows of the text tower's token-embedding table, e.g. to initialise CoOp's context
    from a phrase: ``token_embeddings(params, ids_of("a photo of a"))`` -> ``(M, D)``."""
    table = params["params"]["text"]["token_embedding"]["embedding"]
    return jnp.take(table, jnp.asarray(token_ids, jnp.int32), axis=0)


# -------------------------------------------------------------------- conversion


def convert(state_dict: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """A ``transformers`` ``CLIPModel`` state dict ``{name: array}`` -> Flax variables.

    Linear weights ``(out, in)`` become kernels ``(in, out)``; the patch conv
    ``(D, C, p, p)`` becomes ``(p, p, C, D)``. Every tensor must be used (apart
    from ``position_ids`` buffers) and have the shape the config implies.
    """
    sd = {k: v for k, v in state_dict.items() if not k.endswith("position_ids")}
    used: set[str] = set()
    get = checkpoint.getter(sd, lambda name: ValueError(f"CLIP checkpoint lacks tensor {name!r}"), used=used)
    dense, ln = functools.partial(checkpoint.dense, get), functools.partial(checkpoint.layer_norm, get)

    def layers(prefix, depth):
        attn = ("q_proj", "k_proj", "v_proj", "out_proj")
        return {
            f"layer_{i}": {
                "layer_norm1": ln(f"{prefix}{i}.layer_norm1"),
                "layer_norm2": ln(f"{prefix}{i}.layer_norm2"),
                "self_attn": {n: dense(f"{prefix}{i}.self_attn.{n}") for n in attn},
                "mlp": {"fc1": dense(f"{prefix}{i}.mlp.fc1"), "fc2": dense(f"{prefix}{i}.mlp.fc2")},
            }
            for i in range(depth)
        }

    text = {
        "token_embedding": {"embedding": get("text_model.embeddings.token_embedding.weight")},
        "position_embedding": get("text_model.embeddings.position_embedding.weight"),
        **layers("text_model.encoder.layers.", config.text.depth),
        "final_layer_norm": ln("text_model.final_layer_norm"),
    }
    vision = {
        "patch_embedding": get("vision_model.embeddings.patch_embedding.weight").transpose(2, 3, 1, 0),
        "class_embedding": get("vision_model.embeddings.class_embedding"),
        "position_embedding": get("vision_model.embeddings.position_embedding.weight"),
        "pre_layernorm": ln("vision_model.pre_layrnorm"),
        **layers("vision_model.encoder.layers.", config.vision.depth),
        "post_layernorm": ln("vision_model.post_layernorm"),
    }
    params = {
        "text": text,
        "vision": vision,
        "text_projection": dense("text_projection", bias=False),
        "visual_projection": dense("visual_projection", bias=False),
        "logit_scale": get("logit_scale").reshape(()),
    }
    checkpoint.check_unused(sd, used, "CLIP")
    checkpoint.check_shapes(params, _shapes(config)["params"])
    return {"params": jax.device_put(params, may_alias=False)}


def from_hf(path: str | os.PathLike) -> tuple[CLIP, dict[str, Any]]:
    """Read a Hugging Face CLIP checkpoint directory (``config.json`` + ``model.safetensors``
    or ``pytorch_model.bin``) -> ``(CLIP module, variables)``."""
    path = os.fspath(path)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"CLIP: {path!r} is not a Hugging Face CLIP directory (no config.json)")
    with open(config_file) as f:
        hf = json.load(f)
    if hf.get("model_type", "clip") != "clip":
        raise ValueError(f"CLIP: {config_file} has model_type={hf.get('model_type')!r}, expected 'clip'")
    config = Config.from_hf(hf)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            state_dict = checkpoint.read(os.path.join(path, name))
            break
    else:
        raise FileNotFoundError(f"CLIP: no model.safetensors or pytorch_model.bin in {path!r}")
    return CLIP(config), convert(state_dict, config)


def _shapes(config: Config) -> dict[str, Any]:
    """The variables' shapes, ``CLIP(config).init`` traced (not run)."""
    v, t = config.vision, config.text
    images = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, v.channels), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, t.context_length), jnp.int32)
    return jax.eval_shape(CLIP(config).init, jax.random.key(0), images, ids, np.zeros(1, np.int32))


def init_params(config: Config, key: jax.Array) -> dict[str, Any]:
    """Random variables for ``CLIP(config)`` (tests, shapes): ``N(0, 0.02²)`` weights and
    embeddings, unit LayerNorm scales, zero biases, ``logit_scale = log(1/0.07)``.

    Filled from the shapes of ``CLIP.init`` (traced, not run), so it costs no compilation.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(_shapes(config))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def fill(path, leaf):
        name = str(path[-1].key)
        if name == "logit_scale":
            return np.full(leaf.shape, np.log(1 / 0.07), np.float32)
        if name == "bias":
            return np.zeros(leaf.shape, np.float32)
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.device_put(jax.tree.unflatten(treedef, [fill(p, leaf) for p, leaf in leaves]))


# ---------------------------------------------------------------- frozen models


def classifier(
    model: CLIP,
    params: Mapping[str, Any],
    token_ids: Any,
    eot_index: Any | None = None,
    *,
    class_names: Sequence[str] | None = None,
    name: str = "clip",
) -> FrozenModel:
    """Zero-shot CLIP over fixed class prompts, as a :class:`~jaxreprog.FrozenModel`.

    ``apply(params, images, hook=None) -> logit_scale · cos(g(images), h(prompts))``,
    ``(B, N)``, with images normalised by ``spec.normalize`` (OpenAI's mean/std).

    Args:
      model: a :class:`CLIP` module (from :func:`from_hf`).
      params: its variables; passed to ``apply`` on every call, never closed over.
      token_ids: ``(N, L)`` int class prompts (:func:`tokenize`, :func:`class_prompts`);
        for CoOp, ``M`` placeholder tokens follow SOS. A constant of the model.
      eot_index: ``(N,)`` EOT positions; default: found in ``token_ids`` as
        ``transformers`` does (:func:`eot_positions`).
      class_names: optional names, recorded in the spec.
    """
    cfg = model.config
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token_ids must be an (N, L) integer array, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int32)
    n, length = ids.shape
    if length > cfg.text.context_length:
        raise ValueError(f"token_ids has length {length} > context_length={cfg.text.context_length}")
    if ids.min() < 0 or ids.max() >= cfg.text.vocab_size:
        raise ValueError(
            f"token_ids must lie in [0, vocab_size={cfg.text.vocab_size}), got {ids.min()}..{ids.max()}"
        )
    eot = eot_positions(ids, cfg.text.eos_token_id) if eot_index is None else np.asarray(eot_index, np.int32)
    if eot.shape != (n,) or eot.min() < 0 or eot.max() >= length:
        raise ValueError(f"eot_index must be ({n},) positions in [0, {length}), got {eot.tolist()}")
    spec = CLIPSpec(
        size=cfg.vision.image_size,
        channels=cfg.vision.channels,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        num_classes=n,
        class_names=tuple(class_names) if class_names is not None else None,
        name=name,
        text_width=cfg.text.width,
        text_layers=cfg.text.depth,
        embed_dim=cfg.embed_dim,
        context_length=cfg.text.context_length,
        hidden_size=cfg.vision.width,
        num_layers=cfg.vision.depth,
        num_heads=cfg.vision.num_heads,
        patch_size=cfg.vision.patch_size,
    )
    return from_linen(model, params, spec, method="classify", token_ids=ids, eot_index=eot)


def load(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    class_token_ids: Any | None = None,
    eot_index: Any | None = None,
    class_names: Sequence[str] | None = None,
    tokenizer: Any | None = None,
    template: str = "a photo of a {}.",
) -> FrozenModel:
    """``jr.models.load("clip_vit_b32", weights=DIR, ...)``: a zero-shot :func:`classifier`.

    No CLIP weights ship in a PyPI wheel, so ``weights`` (a Hugging Face CLIP
    directory) is required. Class prompts come from ``class_token_ids`` (+
    ``eot_index``), or from ``class_names`` formatted with ``template`` and encoded
    by ``tokenizer`` (a ``tokenizers.Tokenizer``, e.g. the checkpoint's
    ``tokenizer.json``).
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown CLIP model {name!r}; known: {sorted(_PRESETS)}")
    if weights is None:
        raise ValueError(
            f"{name}: no pretrained CLIP ships offline; pass weights=<a Hugging Face CLIP checkpoint "
            "directory> (config.json + model.safetensors, e.g. openai/clip-vit-base-patch32)"
        )
    model, params = from_hf(weights)
    preset = _PRESETS[name]
    if model.config.vision.patch_size != preset.vision.patch_size:
        raise ValueError(
            f"{name}: checkpoint at {weights} has patch size {model.config.vision.patch_size}, "
            f"expected {preset.vision.patch_size}"
        )
    if class_token_ids is None:
        if class_names is None or tokenizer is None:
            raise ValueError(
                f"{name}: give class prompts: class_token_ids=(N, L) ids, or class_names= and tokenizer="
            )
        class_token_ids, eot_index = tokenize(
            tokenizer, [template.format(c) for c in class_names], model.config.text.context_length
        )
    return classifier(model, params, class_token_ids, eot_index, class_names=class_names, name=name)
