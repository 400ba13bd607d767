"""Rematerialisation of a frozen model's blocks: trade compute for activation memory.

The gradient w.r.t. a prompt needs the activations of every layer the prompt reaches (a
soft prompt: all of them), so a long sequence or a large batch can run out of memory
before the frozen weights do. With ``remat``, a zoo transformer wraps each block in
``jax.checkpoint`` (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"):
the backward pass recomputes what the policy did not save, block by block.

Policies (``remat=`` of :func:`jaxreprog.models.load` for ``gpt2``, ``all_minilm_l6_v2``
and other BERTs, ``vit_b16`` and the Llama family):

* ``"full"``: save only each block's input; recompute the rest (least memory, about one
  more forward pass).
* ``"dots"``: save the matmul outputs, recompute the elementwise ops
  (``jax.checkpoint_policies.dots_saveable``).
* ``"dots_no_batch"``: save matmuls without batch dimensions (the projections, not
  attention scores; ``dots_with_no_batch_dims_saveable``).

Outputs and gradients are those of the plain model (the same operations, recomputed).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import linen as nn

__all__ = ["POLICIES", "block"]

POLICIES: dict[str, Any] = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check(remat: str | None) -> str | None:
    """``remat`` itself, or a ValueError naming the policies."""
    if remat is not None and remat not in POLICIES:
        raise ValueError(f"remat must be None or one of {', '.join(map(repr, POLICIES))}, got {remat!r}")
    return remat


def block(cls: type[nn.Module], remat: str | None) -> type[nn.Module]:
    """``cls``, or ``cls`` with its ``__call__`` rematerialised under policy ``remat``."""
    if check(remat) is None:
        return cls
    return nn.remat(cls, policy=POLICIES[remat], prevent_cse=True)
