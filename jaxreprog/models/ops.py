"""Convolution building blocks for the zoo that are fast on every backend.

:func:`depthwise_conv` is the op that matters. XLA:CPU lowers a grouped
convolution (``feature_group_count = C``) to a slow generic loop: forward and
input gradient of a 3×3 depthwise layer on (32, 64, 64, 96) take ~15× longer than
the same function written as a sum of shifted slices times per-channel weights,

    y[n, h, w, c] = Σ_{i,j} x_pad[n, s·h + i, s·w + j, c] · k[i, j, c],

which XLA fuses into one elementwise loop; strided layers read the input split into
stride phases, so every slice has unit stride. On GPU
and TPU the vendor libraries run grouped convolutions well, so the op picks the
form per backend at trace time; ``impl=`` forces one (tests, benchmarks).
The shifted form carries a custom VJP (its input gradient is another shifted
sum), so it supports reverse mode (``jax.grad``, ``jax.vjp``) and ``jax.vmap``
but not forward mode (``jax.jvp``, ``jax.jacfwd``): use ``impl="grouped"`` there.

:func:`conv` likewise writes a dense convolution with a tiny reduction (a stem:
3×3 over RGB, 27 products per output) as one matrix product of its k² stacked
windows on XLA:CPU, whose direct convolution cannot vectorise over 3 channels, and
:func:`conv_general_dilated` (for ``flax.linen.Conv``) gives a unit-stride convolution an input
gradient that XLA:CPU runs fast, also inside a ``lax.scan`` body.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv", "conv_general_dilated", "depthwise_conv", "max_pool", "pointwise_conv", "same_padding"]

Padding = str | Sequence[tuple[int, int]]
DepthwiseImpl = Literal["shifted", "grouped"]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``"SAME"`` padding along one axis: output ``ceil(size / stride)``,
    any odd extra pixel on the high side (so stride-2 layers pad asymmetrically)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2)


def _explicit_padding(
    padding: Padding, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return tuple(same_padding(n, k, s) for n, k, s in zip(spatial, kernel, strides))
        if padding.upper() == "VALID":
            return ((0, 0),) * len(spatial)
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((lo, hi), (lo, hi)), got {padding!r}")
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != len(spatial):
        raise ValueError(
            f"padding needs one (lo, hi) pair per spatial axis ({len(spatial)}), got {padding!r}"
        )
    return pads


def _strides(strides: int | Sequence[int]) -> tuple[int, int]:
    return (strides, strides) if isinstance(strides, int) else (int(strides[0]), int(strides[1]))


def default_depthwise_impl() -> DepthwiseImpl:
    """``"shifted"`` on CPU, ``"grouped"`` elsewhere (decided by ``jax.default_backend()``)."""
    return "shifted" if jax.default_backend() == "cpu" else "grouped"


def depthwise_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    *,
    impl: DepthwiseImpl | None = None,
) -> jax.Array:
    """Depthwise 2-D convolution (one k_h×k_w filter per channel), NHWC.

    Args:
      x: ``(N, H, W, C)``.
      kernel: ``(k_h, k_w, C)``.
      strides: an int or ``(s_h, s_w)``.
      padding: ``"SAME"`` (TensorFlow's, asymmetric for even inputs at stride 2),
        ``"VALID"`` or explicit ``((lo_h, hi_h), (lo_w, hi_w))``.
      impl: ``"shifted"`` (sum of shifted slices; fast on XLA:CPU), ``"grouped"``
        (``lax.conv_general_dilated`` with ``feature_group_count=C``), or ``None``
        to pick by backend (:func:`default_depthwise_impl`). Both compute the same
        function to float rounding.

    Returns:
      ``(N, H_out, W_out, C)``.
    """
    if x.ndim != 4:
        raise ValueError(f"depthwise_conv: x must be NHWC (rank 4), got shape {x.shape}")
    if kernel.ndim != 3 or kernel.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"depthwise_conv: kernel must be (k_h, k_w, C={x.shape[-1]}), got shape {kernel.shape}"
        )
    impl = default_depthwise_impl() if impl is None else impl
    strides = _strides(strides)
    kh, kw, channels = kernel.shape
    pads = _explicit_padding(padding, x.shape[1:3], (kh, kw), strides)
    if impl == "grouped":
        return lax.conv_general_dilated(
            x,
            kernel[:, :, None, :].astype(x.dtype),
            window_strides=strides,
            padding=pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )
    if impl != "shifted":
        raise ValueError(f"depthwise_conv: impl must be 'shifted', 'grouped' or None, got {impl!r}")
    return _shifted_depthwise(x, kernel.astype(x.dtype), strides, pads)


def _phases(x, kernel_shape, strides, pads, value=0.0):
    """Pad ``x`` (with ``value``) and split it into stride phases ``(N, H'/s_h, s_h, W'/s_w, s_w, C)``.

    Window ``(i, j)`` of the strided convolution then reads phase ``(i mod s_h, j mod s_w)``
    at offset ``(i // s_h, j // s_w)`` with unit stride, and the input gradient is one
    stride-1 sum per phase instead of a sum over a cotangent dilated with ``1 - 1/s²``
    zeros (the whole Lite0 training step: 0.57 → 0.43 s, ``benchmarks/README.md``).
    ``H'`` is just what the windows read, ``s_h · (H_out + (k_h - 1) // s_h)``.
    """
    config, out_shape = [(0, 0, 0)], []
    for n, k, s, (lo, hi) in zip(x.shape[1:3], kernel_shape, strides, pads):
        m = (n + lo + hi - k) // s + 1
        extent = s * (m + (k - 1) // s)
        config.append((lo, extent - n - lo, 0))  # a negative high pad crops unread rows
        out_shape.append(m)
    config.append((0, 0, 0))
    xp = lax.pad(x, jnp.asarray(value, x.dtype), config)
    n, hp, wp, c = xp.shape
    (sh, sw) = strides
    return xp.reshape(n, hp // sh, sh, wp // sw, sw, c), tuple(out_shape), config


def _window(x6, i, j, strides, out_shape):
    """Window ``(i, j)``: ``x_pad[:, s_h·h + i, s_w·w + j]`` for all output positions ``(h, w)``."""
    (sh, sw), (ho, wo) = strides, out_shape
    start = (0, i // sh, i % sh, j // sw, j % sw, 0)
    limit = (x6.shape[0], i // sh + ho, i % sh + 1, j // sw + wo, j % sw + 1, x6.shape[5])
    return lax.slice(x6, start, limit).reshape(x6.shape[0], ho, wo, x6.shape[5])


def _shifted_sum(x, kernel, strides, pads):
    """``Σ_{i,j} x_pad[:, s·h + i, s·w + j] · k[i, j]``: one fused elementwise loop on XLA:CPU."""
    kh, kw, _ = kernel.shape
    x6, out_shape, _ = _phases(x, (kh, kw), strides, pads)
    terms = (_window(x6, i, j, strides, out_shape) * kernel[i, j] for i in range(kh) for j in range(kw))
    return functools.reduce(jnp.add, terms)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_depthwise(x, kernel, strides, pads):
    return _shifted_sum(x, kernel, strides, pads)


def _shifted_depthwise_fwd(x, kernel, strides, pads):
    return _shifted_sum(x, kernel, strides, pads), (x, kernel)


def _shifted_depthwise_bwd(strides, pads, residuals, g):
    """Input gradient, phase by phase, as stride-1 shifted sums of the cotangent (autodiff's
    transpose of the k² slices is a sum of k² pads, several times slower on XLA:CPU):

        dx_pad[:, s·a + p, s·b + q] = Σ_{u,v} g[:, a - u, b - v] · k[p + s·u, q + s·v],

    a full correlation of ``g`` with the phase's flipped sub-kernel ``k[p::s, q::s]``; the
    phases are interleaved back and the padding cropped. All phases read windows of one
    zero-padded ``g``: padded per phase, XLA materialises a copy for each, and each copy
    recomputes whatever produced ``g`` (the next layer's activation mask). The kernel
    gradient ``dk[i, j] = Σ window_ij(x) · g`` is dead code, removed by XLA, when the
    kernel is frozen.
    """
    x, kernel = residuals
    (sh, sw), (kh, kw, _) = strides, kernel.shape
    x6, (ho, wo), config = _phases(x, (kh, kw), strides, pads)
    n, rows, cols, c = g.shape[0], x6.shape[1], x6.shape[3], g.shape[3]
    top, left = -(-kh // sh) - 1, -(-kw // sw) - 1  # the largest sub-kernel's reach
    zero = jnp.zeros((), g.dtype)
    gp = lax.pad(g, zero, [(0, 0, 0), (top, rows - ho, 0), (left, cols - wo, 0), (0, 0, 0)])
    phases = []
    for p in range(sh):
        row = []
        for q in range(sw):
            sub = kernel[p::sh, q::sw][::-1, ::-1]
            ku, kv = sub.shape[:2]

            def tap(i, j):  # gp, shifted for tap (i, j) of this phase's (smaller) sub-kernel
                r, t = top - ku + 1 + i, left - kv + 1 + j
                return lax.slice(gp, (0, r, t, 0), (n, r + rows, t + cols, c))

            terms = [tap(i, j) * sub[i, j] for i in range(ku) for j in range(kv)]
            row.append(functools.reduce(jnp.add, terms) if terms else jnp.zeros((n, rows, cols, c), g.dtype))
        phases.append(jnp.stack(row, axis=3))
    dx_pad = jnp.stack(phases, axis=2).reshape(n, rows * sh, cols * sw, c)
    crop = [(-lo, -hi, 0) for lo, hi, _ in config]
    dx = lax.pad(dx_pad, zero, crop)
    dk = jnp.stack(
        [
            jnp.stack([jnp.sum(_window(x6, i, j, strides, (ho, wo)) * g, axis=(0, 1, 2)) for j in range(kw)])
            for i in range(kh)
        ]
    )
    return dx, dk


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


def pointwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """1×1 convolution as a matrix product over the channel axis: ``x @ kernel + bias``.

    Args:
      x: ``(..., C_in)``; kernel: ``(C_in, C_out)``; bias: ``(C_out,)`` or ``None``.
    """
    y = jnp.dot(x, kernel.astype(x.dtype))
    return y if bias is None else y + bias.astype(x.dtype)


# Largest k_h·k_w·C_in that :func:`conv` runs as stacked windows on CPU. Measured on a
# 2-core x86-64 (batch 32, forward + input gradient): 3×3 over 3 channels 18.4 -> 10.0 ms;
# 7×7 over 3 channels (147) and 3×3 over 16 channels (144) were 1.2-2x slower that way.
_WINDOWS_MAX_DEPTH = 32


def conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
) -> jax.Array:
    """Dense 2-D convolution, NHWC × HWIO, with TensorFlow ``"SAME"`` padding by default.

    On CPU, a kernel with at most 32 products per output (``k_h·k_w·C_in``, e.g. a 3×3
    stem over RGB) runs as one matrix product of its stacked windows,
    ``concat_ij(window_ij(x)) @ kernel.reshape(k_h·k_w·C_in, C_out)`` (the same function
    to float rounding; the whole Lite0 padding-VR step 5% faster); otherwise, and on
    other backends, ``lax.conv_general_dilated``.
    """
    strides = _strides(strides)
    kh, kw, c_in, c_out = kernel.shape
    pads = _explicit_padding(padding, x.shape[1:3], (kh, kw), strides)
    if jax.default_backend() == "cpu" and kh * kw * c_in <= _WINDOWS_MAX_DEPTH:
        x6, out_shape, _ = _phases(x, (kh, kw), strides, pads)
        windows = [_window(x6, i, j, strides, out_shape) for i in range(kh) for j in range(kw)]
        return jnp.dot(jnp.concatenate(windows, axis=-1), kernel.reshape(-1, c_out).astype(x.dtype))
    return lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=strides,
        padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: lax.PrecisionLike = None,
    preferred_element_type: jnp.dtype | None = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` whose input gradient, for an NHWC × HWIO unit-stride
    convolution on CPU, is itself a forward convolution (``flax.linen.Conv(conv_general_dilated=)``).

    ``∂L/∂x = conv(∂L/∂y, flip_hw(k)ᵀ)`` with padding ``k - 1 - p``: the same function as
    autodiff's transpose, which XLA:CPU runs 1.4x slower alone (3×3, 64 channels, 56 px,
    batch 16: 40 vs 28 ms) and 3.4x slower inside a ``lax.scan`` body (135 vs 31 ms), so
    ``fit(steps_per_call=N)`` made a ResNet slower per step. Every other case, and other
    backends, is ``lax.conv_general_dilated`` itself. Like :func:`depthwise_conv`'s shifted
    form, the custom VJP supports reverse mode and ``vmap``, not forward mode.
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    simple = (
        jax.default_backend() == "cpu"
        and lhs.ndim == 4
        and dn == _NHWC
        and tuple(window_strides) == (1, 1)
        and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and feature_group_count == batch_group_count == 1
        and preferred_element_type is None
    )
    if not simple:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    return _unit_conv(lhs, rhs, tuple(map(tuple, padding)), precision)


def _nhwc_conv(x, kernel, padding, precision):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _unit_conv(x, kernel, padding, precision):
    return _nhwc_conv(x, kernel, padding, precision)


def _unit_conv_fwd(x, kernel, padding, precision):
    return _nhwc_conv(x, kernel, padding, precision), (x, kernel)


def _unit_conv_bwd(padding, precision, residuals, g):
    x, kernel = residuals
    (kh, kw), ((t, b), (left, right)) = kernel.shape[:2], padding
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    back = ((kh - 1 - t, kh - 1 - b), (kw - 1 - left, kw - 1 - right))
    dx = _nhwc_conv(g, flipped, back, precision)
    # the kernel's gradient, autodiff's; dead code (removed by XLA) when the weights are frozen
    dk = jax.vjp(lambda k: _nhwc_conv(x, k, padding, precision), kernel)[1](g)[0]
    return dx, dk


_unit_conv.defvjp(_unit_conv_fwd, _unit_conv_bwd)


def max_pool(
    x: jax.Array,
    window: int | Sequence[int] = 3,
    strides: int | Sequence[int] = 2,
    padding: Padding = ((1, 1), (1, 1)),
) -> jax.Array:
    """Max pooling over ``window`` NHWC windows, padded with ``-inf`` (ResNet's 3×3/2 stem pool).

    ``y[n, h, w, c] = max_{i,j} x_pad[n, s·h + i, s·w + j, c]``; the derivative routes to
    the first maximum of each window in row-major order (PyTorch's rule for ties).

    On CPU it runs as a chain of ``k_h·k_w`` stride-phase slices that also records which
    tap won, with a JVP that reads the tangent at that tap (its transpose, the input
    gradient, is a sum of edge-padded selects). XLA:CPU's own gradient of
    ``lax.reduce_window`` is ``select_and_scatter``, a scalar loop: ResNet-18's ReLU +
    3×3/2 pool on (16, 112, 112, 64), forward + input gradient, 360 -> 63 ms. Other
    backends use ``lax.reduce_window``.
    """
    window, strides = _strides(window), _strides(strides)
    if x.ndim != 4:
        raise ValueError(f"max_pool: x must be NHWC (rank 4), got shape {x.shape}")
    pads = _explicit_padding(padding, x.shape[1:3], window, strides)
    if jax.default_backend() != "cpu":
        return lax.reduce_window(
            x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
        )
    return _max_pool(x, window, strides, pads)


def _max_pool_argmax(x, window, strides, pads):
    """``(y, tap)``: the windows' maxima and the index ``i·k_w + j`` of each one's first maximum."""
    x6, out_shape, _ = _phases(x, window, strides, pads, -jnp.inf)
    kh, kw = window
    y = tap = None
    for t in range(kh * kw):
        w = _window(x6, t // kw, t % kw, strides, out_shape)
        if y is None:
            y, tap = w, jnp.zeros(w.shape, jnp.int8 if kh * kw <= 127 else jnp.int32)
        else:
            wins = w > y  # strict: an equal later value does not take over (first maximum)
            y, tap = jnp.where(wins, w, y), jnp.where(wins, jnp.asarray(t, tap.dtype), tap)
    return y, tap


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
    return _max_pool_argmax(x, window, strides, pads)[0]


@_max_pool.defjvp
def _max_pool_jvp(window, strides, pads, primals, tangents):
    """``dy = dx_pad[s·h + i*, s·w + j*]`` at the winning tap ``(i*, j*)``: a linear select of
    unit-stride phase slices, which autodiff transposes into edge pads, fused on XLA:CPU."""
    (x,), (dx,) = primals, tangents
    y, tap = _max_pool_argmax(x, window, strides, pads)
    d6, out_shape, _ = _phases(dx, window, strides, pads)
    kw, zero = window[1], jnp.zeros((), dx.dtype)
    terms = (
        jnp.where(tap == t, _window(d6, t // kw, t % kw, strides, out_shape), zero)
        for t in range(window[0] * kw)
    )
    return y, functools.reduce(jnp.add, terms)
