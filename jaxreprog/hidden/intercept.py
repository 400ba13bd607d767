"""Manipulate the hidden state at any module path of any Flax linen model.

A model wrapped by :func:`jaxreprog.from_linen` (the zoo's models included) routes
every submodule's ``__call__`` output through the program's hook under its module
path (``"layer_3/mlp_proj"``, ``"backbone/block2/conv"``), via
``nn.intercept_methods`` — no monkey-patching. These manipulations act at the
sites ``sites`` selects (:func:`jaxreprog.select`: a glob, :func:`fnmatch.fnmatchcase`,
where ``*`` also crosses ``/``; several globs; or a predicate over the path;
:func:`jaxreprog.sites` lists a model's sites):

* :func:`additive` — ``h -> h + δ`` (activation steering / hidden-space
  reprogramming), ``δ`` zero-initialised;
* :func:`affine` — ``h -> h ⊙ (1 + γ) + β`` (a FiLM-style parametric operator,
  Perez et al. 2018), identity at initialisation.

``shape`` is the trailing shape of the value at the site (``(D,)`` for a token
or feature vector, ``(H, W, C)`` for a feature map); the parameters broadcast over
the leading (batch, sequence) axes. With several globs, each gets its own
parameters (``theta[glob]``); a predicate's are ``theta[predicate.__name__]``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.core import SiteHook
from jaxreprog.hooks import Selector, SiteSelection, select
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["additive", "affine", "matches"]


def matches(pattern: SiteSelection, site: str) -> bool:
    """Whether module path ``site`` is selected by ``pattern`` (``jr.select(pattern).matches(site)``)."""
    return select(pattern).matches(site)


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


def _site(selector: Selector, shape, init_leaf, op) -> SiteHook:
    names = selector.names

    def init(key, spec):
        del spec
        keys = jax.random.split(key, len(names))
        return {p: init_leaf(k) for p, k in zip(names, keys)}

    def apply(theta, site, value, spec):
        for i in selector.parts(site):
            if not isinstance(value, jax.Array) or value.shape[value.ndim - len(shape) :] != shape:
                got = getattr(value, "shape", type(value).__name__)
                raise ValueError(
                    f"site {site!r} (matched by {names[i]!r}) carries {got}; "
                    f"expected an array ending in {shape}"
                )
            value = op(theta[names[i]], value)
        return value

    return SiteHook(init, apply, sites=selector)


@register(
    paper="Elsayed et al. 2019 (in hidden space); Turner et al. 2023",
    format=Format.LEARNABLE,
    location=Location.HIDDEN,
    operator=Operator.ADDITIVE,
)
def additive(sites: SiteSelection, shape: int | Sequence[int], *, std: float = 0.0) -> SiteHook:
    """``h -> h + δ`` at every site ``sites`` selects; ``δ ~ N(0, std²)`` (0 by default).

    ``theta = {glob: δ of shape shape}`` (one per glob of ``sites``, :func:`jaxreprog.select`).

    Example::

        >>> steer = jr.hidden.additive("layer_*/output_norm", shape=384)
        >>> program = jr.reprogram(model, hidden=steer)
    """
    selector, shape = select(sites), _shape(shape)
    return _site(
        selector,
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
def affine(sites: SiteSelection, shape: int | Sequence[int]) -> SiteHook:
    """``h -> h ⊙ (1 + γ) + β`` at every site ``sites`` selects; ``γ = β = 0`` at init.

    ``theta = {glob: {"gamma", "beta"}}``, each of shape ``shape`` (one per glob of ``sites``).
    """
    selector, shape = select(sites), _shape(shape)
    return _site(
        selector,
        shape,
        lambda key: {"gamma": jnp.zeros(shape, jnp.float32), "beta": jnp.zeros(shape, jnp.float32)},
        lambda t, h: h * (1 + t["gamma"]).astype(h.dtype) + t["beta"].astype(h.dtype),
    )
