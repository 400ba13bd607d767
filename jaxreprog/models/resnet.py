"""ResNet-18/34/50/101/152 (He et al., CVPR 2016) in Flax, with converters from PyTorch checkpoints.

``y = fc(mean_hw(stage_4(... stage_1(maxpool(relu(conv1(x)))))))``; a basic block computes
``relu(x' + conv3(relu(conv3(x))))`` and a bottleneck block ``relu(x' + conv1(relu(conv3(relu(conv1(x))))))``
(``convK``: K×K convolution) with ``x'`` the (projected, strided) shortcut; the stride sits on the
3×3 convolution ("v1.5", as in torchvision and ``transformers``' default).

Checkpoints (``weights=``): a torchvision / timm state dict (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``, ``fc.weight``) as ``.pth``/``.pt``/``.bin`` or
``.safetensors``, or a Hugging Face ``ResNetForImageClassification`` checkpoint (a directory with
``config.json`` and ``model.safetensors``/``pytorch_model.bin``, or the weight file itself). The
architecture (depths, widths, block type, classes) is read off the tensors' shapes. Batch norm is folded
into the preceding convolution at load time (inference statistics), so the Flax tree holds convolutions
with biases only.

Sites (for :func:`jaxreprog.from_linen`-style hooks; every submodule's output is one):

* ``"conv1"`` — the stem convolution + folded BN, before ReLU and max-pool, ``(B, H/2, W/2, C0)``;
* ``"layer{s}_{b}"`` — the output of block ``b`` of stage ``s`` (1-based stages, as in torchvision);
* ``"features"`` — the globally pooled features before ``fc``, ``(B, C)``.

The network is fully convolutional: ``load(..., size=S)`` declares any input side.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog.core import FrozenModel, ImageSpec, Site, from_linen
from jaxreprog.models import checkpoint, ops
from jaxreprog.models.checkpoint import check_shapes, class_names

__all__ = [
    "ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResNet",
    "check_shapes",
    "class_names",
    "convert",
    "from_checkpoint",
    "load",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPS = 1e-5

ARCHITECTURES: dict[str, tuple[tuple[int, ...], bool]] = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
"""name -> (blocks per stage, bottleneck)."""


# --------------------------------------------------------------------------- model


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=((pad, pad), (pad, pad)),
        conv_general_dilated=ops.conv_general_dilated,  # a faster input gradient on CPU
        name=name,
    )


class Block(nn.Module):
    """One residual block; ``mid`` is the bottleneck width (0 for a basic block)."""

    features: int
    stride: int
    mid: int = 0
    project: bool = False
    stride_in_1x1: bool = False

    @nn.compact
    def __call__(self, x):
        if self.mid:
            s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
            y = nn.relu(_conv(self.mid, 1, s1, "conv1")(x))
            y = nn.relu(_conv(self.mid, 3, s3, "conv2")(y))
            y = _conv(self.features, 1, 1, "conv3")(y)
        else:
            y = nn.relu(_conv(self.features, 3, self.stride, "conv1")(x))
            y = _conv(self.features, 3, 1, "conv2")(y)
        shortcut = _conv(self.features, 1, self.stride, "downsample")(x) if self.project else x
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """A ResNet on normalised NHWC images; BN is folded into the convolutions (inference only).

    Attributes:
      depths: blocks per stage.
      widths: output channels per stage.
      mids: bottleneck width per stage (``None`` for basic blocks).
      stem: channels of the 7×7 stem convolution.
      num_classes: classifier outputs (``0``: return the pooled features).
      stride_in_1x1: put the stride on the first 1×1 convolution of bottlenecks ("v1").
      first_stride: stride of the first stage (1 in every torchvision/timm ResNet).
    """

    depths: Sequence[int]
    widths: Sequence[int]
    mids: Sequence[int] | None = None
    stem: int = 64
    num_classes: int = 1000
    stride_in_1x1: bool = False
    first_stride: int = 1

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:  # flax's convolutions would take one (H, W, C) image and pool the wrong axes
            raise ValueError(f"ResNet: x must be NHWC images (B, H, W, C), got shape {x.shape}")
        x = _conv(self.stem, 7, 2, "conv1")(x)
        x = ops.max_pool(nn.relu(x), 3, 2, ((1, 1), (1, 1)))
        channels = self.stem
        for s, (depth, width) in enumerate(zip(self.depths, self.widths)):
            for b in range(depth):
                stride = (self.first_stride if s == 0 else 2) if b == 0 else 1
                x = Block(
                    width,
                    stride,
                    mid=self.mids[s] if self.mids else 0,
                    project=b == 0 and (stride != 1 or channels != width),
                    stride_in_1x1=self.stride_in_1x1,
                    name=f"layer{s + 1}_{b}",
                )(x)
                channels = width
        x = Site(name="features")(x.mean(axis=(1, 2)))
        return nn.Dense(self.num_classes, name="fc")(x) if self.num_classes else x


# ----------------------------------------------------------------------- converter

_HF_RULES = (
    (r"^resnet\.embedder\.embedder\.convolution\.", "conv1."),
    (r"^resnet\.embedder\.embedder\.normalization\.", "bn1."),
    (
        r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.",
        "layer<\\1>.\\2.downsample.0.",
    ),
    (
        r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.",
        "layer<\\1>.\\2.downsample.1.",
    ),
    (
        r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.",
        "layer<\\1>.\\2.conv<\\3>.",
    ),
    (
        r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.",
        "layer<\\1>.\\2.bn<\\3>.",
    ),
    (r"^classifier\.1\.", "fc."),
)


def _torchvision_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a Hugging Face ResNet state dict to torchvision names (others pass through)."""
    out = {}
    for name, value in state.items():
        name = name.removeprefix("module.")  # DataParallel checkpoints
        for pattern, repl in _HF_RULES:
            new = re.sub(pattern, repl, name)
            if new != name:  # <i> marks a 0-based HF index that becomes torchvision's 1-based one
                name = re.sub(r"<(\d+)>", lambda m: str(int(m.group(1)) + 1), new)
                break
        out[name] = np.asarray(value)
    return out


