"""BlackVIP's coordinator: an input-dependent visual prompt (Oh et al. CVPR 2023)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxreprog import checking
from jaxreprog.core import InputTransform
from jaxreprog.input import _checks
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["blackvip", "coordinator"]

Array = jax.Array


def _down(x: Array, w: Array) -> Array:
    """2×2 convolution of stride 2 (no bias) as one matmul over the space-to-depth image."""
    n, h, wd, c = x.shape
    blocks = x.reshape(n, h // 2, 2, wd // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return blocks.reshape(n, h // 2, wd // 2, 4 * c) @ w


def _up(x: Array, p: dict[str, Array]) -> Array:
    """2×2 transposed convolution of stride 2 as one matmul, then depth-to-space."""
    n, h, w, _ = x.shape
    out = p["b"].shape[-1]
    y = (x @ p["w"]).reshape(n, h, w, 2, 2, out).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, out) + p["b"]


def coordinator(theta: dict, x: Array) -> Array:
    """The coordinator's prompt ``P = g_ψ([f(x); φ])`` ``(N, H, W, C)`` for normalised images ``x``.

    ``f`` (``theta["encoder"]``, frozen): 2×2 stride-2 convolutions with GELU, a feature map
    ``z (N, H/2^L, W/2^L, F)``. ``g`` (``theta["decoder"]``, learned): ``[z; φ]`` (``φ =
    theta["trigger"]``, the prompt trigger, ``(H/2^L, W/2^L, channels)``, concatenated on the
    channel axis), then ``L`` 2×2 stride-2 transposed convolutions, GELU between them.
    """
    z = x
    for w in theta["encoder"]:
        z = jax.nn.gelu(_down(z, w))
    trigger = jnp.broadcast_to(theta["trigger"], (*z.shape[:3], theta["trigger"].shape[-1]))
    y = jnp.concatenate([z, trigger.astype(z.dtype)], axis=-1)
    for i, layer in enumerate(theta["decoder"]):
        y = _up(y, layer)
        if i < len(theta["decoder"]) - 1:
            y = jax.nn.gelu(y)
    return y


@register(
    paper="Oh et al. CVPR 2023 (BlackVIP)",
    modality="vision",
    format=Format.LEARNABLE,
    location=Location.INPUT,
    operator=Operator.ADDITIVE | Operator.PARAMETRIC,
)
def blackvip(
    *,
    stages: int = 3,
    features: int = 32,
    channels: int = 4,
    width: int = 16,
    epsilon: float = 1.0,
    interpolation: str = "linear",
) -> InputTransform:
    """BlackVIP (Oh et al. CVPR 2023, "Black-Box Visual Prompting for Robust Transfer Learning"):
    the coordinator, an input-dependent prompt from a frozen encoder and a learned light decoder::

        x̃  = resize(x)
        P  = g_ψ([f(normalize(x̃)); φ])          # f frozen, decoder ψ and trigger φ learned
        x' = normalize(clip(x̃ + ε P, 0, 1))

    Train it black-box with SPSA-GC (``fit(gradient=jr.train.ZerothOrder(estimator="spsa_gc"))``):
    only the decoder and the trigger are perturbed.

    The paper's ``f`` is a frozen self-supervised ViT-B (MAE, its [CLS] feature). The library has
    no such encoder that fits inside an input transform, so ``f`` here is a small *fixed random*
    convolutional encoder (``stages`` 2×2 stride-2 convolutions of widths ``16, 32, …, features``,
    He-normal, GELU), drawn by ``init`` and held fixed (never updated, its gradient stopped):
    random features, not pretrained ones. It keeps its feature *map* ``z (S/2^L, S/2^L, F)``
    rather than pooling it to one vector: pooled random features hardly differ between images,
    so the prompt would hardly depend on the input. The decoder is the paper's, made small:
    ``[z; φ]`` (the trigger ``φ`` is a learned ``(S/2^L, S/2^L, channels)`` map, initialised
    U(0, 0.1) as the reference's trigger vector, concatenated on the channel axis where the paper
    concatenates a vector and reshapes it to a 7×7 cube), then ``stages`` 2×2 stride-2 transposed
    convolutions of widths ``width, …, C`` (no normalisation: a pure function keeps no batch
    statistics), PyTorch's default initialisation. The prompt is added
    in pixel units and the result clipped to the valid range, as the reference clips after
    adding; ``ε`` is its ``P_EPS``.

    Args:
      stages: encoder and decoder depth; each canvas side must be divisible by ``2**stages``.
      features: ``F``, the encoder's output channels (the features ``z``).
      channels: the trigger's channels.
      width: the decoder's hidden width.
      epsilon: ``ε`` > 0, the prompt's scale.
      interpolation: ``jax.image.resize`` method (antialiased) for the resize to ``spec.size``.

    ``theta = {"encoder": [w₁, …] (fixed), "decoder": [{"w", "b"}, …], "trigger": φ}``.
    """
    stages, features, channels, width = (
        checking.integer(v, name, who="blackvip")
        for name, v in (("stages", stages), ("features", features), ("channels", channels), ("width", width))
    )
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not 0 < epsilon < math.inf:
        raise ValueError(f"blackvip: epsilon must be a finite number > 0, got {epsilon!r:.40}")
    _checks.choice(interpolation, "blackvip: interpolation", _checks.INTERPOLATIONS)
    factor = 2**stages

    def check(spec):
        spec = _checks.image_spec(spec, "blackvip")
        if spec.size[0] % factor or spec.size[1] % factor:
            raise ValueError(
                f"blackvip: each side of the canvas spec.size={spec.size} must be divisible by "
                f"2**stages={factor}"
            )
        return spec, (spec.size[0] // factor, spec.size[1] // factor, channels)

    def init_fn(key, spec):
        spec, trigger_shape = check(spec)
        enc_key, dec_key, trigger_key = jax.random.split(key, 3)
        enc_widths = [spec.channels, *(min(16 * 2**i, features) for i in range(stages - 1)), features]
        encoder = [
            jax.random.normal(k, (4 * cin, cout), jnp.float32) * math.sqrt(2.0 / (4 * cin))
            for k, cin, cout in zip(jax.random.split(enc_key, stages), enc_widths, enc_widths[1:])
        ]
        dec_widths = [features + channels, *([width] * (stages - 1)), spec.channels]
        decoder = []
        for k, cin, cout in zip(jax.random.split(dec_key, stages), dec_widths, dec_widths[1:]):
            bound = 1.0 / math.sqrt(4 * cout)  # PyTorch's ConvTranspose2d: fan_in = out · k · k
            kw, kb = jax.random.split(k)
            decoder.append(
                {
                    "w": jax.random.uniform(kw, (cin, 4 * cout), jnp.float32, -bound, bound),
                    "b": jax.random.uniform(kb, (cout,), jnp.float32, -bound, bound),
                }
            )
        trigger = jax.random.uniform(trigger_key, trigger_shape, jnp.float32, 0.0, 0.1)
        return {"encoder": encoder, "decoder": decoder, "trigger": trigger}

    def apply(theta, x, spec, *, key=None):
        del key
        spec, trigger_shape = check(spec)
        x = _checks.image_batch(x, "blackvip", spec)
        if not isinstance(theta, dict) or set(theta) != {"encoder", "decoder", "trigger"}:
            raise ValueError(
                "blackvip: theta must be the dict from init, with keys 'encoder', 'decoder', 'trigger'"
            )
        if len(theta["encoder"]) != stages or len(theta["decoder"]) != stages:
            raise ValueError(f"blackvip: theta's encoder and decoder must have stages={stages} layers each")
        _checks.leaf_shape(theta, "trigger", trigger_shape, "blackvip")
        x = _checks.resize(x, spec.size, interpolation)
        prompt = coordinator(theta, spec.normalize(x))
        return spec.normalize(jnp.clip(x + epsilon * prompt, 0.0, 1.0))

    def trainable(theta):
        return {
            "encoder": jax.tree.map(lambda _: False, theta["encoder"]),
            "decoder": jax.tree.map(lambda _: True, theta["decoder"]),
            "trigger": True,
        }

    def visualize(theta, spec):
        return _checks.render(apply, theta, spec, check(spec)[0].shape)

    return InputTransform(init_fn, apply, trainable=trainable, visualize=visualize)
