"""SMM: sample-specific multi-channel masks for visual reprogramming (Cai et al. ICML 2024)."""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp

from jaxreprog.core import InputTransform
from jaxreprog.input import _checks
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["mask_net", "mask_net_widths", "smm", "upsample_patches"]

Array = jax.Array


def mask_net_widths(layers: int, channels: int) -> tuple[int, ...]:
    """Channel widths of the mask network: ``channels → 8 → 16 → 32 → 64 (→ 128) → out``."""
    return (channels, *(8 * 2**i for i in range(layers - 1)))


def upsample_patches(mask: Array, patch_size: int) -> Array:
    """Patch-wise interpolation: copy each coarse value onto a ``patch_size × patch_size`` block.

    ``(N, h, w, C) -> (N, h·patch_size, w·patch_size, C)``; exact (a broadcast, no arithmetic).
    """
    n, h, w, c = mask.shape
    tiled = jnp.broadcast_to(mask[:, :, None, :, None, :], (n, h, patch_size, w, patch_size, c))
    return tiled.reshape(n, h * patch_size, w * patch_size, c)


def _conv(x: Array, p: dict[str, Array]) -> Array:
    """3×3 "same" convolution as one matrix product over the 9 shifted copies (im2col).

    Equal to ``lax.conv_general_dilated``; written this way so that ``vmap`` over a
    candidate axis of kernels becomes a batched matmul rather than a grouped
    convolution (slow to compile and to run on XLA:CPU).
    """
    h, w, c = x.shape[1:]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)
    return cols @ p["w"].reshape(9 * c, -1) + p["b"]


def _norm(x: Array, p: dict[str, Array], kind: str, eps: float = 1e-5) -> Array:
    axes = (1, 2) if kind == "instance" else (0, 1, 2)
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _max_pool(x: Array) -> Array:
    """2×2 max-pool, stride 2.

    A window reduction, whose gradient goes to the window's arg-max. (``reshape`` + ``max``
    would route it through ``x == max(x)`` masks divided by their count: where XLA
    recomputes ``x`` with different rounding, the mask is empty and the gradient 0/0 = NaN,
    as it is on XLA:CPU at LLVM -O0.)
    """
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@functools.partial(jax.jit, static_argnames=("patch_size", "layers", "mask_channels", "norm"))
def mask_net(
    net: dict,
    x: Array,
    *,
    patch_size: int = 8,
    layers: int = 5,
    mask_channels: str = "per-channel",
    norm: str = "instance",
) -> Array:
    """SMM's ``f_mask``: the coarse mask ``(N, H/patch_size, W/patch_size, C or 1)`` of normalised
    images ``x``.

    Jitted, so an eager call compiles the network once rather than op by op (inside an outer
    ``jit``, ``grad`` or ``vmap`` it is inlined like any function).
    """
    y = x
    for i in range(layers - 1):
        y = _conv(y, net[f"conv{i}"])
        if norm != "none":
            y = _norm(y, net[f"norm{i}"], norm)
        y = jax.nn.relu(y)
        if 2 ** (i + 1) <= patch_size:
            y = _max_pool(y)
    if mask_channels == "per-channel":
        return _conv(y, net[f"conv{layers - 1}"])
    return jnp.mean(y, axis=-1, keepdims=True)


