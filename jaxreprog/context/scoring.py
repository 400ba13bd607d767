"""Classification by scoring: label descriptions for encoders, label likelihood for causal LMs.

Zero-shot classification with a sentence encoder: embed one description per class
("business news", ...) and score a document by cosine similarity, scaled by a
temperature (the CLIP-style head, Radford et al. 2021; Yin et al. 2019 for
label-description zero-shot text classification). For causal LMs, a class scores
the log-likelihood of its label words after the prompt (Brown et al. 2020):
:func:`jaxreprog.output.verbalizer` for one-token words (the next-token logits),
:func:`label_loglik` for labels of several tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.context.prompt import insert

__all__ = ["description_logits", "label_loglik"]


def _unit(v: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``v / max(|v|, eps)`` along the last axis: a zero vector stays zero, with finite gradients
    (``jnp.linalg.norm``'s gradient is NaN at zero, so the floor goes under the square root)."""
    return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps * eps))


def description_logits(
    embeddings: jax.Array, descriptions: jax.Array, temperature: float = 0.05
) -> jax.Array:
    """``cos(e_i, d_c) / temperature``: ``(B, D)`` x ``(C, D)`` -> ``(B, C)`` logits.

    A zero vector has cosine 0 with everything (not NaN)."""
    if embeddings.ndim != 2 or descriptions.ndim != 2 or embeddings.shape[1] != descriptions.shape[1]:
        raise ValueError(
            "description_logits: embeddings (B, D) and descriptions (C, D) must share D; "
            f"got {embeddings.shape} and {descriptions.shape}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return (_unit(embeddings) @ _unit(descriptions).T) / temperature


def label_loglik(
    logits_fn: Callable[[Any, dict[str, jax.Array]], jax.Array],
    params: Any,
    x: Mapping[str, jax.Array],
    labels: jax.Array,
    label_mask: jax.Array | None = None,
    *,
    pad_id: int = 0,
) -> jax.Array:
    """``log p(w_c | x) = Σ_t log p(w_{c,t} | x, w_{c,<t})`` for every class: ``(B, C)``.

    Each label ``w_c`` is appended after each row's last real token (teacher
    forcing) and the causal LM's log-probabilities of its tokens are summed; the C
    labels run in one ``jax.vmap`` with ``params`` and ``x`` shared.

    Args:
      logits_fn: ``(params, x) -> (B, L, V)`` logits at every position of a causal LM
        (e.g. ``lambda p, x: jr.models.gpt2.logits(model, p, x).logits``).
      x: the prompts, ``{"input_ids", "attention_mask"}`` ``(B, L)``, any padding side.
      labels: int ``(C, T)`` label token ids; ``label_mask`` ``(C, T)`` 0/1 marks the
        real ones (labels of different lengths, as :func:`jaxreprog.context.stack`
        pads them); tokens after a label's end are ignored (a causal LM cannot see them).
        Every label needs at least one real token (an empty one would score
        ``log p = 0`` and win every row): ``T = 0`` or a ``label_mask`` row of zeros
        raises ``ValueError`` (the mask is checked when it is concrete, not under ``jit``).
      pad_id: the id written at padded positions of the prompts with labels appended.
    """
    labels = jnp.asarray(labels, jnp.int32)
    mask = jnp.ones_like(labels) if label_mask is None else jnp.asarray(label_mask, jnp.int32)
    if labels.ndim != 2 or mask.shape != labels.shape:
        raise ValueError(f"labels and label_mask must be (C, T), got {labels.shape} and {mask.shape}")
    # An empty label would score log p = 0, the maximum, and win every row.
    if labels.shape[1] == 0 or (
        not isinstance(mask, jax.core.Tracer) and (np.asarray(mask).sum(-1) < 1).any()
    ):
        raise ValueError("label_loglik: every label needs at least one real token (label_mask row of zeros)")
    n = jnp.asarray(x["attention_mask"]).astype(jnp.int32).sum(-1)  # real prompt tokens per row
    if not isinstance(n, jax.core.Tracer) and int(n.min()) < 1:
        raise ValueError("label_loglik: every prompt needs at least one real token")
    t = labels.shape[1]

    def one(label, lmask):
        xi = insert(x, jnp.zeros((0,), jnp.int32), None, label, pad_id=pad_id, padding_side="right")
        logits = logits_fn(params, xi)  # right-packed: label token j sits at n + j
        at = (n[:, None] + jnp.arange(t)[None, :] - 1)[..., None]  # positions predicting it
        logp = jax.nn.log_softmax(jnp.take_along_axis(logits, at, axis=1), -1)  # (B, T, V)
        tok = jnp.take_along_axis(logp, jnp.broadcast_to(label, logp.shape[:2])[..., None], -1)[..., 0]
        return jnp.sum(tok * lmask, -1)

    return jax.vmap(one, out_axes=1)(labels, mask)
