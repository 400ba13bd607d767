"""Rule-based output alignment for language models: verbalizers (Schick & Schütze, 2021).

The output side of prompt instruction: each class ``t`` owns a fixed set of
label words (token ids) ``V_t``, and its logit aggregates those words' logits,
``y_T[:, t] = reduce_{v ∈ V_t} f(x)[:, v]`` (``f(x)`` the LM's vocabulary logits
at the answer position). Turning label words (strings) into token ids is the
tokenizer's job, in :mod:`jaxreprog.context`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.core import Alignment
from jaxreprog.output._alignment import plain
from jaxreprog.output._checks import check_class_counts, check_logits
from jaxreprog.taxonomy import OutputAlignment, register

__all__ = ["verbalizer"]

Reduce = Literal["mean", "sum", "max", "logsumexp"]


@functools.partial(jax.jit, static_argnames="reduce")
def _verbalize(source_logits: jax.Array, index: jax.Array, mask: jax.Array, reduce: str) -> jax.Array:
    x = jnp.take(source_logits, index, axis=-1)  # (..., num_target, width)
    if reduce in ("mean", "sum"):
        total = jnp.sum(jnp.where(mask, x, 0), axis=-1)
        return total / jnp.sum(mask, axis=-1).astype(total.dtype) if reduce == "mean" else total
    masked = jnp.where(mask, x, -jnp.inf)
    return jnp.max(masked, axis=-1) if reduce == "max" else jax.nn.logsumexp(masked, axis=-1)


@register(
    paper="Schick & Schütze 2021",
    modality="text",
    alignment=OutputAlignment.RULE_BASED,
)
def verbalizer(label_words: Sequence[Sequence[int]], num_source: int, reduce: Reduce = "mean") -> Alignment:
    """Class ``t``'s logit = ``reduce`` over the logits of its label words ``label_words[t]``.

    Args:
      label_words: one non-empty sequence of token ids per class, each in
        ``[0, num_source)``; classes may have different numbers of words (and
        may share a word).
      num_source: the vocabulary size (width of the source logits).
      reduce: ``"mean"``, ``"sum"``, ``"max"`` or ``"logsumexp"`` (the log of the
        summed word probabilities, up to the shared normaliser).

    The state is ``()``; ``refit`` returns it unchanged.

    Example::

        >>> align = jr.output.verbalizer([[2204, 1049], [2919]], num_source=30522)  # good/great, bad
        >>> align.apply((), lm_logits)  # (N, 2)
    """
    if reduce not in ("mean", "sum", "max", "logsumexp"):
        raise ValueError(f"verbalizer: reduce must be 'mean', 'sum', 'max' or 'logsumexp', got {reduce!r}")
    if isinstance(label_words, str | bytes) or not len(label_words):
        raise ValueError("verbalizer: label_words must be a non-empty sequence of token-id sequences")
    check_class_counts("verbalizer", num_source, len(label_words))
    words = []
    for t, ids in enumerate(label_words):
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"verbalizer: label_words[{t}] must be a non-empty sequence of ints, got {ids}")
        if ids.min() < 0 or ids.max() >= num_source:
            raise ValueError(
                f"verbalizer: label_words[{t}] has ids outside [0, num_source={num_source}): {ids.tolist()}"
            )
        words.append(ids)
    num_target = len(words)
    width = max(w.size for w in words)
    index = np.zeros((num_target, width), np.int32)  # padded with token 0, masked out below
    mask = np.zeros((num_target, width), bool)
    for t, ids in enumerate(words):
        index[t, : ids.size], mask[t, : ids.size] = ids, True

    def apply(state, source_logits):
        del state
        check_logits("verbalizer.apply", source_logits, num_source)
        return _verbalize(source_logits, index, mask, reduce)

    return plain("verbalizer", init=lambda key: (), apply=apply, num_source=num_source, num_target=num_target)
