"""Visual prompts in input space: padding, watermarks, pad prompters, patches, fixed patterns.

Every factory returns a :class:`jaxreprog.InputTransform` whose
``apply(theta, x, spec, key=None)`` takes a batch of ``[0, 1]`` NHWC images
(grayscale ``C = 1`` is repeated to ``spec.channels``) and returns the frozen
model's input: the canvas of ``spec.size`` after ``spec.normalize``. Where a
method adds its prompt is part of its definition (before or after the model's
normalisation) and is stated in each docstring.

``visualize(theta, spec)`` returns the prompt as an ``spec.shape`` image in
``[0, 1]``: the method applied to a uniform grey (0.5) target image, mapped
back to pixel units and clipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.core import ImageSpec, InputTransform
from jaxreprog.input import _checks
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = [
    "elsayed",
    "fixed",
    "full",
    "pad",
    "pad_prompter",
    "patch",
    "random_patch",
    "watermark",
]

Array = jax.Array
Size = int | tuple[int, int]


def _offsets(image: tuple[int, int], canvas: tuple[int, int], who: str) -> tuple[int, int]:
    """Top/left offsets of an ``image`` centred in ``canvas``: ``⌊(S − s + 1) / 2⌋`` per axis."""
    if image[0] > canvas[0] or image[1] > canvas[1] or image == canvas:
        raise ValueError(
            f"{who}: target_size={image} must be smaller than the model's canvas spec.size={canvas} "
            "(at least one side strictly smaller, none larger)"
        )
    return (canvas[0] - image[0] + 1) // 2, (canvas[1] - image[1] + 1) // 2


def _init_array(key: jax.Array, shape: tuple[int, ...], init: str) -> Array:
    if init == "zero":
        return jnp.zeros(shape, jnp.float32)
    return jax.random.normal(key, shape, jnp.float32)


# ------------------------------------------------------------------ padding VR


def _padded(x: Array, size: tuple[int, int], spec: ImageSpec, who: str) -> tuple[Array, Array]:
    """Zero-pad the target images into the canvas; also return the border mask M."""
    top, left = _offsets(size, spec.size, who)
    (hh, ww), (h, w) = spec.size, size
    canvas = jnp.pad(x, ((0, 0), (top, hh - h - top), (left, ww - w - left), (0, 0)))
    return canvas, _checks.border_mask(spec.size, top, left, size, x.dtype)


@register(
    paper="Elsayed et al. ICLR 2019; Chen et al. CVPR 2023 (ILM-VP)",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def pad(target_size: Size, *, init: str = "zero") -> InputTransform:
    """Padding visual reprogramming: the target image in the middle, a learned border around it.

    ILM-VP (Chen et al. 2023, after Elsayed et al. 2019)::

        x' = normalize(pad(x) + sigmoid(δ) ⊙ M)

    ``pad`` zero-pads the ``[0, 1]`` image of size ``target_size`` = (h, w) into
    the model's canvas ``spec.size`` = (H, W), left/top offset ``⌊(S − s + 1)/2⌋``;
    ``M`` is 1 on the border and 0 over the image, so the image region is passed
    through exactly and gets no gradient. ``normalize`` is the model's own
    (``spec.normalize``), applied *after* adding. ``δ`` has shape ``spec.shape``.

    Args:
      target_size: the target images' size, an int or (h, w); smaller than the
        canvas on at least one side and larger on none.
      init: ``"zero"`` (default: the border starts grey, sigmoid(0) = 0.5) or
        ``"normal"`` (δ ~ N(0, 1), ILM-VP's ``randn`` option).

    ``visualize(theta, spec)``: sigmoid(δ) on the border, grey (0.5) over the image.

    Example::

        >>> program = jr.reprogram(model, input=jr.input.pad(target_size=28), output=jr.output.ilm(...))
    """
    size = _checks.pair(target_size, "pad: target_size")
    _checks.choice(init, "pad: init", ("zero", "normal"))

    def init_fn(key, spec):
        spec = _checks.image_spec(spec, "pad")
        _offsets(size, spec.size, "pad")
        return {"delta": _init_array(key, spec.shape, init)}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = _checks.image_spec(spec, "pad")
        x = _checks.image_batch(x, "pad", spec, size=size)
        delta = _checks.leaf_shape(theta, "delta", spec.shape, "pad")
        canvas, mask = _padded(x, size, spec, "pad")
        return spec.normalize(canvas + jax.nn.sigmoid(delta) * mask)

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, (*size, spec.channels))

    return InputTransform(init_fn, apply, visualize=visualize)


@register(
    paper="Elsayed et al. ICLR 2019",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def elsayed(target_size: Size, *, l2: float = 0.0, init: str = "zero") -> InputTransform:
    """Adversarial reprogramming in its original form: ``X_adv = X̃ + tanh(W ⊙ M)``.

    Elsayed et al. 2019 write the program ``P = tanh(W ⊙ M)`` in the
    model's ``[−1, 1]`` input units, where ``X̃`` is the target image zero-padded
    (0 = mid-grey) and training adds ``λ ‖W‖²_F`` to the loss. In jaxreprog's
    ``[0, 1]`` pixel units the same map reads::

        x' = normalize(pad(x) + M ⊙ (1 + tanh W) / 2)

    (the border spans the model's full range around mid-grey; the image region is
    exact). ``pad`` and ``M`` are as in :func:`pad`. ``penalty(theta) = l2 ‖W‖²_F``
    when ``l2 > 0``.

    Args:
      target_size: the target images' size, an int or (h, w).
      l2: λ, the weight of the ``‖W‖²_F`` penalty (0 disables it).
      init: ``"zero"`` (default; the paper does not state W's initialisation) or
        ``"normal"``.
    """
    size = _checks.pair(target_size, "elsayed: target_size")
    _checks.choice(init, "elsayed: init", ("zero", "normal"))
    if not l2 >= 0:
        raise ValueError(f"elsayed: l2 must be >= 0, got {l2}")

    def init_fn(key, spec):
        spec = _checks.image_spec(spec, "elsayed")
        _offsets(size, spec.size, "elsayed")
        return {"w": _init_array(key, spec.shape, init)}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = _checks.image_spec(spec, "elsayed")
        x = _checks.image_batch(x, "elsayed", spec, size=size)
        w = _checks.leaf_shape(theta, "w", spec.shape, "elsayed")
        canvas, mask = _padded(x, size, spec, "elsayed")
        return spec.normalize(canvas + mask * (0.5 + 0.5 * jnp.tanh(w)))

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, (*size, spec.channels))

    def penalty(theta):
        return l2 * jnp.sum(jnp.square(theta["w"]))

    return InputTransform(init_fn, apply, visualize=visualize, penalty=penalty if l2 > 0 else None)


# -------------------------------------------------------------- watermark VR

_NAMED_WIDTHS = {"narrow": 28, "medium": 56}  # pixels at a 224 px canvas (Cai et al. 2024)


def _watermark(name: str, mask_of, interpolation: str) -> InputTransform:
    """The shared body of :func:`watermark` and :func:`full`; ``mask_of(spec) -> (H, W, 1)``."""
    _checks.choice(interpolation, f"{name}: interpolation", _checks.INTERPOLATIONS)

    def init_fn(key, spec):
        del key
        spec = _checks.image_spec(spec, name)
        mask_of(spec)
        return {"delta": jnp.zeros(spec.shape, jnp.float32)}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = _checks.image_spec(spec, name)
        x = _checks.image_batch(x, name, spec)
        delta = _checks.leaf_shape(theta, "delta", spec.shape, name)
        x = spec.normalize(_checks.resize(x, spec.size, interpolation))
        return x + delta * mask_of(spec).astype(x.dtype)

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, spec.shape)

    return InputTransform(init_fn, apply, visualize=visualize)


@register(
    paper="Cai et al. NeurIPS 2024 (BLM); Cai et al. ICML 2024 (SMM)",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def watermark(width: str | Size = "narrow", *, interpolation: str = "linear") -> InputTransform:
    """Watermark VR: resize the image to the canvas, normalise, add a masked pattern.

    ::

        x' = normalize(resize(x)) + δ ⊙ M

    ``M`` is 1 on a border of ``width`` pixels around the canvas and 0 inside;
    δ (shape ``spec.shape``, zero-initialised) lives in the model's normalised
    units, as in BLM's ``WatermarkingVR``.

    Args:
      width: ``"narrow"`` (28 px at a 224 px canvas) or ``"medium"`` (56 px), both
        scaled with the canvas side (rounded), or an int or (h, w): pixels at the
        canvas (h rows at the top and bottom, w columns at the left and right).
        At most half of each canvas side; half covers everything (see :func:`full`).
      interpolation: ``jax.image.resize`` method used when the image is not
        already the canvas size (antialiased).
    """
    if isinstance(width, str):
        base = _checks.choice(width, "watermark: width", tuple(_NAMED_WIDTHS))

        def width_of(spec):
            return tuple(max(1, round(_NAMED_WIDTHS[base] * s / 224)) for s in spec.size)

    else:
        px = _checks.pair(width, "watermark: width")

        def width_of(spec):
            return px

    def mask_of(spec):
        (hh, ww), (bh, bw) = spec.size, width_of(spec)
        if 2 * bh > hh or 2 * bw > ww:
            raise ValueError(
                f"watermark: width={(bh, bw)} is too wide for the canvas spec.size={spec.size} "
                "(at most half of each side)"
            )
        return _checks.border_mask(spec.size, bh, bw, (hh - 2 * bh, ww - 2 * bw))

    return _watermark("watermark", mask_of, interpolation)


@register(
    paper="Cai et al. NeurIPS 2024 (BLM); Cai et al. ICML 2024 (SMM)",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def full(*, interpolation: str = "linear") -> InputTransform:
    """Full watermark VR: ``x' = normalize(resize(x)) + δ`` (``M`` all ones, δ zero-initialised).

    Args:
      interpolation: ``jax.image.resize`` method (antialiased) for the resize to ``spec.size``.
    """
    return _watermark("full", lambda spec: jnp.ones((*spec.size, 1), jnp.float32), interpolation)


# ------------------------------------------------- Bahng et al. 2022 prompts


def _prepare(x: Array, spec: ImageSpec, who: str, interpolation: str) -> Array:
    """Validate, resize to the canvas and normalise: where Bahng et al.'s prompts are added."""
    x = _checks.image_batch(x, who, spec)
    return spec.normalize(_checks.resize(x, spec.size, interpolation))


@register(
    paper="Bahng et al. 2022",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def pad_prompter(width: int = 30, *, interpolation: str = "linear") -> InputTransform:
    """Bahng et al. 2022 ("Exploring Visual Prompts for Adapting Large-Scale Models"), padding prompt.

    ::

        x' = normalize(resize(x)) + [top; left | 0 | right; bottom]

    Four learned strips of ``width`` pixels frame the canvas (top and bottom
    ``(p, W, C)``, left and right ``(H − 2p, p, C)``), initialised N(0, 1) and added
    to the *normalised* image (the paper uses p = 30 at 224 px).

    Args:
      width: p, the strips' width in canvas pixels (``2p`` < each canvas side).
      interpolation: ``jax.image.resize`` method (antialiased) for the resize to ``spec.size``.
    """
    if np.ndim(width) != 0:  # one p for all four strips, as in the paper
        raise TypeError(f"pad_prompter: width must be one int (the strips' width), got {width!r}")
    p = _checks.pair(width, "pad_prompter: width")[0]
    _checks.choice(interpolation, "pad_prompter: interpolation", _checks.INTERPOLATIONS)

    def shapes(spec):
        (hh, ww), c = spec.size, spec.channels
        if 2 * p >= min(hh, ww):
            raise ValueError(f"pad_prompter: width={p} needs 2 * width < each side of spec.size={spec.size}")
        return {
            "top": (p, ww, c),
            "bottom": (p, ww, c),
            "left": (hh - 2 * p, p, c),
            "right": (hh - 2 * p, p, c),
        }

    def init_fn(key, spec):
        spec = _checks.image_spec(spec, "pad_prompter")
        keys = dict(zip(("top", "bottom", "left", "right"), jax.random.split(key, 4)))
        return {k: jax.random.normal(keys[k], s, jnp.float32) for k, s in shapes(spec).items()}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = _checks.image_spec(spec, "pad_prompter")
        x = _prepare(x, spec, "pad_prompter", interpolation)
        t = {k: _checks.leaf_shape(theta, k, s, "pad_prompter") for k, s in shapes(spec).items()}
        hole = jnp.zeros((spec.size[0] - 2 * p, spec.size[1] - 2 * p, spec.channels), t["left"].dtype)
        middle = jnp.concatenate([t["left"], hole, t["right"]], axis=1)
        return x + jnp.concatenate([t["top"], middle, t["bottom"]], axis=0)

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, spec.shape)

    return InputTransform(init_fn, apply, visualize=visualize)


def _patch_shape(size: tuple[int, int], spec: ImageSpec, who: str) -> tuple[int, int, int]:
    if size[0] > spec.size[0] or size[1] > spec.size[1]:
        raise ValueError(f"{who}: size={size} is larger than the canvas spec.size={spec.size}")
    return (*size, spec.channels)


@register(
    paper="Bahng et al. 2022",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def patch(
    size: Size = 30, *, position: tuple[int, int] = (0, 0), interpolation: str = "linear"
) -> InputTransform:
    """Bahng et al. 2022, fixed-location patch: a learned ``size`` patch added at ``position``.

    ::

        x' = normalize(resize(x)) + P_{position}(ψ)

    ψ ~ N(0, 1) of shape (h, w, C) is added to the normalised image at the
    (row, col) ``position`` (the paper's top-left corner by default).

    Args:
      size: the patch's size in canvas pixels, an int or (h, w).
      position: (row, col) of the patch's top-left corner on the canvas.
      interpolation: ``jax.image.resize`` method (antialiased) for the resize to ``spec.size``.
    """
    hw = _checks.pair(size, "patch: size")
    row, col = _checks.position(position, "patch: position")
    _checks.choice(interpolation, "patch: interpolation", _checks.INTERPOLATIONS)

    def shape(spec):
        s = _patch_shape(hw, spec, "patch")
        if not (0 <= row <= spec.size[0] - hw[0] and 0 <= col <= spec.size[1] - hw[1]):
            raise ValueError(
                f"patch: position={(row, col)} puts a {hw} patch outside the canvas spec.size={spec.size}"
            )
        return s

    def init_fn(key, spec):
        spec = _checks.image_spec(spec, "patch")
        return {"patch": jax.random.normal(key, shape(spec), jnp.float32)}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = _checks.image_spec(spec, "patch")
        psi = _checks.leaf_shape(theta, "patch", shape(spec), "patch")
        x = _prepare(x, spec, "patch", interpolation)
        return x.at[:, row : row + hw[0], col : col + hw[1], :].add(psi.astype(x.dtype))

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, spec.shape)

    return InputTransform(init_fn, apply, visualize=visualize)


@register(
    paper="Bahng et al. 2022",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def random_patch(size: Size = 30, *, interpolation: str = "linear") -> InputTransform:
    """Bahng et al. 2022, random-location patch: the learned patch lands somewhere new each call.

    ::

        (i, j) ~ U{0..H−h} × U{0..W−w} from ``key``;   x' = normalize(resize(x)) + P_{(i, j)}(ψ)

    One location per call (per batch, as in the reference), drawn from the PRNG
    ``key`` passed to ``apply``, which is therefore required: the same key gives the
    same output. Every valid position is reachable, including the last row and
    column (the reference's ``np.random.choice(S − p)`` never reaches them).

    Args:
      size: the patch's size in canvas pixels, an int or (h, w).
      interpolation: ``jax.image.resize`` method (antialiased) for the resize to ``spec.size``.

    ``visualize(theta, spec)`` shows the patch at the canvas centre.
    """
    hw = _checks.pair(size, "random_patch: size")
    _checks.choice(interpolation, "random_patch: interpolation", _checks.INTERPOLATIONS)

    def init_fn(key, spec):
        spec = _checks.image_spec(spec, "random_patch")
        return {"patch": jax.random.normal(key, _patch_shape(hw, spec, "random_patch"), jnp.float32)}

    def place(theta, x, spec, corner):
        psi = _checks.leaf_shape(theta, "patch", _patch_shape(hw, spec, "random_patch"), "random_patch")
        x = _prepare(x, spec, "random_patch", interpolation)
        prompt = jax.lax.dynamic_update_slice(
            jnp.zeros(spec.shape, x.dtype), psi.astype(x.dtype), (*corner, 0)
        )
        return x + prompt

    def apply(theta, x, spec, *, key=None):
        spec = _checks.image_spec(spec, "random_patch")
        if key is None:
            raise ValueError(
                "random_patch: apply needs a PRNG key (key=...) to draw the patch location; "
                "pass one to program.apply(theta, params, x, key)"
            )
        limits = jnp.array([spec.size[0] - hw[0] + 1, spec.size[1] - hw[1] + 1])
        corner = jax.random.randint(key, (2,), 0, limits)
        return place(theta, x, spec, (corner[0], corner[1]))

    def visualize(theta, spec):
        spec = _checks.image_spec(spec, "random_patch")
        centre = ((spec.size[0] - hw[0]) // 2, (spec.size[1] - hw[1]) // 2)
        return _checks.render(lambda t, x, s: place(t, x, s, centre), theta, spec, spec.shape)

    return InputTransform(init_fn, apply, visualize=visualize)


# --------------------------------------------------------------- fixed prompts


@register(
    paper="hand-designed; e.g. Shtedritski et al. ICCV 2023",
    modality="vision",
    format=Format.FIXED,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def fixed(
    pattern: Array, mask: Array | None = None, *, mode: str = "add", interpolation: str = "linear"
) -> InputTransform:
    """A fixed, hand-designed visual prompt: a given pattern on the canvas; nothing is learned.

    In ``[0, 1]`` pixel units, on the image resized to the canvas::

        mode="add":    x' = normalize(resize(x) + M ⊙ pattern)
        mode="paste":  x' = normalize(resize(x) ⊙ (1 − M) + M ⊙ pattern)

    "paste" draws an overlay (a red circle, a box, a frame); "add" applies a
    saved perturbation (e.g. a trained δ frozen for evaluation). ``theta`` is
    ``()``; the pattern is part of the method's definition.

    Args:
      pattern: ``(H, W, C)`` or ``(H, W, 1)`` array at the canvas size ``spec.size``.
      mask: ``(H, W)``, ``(H, W, 1)`` or ``(H, W, C)`` weights in [0, 1]; default all
        ones for ``"add"``; required for ``"paste"``.
      mode: ``"add"`` or ``"paste"``.
      interpolation: ``jax.image.resize`` method (antialiased) for the resize to ``spec.size``.
    """
    _checks.choice(mode, "fixed: mode", ("add", "paste"))
    _checks.choice(interpolation, "fixed: interpolation", _checks.INTERPOLATIONS)
    pattern = jnp.asarray(pattern)
    if pattern.ndim == 2:
        pattern = pattern[..., None]
    if pattern.ndim != 3 or not jnp.issubdtype(pattern.dtype, jnp.floating):
        raise ValueError(
            f"fixed: pattern must be a float array (H, W, C), "
            f"got shape {pattern.shape}, dtype {pattern.dtype}"
        )
    if mask is None:
        if mode == "paste":
            raise ValueError("fixed: mode='paste' needs a mask (H, W) saying where to paste the pattern")
        mask = jnp.ones(pattern.shape[:2] + (1,), pattern.dtype)
    mask = jnp.asarray(mask, pattern.dtype)
    if mask.ndim == 2:
        mask = mask[..., None]
    if mask.shape[:2] != pattern.shape[:2] or mask.shape[-1] not in (1, pattern.shape[-1]):
        raise ValueError(f"fixed: mask shape {mask.shape} does not match pattern shape {pattern.shape}")
    if not (float(jnp.min(mask)) >= 0 and float(jnp.max(mask)) <= 1):  # NaN fails too
        raise ValueError("fixed: mask values must lie in [0, 1] (no NaN)")
    if not bool(jnp.all(jnp.isfinite(pattern))):
        raise ValueError("fixed: pattern has NaN/inf values")

    def check(spec):
        spec = _checks.image_spec(spec, "fixed")
        if pattern.shape[:2] != spec.size or pattern.shape[-1] not in (1, spec.channels):
            raise ValueError(
                f"fixed: pattern has shape {pattern.shape}; expected the canvas (H, W, C) = {spec.shape} "
                "(or C = 1)"
            )
        return spec

    def init_fn(key, spec):
        del key
        check(spec)
        return ()

    def apply(theta, x, spec, *, key=None):
        del theta, key
        spec = check(spec)
        x = _checks.resize(_checks.image_batch(x, "fixed", spec), spec.size, interpolation)
        p, m = pattern.astype(x.dtype), mask.astype(x.dtype)
        x = x + m * p if mode == "add" else x * (1 - m) + m * p
        return spec.normalize(x)

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, check(spec).shape)

    return InputTransform(init_fn, apply, trainable=False, visualize=visualize)
