"""Classification by scoring, for frozen encoders: similarity to label descriptions.

Zero-shot classification with a sentence encoder: embed one description per class
("business news", ...) and score a document by cosine similarity, scaled by a
temperature (the CLIP-style head, Radford et al. 2021; Yin et al. 2019 for
label-description zero-shot text classification). For causal LMs, label-word
log-likelihood is the verbalizer alignment, :func:`jaxreprog.output.verbalizer`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["description_logits"]


def description_logits(
    embeddings: jax.Array, descriptions: jax.Array, temperature: float = 0.05
) -> jax.Array:
    """``cos(e_i, d_c) / temperature``: ``(B, D)`` x ``(C, D)`` -> ``(B, C)`` logits."""
    if embeddings.ndim != 2 or descriptions.ndim != 2 or embeddings.shape[1] != descriptions.shape[1]:
        raise ValueError(
            "description_logits: embeddings (B, D) and descriptions (C, D) must share D; "
            f"got {embeddings.shape} and {descriptions.shape}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    e = embeddings / jnp.linalg.norm(embeddings, axis=-1, keepdims=True)
    d = descriptions / jnp.linalg.norm(descriptions, axis=-1, keepdims=True)
    return (e @ d.T) / temperature