@register(
    paper="Cai et al. ICML 2024 (SMM)",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE | Operator.PARAMETRIC,
)
def smm(
    *,
    patch_size: int = 8,
    layers: int = 5,
    mask_channels: str = "per-channel",
    norm: str = "instance",
    interpolation: str = "linear",
) -> InputTransform:
    """SMM (Cai et al. ICML 2024): a shared pattern δ gated by a per-image mask.

    ::

        x̄  = normalize(resize(x))
        x' = x̄ + δ ⊙ upsample_patch(f_mask(x̄))

    ``f_mask`` is the reference's lightweight CNN: 3×3 convolutions (stride 1,
    "same") of widths ``C → 8 → 16 → 32 → 64 → C`` for ``layers=5`` (ResNets;
    ``layers=6`` adds a 128-wide layer, the reference's ViT setting), each hidden
    one followed by a normalisation and ReLU, with a 2×2 max-pool after each of
    the first ``log2(patch_size)`` hidden layers; the last convolution emits the
    coarse mask ``(N, H/patch_size, W/patch_size, C)`` with no activation. Patch-wise
    interpolation copies each coarse value onto its ``patch_size × patch_size`` block
    (:func:`upsample_patches`). δ (shape ``spec.shape``, zero-initialised) and the
    mask act in the model's normalised units. Convolutions use PyTorch's default
    initialisation (U(±1/√fan_in)), as the reference. With 3 channels and
    ``layers=5`` the mask network has 26,499 parameters at any canvas size.

    Normalisation: the reference uses BatchNorm (batch statistics in training,
    running averages at evaluation). A manipulation is a pure function with no
    mutable statistics, so the default here is ``"instance"`` (per image and
    channel, over H×W, with BatchNorm's affine parameters: same parameter count,
    each image's output independent of its batch); ``"batch"`` reproduces the
    reference's *training-time* numerics (statistics over the batch, also at
    evaluation); ``"none"`` drops it.

    Args:
      patch_size: the side of the mask's square cells, in pixels (1, 2, 4, 8, 16, or 32 with ``layers=6``);
        each canvas side must be divisible by it.
      layers: 5 (ResNets, default) or 6 (ViTs).
      mask_channels: ``"per-channel"`` (one mask per image channel, the paper's
        default) or ``"shared"``: one mask for all channels, as the reference's
        ``channels=1`` (tmlr-group/SMM): no last convolution; the mask is the mean
        over the features of the last hidden layer (after its ReLU and pooling,
        so ``≥ 0``), broadcast to every channel.
      norm: ``"instance"`` (default), ``"batch"`` or ``"none"``; see above.
      interpolation: ``jax.image.resize`` method (antialiased) for the resize to ``spec.size``.

    ``theta = {"delta": δ, "net": {"conv0": {"w", "b"}, "norm0": {"scale", "bias"}, ...}}``.
    ``visualize(theta, spec)`` shows ``δ ⊙ mask`` applied to a grey image.
    """
    _checks.choice(layers, "smm: layers", (5, 6))
    _checks.choice(patch_size, "smm: patch_size", (1, 2, 4, 8, 16, 32) if layers == 6 else (1, 2, 4, 8, 16))
    _checks.choice(mask_channels, "smm: mask_channels", ("per-channel", "shared"))
    _checks.choice(norm, "smm: norm", ("instance", "batch", "none"))
    _checks.choice(interpolation, "smm: interpolation", _checks.INTERPOLATIONS)

    def check(spec):
        spec = _checks.image_spec(spec, "smm")
        if spec.size[0] % patch_size or spec.size[1] % patch_size:
            raise ValueError(
                f"smm: patch_size={patch_size} must divide both sides of the canvas spec.size={spec.size}"
            )
        return spec

    def init_fn(key, spec):
        spec = check(spec)
        widths = mask_net_widths(layers, spec.channels)
        convs = list(itertools.pairwise(widths))
        if mask_channels == "per-channel":
            convs.append((widths[-1], spec.channels))
        keys = jax.random.split(key, 2 * len(convs))
        net = {}
        for i, (cin, cout) in enumerate(convs):
            bound = 1.0 / math.sqrt(9 * cin)
            net[f"conv{i}"] = {
                "w": jax.random.uniform(keys[2 * i], (3, 3, cin, cout), jnp.float32, -bound, bound),
                "b": jax.random.uniform(keys[2 * i + 1], (cout,), jnp.float32, -bound, bound),
            }
            if norm != "none" and i < len(widths) - 1:
                net[f"norm{i}"] = {
                    "scale": jnp.ones((cout,), jnp.float32),
                    "bias": jnp.zeros((cout,), jnp.float32),
                }
        return {"delta": jnp.zeros(spec.shape, jnp.float32), "net": net}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = check(spec)
        x = _checks.image_batch(x, "smm", spec)
        delta = _checks.leaf_shape(theta, "delta", spec.shape, "smm")
        if not isinstance(theta.get("net"), dict):
            raise ValueError("smm: theta must be the dict from init, with keys 'delta' and 'net'")
        x = spec.normalize(_checks.resize(x, spec.size, interpolation))
        coarse = mask_net(
            theta["net"], x, patch_size=patch_size, layers=layers, mask_channels=mask_channels, norm=norm
        )
        mask = upsample_patches(coarse, patch_size)
        return x + delta * mask

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, check(spec).shape)

    return InputTransform(init_fn, apply, visualize=visualize)