def _fold(
    get: checkpoint.Getter, state: Mapping[str, np.ndarray], conv: str, bn: str
) -> dict[str, np.ndarray]:
    """Conv (OIHW) followed by inference BN -> one HWIO kernel and a bias."""
    w = get(f"{conv}.weight")
    gamma, beta = get(f"{bn}.weight"), get(f"{bn}.bias")
    mean, var = get(f"{bn}.running_mean"), get(f"{bn}.running_var")
    scale = gamma / np.sqrt(var + BN_EPS)
    bias = beta - mean * scale
    if f"{conv}.bias" in state:
        bias = bias + get(f"{conv}.bias") * scale
    kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def _architecture(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """ResNet hyper-parameters read off torchvision-named tensors."""
    if "conv1.weight" not in state:
        raise ValueError(
            "not a ResNet checkpoint: no 'conv1.weight' (torchvision/timm) or "
            "'resnet.embedder.embedder.convolution.weight' (Hugging Face) tensor; "
            f"first tensors: {sorted(state)[:5]}"
        )
    blocks: dict[int, set[int]] = {}
    for name in state:
        if m := re.match(r"layer(\d+)\.(\d+)\.", name):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(blocks)
    if stages != list(range(1, len(stages) + 1)):
        raise ValueError(f"ResNet checkpoint has stages {stages}; expected layer1..layerN")
    bottleneck = "layer1.0.conv3.weight" in state
    last = "conv3" if bottleneck else "conv2"
    return {
        "depths": tuple(len(blocks[s]) for s in stages),
        "widths": tuple(int(state[f"layer{s}.0.{last}.weight"].shape[0]) for s in stages),
        "mids": tuple(int(state[f"layer{s}.0.conv1.weight"].shape[0]) for s in stages)
        if bottleneck
        else None,
        "stem": int(state["conv1.weight"].shape[0]),
        "num_classes": int(state["fc.weight"].shape[0]) if "fc.weight" in state else 0,
        "channels": int(state["conv1.weight"].shape[1]),
    }


def convert(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PyTorch ResNet state dict (torchvision/timm or Hugging Face names) -> (Flax params, architecture).

    BN layers are folded into their convolutions; ``num_batches_tracked`` is dropped. Every
    other tensor must be used.
    """
    state = _torchvision_names(state)
    arch = _architecture(state)
    used = {k for k in state if k.endswith(".num_batches_tracked")}
    get = checkpoint.getter(
        state,
        lambda name: ValueError(f"ResNet checkpoint lacks tensor {name!r} (torchvision name)"),
        dtype=np.float64,
        used=used,
    )
    fold = functools.partial(_fold, get, state)
    params: dict[str, Any] = {"conv1": fold("conv1", "bn1")}
    convs = 3 if arch["mids"] else 2
    for s, depth in enumerate(arch["depths"], start=1):
        for b in range(depth):
            pre = f"layer{s}.{b}"
            block = {f"conv{k}": fold(f"{pre}.conv{k}", f"{pre}.bn{k}") for k in range(1, convs + 1)}
            if f"{pre}.downsample.0.weight" in state:
                block["downsample"] = fold(f"{pre}.downsample.0", f"{pre}.downsample.1")
            params[f"layer{s}_{b}"] = block
    if arch["num_classes"]:
        params["fc"] = {"kernel": get("fc.weight").T, "bias": get("fc.bias")}
    checkpoint.check_unused(state, used, "ResNet")
    return {"params": jax.tree.map(lambda a: np.asarray(a, np.float32), params)}, arch


# ------------------------------------------------------------------------- loading


def _source_name(path: str) -> str:
    """Flax path "['params']['layer2_0']['conv1']['kernel']" -> "layer2.0.conv1.kernel" (torchvision-like)."""
    keys = re.findall(r"\['([^']+)'\]", path)[1:]
    return ".".join(re.sub(r"^layer(\d+)_(\d+)$", r"layer\1.\2", k) for k in keys) or path


def from_checkpoint(
    weights: str | Path | Mapping[str, Any],
    *,
    size: int | tuple[int, int] | None = None,
    spec: ImageSpec | None = None,
) -> FrozenModel:
    """A :class:`~jaxreprog.FrozenModel` from any ResNet checkpoint (architecture read off its tensors).

    Args:
      weights: a state dict, a ``.pth``/``.pt``/``.bin``/``.safetensors`` file (torchvision, timm or Hugging
        Face names) or a Hugging Face model directory.
      size: input side (default 224; the network is fully convolutional).
      spec: the full input spec; default ImageNet normalisation, classes from the checkpoint (and class
        names from a Hugging Face ``config.json`` when it has real labels).
    """
    return _build(weights, size, spec)[0]


def _build(weights, size, spec) -> tuple[FrozenModel, dict[str, Any]]:
    if isinstance(weights, Mapping):
        state, config = dict(weights), {}
    else:
        state, (config,) = checkpoint.read_pretrained(weights, "config.json")
    if config.get("downsample_in_first_stage"):
        raise NotImplementedError("ResNet checkpoints with downsample_in_first_stage=True are not supported")
    if config.get("hidden_act", "relu") != "relu":
        raise NotImplementedError(f"ResNet hidden_act={config['hidden_act']!r}; only 'relu' is supported")
    variables, arch = convert(state)
    module = ResNet(
        depths=arch["depths"],
        widths=arch["widths"],
        mids=arch["mids"],
        stem=arch["stem"],
        num_classes=arch["num_classes"],
        stride_in_1x1=bool(config.get("downsample_in_bottleneck", False)),
    )
    if spec is None:
        num = arch["num_classes"] or None
        rgb = arch["channels"] == 3
        spec = ImageSpec(
            size=224 if size is None else size,
            channels=arch["channels"],
            mean=IMAGENET_MEAN if rgb else 0.0,
            std=IMAGENET_STD if rgb else 1.0,
            num_classes=num,
            class_names=class_names(config, num) if num else None,
            name="resnet",
        )
    elif size is not None:
        raise ValueError("from_checkpoint: pass size= or spec=, not both")
    want = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *spec.shape)))
    check_shapes(variables, want, _source_name)
    return from_linen(module, jax.device_put(variables, may_alias=False), spec), arch


def load(
    name: str, weights: str | Path | None = None, *, size: int | tuple[int, int] | None = None
) -> FrozenModel:
    """``jr.models.load("resnet18" | "resnet50", weights=...)``: a pretrained ResNet.

    No ResNet weights install offline, so ``weights`` is required: a torchvision/timm state dict
    (``resnet18-f37072fd.pth``, timm's ``pytorch_model.bin``/``model.safetensors``) or a Hugging Face
    ``microsoft/resnet-18`` directory. The checkpoint must have ``name``'s architecture.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown ResNet {name!r}; known: {', '.join(ARCHITECTURES)}")
    if weights is None:
        raise ValueError(
            f"no pretrained {name} weights install offline: pass weights= a torchvision/timm state dict "
            "(.pth/.bin/.safetensors) or a Hugging Face model.safetensors file or model directory "
            f"(e.g. microsoft/{name.replace('resnet', 'resnet-')})"
        )
    model, arch = _build(weights, size, None)
    depths, bottleneck = ARCHITECTURES[name]
    if arch["depths"] != depths or (arch["mids"] is not None) != bottleneck:
        kind = "bottleneck" if arch["mids"] else "basic"
        raise ValueError(
            f"weights {weights} hold a ResNet with {arch['depths']} {kind} blocks per stage, not {name} "
            f"({depths} {'bottleneck' if bottleneck else 'basic'} blocks)"
        )
    return model._replace(spec=dataclasses.replace(model.spec, name=name))
