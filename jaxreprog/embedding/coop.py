"""CoOp and CoCoOp: learned context vectors for CLIP's class prompts.

CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022):
the class prompt ``t_c = [SOS, v_1, ..., v_M, CLASS_c, ., EOS]`` takes ``M`` learned
context vectors ``v_m ∈ R^D`` in the text encoder's token-embedding space, shared by
all classes (unified, ``(M, D)``) or one set per class (class-specific, ``(N, M, D)``);
``p(y=c | x) ∝ exp(τ · cos(g(x), h(t_c)))``.

CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language Models",
CVPR 2022): a meta-net ``π = W_2 ReLU(W_1 f + b_1) + b_2`` (``Linear(E → E/16)``,
ReLU, ``Linear(→ D)``) of the L2-normalised image feature ``f = g(x)/|g(x)|`` shifts
every context vector, ``v_m(x) = v_m + π(x)``, so each image gets its own class
prompts and text features ``(B, N, E)``.

Both act at the sites ``sites=`` selects (:func:`jaxreprog.select`), by default the CLIP
text tower's ``"text/embeddings"`` (:mod:`jaxreprog.models.clip`), whose value is a
:class:`~jaxreprog.hooks.PromptEmbeddings`. The class prompts are built with
``M`` placeholder tokens right after SOS ("X X X X {class}."), as in CoOp: the
method overwrites those ``M`` embeddings, so the sequence length, position ids and
EOT positions are unchanged. CoCoOp reads the image features that the CLIP
classifier passes in the same site value (the text encoder runs after the image
encoder), and returns per-image embeddings ``(B, N, L, D)``.

Example::

    >>> ids, eot = clip.class_prompts(names, prefix=[X] * 4, sos_id=..., eos_id=..., context_length=77)
    >>> model = clip.classifier(module, params, ids, eot)
    >>> program = jr.reprogram(model, embedding=jr.embedding.coop(length=4))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking, taxonomy
from jaxreprog.core import SiteHook, Spec
from jaxreprog.hooks import PromptEmbeddings, SiteSelection, select
from jaxreprog.taxonomy import Format, Location, Operator

__all__ = ["cocoop", "coop"]

SITE = "text/embeddings"  # the default sites: CLIP's text tower


def _spec_size(given: int | None, spec: Spec, attr: str, arg: str, method: str) -> int:
    size = given if given is not None else getattr(spec, attr, 0)
    if not size:
        raise ValueError(
            f"{method}: pass {arg}= (the spec {type(spec).__name__} has no {attr}; "
            "jaxreprog.models.clip.classifier gives a CLIPSpec that has it)"
        )
    return int(size)


def _check_init(init: Any, length: int, hidden_size: int | None, class_specific: bool, method: str) -> None:
    """``init`` is ``(M, D)`` (or ``(N, M, D)`` class-specific) with ``D = hidden_size`` if given."""
    if init is None:
        return
    shape = np.shape(init)
    if len(shape) not in ((2, 3) if class_specific else (2,)) or shape[-2] != length:
        want = f"({length}, D)" + (f" or (N, {length}, D)" if class_specific else "")
        raise ValueError(f"{method}: init must have shape {want}, got {shape}")
    if hidden_size is not None and shape[-1] != hidden_size:
        raise ValueError(f"{method}: init has width {shape[-1]} but hidden_size={hidden_size}")


def _init_width(init: Any, hidden_size: int | None, spec: Spec, method: str) -> int:
    """``D``: ``init``'s width (it must match the spec's ``text_width``, if any), else :func:`_spec_size`."""
    if init is None:
        return _spec_size(hidden_size, spec, "text_width", "hidden_size", method)
    d = int(np.shape(init)[-1])
    if getattr(spec, "text_width", 0) and spec.text_width != d:
        raise ValueError(f"{method}: init has width {d}; the model's text width is {spec.text_width}")
    return d


def _context_init(key, init, shape, std, method):
    if init is None:
        return std * jax.random.normal(key, shape, jnp.float32)
    init = jnp.asarray(init, jnp.float32)
    if init.shape != shape[-2:] and init.shape != shape:
        raise ValueError(f"{method}: init must have shape {shape[-2:]} or {shape}, got {init.shape}")
    return jnp.broadcast_to(init, shape)


def _check_site(site: str, value: Any, context: jax.Array, method: str) -> None:
    if not isinstance(value, PromptEmbeddings):
        raise TypeError(
            f"{method}: site {site!r} must carry jaxreprog.hooks.PromptEmbeddings, got {type(value).__name__}"
        )
    m, d = context.shape[-2:]
    length, width = value.embeds.shape[-2:]
    if d != width:
        raise ValueError(f"{method}: context width {d} != text embedding width {width}")
    eot = value.eot_index
    if isinstance(eot, np.ndarray) and eot.min() <= m:
        raise ValueError(
            f"{method}: the class prompts need {m} placeholder tokens between SOS and EOT, but a prompt "
            f"ends at position {int(eot.min())}; build them with {m} placeholders after SOS"
        )
    if m + 1 > length:
        raise ValueError(f"{method}: {m} context tokens do not fit prompts of length {length}")


def _splice(embeds: jax.Array, context: jax.Array) -> jax.Array:
    """``embeds[..., 1:1+M, :] = context`` (broadcast over the leading axes)."""
    m = context.shape[-2]
    context = jnp.broadcast_to(context.astype(embeds.dtype), (*embeds.shape[:-2], *context.shape[-2:]))
    return jnp.concatenate([embeds[..., :1, :], context, embeds[..., 1 + m :, :]], axis=-2)


@taxonomy.register(
    paper="Zhou et al. 2022 (IJCV)",
    modality="vision-language",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.CONCATENATIVE,
)
def coop(
    length: int = 16,
    *,
    class_specific: bool = False,
    init: Any | None = None,
    init_std: float = 0.02,
    hidden_size: int | None = None,
    num_classes: int | None = None,
    sites: SiteSelection = SITE,
) -> SiteHook:
    """CoOp: ``M`` learned context vectors before the class-name tokens.

    ``theta = {"context": (M, D)}`` (unified) or ``(N, M, D)`` (class-specific),
    written over the ``M`` placeholder tokens after SOS in every class prompt.

    Args:
      length: ``M``, the number of context vectors (placeholders in the prompts).
      class_specific: one context per class (CSC) instead of one shared context.
      init: ``(M, D)`` (or ``(N, M, D)``) initial context, e.g. the embeddings of
        "a photo of a" (``clip.token_embeddings(params, ids)``); default
        ``N(0, init_std²)`` as in the paper.
      init_std: standard deviation of the random initialisation (0.02).
      hidden_size: ``D``, the text encoder's embedding width; default the spec's ``text_width``
        (a CLIP classifier's spec, whose own ``hidden_size`` is the vision tower's); with ``init``,
        it must match ``init``'s width.
      num_classes: ``N`` for class-specific contexts; default ``spec.num_classes``.
      sites: where the class prompts' embeddings are (:func:`jaxreprog.select`); default
        ``"text/embeddings"``.
    """
    length = checking.integer(length, "length (number of context vectors)", who="coop")
    _check_init(init, length, hidden_size, class_specific, "coop")
    selector = select(sites)

    def init_fn(key, spec):
        d = _init_width(init, hidden_size, spec, "coop")
        shape = (length, d)
        if class_specific:
            n = _spec_size(num_classes, spec, "num_classes", "num_classes", "coop")
            shape = (n, *shape)
        return {"context": _context_init(key, init, shape, init_std, "coop")}

    def apply(theta, site, value, spec):
        if not selector.matches(site):
            return value
        context = theta["context"]
        _check_site(site, value, context, "coop")
        if context.ndim != (3 if class_specific else 2) or context.shape[-2] != length:
            raise ValueError(
                f"coop: theta['context'] must be {'(N, ' if class_specific else '('}{length}, D), "
                f"got {context.shape}"
            )
        if class_specific and context.shape[0] != value.embeds.shape[-3]:
            raise ValueError(
                f"coop: class-specific context has {context.shape[0]} classes, the prompts "
                f"{value.embeds.shape[-3]}"
            )
        return value._replace(embeds=_splice(value.embeds, context))

    return SiteHook(init_fn, apply, sites=selector)


@taxonomy.register(
    paper="Zhou et al. 2022 (CVPR)",
    modality="vision-language",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.CONCATENATIVE | Operator.PARAMETRIC,
)
def cocoop(
    length: int = 4,
    *,
    init: Any | None = None,
    init_std: float = 0.02,
    hidden_size: int | None = None,
    feature_dim: int | None = None,
    hidden: int | None = None,
    sites: SiteSelection = SITE,
) -> SiteHook:
    """CoCoOp: a unified context shifted per image by a meta-net of the image feature.

    ``theta = {"context": (M, D), "meta_net": {"w1", "b1", "w2", "b2"}}``;
    ``v_m(x) = v_m + W_2 ReLU(W_1 f(x) + b_1) + b_2``. The meta-net's linear layers
    start as PyTorch's ``nn.Linear`` (``U(±1/√fan_in)``), as in the reference code.

    Args:
      length: ``M`` (4 in the paper).
      init: ``(M, D)`` initial context (e.g. "a photo of a"); default ``N(0, init_std²)``.
      init_std: standard deviation of the random initialisation (0.02).
      hidden_size: ``D``, the text encoder's embedding width; default the spec's ``text_width``;
        with ``init``, it must match.
      feature_dim: ``E``, the image-feature size; default the spec's ``embed_dim``.
      hidden: the meta-net's hidden width (``E → hidden → D``); default ``E // 16``.
      sites: as for :func:`coop`.
    """
    length = checking.integer(length, "length (number of context vectors)", who="cocoop")
    if hidden is not None:
        hidden = checking.integer(hidden, "hidden (the meta-net's width)", who="cocoop")
    _check_init(init, length, hidden_size, False, "cocoop")
    selector = select(sites)

    def init_fn(key, spec):
        d = _init_width(init, hidden_size, spec, "cocoop")
        e = _spec_size(feature_dim, spec, "embed_dim", "feature_dim", "cocoop")
        h = int(hidden) if hidden is not None else max(1, e // 16)
        k_ctx, k1, k2, k3, k4 = jax.random.split(key, 5)

        def linear(kw, kb, fan_in, fan_out):
            bound = 1 / np.sqrt(fan_in)
            w = jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound)
            return w, jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)

        w1, b1 = linear(k1, k2, e, h)
        w2, b2 = linear(k3, k4, h, d)
        return {
            "context": _context_init(k_ctx, init, (length, d), init_std, "cocoop"),
            "meta_net": {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        }

    def apply(theta, site, value, spec):
        if not selector.matches(site):
            return value
        context, net = theta["context"], theta["meta_net"]
        _check_site(site, value, context, "cocoop")
        if context.shape != (length, value.embeds.shape[-1]):
            want = (length, value.embeds.shape[-1])
            raise ValueError(f"cocoop: theta['context'] must be {want}, got {context.shape}")
        f = value.image_features
        if f is None:
            raise ValueError(
                f"cocoop: site {site!r} carries no image features; use a "
                "jaxreprog.models.clip.classifier, which passes them to the text tower"
            )
        if f.ndim != 2 or f.shape[-1] != net["w1"].shape[0]:
            raise ValueError(f"cocoop: image features must be (B, {net['w1'].shape[0]}), got {f.shape}")
        bias = jax.nn.relu(f @ net["w1"] + net["b1"]) @ net["w2"] + net["b2"]  # (B, D)
        per_image = context[None] + bias[:, None]  # (B, M, D)
        embeds = value.embeds
        b = f.shape[0]
        if embeds.ndim == 3:
            embeds = jnp.broadcast_to(embeds, (b, *embeds.shape))
        elif embeds.ndim != 4 or embeds.shape[0] != b:
            raise ValueError(
                f"cocoop: prompt embeddings must be (N, L, D) or ({b}, N, L, D), got {embeds.shape}"
            )
        return value._replace(embeds=_splice(embeds, per_image[:, None]))

    return SiteHook(init_fn, apply, sites=selector)
