"""AutoVP's input transformation: a trainable resize, then a padding prompt."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreprog.core import InputTransform
from jaxreprog.input import _checks
from jaxreprog.input.visual import Size, _offsets
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["resize_pad"]

SCALE_RANGE = (0.1, 5.0)  # AutoVP clamps the scale to this range after every step


@register(
    paper="Tsao et al. ICLR 2024 (AutoVP)",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE | Operator.PARAMETRIC,
)
def resize_pad(
    target_size: Size, *, init_scale: float = 1.0, interpolation: str = "linear", zoom: str = "canvas"
) -> InputTransform:
    """AutoVP (Tsao et al. 2024, "input transformation"): a learned zoom, then padding VR on the border.

    ::

        x̂  = scale_s(pad(x))                       (zoom about the canvas centre)
        x' = normalize(x̂ + sigmoid(δ) ⊙ M_s)

    ``pad`` centres the target image in the zero canvas as in :func:`~jaxreprog.input.pad`;
    ``scale_s`` zooms that *padded canvas* by the learned scalar ``s`` about its centre
    through ``jax.image.scale_and_translate`` (bilinear, no antialiasing, differentiable in
    ``s``), so the image's edge pixels blend with the zero padding, as in the reference.
    ``zoom="image"`` resamples the unpadded image instead (edge pixels keep their full
    intensity; the form before 0.2). As in the reference, ``s`` is clamped to ``[0.1, 5]``
    after every optimiser step: the transform's ``project`` (projected gradient descent),
    which :func:`jaxreprog.train.make_step` and ``fit`` apply. The zoom used is also
    ``clip(s, 0.1, 5)`` (with the gradient of ``s`` itself, so ``s`` on the boundary can move
    back as in the reference): a no-op under those trainers, a guard in a loop of your own.
    ``M_s`` is 0 on exactly the pixels that read the scaled image
    (centre inside ``[t, t + s·h] × [t', t' + s·w]``, the image's edges after the zoom;
    read off the same resampling of an all-ones image) and 1 elsewhere; like the
    reference it carries no gradient to ``s``. (The
    reference's mask, a ``⌊s·h⌋ × ⌊s·w⌋`` rectangle at ``⌊(H − ⌊s·h⌋)/2⌋``, is not
    placed from the zoomed image's edges and can be off from it by a pixel.) At ``s = 1``
    this is :func:`~jaxreprog.input.pad`.

    ``theta = {"scale": s, "delta": δ}``, ``s = init_scale`` (AutoVP: 1.0), δ = 0.
    ``s`` is used as is (no reparameterisation), as in the reference: keep it positive.

    Args:
      target_size: the target images' size, an int or (h, w).
      init_scale: initial zoom factor s.
      interpolation: ``"linear"`` (AutoVP uses bilinear), ``"cubic"`` or
        ``"lanczos3"``, ``"lanczos5"`` (antialiased when shrinking).
    """
    size = _checks.pair(target_size, "resize_pad: target_size")
    lo, hi = SCALE_RANGE
    if not lo <= init_scale <= hi:
        raise ValueError(f"resize_pad: init_scale must lie in [{lo}, {hi}] (AutoVP), got {init_scale}")
    _checks.choice(zoom, "resize_pad: zoom", ("canvas", "image"))
    method = {"bilinear": "linear", "bicubic": "cubic"}.get(interpolation, interpolation)
    _checks.choice(method, "resize_pad: interpolation", ("linear", "cubic", "lanczos3", "lanczos5"))

    def init_fn(key, spec):
        del key
        spec = _checks.image_spec(spec, "resize_pad")
        _offsets(size, spec.size, "resize_pad")
        return {"scale": jnp.asarray(init_scale, jnp.float32), "delta": jnp.zeros(spec.shape, jnp.float32)}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = _checks.image_spec(spec, "resize_pad")
        x = _checks.image_batch(x, "resize_pad", spec, size=size)
        s = _checks.leaf_shape(theta, "scale", (), "resize_pad").astype(x.dtype)
        s = s + jax.lax.stop_gradient(jnp.clip(s, lo, hi) - s)  # the gradient of s itself, as the reference
        delta = _checks.leaf_shape(theta, "delta", spec.shape, "resize_pad")
        top, left = _offsets(size, spec.size, "resize_pad")
        (hh, ww), (h, w) = spec.size, size
        # Continuous coordinates (pixel centres at i + 0.5): an input coordinate u lands on
        # the canvas at u + offset, then the zoom about the centre c maps v to (v - c) s + c.
        pads = ((0, 0), (top, hh - h - top), (left, ww - w - left), (0, 0))
        if zoom == "canvas":  # the reference: resample the zero-padded canvas
            x, top, left = jnp.pad(x, pads), 0, 0
        translation = jnp.stack([(top - hh / 2) * s + hh / 2, (left - ww / 2) * s + ww / 2])
        antialias = method != "linear"  # AutoVP's bilinear zoom does not antialias
        canvas = jax.image.scale_and_translate(
            x, (x.shape[0], hh, ww, x.shape[-1]), (1, 2), jnp.stack([s, s]), translation,
            method=method, antialias=antialias,
        )  # fmt: skip
        # The same resampling of an all-ones image is 1 where a pixel reads the image (its weights
        # are normalised) and 0 where it reads nothing; M_s is its complement. Taken from the op
        # itself, mask and image agree on every boundary pixel (a separate formula rounded
        # differently under jit and left such pixels reading neither).
        sg, tg = jax.lax.stop_gradient(s), jax.lax.stop_gradient(translation)
        ones = jnp.ones((1, h, w, 1), x.dtype)
        if zoom == "canvas":
            ones = jnp.pad(ones, pads)
        covered = jax.image.scale_and_translate(
            ones, (1, hh, ww, 1), (1, 2), jnp.stack([sg, sg]), tg, method=method, antialias=antialias
        )
        mask = jnp.where(covered[0] > 0.5, 0, 1).astype(x.dtype)
        return spec.normalize(canvas + jax.nn.sigmoid(delta) * mask)

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, (*size, spec.channels))

    def project(theta):
        return {**theta, "scale": jnp.clip(theta["scale"], lo, hi)}

    return InputTransform(init_fn, apply, visualize=visualize, project=project)
