"""Prompt templates as plain data, rendered to text and to token ids.

A template has an instruction, a format for each demonstration and one for the
query, with ``{input}``, ``{answer}`` and ``{rationale}`` slots (Brown et al. 2020,
in-context learning; Wei et al. 2022, chain-of-thought). Rendering to ids drops
whole demonstrations, farthest from the query first, until the prompt fits; the
query itself is never cut (Liu et al. 2023, "Pre-train, Prompt, and Predict").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Demo", "Template", "encode", "render"]


@dataclasses.dataclass(frozen=True)
class Demo:
    """One demonstration: an input, its answer and an optional chain-of-thought rationale."""

    input: str
    answer: str
    rationale: str | None = None


@dataclasses.dataclass(frozen=True)
class Template:
    """Instruction + demonstrations + query, as format strings.

    Attributes:
      instruction: text placed first (may be empty).
      demo: format of one demonstration; slots ``{input}``, ``{answer}`` and, for
        chain-of-thought, ``{rationale}``.
      query: format of the query; slot ``{input}``; ends with the answer cue.
      separator: text between blocks.
    """

    instruction: str = ""
    demo: str = "Input: {input}\nAnswer: {answer}"
    query: str = "Input: {input}\nAnswer:"
    separator: str = "\n\n"

    def __post_init__(self):
        if "{input}" not in self.query:
            raise ValueError(f"Template.query must contain an {{input}} slot, got {self.query!r}")
        if "{input}" not in self.demo or "{answer}" not in self.demo:
            raise ValueError(f"Template.demo must contain {{input}} and {{answer}} slots, got {self.demo!r}")

    def render_demo(self, demo: Demo) -> str:
        if "{rationale}" in self.demo and demo.rationale is None:
            raise ValueError(f"this template's demos need a rationale (chain-of-thought), got none: {demo}")
        return self.demo.format(input=demo.input, answer=demo.answer, rationale=demo.rationale or "")


def render(template: Template, query: str, demos: Sequence[Demo] = ()) -> str:
    """The full prompt text: instruction, demonstrations in order, then the query."""
    blocks = [template.instruction] if template.instruction else []
    blocks += [template.render_demo(d) for d in demos]
    blocks.append(template.query.format(input=query))
    return template.separator.join(blocks)


Tokenize = Callable[[str], Sequence[int]]


def encode(
    template: Template,
    query: str,
    demos: Sequence[Demo] = (),
    *,
    tokenize: Tokenize | Any,
    max_length: int,
) -> tuple[list[int], int]:
    """Render to token ids within ``max_length``; returns ``(ids, demos_kept)``.

    Truncation policy: drop demonstrations from the first (farthest from the
    query) until the prompt fits, then the instruction; the query is never cut —
    a query that alone exceeds ``max_length`` is an error. ``tokenize`` is a
    function ``str -> ids`` or a ``tokenizers.Tokenizer`` (ids of ``encode(text,
    add_special_tokens=False)``).
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    fn = _tokenize_fn(tokenize)
    demos = list(demos)
    instruction = template.instruction
    while True:
        t = dataclasses.replace(template, instruction=instruction)
        ids = list(fn(render(t, query, demos)))
        if len(ids) <= max_length:
            return ids, len(demos)
        if demos:
            demos = demos[1:]
        elif instruction:
            instruction = ""
        else:
            raise ValueError(
                f"the query alone takes {len(ids)} tokens > max_length={max_length}; "
                "the truncation policy never cuts the query: raise max_length or shorten the query"
            )


def _tokenize_fn(tokenize: Any) -> Tokenize:
    if callable(tokenize):
        return tokenize
    if hasattr(tokenize, "encode"):
        tokenize = _unpadded(tokenize)
        return lambda text: tokenize.encode(text, add_special_tokens=False).ids
    raise TypeError(f"tokenize must be a function str -> ids or a tokenizers.Tokenizer, got {type(tokenize)}")


def _unpadded(tokenizer: Any) -> Any:
    """A copy of a ``tokenizers.Tokenizer`` without padding or truncation (a padded
    tokenizer would count pads as prompt tokens; a truncating one would cut the query)."""
    if getattr(tokenizer, "padding", None) is None and getattr(tokenizer, "truncation", None) is None:
        return tokenizer
    copy = type(tokenizer).from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy
