"""Vision Transformer (Dosovitskiy et al., ICLR 2021) in Flax, with converters from PyTorch checkpoints.

``z_0 = [x_cls; x_p^1 E; ...; x_p^N E] + E_pos``; for each layer
``z' = z + MSA(LN(z))``, ``z = z' + MLP(LN(z'))``; ``y = head(LN(z_L)[:, 0])`` (pre-norm, exact GELU).

Checkpoints (``weights=``): Hugging Face ``ViTForImageClassification`` / ``ViTModel`` (hub names
``vit.encoder.layer.{i}.attention.attention.query.*`` and ``transformers`` 5's in-memory names
``vit.layers.{i}.attention.q_proj.*``) or timm ``VisionTransformer`` state dicts (``blocks.{i}.attn.qkv.*``),
as a model directory (``config.json`` + ``model.safetensors``/``pytorch_model.bin``) or a weight file.
Depth, width, patch size, MLP size, image size and classes are read off the tensors; the number of heads
comes from ``config.json`` or ``num_heads=``.

Sites (every submodule's output is a site under :func:`jaxreprog.from_linen`; these are the documented ones):

* ``"embeddings"`` — the token sequence ``(B, 1 + N, D)`` after patch and position embeddings. VPT-shallow
  (:func:`jaxreprog.embedding.vpt_shallow`) inserts its prompt tokens after [CLS] here, so they carry no
  position embedding (Jia et al. 2022).
* ``"encoder/layer_{i}/input"`` — layer ``i``'s input ``(B, T, D)``, ``i = 0 .. L-1``. VPT-deep
  (:func:`jaxreprog.hidden.vpt_deep`) inserts at layer 0 and replaces tokens ``1 .. P`` with layer ``i``'s
  fresh prompts here.
* ``"encoder/layer_{i}/attn/{query,key,value}"`` — the per-head projections ``(B, T, heads, head_dim)``
  (stock :class:`flax.linen.MultiHeadDotProductAttention`), where K/V prefixes can be prepended.
* ``"encoder/layer_{i}"`` — layer ``i``'s output; ``"features"`` — the normed [CLS] token ``(B, D)``.

Layers accept any sequence length ``T`` (static at trace time); the head reads [CLS] only, so inserted
tokens never change the output's shape.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxreprog.core import FrozenModel, ImageSpec, Site, from_linen
from jaxreprog.models import checkpoint
from jaxreprog.models.checkpoint import check_shapes, class_names
from jaxreprog.models.remat import block as remat_block
from jaxreprog.models.remat import check as check_remat

__all__ = ["ViT", "ViTSpec", "convert", "from_checkpoint", "load"]


@dataclasses.dataclass(frozen=True)
class ViTSpec(ImageSpec):
    """An :class:`~jaxreprog.ImageSpec` plus the sizes token prompts need (VPT reads them)."""

    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    patch_size: int = 0


class EncoderLayer(nn.Module):
    num_heads: int
    mlp_size: int
    eps: float

    @nn.compact
    def __call__(self, z):
        z = Site(name="input")(z)
        norm = dict(epsilon=self.eps, use_fast_variance=False)
        h = nn.LayerNorm(name="ln1", **norm)(z)
        z = z + nn.MultiHeadDotProductAttention(self.num_heads, deterministic=True, name="attn")(h, h)
        h = nn.LayerNorm(name="ln2", **norm)(z)
        h = nn.gelu(nn.Dense(self.mlp_size, name="fc1")(h), approximate=False)
        return z + nn.Dense(z.shape[-1], name="fc2")(h)


class Encoder(nn.Module):
    num_layers: int
    num_heads: int
    mlp_size: int
    eps: float
    remat: str | None = None

    @nn.compact
    def __call__(self, z):
        layer = remat_block(EncoderLayer, self.remat)
        for i in range(self.num_layers):
            z = layer(self.num_heads, self.mlp_size, self.eps, name=f"layer_{i}")(z)
        return z


class ViT(nn.Module):
    """A ViT classifier on normalised NHWC images of side ``image_size``.

    Attributes:
      patch_size, hidden_size, num_layers, num_heads, mlp_size: the architecture.
      image_size: the side the position embeddings were trained for (``(H, W)``).
      num_classes: head outputs (``0``: return the normed [CLS] features).
      eps: LayerNorm epsilon (``1e-12`` in Hugging Face ViTs, ``1e-6`` in timm's).
      remat: a :mod:`jaxreprog.models.remat` policy for the encoder layers (default none).
    """

    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_size: int
    image_size: tuple[int, int] = (224, 224)
    num_classes: int = 1000
    eps: float = 1e-12
    remat: str | None = None

    @nn.compact
    def __call__(self, x):
        p, d = self.patch_size, self.hidden_size
        if x.shape[1:3] != tuple(self.image_size):
            raise ValueError(
                f"ViT: x must be (B, {self.image_size[0]}, {self.image_size[1]}, C), got {x.shape}"
            )
        z = nn.Conv(d, (p, p), (p, p), padding="VALID", name="patch_embed")(x)
        z = z.reshape(z.shape[0], -1, d)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + z.shape[1], d))
        z = jnp.concatenate([jnp.broadcast_to(cls, (z.shape[0], 1, d)).astype(z.dtype), z], axis=1) + pos
        z = Site(name="embeddings")(z)
        z = Encoder(self.num_layers, self.num_heads, self.mlp_size, self.eps, self.remat, name="encoder")(z)
        z = nn.LayerNorm(epsilon=self.eps, use_fast_variance=False, name="norm")(z)
        features = Site(name="features")(z[:, 0])
        return nn.Dense(self.num_classes, name="head")(features) if self.num_classes else features


# ----------------------------------------------------------------------- converter

# (pattern, canonical name); canonical: cls, pos, patch, layers.{i}.{q,k,v,o,ln1,ln2,fc1,fc2}, norm, head.
_HF_RULES = (
    (r"^(?:vit\.)?embeddings\.cls_token$", "cls"),
    (r"^(?:vit\.)?embeddings\.position_embeddings$", "pos"),
    (r"^(?:vit\.)?embeddings\.patch_embeddings\.projection\.", "patch."),
    (
        r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.query|q_proj)\.",
        r"layers.\1.q.",
    ),
    (r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.key|k_proj)\.", r"layers.\1.k."),
    (
        r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.value|v_proj)\.",
        r"layers.\1.v.",
    ),
    (r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"layers.\1.o."),
    (r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"layers.\1.ln1."),
    (r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"layers.\1.ln2."),
    (r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)\.", r"layers.\1.fc1."),
    (r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.(?:output\.dense|mlp\.fc2)\.", r"layers.\1.fc2."),
    (r"^(?:vit\.)?layernorm\.", "norm."),
    (r"^classifier\.", "head."),
)
_TIMM_RULES = (
    (r"^cls_token$", "cls"),
    (r"^pos_embed$", "pos"),
    (r"^patch_embed\.proj\.", "patch."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"layers.\1.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.o."),
    (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."),
    (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.fc1."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.fc2."),
    (r"^norm\.", "norm."),
    (r"^head\.", "head."),
)


# Tensors the model does not need: Hugging Face ViTModel's pooler (dense + tanh, unused by the [CLS]
# features and the head) and its mask token (masked image modelling only).
_IGNORED = r"^(?:vit\.)?(?:pooler\.|embeddings\.mask_token$)"


def _canonical(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """Canonical names and the naming scheme found ("hf" or "timm"); unknown tensors are an error."""
    scheme = "timm" if "cls_token" in state else "hf"
    rules = _TIMM_RULES if scheme == "timm" else _HF_RULES
    out, known = {}, {k for k in state if scheme == "hf" and re.match(_IGNORED, k)}
    for name, value in state.items():
        for pattern, repl in rules:
            new, hit = re.subn(pattern, repl, name)
            if hit:
                out[new] = np.asarray(value)
                known.add(name)
                break
    for key in [k for k in out if k.endswith(".qkv.weight") or k.endswith(".qkv.bias")]:
        stem, leaf = key.rsplit(".qkv.", 1)
        for part, value in zip("qkv", np.split(out.pop(key), 3, axis=0)):
            out[f"{stem}.{part}.{leaf}"] = value
    if "cls" not in out or "patch.weight" not in out:
        raise ValueError(
            "not a ViT checkpoint: no 'vit.embeddings.cls_token' / "
            "'vit.embeddings.patch_embeddings.projection.weight' (Hugging Face) or "
            f"'cls_token' / 'patch_embed.proj.weight' (timm); first tensors: {sorted(state)[:5]}"
        )
    # e.g. timm's fc_norm (average-pooled ViTs): dropping a tensor would run with wrong numbers
    checkpoint.check_unused(state, known, "ViT")
    return out, scheme


def _architecture(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    d, channels, p, _ = state["patch.weight"].shape
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))})
    if layers != list(range(len(layers))):
        raise ValueError(f"ViT checkpoint has layers {layers}; expected 0..L-1")
    n = state["pos"].shape[1] - 1
    side = round(n**0.5)
    if side * side != n:
        raise ValueError(f"ViT checkpoint has {n} patch positions; only square grids are supported")
    return {
        "hidden_size": int(d),
        "channels": int(channels),
        "patch_size": int(p),
        "num_layers": len(layers),
        "mlp_size": int(state["layers.0.fc1.weight"].shape[0]) if layers else 0,
        "image_size": (side * int(p), side * int(p)),
        "num_classes": int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
    }


def convert(state: Mapping[str, Any], num_heads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PyTorch ViT state dict (Hugging Face or timm names) -> (Flax variables, architecture).

    Every tensor must be one this port reads (Hugging Face ``ViTModel``'s pooler and mask token
    apart): an unknown one (e.g. timm's ``fc_norm``) raises ``ValueError``.
    """
    sd, scheme = _canonical(state)
    arch = _architecture(sd)
    d = arch["hidden_size"]
    if num_heads <= 0 or d % num_heads:
        raise ValueError(f"num_heads must be a positive divisor of the hidden size {d}, got {num_heads}")
    hd = d // num_heads

    get = checkpoint.getter(
        sd,
        lambda name: KeyError(f"ViT checkpoint lacks tensor {name!r} (as renamed by _HF_RULES/_TIMM_RULES)"),
    )
    dense, norm = functools.partial(checkpoint.dense, get), functools.partial(checkpoint.layer_norm, get)

    def heads_in(k):  # (D_out, D_in) -> DenseGeneral kernel (D_in, heads, head_dim)
        bias = get(f"{k}.bias") if f"{k}.bias" in sd else np.zeros(d, np.float32)  # qkv_bias=False
        return {"kernel": get(f"{k}.weight").T.reshape(d, num_heads, hd), "bias": bias.reshape(num_heads, hd)}

    layers = {}
    for i in range(arch["num_layers"]):
        pre = f"layers.{i}"
        attn = {name: heads_in(f"{pre}.{name[0]}") for name in ("query", "key", "value")}
        attn["out"] = {
            "kernel": get(f"{pre}.o.weight").T.reshape(num_heads, hd, d),
            "bias": get(f"{pre}.o.bias"),
        }
        layers[f"layer_{i}"] = {
            "ln1": norm(f"{pre}.ln1"),
            "attn": attn,
            "ln2": norm(f"{pre}.ln2"),
            "fc1": dense(f"{pre}.fc1"),
            "fc2": dense(f"{pre}.fc2"),
        }
    params = {
        "patch_embed": {"kernel": get("patch.weight").transpose(2, 3, 1, 0), "bias": get("patch.bias")},
        "cls_token": get("cls"),
        "pos_embed": get("pos"),
        "encoder": layers,
        "norm": norm("norm"),
    }
    if arch["num_classes"]:
        params["head"] = dense("head")
    arch.update(num_heads=num_heads, eps=1e-6 if scheme == "timm" else 1e-12)
    return {"params": params}, arch


# ------------------------------------------------------------------------- loading


def from_checkpoint(
    weights: str | Path | Mapping[str, Any],
    *,
    num_heads: int | None = None,
    spec: ImageSpec | None = None,
    remat: str | None = None,
) -> FrozenModel:
    """A :class:`~jaxreprog.FrozenModel` from a ViT checkpoint; its spec is a :class:`ViTSpec`.

    Args:
      weights: a state dict, a weight file or a Hugging Face model directory.
      num_heads: attention heads (read from ``config.json`` when there is one).
      spec: override the input spec (mean/std default to the checkpoint's ``preprocessor_config.json``,
        else 0.5 as in Hugging Face ViTs; timm's ImageNet-21k ViTs also use 0.5).
      remat: a :mod:`jaxreprog.models.remat` policy for the encoder layers (default none).
    """
    return _build(weights, num_heads, spec, remat=remat)


def _build(weights, num_heads, spec, default_heads=None, remat=None) -> FrozenModel:
    check_remat(remat)
    if isinstance(weights, Mapping):
        state, config, prep = dict(weights), {}, {}
    else:
        state, (config, prep) = checkpoint.read_pretrained(weights, "config.json", "preprocessor_config.json")
    heads = num_heads or config.get("num_attention_heads") or default_heads
    if heads is None:
        raise ValueError(
            "from_checkpoint: pass num_heads= (the checkpoint has no config.json to read it from)"
        )
    variables, arch = convert(state, int(heads))
    if "layer_norm_eps" in config:
        arch["eps"] = float(config["layer_norm_eps"])
    if config.get("hidden_act", "gelu") != "gelu":
        raise NotImplementedError(f"ViT hidden_act={config['hidden_act']!r}; only exact 'gelu' is supported")
    module = ViT(
        patch_size=arch["patch_size"],
        hidden_size=arch["hidden_size"],
        num_layers=arch["num_layers"],
        num_heads=arch["num_heads"],
        mlp_size=arch["mlp_size"],
        image_size=arch["image_size"],
        num_classes=arch["num_classes"],
        eps=arch["eps"],
        remat=remat,
    )
    num = arch["num_classes"] or None
    vit_spec = ViTSpec(
        size=arch["image_size"],
        channels=arch["channels"],
        mean=tuple(prep.get("image_mean", (0.5,) * arch["channels"])),
        std=tuple(prep.get("image_std", (0.5,) * arch["channels"])),
        num_classes=num,
        class_names=class_names(config, num) if num else None,
        name="vit",
        hidden_size=arch["hidden_size"],
        num_layers=arch["num_layers"],
        num_heads=arch["num_heads"],
        patch_size=arch["patch_size"],
    )
    if spec is not None:
        if tuple(spec.size) != arch["image_size"]:
            raise ValueError(f"spec.size must be {arch['image_size']} (the checkpoint's), got {spec.size}")
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(ImageSpec)}
        vit_spec = dataclasses.replace(vit_spec, **fields)
    want = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *vit_spec.shape)))
    check_shapes(variables, want, lambda path: "/".join(re.findall(r"\['([^']+)'\]", path)[1:]))
    return from_linen(module, jax.device_put(variables, may_alias=False), vit_spec)


