"""Checks of values, not only shapes: eager calls raise at once; under ``jit`` they are
opt-in through :func:`checked` (``jax.experimental.checkify``).

Shapes and dtypes are static, so every public function checks them at trace time,
jitted or not. Values (token ids in the vocabulary, a non-empty attention mask) are
known only when the arrays are concrete: an eager call checks them on the host and
raises a ``ValueError``; inside ``jit`` they are :func:`check` points that cost
nothing unless the function is wrapped in :func:`checked`. Unchecked, a jitted model
reads a token id ``>= vocab`` as NaN (``jnp.take`` fills out-of-range rows) and ``-1``
as the table's last row (negative indices wrap), and a row with no real token attends
uniformly over padding: wrong numbers, without an error.

Arguments are checked by the same module: :func:`integer` is every factory's check of a
count (a length, a depth, a number of classes), one message form for all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["check", "checked", "integer", "is_concrete"]


def is_concrete(x: Any) -> bool:
    """Whether ``x`` holds values now (not a tracer inside ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def check(ok: Any, message: str, **values: Any) -> None:
    """``ValueError(message)`` when ``ok`` is concretely false; under a transformation a
    ``checkify`` check point, raised only inside :func:`checked`. ``message`` may name
    ``{values}`` (formatted with the failing arrays' values)."""
    if is_concrete(ok) and all(is_concrete(v) for v in values.values()):
        if not bool(np.all(np.asarray(ok))):
            raise ValueError(message.format(**{k: np.asarray(v) for k, v in values.items()}))
        return
    checkify.debug_check(jnp.all(ok), message, **values)


def integer(value: Any, name: str, *, who: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """``value`` as a Python ``int``, or a one-line error naming ``who`` (the function) and ``name``
    (the argument): ``TypeError`` unless it is an int or a NumPy integer scalar (never a bool, a
    float or an array), ``ValueError`` outside ``[minimum, maximum]`` (``None``: unbounded).

    Example::

        >>> integer(np.int64(3), "length", who="soft_prompt")  # 3
        >>> integer(0, "length", who="soft_prompt")  # soft_prompt: length must be an int >= 1, got 0
    """
    if minimum is not None and maximum is not None:
        want = f"an int in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an int >= {minimum}"
    elif maximum is not None:
        want = f"an int <= {maximum}"
    else:
        want = "an int"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{who}: {name} must be {want}, got {value!r:.40} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{who}: {name} must be {want}, got {value}")
    return value


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its value checks on, also under ``jit``: a failing check raises.

    Example::

        >>> apply = jr.checked(jax.jit(program.apply))   # checks every call's token ids
        >>> logits = apply(theta, model.params, x)       # JaxRuntimeError on a bad id
    """
    with_errors = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        error, out = with_errors(*args, **kwargs)
        error.throw()
        return out

    return run
