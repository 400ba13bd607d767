"""Soft prompts: learned vectors inserted among a frozen text model's token embeddings.

* :func:`soft_prompt` — Lester et al. 2021, "The Power of Scale for Parameter-Efficient
  Prompt Tuning": ``[e(x_0..x_n)] -> [P; e(x_0..x_n)]`` with ``P ∈ R^{p×D}`` learned.
* :func:`p_tuning` — Liu et al. 2021, "GPT Understands, Too": the prompt is the output
  of a small encoder, ``P_i = MLP([LSTM→(u)_i; LSTM←(u)_i])`` over learned inputs ``u``,
  or an MLP ``P = W_3 ReLU(W_2 ReLU(W_1 u))`` (biases omitted): PEFT's two encoders.

Both act at the sites ``sites=`` selects (:func:`jaxreprog.select`; default a zoo text
model's ``"embeddings"``, whose value is a :class:`~jaxreprog.hooks.Embedded`), and
insert with :func:`~jaxreprog.hooks.insert` (``where``: ``"prefix"``,
``"after_first"`` — after [CLS]/BOS —, ``"suffix"``), which extends the attention
mask, rewrites the position ids, and flags the prompt tokens so sentence pooling skips them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog import checking
from jaxreprog.core import SiteHook, TokenSpec
from jaxreprog.embedding import _tasks
from jaxreprog.hooks import Embedded, SiteSelection, Where, insert, select
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["p_tuning", "soft_prompt"]

Init = Literal["uniform", "vocab", "labels"]


def _check_where(where: str) -> None:
    if where not in ("prefix", "after_first", "suffix"):
        raise ValueError(f"where must be 'prefix', 'after_first' or 'suffix', got {where!r}")


def _token_spec(spec: Any, who: str) -> TokenSpec:
    if not isinstance(spec, TokenSpec):
        raise TypeError(f"{who} needs a text model with a jr.TokenSpec, got {type(spec).__name__}")
    return spec


def _insert_at(site: str, value: Any, prompt: jax.Array, where: Where, length: int) -> Any:
    if not isinstance(value, Embedded):
        raise TypeError(f"site {site!r} carries {type(value).__name__}, expected jaxreprog.hooks.Embedded")
    if prompt.ndim not in (2, 3) or prompt.shape[-2] != length:
        raise ValueError(
            f"the prompt must be (length={length}, D), got shape {prompt.shape} (per example: (B, length, D))"
        )
    if prompt.shape[-1] != value.h.shape[-1]:
        raise ValueError(f"prompt width {prompt.shape[-1]} != the model's hidden size {value.h.shape[-1]}")
    return insert(value, prompt, where)


@register(
    paper="Lester et al. 2021",
    modality="text",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.CONCATENATIVE,
)
def soft_prompt(
    length: int,
    *,
    init: Init | np.ndarray | jax.Array | Mapping[str, Any] = "uniform",
    table: jax.Array | np.ndarray | None = None,
    label_ids: Sequence[Sequence[int]] | None = None,
    vocab_ids: Sequence[int] | None = None,
    scale: float = 0.5,
    where: Where = "prefix",
    sites: SiteSelection = "embeddings",
    tasks: int | None = None,
) -> SiteHook:
    """Prompt tuning: ``length`` learned vectors inserted at the embedding site.

    Initialisations (Lester et al. 2021, Sec. 3.2):

    * ``"uniform"`` — ``U(-scale, scale)`` (the paper's random init, ``scale=0.5``);
    * ``"vocab"`` — rows of the model's embedding ``table`` (``(V, D)``, see
      :func:`jaxreprog.models.text.word_embeddings`) at ids sampled from
      ``vocab_ids`` (default: the whole vocabulary; the paper samples its 5,000
      most common tokens);
    * ``"labels"`` — the embeddings of the class-label words: ``label_ids[c]`` are
      the token ids of class ``c``'s label, averaged when it has several; slots past
      the number of classes are sampled as in ``"vocab"``;
    * an array ``(length, D)`` — a saved prompt; or a trained soft prompt's theta
      ``{"prompt": ...}``: soft prompt transfer (SPoT, Vu et al. 2022, "SPoT: Better Frozen
      Model Adaptation through Soft Prompt Transfer": a prompt trained on a source task
      initialises the target task's).

    ``theta = {"prompt": (length, D)}``. ``sites`` (:func:`jaxreprog.select`) names the
    site(s) whose :class:`~jaxreprog.hooks.Embedded` gets the prompt.

    With ``tasks=K``: K independent prompts, ``theta = {"prompt": (K, length, D)}``, one per
    task, for mixed-task batches: each example's ``x["task"]`` (int ``(B,)`` in ``[0, K)``)
    picks its task's prompt (:attr:`~jaxreprog.SiteHook.bind`), so one compiled program
    serves all K tasks (PEFT issue #759). Each task's prompt is drawn independently from
    ``init``; an array ``(length, D)`` (or such a theta) starts every task from it (SPoT),
    an array ``(K, length, D)`` (a trained K-task theta) gives each its own. Task ids
    outside ``[0, K)`` raise on an eager call (and inside :func:`jaxreprog.checked`); under
    a plain ``jit`` their prompt is NaN, so are their logits and loss.
    :func:`multitask_prompt` shares one prompt among the tasks instead (MPT).

    Example::

        >>> emb = jr.embedding.soft_prompt(20, init="vocab", table=word_embeddings(model.params))
        >>> program = jr.reprogram(model, embedding=emb, output=...)
    """
    length = checking.integer(length, "length (number of prompt tokens)", who="soft_prompt")
    _check_where(where)
    selector = select(sites)
    k = None if tasks is None else _tasks.check_tasks(tasks, "soft_prompt")
    if isinstance(init, str):
        if init not in ("uniform", "vocab", "labels"):
            raise ValueError(f"init must be 'uniform', 'vocab', 'labels' or an array, got {init!r}")
        if init != "uniform" and table is None:
            raise ValueError(f"init={init!r} needs table=<the model's (V, D) token-embedding matrix>")
        if init == "labels" and not label_ids:
            raise ValueError("init='labels' needs label_ids=<token ids of each class's label words>")
    else:
        saved = _saved_prompt(init, length, k)
    if table is not None:
        if np.ndim(table) != 2:
            raise ValueError(f"table must be the (V, D) token-embedding matrix, got shape {np.shape(table)}")
        # jnp indexing clamps out-of-range ids and averages an empty label to NaN: reject both.
        groups = [("label_ids", ids) for ids in label_ids or ()]
        groups += [] if vocab_ids is None else [("vocab_ids", vocab_ids)]
        for name, ids in groups:
            ids, v = np.asarray(ids), np.shape(table)[0]
            if ids.ndim != 1 or not ids.size or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"{name} must be non-empty lists of token ids, got {ids.tolist()!r}")
            if ids.min() < 0 or ids.max() >= v:
                raise ValueError(f"{name} has ids outside the table's vocabulary [0, {v}): {ids.tolist()}")

    def init_fn(key, spec):
        spec = _token_spec(spec, "soft_prompt")
        if k is not None and isinstance(init, str):  # K independent draws
            return {"prompt": jax.vmap(lambda key: one(key, spec))(jax.random.split(key, k))}
        return {"prompt": one(key, spec)}

    def one(key, spec):
        d = spec.hidden_size
        if not isinstance(init, str):
            if saved.shape[-1] != d:
                raise ValueError(f"init array has width {saved.shape[-1]}; the model's hidden size is {d}")
            return saved if k is None else jnp.broadcast_to(saved, (k, length, d))
        if init == "uniform":
            return jax.random.uniform(key, (length, d), jnp.float32, -scale, scale)
        t = jnp.asarray(table, jnp.float32)
        if t.shape[1] != d:
            raise ValueError(f"table has width {t.shape[1]}; the model's hidden size is {d}")
        pool = jnp.arange(t.shape[0]) if vocab_ids is None else jnp.asarray(vocab_ids, jnp.int32)
        rows = t[jax.random.choice(key, pool, (length,), replace=pool.shape[0] < length)]
        if init == "labels":
            labels = jnp.stack([t[jnp.asarray(ids, jnp.int32)].mean(0) for ids in label_ids])[:length]
            rows = rows.at[: labels.shape[0]].set(labels)
        return rows

    if k is None:

        def apply(theta, site, value, spec):
            if not selector.matches(site):
                return value
            return _insert_at(site, value, theta["prompt"], where, length)

        return SiteHook(init_fn, apply, sites=selector)

    def bind(theta, x):
        return _tasks.PerExample(_tasks.gather(theta["prompt"], _tasks.task_ids(x, k, "soft_prompt")))

    def apply_tasks(theta, site, value, spec):
        if not selector.matches(site):
            return value
        return _insert_at(site, value, _tasks.bound(theta, "soft_prompt"), where, length)

    return SiteHook(init_fn, apply_tasks, sites=selector, bind=bind)


def _saved_prompt(init: Any, length: int, tasks: int | None) -> jax.Array:
    """A saved prompt (an array or a trained theta ``{"prompt": ...}``) as float32, shape checked:
    ``(length, D)``, or with ``tasks=K`` also ``(K, length, D)``."""
    if isinstance(init, Mapping):
        if set(init) != {"prompt"}:
            raise ValueError(
                "init: a trained soft prompt's theta is {'prompt': array}, got keys "
                f"{sorted(map(str, init))}"
            )
        init = init["prompt"]
    try:
        saved = jnp.asarray(init, jnp.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"init must be 'uniform', 'vocab', 'labels', an array or a trained theta: {err}"
        ) from None
    leading = [(length,)] + ([] if tasks is None else [(tasks, length)])
    if saved.ndim < 2 or saved.shape[:-1] not in leading:
        want = f"(length={length}, D)" + ("" if tasks is None else f" or (tasks={tasks}, length={length}, D)")
        raise ValueError(f"init array must be {want}, got {saved.shape}")
    return saved


Encoder = Literal["lstm", "mlp", "mlp1"]


def _uniform(scale: float) -> Callable[..., jax.Array]:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


class LSTM(nn.Module):
    """One direction of one layer of PyTorch's ``nn.LSTM`` over ``(P, E)`` -> ``(P, hidden)``.

    ``[i, f, g, o] = x_t W_x + y_{t-1} W_y + b`` (PyTorch's gate order; ``b`` is its
    ``bias_ih + bias_hh``), ``c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)``, ``y_t = σ(o) ⊙
    tanh(c_t)``, from a zero state; ``reverse`` runs from the last step to the first
    (the outputs stay in input order). Parameters ``w_x (E, 4 hidden)``, ``w_y (hidden,
    4 hidden)``, ``b (4 hidden)``, initialised ``U(±1/√hidden)`` as PyTorch's.
    """

    hidden: int
    reverse: bool = False

    @nn.compact
    def __call__(self, u):
        h = self.hidden
        init = _uniform(1 / np.sqrt(h))
        w_x = self.param("w_x", init, (u.shape[-1], 4 * h))
        w_y = self.param("w_y", init, (h, 4 * h))
        b = self.param("b", init, (4 * h,))

        zero = jnp.zeros((h,), u.dtype)
        return jax.lax.scan(_lstm_step, (zero, zero, w_y), u @ w_x + b, reverse=self.reverse)[1]


def _lstm_step(carry, x_t):
    """One LSTM step; a module-level function, so eager calls reuse its compiled scan."""
    c, y, w_y = carry
    i, f, g, o = jnp.split(x_t + y @ w_y, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    y = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, y, w_y), y


class PromptEncoder(nn.Module):
    """P-tuning's prompt encoder over ``(P, E)`` inputs -> ``(P, D)`` (``D = features``).

    * ``"lstm"``: PEFT's LSTM ``PromptEncoder``: ``lstm_layers`` stacked bi-LSTMs of
      ``hidden`` units each way (:class:`LSTM` ``lstm_{i}_forward`` / ``lstm_{i}_backward``,
      PyTorch's ``LSTM(bidirectional=True)``), then ``Dense(2 hidden) → ReLU → Dense(D)``
      (``hidden``, ``out``); ``E = D``.
    * ``"mlp"``: PEFT's ``PromptEncoder`` MLP, ``Dense(hidden) → ReLU → Dense(hidden) →
      ReLU → Dense(D)`` (submodules ``hidden_1``, ``hidden_2``, ``out``; ``E = D``).
    * ``"mlp1"``: one hidden layer, ``Dense(hidden) → ReLU → Dense(D)`` (``hidden``,
      ``out``; ``E = hidden``).
    """

    features: int
    hidden: int
    kind: Encoder = "lstm"
    lstm_layers: int = 2

    @nn.compact
    def __call__(self, u):
        if self.kind == "mlp":
            u = nn.relu(nn.Dense(self.hidden, name="hidden_1")(u))
            u = nn.relu(nn.Dense(self.hidden, name="hidden_2")(u))
            return nn.Dense(self.features, name="out")(u)
        width = self.hidden
        if self.kind == "lstm":
            for i in range(self.lstm_layers):
                forward = LSTM(self.hidden, name=f"lstm_{i}_forward")(u)
                backward = LSTM(self.hidden, reverse=True, name=f"lstm_{i}_backward")(u)
                u = jnp.concatenate([forward, backward], axis=-1)
            width = 2 * self.hidden
        return nn.Dense(self.features, name="out")(nn.relu(nn.Dense(width, name="hidden")(u)))


@register(
    paper="Liu et al. 2021",
    modality="text",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.CONCATENATIVE | Operator.PARAMETRIC,
    layout=2,  # 2: the LSTM encoder became PEFT's PromptEncoder (stacked bi-LSTMs, 2h-wide head)
)
def p_tuning(
    length: int,
    *,
    encoder: Encoder = "lstm",
    hidden: int | None = None,
    lstm_layers: int = 2,
    where: Where = "prefix",
    sites: SiteSelection = "embeddings",
) -> SiteHook:
    """P-tuning (Liu et al. 2021, "GPT Understands, Too"): prompt vectors produced by a
    learned encoder, ``[e(x)] -> [P; e(x)]`` with ``P = f(u)`` and ``u`` learned inputs.

    * ``encoder="lstm"`` (the paper's choice; PEFT's ``PromptEncoder`` with
      ``encoder_reparameterization_type="LSTM"``, ``encoder_hidden_size=hidden``,
      ``encoder_num_layers=lstm_layers``): ``h_i = [LSTM→(u)_i; LSTM←(u)_i]`` through
      ``lstm_layers`` stacked bi-LSTMs of ``hidden`` units each way, then
      ``P_i = W_2 ReLU(W_1 h_i + b_1) + b_2`` with ``W_1: 2 hidden→2 hidden``,
      ``W_2: 2 hidden→D``; ``u ∈ R^{length×D}``. PEFT's ``encoder_dropout`` (between
      LSTM layers, training only; default 0) is not modelled.
    * ``"mlp"``: ``P = W_3 ReLU(W_2 ReLU(W_1 u + b_1) + b_2) + b_3`` with ``u ∈
      R^{length×D}``, ``W_1: D→hidden``, ``W_2: hidden→hidden``, ``W_3: hidden→D`` —
      PEFT's ``PromptEncoder`` MLP (``encoder_reparameterization_type="MLP"``,
      ``encoder_hidden_size=hidden``; its ``embedding`` is ``u``).
    * ``"mlp1"``: one hidden layer, ``P = W_2 ReLU(W_1 u + b_1) + b_2`` with ``u ∈
      R^{length×hidden}`` (jaxreprog 0.2's ``"mlp"``).

    The encoder couples the prompt tokens, which the paper reports makes optimisation
    more stable than free vectors. ``theta = {"inputs": u, "encoder": flax params}``
    (:class:`PromptEncoder`); ``hidden`` defaults to the model's hidden size (PEFT's
    default too); ``sites`` as for :func:`soft_prompt`. A PEFT adapter file holds the
    encoder's output ``P``, not the encoder: :func:`jaxreprog.to_peft` writes ``P``.
    """
    length = checking.integer(length, "length (number of prompt tokens)", who="p_tuning")
    _check_where(where)
    selector = select(sites)
    if encoder not in ("lstm", "mlp", "mlp1"):
        raise ValueError(f"encoder must be 'lstm', 'mlp' or 'mlp1', got {encoder!r}")
    hidden = None if hidden is None else checking.integer(hidden, "hidden", who="p_tuning")
    lstm_layers = checking.integer(lstm_layers, "lstm_layers", who="p_tuning")

    def module(spec):
        h = int(hidden or spec.hidden_size)
        return PromptEncoder(spec.hidden_size, h, encoder, int(lstm_layers)), h

    def init_fn(key, spec):
        spec = _token_spec(spec, "p_tuning")
        net, h = module(spec)
        k_in, k_net = jax.random.split(key)
        u = jax.random.normal(k_in, (length, h if encoder == "mlp1" else spec.hidden_size), jnp.float32)
        return {"inputs": u, "encoder": net.init(k_net, u)["params"]}

    def apply(theta, site, value, spec):
        if not selector.matches(site):
            return value
        net, _ = module(spec)
        # Runs inside the hook call: jr.intercept does not take the encoder's submodules for sites.
        prompt = net.apply({"params": theta["encoder"]}, theta["inputs"])
        return _insert_at(site, value, prompt, where, length)

    return SiteHook(init_fn, apply, sites=selector)
