"""Rule-based output alignment for generated text: extraction, verbalizers, voting.

Chain-of-thought answers are parsed by rules (Wei et al. 2022: the answer follows
"The answer is"); a verbalizer maps label words back to classes (Schick & Schütze
2021, PET); self-consistency (Wang et al. 2023) takes the majority answer over
several sampled reasoning paths.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking

__all__ = ["extract", "verbalize", "vote", "vote_text"]

# The token after "answer is": a "." or "," inside it is kept ("3.5", "1,000"), a trailing one is not.
ANSWER_IS = r"answer is\b\s*:?\s*\(?((?:[^\s.,)]|[.,](?=[^\s.,)]))+)"


def extract(text: str, pattern: str = ANSWER_IS, *, last: bool = True) -> str | None:
    """The first capture group of ``pattern`` in ``text`` (the last match by default,
    since chain-of-thought states the answer at the end); ``None`` when absent."""
    matches = list(re.finditer(pattern, text, flags=re.IGNORECASE))
    if not matches:
        return None
    m = matches[-1] if last else matches[0]
    return m.group(1) if m.groups() else m.group(0)


def verbalize(text: str | None, label_words: Mapping[int, Sequence[str]] | Sequence[Sequence[str]]) -> int:
    """The class whose label word occurs in ``text`` (whole word, case-insensitive).

    "Whole word": no letter, digit or ``_`` right before or after the match, so label
    words may start or end with punctuation (``"(A)"``, ``"-1"``).

    When several classes match, the earliest occurrence in the text wins; -1 when
    none does (an abstention, counted as wrong by accuracy). Each class needs a list
    of non-empty str words: a bare str, or an empty or non-str word, raises ``ValueError``.
    """
    table = dict(label_words) if isinstance(label_words, Mapping) else dict(enumerate(label_words))
    for words in table.values():
        if isinstance(words, str) or not all(isinstance(w, str) and w for w in words):
            raise ValueError(f"verbalize: each class needs a list of non-empty label words, got {words!r}")
    if text is None:
        return -1
    best, where = -1, len(text) + 1
    for cls, words in table.items():
        for w in words:
            m = re.search(rf"(?<!\w){re.escape(w)}(?!\w)", text, flags=re.IGNORECASE)
            if m and m.start() < where:
                best, where = cls, m.start()
    return best


def vote(answers: jax.Array, num_classes: int) -> jax.Array:
    """Self-consistency: the majority class over samples (axis 0); -1 entries abstain.

    ``answers`` is ``(S, B)`` int in ``[-1, num_classes)``; returns ``(B,)``. Ties go to
    the lowest class; a column of only abstentions gives -1. Other values raise a
    ``ValueError``, except under ``jit`` (traced values cannot be checked), where
    they count as abstentions.
    """
    num_classes = checking.integer(num_classes, "num_classes", who="vote")
    if not isinstance(answers, jax.core.Tracer):  # checked in numpy: jnp ops inside jit give tracers
        concrete = np.asarray(answers)
        if concrete.size and not -1 <= concrete.min() <= concrete.max() < num_classes:
            raise ValueError(
                f"vote: answers must be classes in [0, num_classes={num_classes}) or -1 (abstain), "
                f"got values in [{concrete.min()}, {concrete.max()}]"
            )
    answers = jnp.asarray(answers)
    if answers.ndim != 2:
        raise ValueError(f"vote: answers must be (samples, batch), got shape {answers.shape}")
    counts = jax.nn.one_hot(answers, num_classes, dtype=jnp.int32).sum(0)  # -1 -> all zeros
    return jnp.where(counts.max(-1) > 0, jnp.argmax(counts, -1), -1)


def vote_text(answers: Sequence[str | None]) -> str | None:
    """Self-consistency over extracted strings: the most common non-None answer
    (ties: first seen)."""
    counts = Counter(a for a in answers if a is not None)
    return max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None
