"""Time-LLM: time-series forecasting by reprogramming a frozen language model.

Jin et al. ICLR 2024, "Time-LLM: Time Series Forecasting by Reprogramming Large Language
Models". For each channel of a series ``x ∈ R^T`` (channels are independent) and horizon ``H``:

1. **Instance normalisation** (RevIN without affine, Kim et al. ICLR 2022):
   ``z = (x − μ) / σ``, ``μ = mean_t x``, ``σ = sqrt(var_t x + 1e-5)``.
2. **Patching**: ``z`` padded at the end with ``stride`` copies of its last value, cut into
   ``N = ⌊(T − P) / S⌋ + 2`` patches of ``P = patch_len`` steps every ``S = stride``;
   **patch embedding** ``e_n = Σ_{k∈{-1,0,1}} W_k p_{n+k}`` (a width-3 circular convolution over
   the patches, no bias, ``W_k ∈ R^{d_model×P}``: the reference's ``TokenEmbedding``).
3. **Patch reprogramming** onto ``S'`` text prototypes ``E' = M E + b ∈ R^{S'×D}``, a learned
   linear map (``M ∈ R^{S'×V}``) of the frozen word-embedding table ``E ∈ R^{V×D}``, by
   multi-head cross-attention (``heads`` heads of width ``d_keys``)::

       Z_n = W_O [softmax(Q_n^{(i)} K^{(i)ᵀ} / √d_keys) V^{(i)}]_{i=1..heads},
       Q = e W_Q,  K = E' W_K,  V = E' W_V.

4. **Prompt-as-prefix**: the fixed text ``[description; min; max; median; trend; top lags]`` of
   the normalised series (a :class:`StatsPrompt`), embedded by the frozen model, before the
   ``N`` reprogrammed patches: the LM's input is ``[E[prompt]; Z]``.
5. The frozen LM's **final hidden states** (after its final norm) at the last ``N`` positions,
   their first ``d_ff`` features flattened, are **projected** to the horizon,
   ``ŷ = W_h vec(h_{-N:, :d_ff}) + b_h``, and **de-normalised**: ``y = ŷ σ + μ``.

**How it fits the library.** The frozen part and the learned part are split along the
library's two types, with the frozen weights always an argument:

* :func:`time_llm_backbone` turns a zoo causal LM (GPT-2, the Llama family) into a
  :class:`~jaxreprog.FrozenModel` from series to forecasts: it does steps 1, 4, 5's
  de-normalisation and runs the LM over ``[prompt; patches]`` — everything fixed. It asks
  two sites of its own for the learned pieces: ``"series"`` (value :class:`Series`: the
  normalised series and the frozen table ``E``, taken from the params at apply time; a hook
  returns the ``(B, N, D)`` reprogrammed patches) and ``"forecast"`` (value: the final hidden
  states ``(B, N, D)``; a hook returns the ``(B, H)`` normalised forecast). The LM's own sites
  stay visible (a soft prompt may be chained in). The LM runs with every position's head;
  under ``jit`` XLA drops those unused logits.
* :func:`time_llm` is the learned part: a :class:`~jaxreprog.SiteHook` on those two sites
  (steps 2, 3 and 5's projection), so ``jr.reprogram(backbone(lm), embedding=time_llm(...))``
  is an ordinary program: ``fit(..., loss=jr.train.mse)``, save/load, vmapped candidates.

Differences from the reference (KimMeen/Time-LLM), all deliberate: no dropout; the prompt's
numbers are rendered as fixed-width character tokens (sign, digit, point, two decimals; lags
zero-padded) so the prompt has a fixed length under ``jit`` and needs no tokenizer at apply
time, where the reference formats strings per example and runs the model's tokenizer; the top
lags are those of the (linear) autocorrelation without lag 0, where the reference takes the
circular one, lag 0 included (always first; and lags ``l`` and ``T − l`` tie there);
the flattening order of the output head is position-major (a relabelling of ``W_h``).

Example::

    >>> lm = jr.models.gpt2.from_config(GPT2Config(...), key)
    >>> model = jr.embedding.time_llm_backbone(lm, prompt=StatsPrompt.from_chars("sunspots", char_id))
    >>> program = jr.reprogram(model, embedding=jr.embedding.time_llm(context=40, horizon=8))
    >>> theta, _ = jr.train.fit(program, model, train, epochs=10, loss=jr.train.mse)
    >>> y = program.apply(theta, model.params, x)            # (B, 40) -> (B, 8)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.checking import check, integer
from jaxreprog.core import FrozenModel, Hook, SiteHook, TokenSpec
from jaxreprog.hooks import Embedded, select
from jaxreprog.taxonomy import Format, Location, Operator, OutputAlignment, register

__all__ = [
    "Series",
    "StatsPrompt",
    "denormalize",
    "gpt2_char_id",
    "normalize",
    "num_patches",
    "time_llm",
    "time_llm_backbone",
]

Array = jax.Array
EPS = 1e-5  # RevIN's


class Series(NamedTuple):
    """The ``"series"`` site's value: normalised series ``(B, T)`` and the frozen ``(V, D)`` table."""

    values: Array
    table: Array


