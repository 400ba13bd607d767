"""Hypothesis properties of the input-location methods across sizes and channels."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreprog as jr

SETTINGS = settings(max_examples=5, deadline=None, derandomize=True)  # each example compiles new shapes


def applied(part, theta, x, spec):
    """``part.apply`` as one compiled program (eagerly, each op would compile on its own per shape)."""
    return jax.jit(part.apply, static_argnums=2)(theta, x, spec)


@st.composite
def pad_case(draw):
    canvas = (draw(st.integers(4, 24)), draw(st.integers(4, 24)))
    target = (draw(st.integers(1, canvas[0])), draw(st.integers(1, canvas[1])))
    if target == canvas:
        target = (canvas[0] - 1, canvas[1])
    return canvas, target, draw(st.sampled_from([1, 3])), draw(st.integers(1, 2)), draw(st.integers(0, 2**16))


@SETTINGS
@given(pad_case())
def test_pad_shape_range_and_exact_image_region(case):
    canvas, target, channels, n, seed = case
    spec = jr.ImageSpec(size=canvas)  # identity normalisation: the [0, 1] canvas itself
    m = jr.input.pad(target, init="normal")
    theta = m.init(jax.random.key(seed), spec)
    x = jax.random.uniform(jax.random.key(seed + 1), (n, *target, channels))
    out = np.asarray(applied(m, theta, x, spec))
    chex.assert_shape(out, (n, *canvas, 3))
    assert out.min() >= 0 and out.max() <= 1
    top, left = ((s - t + 1) // 2 for s, t in zip(canvas, target))
    region = out[:, top : top + target[0], left : left + target[1]]
    np.testing.assert_array_equal(region, np.broadcast_to(x, region.shape))
    border = np.ones(canvas, bool)
    border[top : top + target[0], left : left + target[1]] = False
    assert np.all((out[:, border] > 0) & (out[:, border] < 1))  # sigmoid(δ): strictly inside (0, 1)


@SETTINGS
@given(
    st.integers(4, 24),
    st.integers(4, 24),
    st.integers(8, 24),
    st.sampled_from([1, 3]),
    st.sampled_from(["watermark", "full", "pad_prompter", "patch"]),
)
def test_resizing_methods_shape_and_untouched_centre(h, w, side, channels, name):
    spec = jr.ImageSpec(size=side, mean=0.5, std=0.25)
    m = {
        "watermark": jr.input.watermark(2),
        "full": jr.input.full(),
        "pad_prompter": jr.input.pad_prompter(2),
        "patch": jr.input.patch(2),
    }[name]
    theta = jax.tree.map(lambda a: a + 1.0, m.init(jax.random.key(0), spec))
    x = jax.random.uniform(jax.random.key(1), (2, h, w, channels))
    out = applied(m, theta, x, spec)
    chex.assert_shape(out, (2, side, side, 3))
    chex.assert_tree_all_finite(out)
    resized = jax.image.resize(jnp.broadcast_to(x, (2, h, w, 3)), (2, side, side, 3), "linear")
    if (h, w) == (side, side):
        resized = jnp.broadcast_to(x, (2, h, w, 3))
    added = np.asarray(out - spec.normalize(resized))
    untouched = added[:, 2:-2, 2:-2] if name != "full" else None
    if untouched is not None:  # every border prompt here leaves the centre alone
        np.testing.assert_allclose(untouched, 0, atol=1e-5)
    assert np.all(np.abs(added).max(axis=(1, 2, 3)) > 0.5)


@SETTINGS
@given(
    st.sampled_from([8, 16, 24]),
    st.sampled_from([8, 16]),
    st.sampled_from([1, 3]),
    st.sampled_from([2, 4, 8]),
)
def test_smm_shapes(h, w, channels, patch_size):
    spec = jr.ImageSpec(size=(h, w))
    m = jr.input.smm(patch_size=patch_size)
    theta = m.init(jax.random.key(0), spec)
    out = applied(m, theta, jax.random.uniform(jax.random.key(1), (2, 5, 7, channels)), spec)
    chex.assert_shape(out, (2, h, w, 3))
    chex.assert_tree_all_finite(out)


@SETTINGS
@given(st.integers(2, 40), st.data())
def test_sequence_pad_shape_and_exact_target_span(length, data):
    target = data.draw(st.integers(1, length - 1))
    channels = data.draw(st.sampled_from([1, 2]))
    spec = jr.SequenceSpec(length=length, channels=channels)
    m = jr.input.sequence_pad(target, init="normal")
    theta = m.init(jax.random.key(0), spec)
    x = jax.random.uniform(jax.random.key(1), (3, target), minval=-1, maxval=1)
    out = np.asarray(applied(m, theta, x, spec))
    chex.assert_shape(out, (3, length, channels))
    before = (length - target) // 2
    np.testing.assert_array_equal(
        out[:, before : before + target], np.broadcast_to(x[..., None], (3, target, channels))
    )
