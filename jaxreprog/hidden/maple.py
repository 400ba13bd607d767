"""Coupled and independent vision-language prompts in both of CLIP's towers: MaPLe and IVLP.

MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023) learns ``b`` text prompt tokens
``P_i ∈ R^{b×d_l}`` at the input of each of the first ``J`` text layers and derives the vision prompts from
them through a learned linear coupling per layer, ``P̃_i = F_i(P_i) = P_i W_i + c_i`` (``d_l → d_v``)::

    [_, W_{i+1}]          = L_i([P_i, W_i])             i < J    (text; layer i's prompts replace i-1's)
    [c_{i+1}, E_{i+1}, _] = V_i([c_i, E_i, F_i(P_i)])   i < J    (vision)

and later layers run on what the previous layer made of the prompts. The paper writes the text prompts
first; in its reference code (muzairkhattak/multimodal-prompt-learning), followed here, ``P_0`` takes the
``b`` token embeddings right after SOS of every class prompt (CoOp's context,
:func:`jaxreprog.embedding.coop`) and each deeper ``P_i`` replaces those ``b`` positions; the vision
prompts are appended after the patch tokens (after the position embeddings, before the pre-LayerNorm)
and each deeper ``P̃_i`` replaces the last ``b`` tokens. Defaults as in the paper's base-to-novel runs:
``b = 2``, ``J = 9``, ``P_0`` from the embeddings of "a photo" in the template "a photo of a {class}."
(pass ``init``), deeper ``P_i ~ N(0, 0.02²)``; each ``F_i`` starts as PyTorch's ``nn.Linear``
(``U(±1/√d_l)``), and, as in the reference, ``F_1 .. F_{J-1}`` start as
copies of one draw (``F_0`` is drawn on its own).

IVLP (independent V-L prompting; Rasheed et al., "Fine-tuned CLIP Models are Efficient Video Learners",
CVPR 2023, and MaPLe's baseline) places the same deep text prompts, and deep vision prompts
``P̃_i ~ N(0, 0.02²)`` learned on their own: no coupling.

One :class:`~jaxreprog.SiteHook` acts at both towers' sites (the coupling ties them: a chain of two hooks
could not share ``P_i``): ``"text/embeddings"`` and ``"text/layer_{i}/input"``, ``"vision/embeddings"`` and
``"vision/layer_{i}/input"`` of :func:`jaxreprog.models.clip.classifier`. The class prompts need ``b`` tokens
between SOS and the class name to be overwritten (placeholders "X X {class}." or a template).

Example::

    >>> ids, eot = clip.tokenize(tokenizer, [f"a photo of a {c}." for c in names])
    >>> model = clip.classifier(module, params, ids, eot)
    >>> init = clip.token_embeddings(params, ids[0, 1:3])          # "a photo"
    >>> program = jr.reprogram(model, hidden=jr.hidden.maple(init=init))
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking
from jaxreprog.core import SiteHook, Spec
from jaxreprog.embedding.coop import _check_site, _splice
from jaxreprog.hooks import Selector, select
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["ivlp", "maple"]

Array = jax.Array
PromptAt = Callable[[Any, int], Array]  # (theta, layer) -> that layer's (b, width) prompts


def _towers(towers: Sequence[str], who: str) -> tuple[str, str]:
    if (
        isinstance(towers, str)
        or len(towers) != 2
        or not all(isinstance(t, str) and t for t in towers)
        or towers[0] == towers[1]
    ):
        raise ValueError(
            f"{who}: towers must be two distinct module paths (text, vision), e.g. ('text', 'vision'), "
            f"got {towers!r}"
        )
    return towers[0], towers[1]


def _size(spec: Spec, field: str, who: str) -> int:
    value = getattr(spec, field, 0)
    if not isinstance(value, int) or value <= 0:
        raise ValueError(
            f"{who}: needs the CLIP classifier's {field}; the spec {type(spec).__name__} does not carry it "
            "(jaxreprog.models.clip.classifier gives a CLIPSpec that does)"
        )
    return value


def _check_depth(spec: Spec, text_depth: int, vision_depth: int, who: str) -> tuple[int, int]:
    """The towers' widths ``(d_l, d_v)``, after checking that the prompted depths fit the towers."""
    text_layers, vision_layers = _size(spec, "text_layers", who), _size(spec, "num_layers", who)
    for arg, depth, layers, tower in (
        ("depth", text_depth, text_layers, "text"),
        ("vision_depth", vision_depth, vision_layers, "vision"),
    ):
        if depth > layers:
            raise ValueError(
                f"{who}: {arg}={depth} prompts more layers than the {tower} tower has ({layers}); "
                f"the model's towers have {text_layers} (text) and {vision_layers} (vision) layers"
            )
    return _size(spec, "text_width", who), _size(spec, "hidden_size", who)


def _first_prompt(key: Array, init: Any, length: int, width: int, std: float, who: str) -> Array:
    if init is None:
        return std * jax.random.normal(key, (length, width), jnp.float32)
    init = jnp.asarray(init, jnp.float32)
    if init.shape != (length, width):
        raise ValueError(
            f"{who}: init must be ({length}, {width}) (length, the text width), got {init.shape}"
        )
    return init