def _ids(v: Any, name: str) -> tuple[int, ...]:
    ids = tuple(v)
    if not all(isinstance(i, int | np.integer) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise TypeError(f"StatsPrompt.{name} must be token ids (non-negative ints), got {v!r}")
    return tuple(int(i) for i in ids)


class StatsPrompt(NamedTuple):
    """Prompt-as-prefix: fixed token ids, and the ids that render the input statistics.

    The prompt is ``description, labels[0], min, labels[1], max, labels[2], median, labels[3],
    up | down, labels[4], lag_1 ... lag_k`` where a value (in normalised units, clipped to
    ±9.99) is ``sign, d, point, d, d`` and a lag ``⌈log10 T⌉`` digits, zero-padded.

    Attributes:
      digits: the ids of ``"0"`` .. ``"9"``.
      plus, minus, point: the ids of ``"+"``, ``"-"``, ``"."``.
      up, down: the trend's id (``Σ_t (z_{t+1} − z_t) > 0``: up).
      description: the dataset / task text, as ids.
      labels: five id sequences before min, max, median, trend and the lags.
      top_lags: how many lags (highest autocorrelation ``Σ_t z_t z_{t+l}``, lag 0 excluded).
    """

    digits: tuple[int, ...]
    plus: int
    minus: int
    point: int
    up: int
    down: int
    description: tuple[int, ...] = ()
    labels: tuple[tuple[int, ...], ...] = ((), (), (), (), ())
    top_lags: int = 5

    @classmethod
    def from_chars(cls, description: str, char_id: Callable[[str], int], top_lags: int = 5) -> StatsPrompt:
        """Every character its own token, ``char_id(c)`` (e.g. :func:`gpt2_char_id`)."""

        def text(s: str) -> tuple[int, ...]:
            return tuple(char_id(c) for c in s)

        labels = tuple(text(s) for s in (" min ", " max ", " median ", " trend ", " lags "))
        return cls(
            digits=text("0123456789"),
            plus=char_id("+"),
            minus=char_id("-"),
            point=char_id("."),
            up=char_id("^"),
            down=char_id("v"),
            description=text(description),
            labels=labels,
            top_lags=top_lags,
        )

    def checked(self, vocab_size: int) -> StatsPrompt:
        digits = _ids(self.digits, "digits")
        if len(digits) != 10:
            raise ValueError(f"StatsPrompt.digits must be the 10 ids of '0'..'9', got {len(digits)}")
        labels = tuple(_ids(lab, "labels") for lab in self.labels)
        if len(labels) != 5:
            raise ValueError(f"StatsPrompt.labels must be 5 id sequences, got {len(labels)}")
        singles = _ids([self.plus, self.minus, self.point, self.up, self.down], "plus/minus/point/up/down")
        description = _ids(self.description, "description")
        every = [*digits, *singles, *description, *(i for lab in labels for i in lab)]
        if max(every) >= vocab_size:
            raise ValueError(
                f"StatsPrompt: token id {max(every)} is outside the vocabulary [0, {vocab_size})"
            )
        top_lags = integer(self.top_lags, "top_lags", who="StatsPrompt", minimum=0)
        return StatsPrompt(digits, *singles, description, labels, top_lags)

    def length(self, context: int) -> int:
        """The prompt's number of tokens for series of ``context`` steps."""
        width = len(str(max(context - 1, 1)))
        return len(self.description) + sum(map(len, self.labels)) + 3 * 5 + 1 + self.top_lags * width

    def ids(self, z: Array) -> Array:
        """The prompt's ids ``(B, length)`` for normalised series ``z`` ``(B, T)`` (jit-safe)."""
        b, t = z.shape
        digits = jnp.asarray(self.digits, jnp.int32)

        def const(ids: Sequence[int]) -> Array:
            return jnp.broadcast_to(jnp.asarray(ids, jnp.int32).reshape(1, -1), (b, len(ids)))

        def number(v: Array) -> Array:
            r = jnp.round(jnp.minimum(jnp.abs(v), 9.99) * 100).astype(jnp.int32)
            sign = jnp.where(v < 0, self.minus, self.plus)
            point = jnp.full((b,), self.point, jnp.int32)
            return jnp.stack([sign, digits[r // 100], point, digits[(r // 10) % 10], digits[r % 10]], 1)

        trend = jnp.where(jnp.sum(jnp.diff(z, axis=1), axis=1) > 0, self.up, self.down)[:, None]
        parts = [const(self.description)]
        stats = [number(jnp.min(z, 1)), number(jnp.max(z, 1)), number(jnp.median(z, 1)), trend]
        for label, stat in zip(self.labels, stats):
            parts += [const(label), stat]
        parts.append(const(self.labels[4]))
        if self.top_lags:
            spectrum = jnp.fft.rfft(z, n=2 * t, axis=1)  # zero-padded: linear, not circular (symmetric)
            corr = jnp.fft.irfft(spectrum * jnp.conj(spectrum), n=2 * t, axis=1)[:, 1:t]  # lags 1 .. T-1
            lags = jax.lax.top_k(corr, min(self.top_lags, t - 1))[1] + 1
            if lags.shape[1] < self.top_lags:
                lags = jnp.pad(lags, ((0, 0), (0, self.top_lags - lags.shape[1])))
            width = len(str(max(t - 1, 1)))
            tens = 10 ** jnp.arange(width - 1, -1, -1)
            parts.append(digits[(lags[..., None] // tens) % 10].reshape(b, -1))
        return jnp.concatenate(parts, axis=1).astype(jnp.int32)


def gpt2_char_id(c: str) -> int:
    """GPT-2's id of the one-character token ``c`` (printable ASCII; ``" "`` is ``"Ġ"``, 220): its
    byte-level vocabulary starts with ``"!"`` .. ``"~"`` at 0 .. 93."""
    if c == " ":
        return 220
    if len(c) != 1 or not 33 <= ord(c) <= 126:
        raise ValueError(f"gpt2_char_id: one printable ASCII character, got {c!r}")
    return ord(c) - 33


def _series(x: Any) -> tuple[Array, tuple[int, ...]]:
    """``x`` ``(B, T)`` or ``(B, T, C)`` float -> ``(B·C, T)`` and the shape to restore."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating-point series (B, T) or (B, T, C), got dtype {x.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be series (B, T) or (B, T, C), got shape {x.shape}")
    bad = ~jnp.isfinite(x)
    check(
        ~bad,
        "x has {n} non-finite value(s) (NaN or inf), e.g. in series {row}: fill or drop missing values first",
        n=jnp.sum(bad),
        row=jnp.argmax(bad.reshape(x.shape[0], -1).any(1)),
    )
    if x.ndim == 2:
        return x, x.shape
    b, t, c = x.shape
    return jnp.moveaxis(x, 2, 1).reshape(b * c, t), x.shape


def normalize(x: Array) -> tuple[Array, Array, Array]:
    """RevIN without affine: ``(z, μ, σ)`` with ``z = (x − μ) / σ`` over the last axis of ``(B, T)``."""
    mu = jnp.mean(x, axis=1, keepdims=True)
    sigma = jnp.sqrt(jnp.var(x, axis=1, keepdims=True) + EPS)
    return (x - mu) / sigma, mu, sigma


def denormalize(y: Array, mu: Array, sigma: Array) -> Array:
    """Inverse of :func:`normalize` on a forecast ``(B, H)``: ``y σ + μ``."""
    return y * sigma + mu


_FINAL_NORMS = ("ln_f", "norm")  # GPT-2's, the Llama family's


@dataclasses.dataclass(frozen=True)
class _Backbone:
    """``apply(params, x, hook)``: series ``(B, T[, C])`` -> forecasts ``(B, H[, C])`` (see module)."""

    lm: Any  # a jaxreprog.models.causal.CausalLM
    prompt: StatsPrompt | None
    pad_id: int

    def __call__(self, params, x, hook: Hook | None = None) -> Array:
        from jaxreprog.models import text

        series, shape = _series(x)
        z, mu, sigma = normalize(series)
        table = text.word_embeddings(params)
        patches = Series(z, table) if hook is None else hook("series", Series(z, table))
        if not isinstance(patches, jax.Array) or patches.ndim != 3 or patches.shape[0] != z.shape[0]:
            raise ValueError(
                "time_llm_backbone: the 'series' site must return the reprogrammed patches (B, N, D); got "
                f"{type(patches).__name__}: reprogram this model with embedding=jr.embedding.time_llm(...)"
            )
        b, n, d = patches.shape
        if d != table.shape[1]:
            raise ValueError(
                f"the reprogrammed patches are {d} wide; the model's embeddings are {table.shape[1]}"
            )
        ids = self.prompt.ids(z) if self.prompt is not None else jnp.zeros((b, 0), jnp.int32)
        tokens = jnp.concatenate([ids, jnp.full((b, n), self.pad_id, jnp.int32)], axis=1)
        finals = [s for s in _FINAL_NORMS if s in params.get("params", params)]
        if not finals:
            raise ValueError(f"time_llm_backbone: no final norm ({' or '.join(_FINAL_NORMS)}) in the params")
        captured: list[Array] = []

        def inner(site, value):
            if site == "embeddings" and isinstance(value, Embedded):
                value = value._replace(h=value.h.at[:, -n:].set(patches.astype(value.h.dtype)))
            value = value if hook is None else hook(site, value)
            if site == finals[0]:
                captured.append(value)
            return value

        self.lm.run(params, {"input_ids": tokens, "attention_mask": jnp.ones_like(tokens)}, inner)
        hidden = captured[-1][:, -n:]
        out = hidden if hook is None else hook("forecast", hidden)
        if not isinstance(out, jax.Array) or out.ndim != 2 or out.shape[0] != b:
            raise ValueError(
                f"time_llm_backbone: the 'forecast' site must return (B, H) forecasts, got {jnp.shape(out)}"
            )
        y = denormalize(out, mu, sigma)
        if len(shape) == 3:
            y = jnp.moveaxis(y.reshape(shape[0], shape[2], -1), 1, 2)
        return y


def time_llm_backbone(model: FrozenModel, *, prompt: StatsPrompt | None = None) -> FrozenModel:
    """A zoo causal LM (GPT-2, the Llama family) as Time-LLM's frozen forecaster (module docstring).

    ``apply(params, x, hook)`` maps series ``(B, T)`` (or ``(B, T, C)``, channel-independent) to
    forecasts ``(B, H)`` (``(B, H, C)``) with a :func:`time_llm` hook; ``params`` and ``spec``
    are the LM's. ``prompt``: the statistics prompt (``None``: no prefix).
    """
    from jaxreprog.models.causal import CausalLM

    if not isinstance(model, FrozenModel) or not isinstance(model.apply, CausalLM):
        raise TypeError(
            "time_llm_backbone: model must be a causal LM FrozenModel (jr.models.gpt2 / jr.models.llama)"
        )
    if prompt is not None:
        if not isinstance(prompt, StatsPrompt):
            raise TypeError(f"prompt must be a StatsPrompt or None, got {type(prompt).__name__}")
        prompt = prompt.checked(model.spec.vocab_size)
    return FrozenModel(_Backbone(model.apply, prompt, model.spec.pad_id), model.params, model.spec)


def num_patches(context: int, patch_len: int, stride: int) -> int:
    """``N = ⌊(T − P) / S⌋ + 2``: patches of the series padded with ``stride`` copies of its last value."""
    return (context - patch_len) // stride + 2


def _dense(key: Array, fan_in: int, shape: tuple[int, ...]) -> Array:
    """PyTorch's ``nn.Linear`` / ``nn.Conv1d`` init, ``U(±1/√fan_in)``."""
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


@register(
    paper="Jin et al. ICLR 2024 (Time-LLM)",
    modality="time-series",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.PARAMETRIC | Operator.CONCATENATIVE,
    alignment=OutputAlignment.LINEAR,
)
def time_llm(
    context: int,
    horizon: int,
    *,
    patch_len: int = 16,
    stride: int = 8,
    d_model: int = 32,
    heads: int = 8,
    d_keys: int | None = None,
    num_prototypes: int = 1000,
    d_ff: int = 32,
) -> SiteHook:
    """Time-LLM's learned part (Jin et al. ICLR 2024), a hook on :func:`time_llm_backbone`'s sites.

    ``"series"``: patch embedding and patch reprogramming (module docstring, steps 2-3):
    ``Z = W_O MHA(e W_Q, E' W_K, E' W_V)``, ``E' = M E + b``; ``"forecast"``: the output
    projection ``ŷ = W_h vec(h_{-N:, :d_ff}) + b_h``.

    Args:
      context: T, the series' length (``>= patch_len``).
      horizon: H, the number of future steps (``>= 1``).
      patch_len, stride: P and S (the paper's 16 and 8).
      d_model: the patch embeddings' width (the paper's 16 or 32).
      heads, d_keys: the cross-attention's heads and their width (default ``d_ff``, as the reference).
      num_prototypes: S', the text prototypes (the paper's 1000).
      d_ff: how many features of each final hidden state the head reads (``<= D``).

    ``theta``: ``patch (3, P, d_model)``, ``map (S', V)``, ``map_bias (S',)``, ``query``/``key``/
    ``value`` kernels, ``query``/``value`` biases, ``out`` ``(heads·d_keys, D)``, ``head`` ``(N·d_ff, H)``
    (no key bias: it shifts all of a query's scores by one amount, which the softmax ignores).
    """
    context, horizon, patch_len, stride, d_model, heads, d_ff, num_prototypes = (
        integer(v, name, who="time_llm")
        for name, v in [
            ("context", context),
            ("horizon", horizon),
            ("patch_len", patch_len),
            ("stride", stride),
            ("d_model", d_model),
            ("heads", heads),
            ("d_ff", d_ff),
            ("num_prototypes", num_prototypes),
        ]
    )
    d_keys = d_ff if d_keys is None else integer(d_keys, "d_keys", who="time_llm")
    if context < patch_len:
        raise ValueError(
            f"time_llm: the series (context={context}) is shorter than one patch (patch_len={patch_len})"
        )
    n = num_patches(context, patch_len, stride)
    inner = heads * d_keys

    def init(key, spec):
        if not isinstance(spec, TokenSpec):
            raise TypeError(f"time_llm needs a language model's jr.TokenSpec, got {type(spec).__name__}")
        v, d = spec.vocab_size, spec.hidden_size
        if d_ff > d:
            raise ValueError(f"time_llm: d_ff={d_ff} exceeds the model's hidden size {d}")
        ks = jax.random.split(key, 12)
        return {
            "patch": _dense(ks[0], 3 * patch_len, (3, patch_len, d_model)),
            "map": _dense(ks[1], v, (num_prototypes, v)),
            "map_bias": _dense(ks[2], v, (num_prototypes,)),
            "query": _dense(ks[3], d_model, (d_model, inner)),
            "query_bias": _dense(ks[4], d_model, (inner,)),
            "key": _dense(ks[5], d, (d, inner)),
            "value": _dense(ks[7], d, (d, inner)),
            "value_bias": _dense(ks[8], d, (inner,)),
            "out": _dense(ks[9], inner, (inner, d)),
            "out_bias": _dense(ks[10], inner, (d,)),
            "head": _dense(ks[11], n * d_ff, (n * d_ff, horizon)),
            "head_bias": jnp.zeros((horizon,), jnp.float32),
        }

    def reprogram_patches(theta, value: Series) -> Array:
        z, table = value.values, value.table
        if z.shape[1] != context:
            raise ValueError(
                f"time_llm: x has {z.shape[1]} steps per series; this program takes context={context}"
            )
        padded = jnp.concatenate([z, jnp.repeat(z[:, -1:], stride, axis=1)], axis=1)
        index = jnp.arange(n)[:, None] * stride + jnp.arange(patch_len)
        p = padded[:, index]  # (B, N, P)
        w = theta["patch"]
        e = jnp.roll(p, 1, axis=1) @ w[0] + p @ w[1] + jnp.roll(p, -1, axis=1) @ w[2]  # (B, N, d_model)
        prototypes = theta["map"] @ table.astype(jnp.float32) + theta["map_bias"][:, None]  # (S', D)
        q = (e @ theta["query"] + theta["query_bias"]).reshape(*e.shape[:2], heads, d_keys)
        k = (prototypes @ theta["key"]).reshape(-1, heads, d_keys)
        v = (prototypes @ theta["value"] + theta["value_bias"]).reshape(-1, heads, d_keys)
        attn = jax.nn.softmax(jnp.einsum("bnhe,she->bhns", q, k) / np.sqrt(d_keys), axis=-1)
        out = jnp.einsum("bhns,she->bnhe", attn, v).reshape(*e.shape[:2], inner)
        return out @ theta["out"] + theta["out_bias"]  # (B, N, D)

    def project(theta, hidden: Array) -> Array:
        if hidden.shape[1] != n:
            raise ValueError(
                f"time_llm: the 'forecast' site carries {hidden.shape[1]} positions, expected N={n}"
            )
        flat = hidden[..., :d_ff].astype(jnp.float32).reshape(hidden.shape[0], n * d_ff)
        return flat @ theta["head"] + theta["head_bias"]

    def apply(theta, site, value, spec):
        del spec
        if site == "series":
            if not isinstance(value, Series):
                raise TypeError(
                    f"site 'series' carries {type(value).__name__}; use jr.embedding.time_llm_backbone"
                )
            return reprogram_patches(theta, value)
        if site == "forecast":
            return project(theta, value)
        return value

    return SiteHook(init, apply, sites=select(["series", "forecast"]))
