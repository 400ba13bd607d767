"""VPT-shallow: learned prompt tokens after [CLS] at a ViT's first layer (Jia et al., ECCV 2022).

``z_0 = [x_cls; P; E]`` where ``E`` are the embedded patches (with their position embeddings) and
``P ∈ R^{p×D}`` the learned prompts, which get no position embedding. The frozen encoder then runs on
``1 + p + N`` tokens and the head reads [CLS], so the output's shape is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import SiteHook
from jaxreprog.hooks import SiteSelection, select
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["init_prompts", "insert_tokens", "prompt_bound", "required_size", "vpt_shallow"]


def required_size(explicit: int | None, spec: Any, field: str, who: str) -> int:
    value = explicit if explicit is not None else getattr(spec, field, 0)
    if not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{who}: needs the frozen ViT's {field}; the spec ({type(spec).__name__}) does not carry it, "
            f"so pass {field}= to the factory (zoo ViTs' jr.models.vit.ViTSpec does)"
        )
    return value


def prompt_bound(patch_size: int, hidden_size: int, channels: int = 3) -> float:
    """Jia et al.'s prompt initialisation: ``U(-a, a)``, ``a = sqrt(6 / (C·k² + D))``.

    This is Xavier-uniform with the patch projection's fan-in ``C·k²`` (channels × patch area) as fan-in and
    the hidden size ``D`` as fan-out, so prompts start at the scale of embedded patches.
    """
    return math.sqrt(6.0 / (channels * patch_size * patch_size + hidden_size))


def init_prompts(
    key: jax.Array, shape: tuple[int, ...], spec: Any, patch_size: int, hidden_size: int
) -> jax.Array:
    """``U(-a, a)`` prompts of ``shape`` with :func:`prompt_bound`'s ``a``."""
    a = prompt_bound(patch_size, hidden_size, getattr(spec, "channels", 3))
    return jax.random.uniform(key, shape, jnp.float32, -a, a)


def insert_tokens(value: jax.Array, prompts: jax.Array, who: str, replace: bool = False) -> jax.Array:
    """``[value[:, :1]; prompts; value[:, 1 (+ p if replace):]]`` with prompts broadcast over the batch."""
    p, d = prompts.shape
    if value.ndim != 3 or value.shape[-1] != d:
        raise ValueError(f"{who}: expected a token sequence (B, T, {d}) at the site, got shape {value.shape}")
    if replace and value.shape[1] < 1 + p:
        raise ValueError(f"{who}: the sequence has {value.shape[1]} tokens, fewer than [CLS] + {p} prompts")
    prompts = jnp.broadcast_to(prompts.astype(value.dtype), (value.shape[0], p, d))
    return jnp.concatenate([value[:, :1], prompts, value[:, 1 + p * replace :]], axis=1)


@register(
    paper="Jia et al. ECCV 2022",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.CONCATENATIVE,
)
def vpt_shallow(
    length: int,
    *,
    hidden_size: int | None = None,
    patch_size: int | None = None,
    sites: SiteSelection = "embeddings",
) -> SiteHook:
    """VPT-shallow (Jia et al. 2022, Eq. 5): ``z_0 = [x_cls; P; E]``, ``P`` of shape ``(length, D)``.

    Inserted at the zoo ViT's ``"embeddings"`` site (after the position embeddings, so prompts carry
    none), right after [CLS]. ``theta = {"prompts": (length, D)}``, initialised ``U(-a, a)`` with
    ``a = sqrt(6 / (3·k² + D))`` (:func:`prompt_bound`, as in the authors' code). The paper's dropout on
    the prompts (0.1) is not applied: site hooks take no random key.

    Args:
      length: the number of prompt tokens ``p``.
      hidden_size, patch_size: the frozen ViT's ``D`` and patch side ``k``; read from the spec
        (:class:`jaxreprog.models.vit.ViTSpec`) when not given.
      sites: the site(s) whose token sequence gets the prompts (:func:`jaxreprog.select`; CLIP's
        vision tower: ``"vision/embeddings"``).

    Example::

        >>> model = jr.models.vit.from_checkpoint("vit-base-patch16-224/")
        >>> program = jr.reprogram(model, embedding=jr.embedding.vpt_shallow(50), output=...)
    """
    length = checking.integer(length, "length (number of prompt tokens)", who="vpt_shallow")
    selector = select(sites)

    def init(key, spec):
        d = required_size(hidden_size, spec, "hidden_size", "vpt_shallow")
        k = required_size(patch_size, spec, "patch_size", "vpt_shallow")
        return {"prompts": init_prompts(key, (length, d), spec, k, d)}

    def apply(theta, site, value, spec):
        if not selector.matches(site):
            return value
        prompts = theta["prompts"]
        if prompts.ndim != 2 or prompts.shape[0] != length:
            raise ValueError(f"vpt_shallow: theta['prompts'] must be ({length}, D), got {prompts.shape}")
        return insert_tokens(value, prompts, "vpt_shallow")

    return SiteHook(init, apply, sites=selector)