def _check_init(init: Any, length: int, who: str) -> None:
    if init is not None and (np.ndim(init) != 2 or np.shape(init)[0] != length):
        raise ValueError(f"{who}: init must have shape ({length}, D), got {np.shape(init)}")


def _hook(
    who: str,
    towers: tuple[str, str],
    lengths: tuple[int, int],
    text_prompt: PromptAt,
    vision_prompt: PromptAt,
    depths: Callable[[Any], tuple[int, int]],
) -> tuple[Selector, Callable]:
    """The selector and ``apply`` shared by both methods: where each tower's prompts go.

    Text: layer 0's prompts overwrite the ``b`` embeddings after SOS; layer ``i``'s replace those positions
    in layer ``i``'s input. Vision: layer 0's are appended to the embedded tokens; layer ``i``'s replace the
    last ``b`` tokens of its input. Layers at or past a tower's depth are left alone.
    """
    text, vision = towers
    b_text, b_vision = lengths
    layers = select((f"{text}/layer_*/input", f"{vision}/layer_*/input"))
    selector = select((f"{text}/embeddings", f"{vision}/embeddings", *layers.patterns))

    def apply(theta, site, value, spec):
        del spec
        text_depth, vision_depth = depths(theta)
        if site == f"{text}/embeddings":
            prompt = text_prompt(theta, 0)
            _check_site(site, value, prompt, who)
            return value._replace(embeds=_splice(value.embeds, prompt))
        if site == f"{vision}/embeddings":
            prompt = vision_prompt(theta, 0)
            _check_tokens(site, value, prompt, 0, who)
            tokens = jnp.broadcast_to(prompt.astype(value.dtype), (*value.shape[:-2], *prompt.shape))
            return jnp.concatenate([value, tokens], axis=-2)
        i = layers.layer(site)
        if i is None or i == 0:
            return value
        if fnmatch.fnmatchcase(site, f"{text}/layer_*/input"):
            if i >= text_depth:
                return value
            prompt = text_prompt(theta, i)
            _check_tokens(site, value, prompt, 1 + b_text, who)
            return _splice(value, prompt)
        if i >= vision_depth:
            return value
        prompt = vision_prompt(theta, i)
        _check_tokens(site, value, prompt, 1 + b_vision, who)
        tokens = jnp.broadcast_to(prompt.astype(value.dtype), (*value.shape[:-2], *prompt.shape))
        return jnp.concatenate([value[..., : -prompt.shape[0], :], tokens], axis=-2)

    return selector, apply


def _check_tokens(site: str, value: Any, prompt: Array, at_least: int, who: str) -> None:
    if not isinstance(value, jax.Array | np.ndarray) or value.ndim < 3 or value.shape[-1] != prompt.shape[-1]:
        got = getattr(value, "shape", type(value).__name__)
        raise ValueError(f"{who}: site {site!r} must carry tokens (..., T, {prompt.shape[-1]}), got {got}")
    if value.shape[-2] < at_least:
        raise ValueError(f"{who}: site {site!r} has {value.shape[-2]} tokens; the prompts need {at_least}")


def _check_stack(theta_leaf: Array, name: str, length: int, who: str) -> None:
    if theta_leaf.ndim != 3 or theta_leaf.shape[1] != length:
        raise ValueError(f"{who}: theta[{name!r}] must be (depth, {length}, width), got {theta_leaf.shape}")