_ARCHITECTURES = {"vit_b16": dict(hidden_size=768, num_layers=12, patch_size=16, num_heads=12)}


def load(name: str, weights: str | Path | None = None, **kwargs: Any) -> FrozenModel:
    """``jr.models.load("vit_b16", weights=...)``: a pretrained ViT-B/16.

    No ViT weights install offline, so ``weights`` is required: a Hugging Face
    ``google/vit-base-patch16-224`` directory / ``model.safetensors`` or a timm state dict.
    """
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown ViT {name!r}; known: {', '.join(_ARCHITECTURES)}")
    if weights is None:
        raise ValueError(
            f"no pretrained {name} weights install offline: pass weights= a Hugging Face model directory "
            "or model.safetensors (e.g. google/vit-base-patch16-224) or a timm state dict "
            "(.pth/.bin/.safetensors)"
        )
    want = _ARCHITECTURES[name]
    model = _build(
        weights,
        kwargs.pop("num_heads", None),
        kwargs.pop("spec", None),
        want["num_heads"],
        remat=kwargs.pop("remat", None),
    )
    if kwargs:
        raise TypeError(
            f"load({name!r}): unexpected arguments {sorted(kwargs)}; accepted: num_heads, spec, remat"
        )
    got = {k: getattr(model.spec, k) for k in want}
    if got != want:
        raise ValueError(f"weights {weights} hold a ViT with {got}, not {name} ({want})")
    return model._replace(spec=dataclasses.replace(model.spec, name=name))
