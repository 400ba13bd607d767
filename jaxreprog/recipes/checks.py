"""Checking a recipe's values against type hints: one line that names the key, what it must be, and the fix.

The schema is always a real annotation — a section dataclass's field (:mod:`.schema`) or a
factory's parameter (:mod:`.methods`), read with :func:`typing.get_type_hints` — never the text of
one. :func:`accepts` understands the shapes recipes use: ``str``, ``int``, ``float`` (an integer
is a number), ``bool``, ``X | None`` (None means "left out": a recipe cannot set it),
``Literal[...]`` and ``list[X]``.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

_PLAIN = (str, int, float, bool)
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false"}
_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}


class RecipeError(ValueError):
    """A recipe that cannot run as written; the message is one line that names the fix."""


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(given: Mapping[str, Any], known: Sequence[str], where: str, source: str) -> None:
    """Every key of ``given`` is one of ``known``; else the closest one and all of them."""
    for key in given:
        if key not in known:
            raise RecipeError(
                f"{source}: unknown key {key!r} in {where}{did_you_mean(key, known)}; "
                f"known keys: {', '.join(sorted(known))}"
            )


def _options(hint: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None`` -> ``(X,)``; None, "left out", is not a value)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(h for h in typing.get_args(hint) if h is not type(None))
    return (hint,)


def is_plain(hint: Any) -> bool:
    """Whether ``hint`` is made of ``str``/``int``/``float``/``bool`` (and None) only."""
    return all(h in _PLAIN for h in _options(hint))


def accepts(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as TOML/YAML reads it) is of type ``hint``."""
    for h in _options(hint):
        origin = typing.get_origin(h)
        if origin is Literal:
            if any(type(value) is type(a) and value == a for a in typing.get_args(h)):
                return True
        elif origin is list or h is list:
            (item,) = typing.get_args(h) or (Any,)
            if isinstance(value, list) and all(item is Any or accepts(v, item) for v in value):
                return True
        elif h is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True
        elif h is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(h, type) and isinstance(value, h):
            return True
    return False


def describe(hint: Any) -> str:
    """What a value of type ``hint`` is, in words: ``"an integer"``, ``"a list of numbers"``."""
    words = []
    for h in _options(hint):
        if typing.get_origin(h) is Literal:
            words.append(" or ".join(repr(a) for a in typing.get_args(h)))
        elif typing.get_origin(h) is list or h is list:
            (item,) = typing.get_args(h) or (Any,)
            words.append("a list" if item is Any else f"a list of {_PLURALS.get(item, describe(item))}")
        else:
            words.append(_NAMES.get(h, getattr(h, "__name__", str(h))))
    return " or ".join(words)


def check_value(value: Any, hint: Any, where: str, source: str, *, suffix: str = "") -> None:
    """Raise a one-line :class:`RecipeError` unless ``value`` is of type ``hint``.

    A string that is not one of a ``Literal``'s strings is an unknown choice (``unknown
    optimizer.name 'lion'; known: adam, adamw, sgd``); anything else names the type
    (``epochs must be an integer, got '3'``). ``suffix`` follows the type (e.g. which method).
    """
    if accepts(value, hint):
        return
    choices = [a for h in _options(hint) if typing.get_origin(h) is Literal for a in typing.get_args(h)]
    if isinstance(value, str) and choices and all(isinstance(c, str) for c in choices):
        raise RecipeError(f"{source}: unknown {where} {value!r}; known: {', '.join(choices)}")
    left_out = " (or left out)" if type(None) in typing.get_args(hint) else ""
    raise RecipeError(f"{source}: {where} must be {describe(hint)}{left_out}{suffix}, got {value!r}")
