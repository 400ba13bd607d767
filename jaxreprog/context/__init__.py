"""Prompt instruction: fixed, hand-written context (instructions, demonstrations, CoT).

Format fixed, location input, operator concatenative; the output side is the
identity or a rule (:mod:`jaxreprog.context.parsing`, the verbalizer alignment).
"""

from jaxreprog.context import select
from jaxreprog.context.choose import Choice, score_candidates, select_prefix
from jaxreprog.context.parsing import extract, verbalize, vote, vote_text
from jaxreprog.context.prompt import chain_of_thought, demonstrations, insert, instruction, stack
from jaxreprog.context.scoring import description_logits, label_loglik
from jaxreprog.context.template import Demo, Template, encode, render

__all__ = [
    "Choice",
    "Demo",
    "Template",
    "chain_of_thought",
    "demonstrations",
    "description_logits",
    "encode",
    "extract",
    "insert",
    "instruction",
    "label_loglik",
    "render",
    "score_candidates",
    "select",
    "select_prefix",
    "stack",
    "verbalize",
    "vote",
    "vote_text",
]
