"""Input validation and small array helpers shared by the input-location methods.

Shapes and dtypes are static, so every check below runs at trace time; value
checks (range, NaN) run only on concrete arrays, never on tracers.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.core import ImageSpec, SequenceSpec

Array = jax.Array


def pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    """``size`` as ``(h, w)`` of positive ints; the error names the argument."""
    try:
        h, w = (size, size) if np.ndim(size) == 0 else size  # type: ignore[misc]
        if isinstance(h, bool) or isinstance(w, bool):
            raise TypeError
        h, w = operator.index(h), operator.index(w)  # ints, NumPy ints; never a float or a str
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair (h, w) of ints, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def position(value: Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a ``(row, col)`` pair of ints (bounds are the caller's); the error names the argument."""
    try:
        row, col = value  # type: ignore[misc]
        if isinstance(row, bool) or isinstance(col, bool):
            raise TypeError
        return operator.index(row), operator.index(col)  # never a float or a str
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (row, col) of ints, got {value!r}") from None


def image_spec(spec: Any, who: str) -> ImageSpec:
    if not isinstance(spec, ImageSpec):
        raise TypeError(
            f"{who}: spec must be a jr.ImageSpec (the frozen model's input), got {type(spec).__name__}"
        )
    return spec


def sequence_spec(spec: Any, who: str) -> SequenceSpec:
    if not isinstance(spec, SequenceSpec):
        raise TypeError(
            f"{who}: spec must be a jr.SequenceSpec (the frozen model's input), got {type(spec).__name__}"
        )
    return spec


def choice(value: Any, name: str, options: Sequence[Any]) -> Any:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _floating(x: Any, who: str, name: str, hint: str) -> Array:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{who}: {name} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{who}: {name} must be floating point {hint}, got dtype {x.dtype}")
    return jnp.asarray(x)


def _in_range(x: Array, who: str, name: str, lo: float, hi: float, tol: float = 1e-6) -> None:
    if not _concrete(x) or x.size == 0:
        return
    values = np.asarray(x)  # concrete (possibly closed over by a jit trace): check on the host
    xmin, xmax = float(values.min()), float(values.max())
    if xmin != xmin or xmax != xmax:  # NaN
        raise ValueError(f"{who}: {name} contains NaN")
    if xmin < lo - tol or xmax > hi + tol:
        raise ValueError(
            f"{who}: {name} must lie in [{lo:g}, {hi:g}], got values in [{xmin:.4g}, {xmax:.4g}]"
        )


def image_batch(x: Any, who: str, spec: ImageSpec, *, size: tuple[int, int] | None = None) -> Array:
    """Check a batch of [0, 1] NHWC images and repeat grayscale to the spec's channels.

    ``size``, when given, is the exact (H, W) the method expects (its ``target_size``).
    """
    hint = "NHWC images in [0, 1] (e.g. x.astype(jnp.float32) / 255)"
    x = _floating(x, who, "x", hint)
    if x.ndim != 4:
        raise ValueError(f"{who}: x must be a batch of images (N, H, W, C), got shape {tuple(x.shape)}")
    c = x.shape[-1]
    if c not in (1, spec.channels):
        raise ValueError(
            f"{who}: x has {c} channels; expected 1 (grayscale, repeated) or spec.channels={spec.channels}"
        )
    if size is not None and tuple(x.shape[1:3]) != tuple(size):
        raise ValueError(
            f"{who}: x has images of size {tuple(x.shape[1:3])}, expected target_size={tuple(size)}"
        )
    _in_range(x, who, "x", 0.0, 1.0)
    if c != spec.channels:
        x = jnp.broadcast_to(x, (*x.shape[:-1], spec.channels))
    return x


def sequence_batch(x: Any, who: str, spec: SequenceSpec, *, length: int) -> Array:
    """Check a batch of series ``(N, T)`` or ``(N, T, C)``; returns ``(N, T, spec.channels)``."""
    lo, hi = spec.value_range
    x = _floating(x, who, "x", f"series in spec.value_range=({lo:g}, {hi:g})")
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(
            f"{who}: x must be a batch of series (N, T) or (N, T, C), got shape {tuple(x.shape)}"
        )
    if x.shape[1] != length:
        raise ValueError(f"{who}: x has series of length {x.shape[1]}, expected target_length={length}")
    c = x.shape[-1]
    if c not in (1, spec.channels):
        raise ValueError(f"{who}: x has {c} channels; expected 1 (repeated) or spec.channels={spec.channels}")
    _in_range(x, who, "x", lo, hi)
    if c != spec.channels:
        x = jnp.broadcast_to(x, (*x.shape[:-1], spec.channels))
    return x


def leaf_shape(theta: Any, key: str, shape: tuple[int, ...], who: str) -> Array:
    """``theta[key]``, checked to have ``shape`` (one candidate; vmap strips the K axis)."""
    try:
        leaf = theta[key]
    except (TypeError, KeyError, IndexError):
        raise ValueError(f"{who}: theta must be the dict from init, with key {key!r}") from None
    if tuple(jnp.shape(leaf)) != tuple(shape):
        raise ValueError(
            f"{who}: theta[{key!r}] has shape {tuple(jnp.shape(leaf))}, expected {tuple(shape)} "
            "for this spec (was theta built by init with the same spec?)"
        )
    return leaf


def resize(x: Array, size: tuple[int, int], interpolation: str) -> Array:
    """Resize NHWC images to ``size`` (identity when already that size)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method=interpolation, antialias=True)


INTERPOLATIONS = ("nearest", "linear", "bilinear", "cubic", "bicubic", "lanczos3", "lanczos5")


def border_mask(
    canvas: tuple[int, int], top: int, left: int, inner: tuple[int, int], dtype=jnp.float32
) -> Array:
    """``(H, W, 1)``: 0 on the ``inner`` rectangle at ``(top, left)``, 1 elsewhere (no constants baked)."""
    rows = jax.lax.broadcasted_iota(jnp.int32, (*canvas, 1), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (*canvas, 1), 1)
    inside = (rows >= top) & (rows < top + inner[0]) & (cols >= left) & (cols < left + inner[1])
    return jnp.where(inside, 0, 1).astype(dtype)


def render(apply: Callable[..., Array], theta: Any, spec: ImageSpec, shape: tuple[int, ...], **kw) -> Array:
    """The prompt as an image: the method applied to a uniform grey (0.5) target image,
    mapped back to [0, 1] pixel units and clipped. Shape ``spec.shape``."""
    grey = jnp.full((1, *shape), 0.5, jnp.float32)
    out = spec.denormalize(apply(theta, grey, spec, **kw))[0]
    return jnp.clip(out, 0.0, 1.0)
