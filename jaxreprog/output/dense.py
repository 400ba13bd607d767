"""Linear output alignment, AutoVP's FullyMap (Tsao et al., ICLR 2024).

``y_T = f(x) W + b``: a dense layer ``num_source → num_target`` learned by
gradient together with the input prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxreprog.core import Alignment
from jaxreprog.output._alignment import plain
from jaxreprog.output._checks import check_class_counts, check_logits
from jaxreprog.taxonomy import OutputAlignment, register

__all__ = ["linear"]


@register(paper="Tsao et al. 2024", alignment=OutputAlignment.LINEAR)
def linear(
    num_source: int,
    num_target: int,
    *,
    use_bias: bool = True,
    kernel_init: Callable[..., jax.Array] | None = None,
) -> Alignment:
    """FullyMap: ``y_T = f(x) @ W + b``, ``W`` ``(num_source, num_target)`` trained by gradient.

    ``trainable=True`` (``reprogram`` lets gradients reach the state); ``refit``
    returns the state unchanged and ``schedule = Refit.NEVER``.

    Args:
      num_source: the frozen model's number of outputs.
      num_target: the task's number of classes.
      use_bias: learn ``b`` (zero-initialised).
      kernel_init: ``init(key, shape, dtype) -> W``; default flax Dense's LeCun normal.

    Example::

        >>> align = jr.output.linear(num_source=1000, num_target=10)
        >>> state = align.init(key)  # {"kernel": (1000, 10), "bias": (10,)}
    """
    check_class_counts("linear", num_source, num_target)
    kernel_init = nn.initializers.lecun_normal() if kernel_init is None else kernel_init

    def init(key):
        state = {"kernel": kernel_init(key, (num_source, num_target), jnp.float32)}
        if use_bias:
            state["bias"] = jnp.zeros((num_target,), jnp.float32)
        return state

    def apply(state, source_logits):
        check_logits("linear.apply", source_logits, num_source)
        if (
            not isinstance(state, dict)
            or "kernel" not in state
            or jnp.shape(state["kernel"]) != (num_source, num_target)
        ):
            raise ValueError(
                f"linear.apply: state must be a dict with 'kernel' of shape ({num_source}, {num_target}) "
                "(from init)"
            )
        if use_bias and ("bias" not in state or jnp.shape(state["bias"]) != (num_target,)):
            got = jnp.shape(state["bias"]) if "bias" in state else "no 'bias'"
            raise ValueError(
                f"linear.apply: use_bias=True needs state['bias'] of shape ({num_target},) (from init), "
                f"got {got}"
            )
        if not use_bias and "bias" in state:
            raise ValueError(
                "linear.apply: state has a 'bias' but use_bias=False (state from another linear?)"
            )
        out = source_logits @ state["kernel"]
        return out + state["bias"] if use_bias else out

    return plain(
        "linear", init=init, apply=apply, num_source=num_source, num_target=num_target, trainable=True
    )
