"""1-D reprogramming of frozen audio / time-series models (Voice2Series)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import InputTransform
from jaxreprog.input import _checks
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["sequence_pad"]


@register(
    paper="Yang et al. ICML 2021 (Voice2Series)",
    modality="audio/time-series",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE,
)
def sequence_pad(target_length: int, *, l2: float = 0.0, init: str = "zero") -> InputTransform:
    """Voice2Series (Yang et al. 2021): pad a target series to the model's length, add a masked program.

    ::

        x' = normalize(pad(x) + M ⊙ θ)

    ``pad`` zero-pads the target series ``(N, T)`` or ``(N, T, C)`` (values in
    ``spec.value_range``) to the frozen model's ``spec.length`` L, centred with
    ``⌊(L − T)/2⌋`` samples before it as in the reference; ``M`` is 1 outside the
    target's span and 0 on it; θ has shape ``(L, spec.channels)``. ``normalize`` is
    ``spec.normalize``. ``penalty(theta) = l2 ‖θ‖²`` when ``l2 > 0`` (the reference
    trains with an L2 weight of 0.05).

    Args:
      target_length: T, the target series' length (``T < spec.length``).
      l2: weight of the ``‖θ‖²`` penalty (0 disables it).
      init: ``"zero"`` (default) or ``"normal"`` (θ ~ N(0, 0.01²)).

    ``visualize(theta, spec)`` returns ``(L, channels)``: the program applied to a
    quiet target (0, or the end of ``spec.value_range`` nearest 0), mapped from
    ``spec.value_range`` to [0, 1] and clipped.
    """
    target_length = checking.integer(target_length, "target_length", who="sequence_pad")
    _checks.choice(init, "sequence_pad: init", ("zero", "normal"))
    if not l2 >= 0:
        raise ValueError(f"sequence_pad: l2 must be >= 0, got {l2}")

    def layout(spec):
        if target_length >= spec.length:
            raise ValueError(
                f"sequence_pad: target_length={target_length} must be smaller than spec.length={spec.length}"
            )
        return (spec.length - target_length) // 2

    def init_fn(key, spec):
        spec = _checks.sequence_spec(spec, "sequence_pad")
        layout(spec)
        shape = (spec.length, spec.channels)
        if init == "zero":
            return {"delta": jnp.zeros(shape, jnp.float32)}
        return {"delta": 0.01 * jax.random.normal(key, shape, jnp.float32)}

    def apply(theta, x, spec, *, key=None):
        del key
        spec = _checks.sequence_spec(spec, "sequence_pad")
        x = _checks.sequence_batch(x, "sequence_pad", spec, length=target_length)
        delta = _checks.leaf_shape(theta, "delta", (spec.length, spec.channels), "sequence_pad")
        before = layout(spec)
        canvas = jnp.pad(x, ((0, 0), (before, spec.length - target_length - before), (0, 0)))
        steps = jax.lax.broadcasted_iota(jnp.int32, (spec.length, 1), 0)
        mask = jnp.where((steps >= before) & (steps < before + target_length), 0, 1).astype(x.dtype)
        return spec.normalize(canvas + mask * delta)

    def visualize(theta, spec):
        spec = _checks.sequence_spec(spec, "sequence_pad")
        lo, hi = spec.value_range
        quiet = jnp.full((1, target_length, spec.channels), min(max(0.0, lo), hi), jnp.float32)
        out = apply(theta, quiet, spec)[0] * spec.std + spec.mean
        return jnp.clip((out - lo) / (hi - lo), 0.0, 1.0)

    def penalty(theta):
        return l2 * jnp.sum(jnp.square(theta["delta"]))

    return InputTransform(init_fn, apply, visualize=visualize, penalty=penalty if l2 > 0 else None)
