"""The ``[input]`` and ``[output]`` sections: a method name plus its factory's keyword arguments.

The factory's signature is the schema: ``[input] method = "pad"`` accepts exactly the
keyword arguments of :func:`jaxreprog.input.pad`, checked against their type hints
(:func:`typing.get_type_hints`); ``[output]`` those of the alignment factory, less
``num_source`` / ``num_target``, which come from the model and the dataset.

Which functions count as factories is read from the same hints: an input method returns
a :class:`jaxreprog.InputTransform`; an output method returns a :class:`jaxreprog.Alignment`
and takes ``(num_source, num_target, ...)`` first (so ``per_candidate`` and ``verbalizer``,
which need more than a recipe can write, are not offered).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from jaxreprog.core import Alignment, InputTransform
from jaxreprog.recipes.checks import RecipeError, check_value, did_you_mean, is_plain

AUTO_OUTPUT_ARGS = ("num_source", "num_target")
_RETURNS = {"input": InputTransform, "output": Alignment}


@functools.cache
def _hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a hint that does not resolve: the factory checks its own values
        return {}


def _is_factory(fn: Any, section: str) -> bool:
    """Whether a recipe can name ``fn`` as its ``section``'s method (see the module docstring)."""
    if not callable(fn) or isinstance(fn, type):
        return False
    returns = _hints(fn).get("return")
    if not (isinstance(returns, type) and issubclass(returns, _RETURNS[section])):
        return False
    if section == "output":
        return tuple(inspect.signature(fn).parameters)[:2] == AUTO_OUTPUT_ARGS
    return True


def _module(section: str):
    import jaxreprog as jr

    return jr.input if section == "input" else jr.output


def names(section: str) -> list[str]:
    """The methods a recipe's ``[input]`` / ``[output]`` can name."""
    module = _module(section)
    return sorted(n for n in module.__all__ if _is_factory(getattr(module, n), section))


def factory(section: str, method: str, source: str) -> Callable:
    """``jr.input.<method>`` / ``jr.output.<method>``, or a one-line error naming the known ones."""
    module = _module(section)
    if method not in module.__all__ or not _is_factory(getattr(module, method), section):
        known = names(section)
        raise RecipeError(
            f"{source}: unknown {section}.method {method!r}{did_you_mean(method, known)}; "
            f"known: {', '.join(known)}"
        )
    return getattr(module, method)


def construct(fn: Callable, kwargs: Mapping[str, Any], what: str, source: str):
    """``fn(**kwargs)``, a bad value (the factory's TypeError / ValueError) as a RecipeError."""
    try:
        return fn(**kwargs)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{source}: {what}: {' '.join(str(e).split())}") from None


def check(section: str, config: Mapping[str, Any], source: str) -> None:
    """Validate ``[input]`` / ``[output]``: the method(s) exist and take these keyword arguments.

    Values are checked against the factory's plain hints (``int``, ``float | None``...); an
    ``[input]`` that gives every required argument is constructed too, so a value only the
    factory can judge (``target_size = "abc"``) is an error at ``--check``, not at run.
    """
    methods = config["method"]
    if section == "input" and not isinstance(methods, str):
        raise RecipeError(f"{source}: input.method must be one method name, got {methods!r}")
    methods = [methods] if isinstance(methods, str) else methods
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise RecipeError(f"{source}: {section}.method must be a name or a list of names, got {methods!r}")
    if len(set(methods)) != len(methods):
        raise RecipeError(f"{source}: {section}.method lists a method twice: {methods!r}")
    kwargs = {k: v for k, v in config.items() if k != "method"}
    for method in methods:
        fn = factory(section, method, source)
        params = inspect.signature(fn).parameters
        accepted = [p for p in params if section == "input" or p not in AUTO_OUTPUT_ARGS]
        hints = _hints(fn)
        for key, value in kwargs.items():
            if section == "output" and key in AUTO_OUTPUT_ARGS:
                raise RecipeError(
                    f"{source}: output.{key} is set from the model and the dataset; remove it from the recipe"
                )
            if key not in accepted:
                raise RecipeError(
                    f"{source}: unknown key {key!r} for {section}.method {method!r}"
                    f"{did_you_mean(key, accepted)}; known keys: {', '.join(['method', *sorted(accepted)])}"
                )
            if key in hints and is_plain(hints[key]):  # anything richer: the factory checks it
                check_value(
                    value, hints[key], f"{section}.{key}", source, suffix=f" for {section}.method {method!r}"
                )
    if section == "input":
        fn = factory(section, methods[0], source)
        required = [n for n, p in inspect.signature(fn).parameters.items() if p.default is p.empty]
        if all(n in kwargs for n in required):
            construct(fn, kwargs, f"input.method {methods[0]!r}", source)