@register(
    paper="Khattak et al. CVPR 2023",
    modality="vision-language",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING | Location.HIDDEN,
    operator=Operator.CONCATENATIVE | Operator.PARAMETRIC,
)
def maple(
    length: int = 2,
    depth: int = 9,
    *,
    init: Any | None = None,
    init_std: float = 0.02,
    towers: Sequence[str] = ("text", "vision"),
) -> SiteHook:
    """MaPLe: text prompts ``P_i`` in the first ``depth`` layers, vision prompts ``F_i(P_i)`` coupled to them.

    ``theta = {"prompts": (J, b, d_l), "coupling": {"kernel": (J, d_l, d_v), "bias": (J, d_v)}}``;
    ``P̃_i = P_i @ kernel[i] + bias[i]``. Only ``P_i`` and ``F_i`` learn; both towers stay frozen.

    Args:
      length: ``b``, prompt tokens per layer and tower (2 in the paper).
      depth: ``J``, the number of prompted layers in each tower (9 in the paper); at most the shallower
        tower's depth (checked at ``init``).
      init: ``(b, d_l)`` initial ``P_0``, e.g. ``clip.token_embeddings(params, ids)`` of the template's
        first ``b`` words; default ``N(0, init_std²)``.
      init_std: standard deviation of the random prompts (0.02).
      towers: the module paths of the text and the vision tower (``("text", "vision")`` in the zoo CLIP).
    """
    length = checking.integer(length, "length", who="maple")
    depth = checking.integer(depth, "depth", who="maple")
    _check_init(init, length, "maple")
    text_tower, vision_tower = _towers(towers, "maple")

    def init_fn(key, spec):
        d_text, d_vision = _check_depth(spec, depth, depth, "maple")
        k0, k_deep, k_w0, k_b0, k_w, k_b = jax.random.split(key, 6)
        first = _first_prompt(k0, init, length, d_text, init_std, "maple")
        deep = init_std * jax.random.normal(k_deep, (depth - 1, length, d_text), jnp.float32)
        bound = 1 / math.sqrt(d_text)

        def uniform(k, shape):
            return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

        kernel = jnp.concatenate(
            [
                uniform(k_w0, (1, d_text, d_vision)),
                jnp.broadcast_to(uniform(k_w, (1, d_text, d_vision)), (depth - 1, d_text, d_vision)),
            ]
        )
        bias = jnp.concatenate(
            [
                uniform(k_b0, (1, d_vision)),
                jnp.broadcast_to(uniform(k_b, (1, d_vision)), (depth - 1, d_vision)),
            ]
        )
        return {"prompts": jnp.concatenate([first[None], deep]), "coupling": {"kernel": kernel, "bias": bias}}

    def checked(theta):
        prompts, coupling = theta["prompts"], theta["coupling"]
        _check_stack(prompts, "prompts", length, "maple")
        j, _, d = prompts.shape
        kernel, bias = coupling["kernel"], coupling["bias"]
        if kernel.ndim != 3 or kernel.shape[:2] != (j, d) or bias.shape != (j, kernel.shape[2]):
            raise ValueError(
                f"maple: theta['coupling'] must be kernel ({j}, {d}, d_v) and bias ({j}, d_v), "
                f"got {kernel.shape} and {bias.shape}"
            )
        return j, j

    def text_prompt(theta, i):
        return theta["prompts"][i]

    def vision_prompt(theta, i):
        coupling = theta["coupling"]
        return theta["prompts"][i] @ coupling["kernel"][i] + coupling["bias"][i]

    selector, apply = _hook(
        "maple", (text_tower, vision_tower), (length, length), text_prompt, vision_prompt, checked
    )
    return SiteHook(init_fn, apply, sites=selector)


@register(
    paper="Rasheed et al. CVPR 2023; Khattak et al. CVPR 2023",
    modality="vision-language",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING | Location.HIDDEN,
    operator=Operator.CONCATENATIVE,
)
def ivlp(
    length: int = 2,
    depth: int = 9,
    *,
    vision_length: int | None = None,
    vision_depth: int | None = None,
    init: Any | None = None,
    init_std: float = 0.02,
    towers: Sequence[str] = ("text", "vision"),
) -> SiteHook:
    """IVLP: deep text prompts ``P_i`` and deep vision prompts ``P̃_i``, learned independently.

    ``theta = {"text": (J, b, d_l), "vision": (J_v, b_v, d_v)}``, placed as MaPLe's (module docstring).
    The reference config prompts 12 layers of each tower with 2 tokens; the default here is MaPLe's
    ``J = 9``, the depth at which the MaPLe paper compares the two.

    Args:
      length: ``b``, text prompt tokens per layer (2).
      depth: ``J``, prompted text layers (9); at most the text tower's depth (checked at ``init``).
      vision_length, vision_depth: the same for the vision tower; default ``length`` and ``depth``.
      init: ``(b, d_l)`` initial text ``P_0`` (e.g. the embeddings of "a photo"); default
        ``N(0, init_std²)``, as are all other prompts.
      init_std: standard deviation of the random prompts (0.02).
      towers: the module paths of the text and the vision tower.
    """
    length = checking.integer(length, "length", who="ivlp")
    depth = checking.integer(depth, "depth", who="ivlp")
    b_vision = (
        length if vision_length is None else checking.integer(vision_length, "vision_length", who="ivlp")
    )
    j_vision = depth if vision_depth is None else checking.integer(vision_depth, "vision_depth", who="ivlp")
    _check_init(init, length, "ivlp")
    text_tower, vision_tower = _towers(towers, "ivlp")

    def init_fn(key, spec):
        d_text, d_vision = _check_depth(spec, depth, j_vision, "ivlp")
        k0, k_text, k_vision = jax.random.split(key, 3)
        first = _first_prompt(k0, init, length, d_text, init_std, "ivlp")
        deep = init_std * jax.random.normal(k_text, (depth - 1, length, d_text), jnp.float32)
        vision = init_std * jax.random.normal(k_vision, (j_vision, b_vision, d_vision), jnp.float32)
        return {"text": jnp.concatenate([first[None], deep]), "vision": vision}

    def checked(theta):
        _check_stack(theta["text"], "text", length, "ivlp")
        _check_stack(theta["vision"], "vision", b_vision, "ivlp")
        return theta["text"].shape[0], theta["vision"].shape[0]

    def text_prompt(theta, i):
        return theta["text"][i]

    def vision_prompt(theta, i):
        return theta["vision"][i]

    selector, apply = _hook(
        "ivlp", (text_tower, vision_tower), (length, b_vision), text_prompt, vision_prompt, checked
    )
    return SiteHook(init_fn, apply, sites=selector)
