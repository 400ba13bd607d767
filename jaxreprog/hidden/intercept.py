"""Manipulate the hidden state at any module path of any Flax linen model.

A model wrapped by :func:`jaxreprog.from_linen` (the zoo's models included) routes
every submodule's ``__call__`` output through the program's hook under its module
path (``"layer_3/mlp_proj"``, ``"backbone/block2/conv"``), via
``nn.intercept_methods`` — no monkey-patching. These manipulations act at the
paths matching a glob pattern (:func:`fnmatch.fnmatchcase`; ``*`` also crosses
``/``):

* :func:`additive` — ``h -> h + δ`` (activation steering / hidden-space
  reprogramming), ``δ`` zero-initialised;
* :func:`affine` — ``h -> h ⊙ (1 + γ) + β`` (a FiLM-style parametric operator,
  Perez et al. 2018), identity at initialisation.

``shape`` is the trailing shape of the value at the site (``(D,)`` for a token
or feature vector, ``(H, W, C)`` for a feature map); the parameters broadcast over
the leading (batch, sequence) axes. With several patterns, each gets its own
parameters (``theta[pattern]``).
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.core import SiteHook
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["additive", "affine", "matches"]


def matches(pattern: str, site: str) -> bool:
    """Whether module path ``site`` matches the glob ``pattern``."""
    return fnmatch.fnmatchcase(site, pattern)


def _patterns(path: str | Sequence[str]) -> tuple[str, ...]:
    paths = (path,) if isinstance(path, str) else tuple(path)
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ValueError(f"path must be a non-empty module-path glob or a sequence of them, got {path!r}")
    return paths


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    try:
        dims = (shape,) if np.ndim(shape) == 0 else shape
        if any(isinstance(s, bool | np.bool_) for s in dims):
            raise TypeError
        dims = tuple(operator.index(s) for s in dims)  # ints, NumPy ints; never a float or a bool
    except (TypeError, ValueError):
        raise ValueError(f"shape must be an int or a sequence of ints, got {shape!r}") from None
    if not dims or min(dims) < 1:
        raise ValueError(f"shape must be the positive trailing shape of the site's value, got {dims}")
    return dims


def _site(paths, shape, init_leaf, op) -> SiteHook:
    def init(key, spec):
        del spec
        keys = jax.random.split(key, len(paths))
        return {p: init_leaf(k) for p, k in zip(paths, keys)}

    def apply(theta, site, value, spec):
        for p in paths:
            if not matches(p, site):
                continue
            if not isinstance(value, jax.Array) or value.shape[value.ndim - len(shape) :] != shape:
                got = getattr(value, "shape", type(value).__name__)
                raise ValueError(
                    f"site {site!r} (matched by {p!r}) carries {got}; expected an array ending in {shape}"
                )
            value = op(theta[p], value)
        return value

    return SiteHook(init, apply)


@register(
    paper="Elsayed et al. 2019 (in hidden space); Turner et al. 2023",
    format=Format.LEARNABLE,
    location=Location.HIDDEN,
    operator=Operator.ADDITIVE,
)
def additive(path: str | Sequence[str], shape: int | Sequence[int], *, std: float = 0.0) -> SiteHook:
    """``h -> h + δ`` at every module path matching ``path``; ``δ ~ N(0, std²)`` (0 by default).

    ``theta = {pattern: δ of shape shape}``.

    Example::

        >>> steer = jr.hidden.additive("layer_*/output_norm", shape=384)
        >>> program = jr.reprogram(model, hidden=steer)
    """
    paths, shape = _patterns(path), _shape(shape)
    return _site(
        paths,
        shape,
        lambda key: std * jax.random.normal(key, shape, jnp.float32),
        lambda delta, h: h + delta.astype(h.dtype),
    )


@register(
    paper="Perez et al. 2018 (FiLM)",
    format=Format.LEARNABLE,
    location=Location.HIDDEN,
    operator=Operator.PARAMETRIC,
)
def affine(path: str | Sequence[str], shape: int | Sequence[int]) -> SiteHook:
    """``h -> h ⊙ (1 + γ) + β`` at every module path matching ``path``; ``γ = β = 0`` at init.

    ``theta = {pattern: {"gamma", "beta"}}``, each of shape ``shape``.
    """
    paths, shape = _patterns(path), _shape(shape)
    return _site(
        paths,
        shape,
        lambda key: {"gamma": jnp.zeros(shape, jnp.float32), "beta": jnp.zeros(shape, jnp.float32)},
        lambda t, h: h * (1 + t["gamma"]).astype(h.dtype) + t["beta"].astype(h.dtype),
    )
