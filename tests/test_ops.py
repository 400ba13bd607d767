"""Zoo ops: the two depthwise forms compute one function; TF "SAME" padding; 1×1 conv as matmul;
the unit-stride convolution's input gradient as a forward convolution."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from jaxreprog.models import ops


def _inputs(shape, kernel, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, shape), jax.random.normal(kw, (kernel, kernel, shape[-1]))


def test_same_padding_is_tensorflows():
    # TF: out = ceil(n / s); total = max((out - 1) s + k - n, 0); the odd pixel goes high.
    assert ops.same_padding(4, 3, 2) == (0, 1)
    assert ops.same_padding(5, 3, 2) == (1, 1)
    assert ops.same_padding(8, 5, 2) == (1, 2)
    assert ops.same_padding(7, 5, 1) == (2, 2)
    assert ops.same_padding(3, 1, 2) == (0, 0)


@pytest.mark.parametrize("impl", ["shifted", "grouped"])
def test_depthwise_hand_computed(impl):
    # All-ones 4×4 image and 3×3 kernel: each output counts the in-bounds neighbours.
    x = jnp.ones((1, 4, 4, 1))
    k = jnp.ones((3, 3, 1))
    y = ops.depthwise_conv(x, k, 1, "SAME", impl=impl)[0, :, :, 0]
    expected = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], np.float32)
    np.testing.assert_array_equal(y, expected)
    # Stride 2, TF SAME on an even size pads (0, 1): windows start at rows/cols 0 and 2.
    y2 = ops.depthwise_conv(x, k, 2, "SAME", impl=impl)[0, :, :, 0]
    np.testing.assert_array_equal(y2, np.array([[9, 6], [6, 4]], np.float32))
    # Channels do not mix: channel c is scaled by its own kernel.
    x3 = jnp.ones((1, 3, 3, 2))
    k3 = jnp.stack([jnp.zeros((3, 3)).at[1, 1].set(2.0), jnp.zeros((3, 3)).at[0, 0].set(-1.0)], -1)
    y3 = ops.depthwise_conv(x3, k3, 1, "VALID", impl=impl)
    np.testing.assert_array_equal(y3, np.array([[[[2.0, -1.0]]]], np.float32))


class TestDepthwiseForms(chex.TestCase):
    @chex.variants(with_jit=True)  # eager forms: test_depthwise_hand_computed
    @parameterized.parameters(
        *[
            ((2, 8, 8, 5), 3, 1, "SAME"),
            ((2, 8, 8, 5), 3, 2, "SAME"),
            ((1, 9, 7, 4), 5, 2, "SAME"),
            ((1, 6, 6, 2), 3, (1, 2), ((2, 0), (1, 1))),
        ],
    )
    def test_values_and_gradients_agree(self, shape, kernel, stride, padding):
        x, w = _inputs(shape, kernel)

        def loss(impl):
            def f(x, w):
                y = ops.depthwise_conv(x, w, stride, padding, impl=impl)
                return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

            return self.variant(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

        (l_s, y_s), (gx_s, gw_s) = loss("shifted")(x, w)
        (l_g, y_g), (gx_g, gw_g) = loss("grouped")(x, w)
        chex.assert_trees_all_close(y_s, y_g, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(gx_s, gx_g, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(gw_s, gw_g, atol=1e-4, rtol=1e-5)
        chex.assert_trees_all_close(l_s, l_g, atol=1e-4, rtol=1e-5)


@settings(deadline=None, max_examples=12)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2, 3]),
)
def test_depthwise_forms_agree_on_any_size(h, w, kernel, stride):
    x, k = _inputs((1, h, w, 2), kernel, seed=h * 10 + w)

    @functools.partial(jax.jit, static_argnames="impl")  # one compile per example, not per primitive
    def forward_and_vjp(x, k, impl):
        y, vjp = jax.vjp(lambda x, k: ops.depthwise_conv(x, k, stride, "SAME", impl=impl), x, k)
        g = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
        return y, vjp(g)

    (y_s, grads_s), (y_g, grads_g) = (forward_and_vjp(x, k, i) for i in ("shifted", "grouped"))
    chex.assert_shape(y_s, (1, -(-h // stride), -(-w // stride), 2))
    chex.assert_trees_all_close(y_s, y_g, atol=1e-5, rtol=1e-5)
    # Gradients too: stride phases the kernel never reaches (k=1, s>1) and crops of unread rows.
    chex.assert_trees_all_close(grads_s, grads_g, atol=1e-5, rtol=1e-5)


def test_shifted_form_under_vmap_of_grad():
    # The candidate axis: per-candidate inputs, shared kernel; vmap(grad) equals a loop.
    x, w = _inputs((3, 1, 6, 6, 2), 3)

    def loss(x):
        return jnp.sum(ops.depthwise_conv(x, w, 2, impl="shifted") ** 2)

    batched = jax.jit(jax.vmap(jax.grad(loss)))(x)
    looped = jnp.stack([jax.grad(loss)(xi) for xi in x])
    chex.assert_trees_all_close(batched, looped, atol=1e-5, rtol=1e-5)


def test_default_form_follows_backend():
    expected = "shifted" if jax.default_backend() == "cpu" else "grouped"
    assert ops.default_depthwise_impl() == expected
    x, w = _inputs((1, 5, 5, 3), 3)
    chex.assert_trees_all_close(
        ops.depthwise_conv(x, w), ops.depthwise_conv(x, w, impl=expected), atol=0, rtol=0
    )


@pytest.mark.parametrize("impl", ["shifted", "grouped"])
def test_depthwise_computes_in_the_input_dtype(impl):
    # bf16 activations with an fp32 kernel (e.g. bf16 images into an fp32 model): both forms run
    # in bf16, as pointwise_conv and conv do; "grouped" is the default off CPU.
    x, w = _inputs((1, 6, 6, 3), 3)
    y = ops.depthwise_conv(x.astype(jnp.bfloat16), w, 2, impl=impl)
    assert y.dtype == jnp.bfloat16
    ref = ops.depthwise_conv(x.astype(jnp.bfloat16).astype(jnp.float32), w, 2, impl=impl)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.1, rtol=0.05)


def test_depthwise_errors():
    x, w = _inputs((1, 5, 5, 3), 3)
    with pytest.raises(ValueError, match=r"kernel must be \(k_h, k_w, C=3\)"):
        ops.depthwise_conv(x, w[..., :2])
    with pytest.raises(ValueError, match="NHWC"):
        ops.depthwise_conv(x[0], w)
    with pytest.raises(ValueError, match="impl must be"):
        ops.depthwise_conv(x, w, impl="fast")
    with pytest.raises(ValueError, match="padding must be"):
        ops.depthwise_conv(x, w, padding="FULL")


def test_pointwise_and_dense_conv_match_lax():
    x = jax.random.normal(jax.random.key(1), (2, 6, 5, 4))
    k1 = jax.random.normal(jax.random.key(2), (4, 7))
    b = jnp.arange(7.0)
    ref = jax.lax.conv_general_dilated(
        x, k1[None, None], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    chex.assert_trees_all_close(ops.pointwise_conv(x, k1, b), ref + b, atol=1e-5, rtol=1e-5)
    k3 = jax.random.normal(jax.random.key(3), (3, 3, 4, 7))
    ref3 = jax.lax.conv_general_dilated(
        x, k3, (2, 2), ((0, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    chex.assert_trees_all_close(ops.conv(x, k3, 2, "SAME"), ref3, atol=1e-5, rtol=1e-5)


@settings(deadline=None, max_examples=10)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    kernel=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    c_in=st.integers(1, 3),
)
def test_stem_convolution_as_stacked_windows_agrees_with_lax(h, w, kernel, stride, c_in):
    """k·k·C_in ≤ 32 runs as one matrix product of stacked windows on CPU: the same values
    and gradients (input and kernel) as XLA's convolution, any size, stride and padding."""
    x = jax.random.normal(jax.random.key(h * 10 + w), (2, h, w, c_in))
    k = jax.random.normal(jax.random.key(1), (kernel, kernel, c_in, 5))
    pads = ops._explicit_padding("SAME", (h, w), (kernel, kernel), (stride, stride))

    def lax_conv(x, k):
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(x, k, (stride, stride), pads, dimension_numbers=dims)

    @jax.jit
    def forward_and_vjp(x, k):
        out = []
        for f in (lambda x, k: ops.conv(x, k, stride), lax_conv):
            y, vjp = jax.vjp(f, x, k)
            out.append((y, vjp(jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape))))
        return out

    ours, ref = forward_and_vjp(x, k)
    chex.assert_trees_all_close(ours, ref, atol=1e-5, rtol=1e-5)
    if jax.default_backend() == "cpu":  # the window form is what ran
        assert "conv_general_dilated" not in str(jax.make_jaxpr(ops.conv)(x, k))


def _reduce_window_max(x, window, stride, pads):
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), ((0, 0), *pads, (0, 0))
    )


@settings(max_examples=5, deadline=None)  # each example compiles a forward and two gradients
@given(
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    window=st.integers(2, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
)
def test_max_pool_equals_reduce_window(h, w, window, stride, pad):
    x = jax.random.normal(jax.random.key(h * 13 + w), (2, h, w, 3))
    pads = ((pad, pad), (pad, pad))
    want = _reduce_window_max(x, window, stride, pads)
    got = jax.jit(ops.max_pool, static_argnums=(1, 2, 3))(x, window, stride, pads)
    np.testing.assert_array_equal(got, want)
    # Distinct values: one maximum per window, so the gradient equals XLA's select_and_scatter's.
    ct = jax.random.normal(jax.random.key(1), want.shape)
    grad = lambda f: jax.jit(jax.grad(lambda x: jnp.vdot(f(x), ct)))(x)  # noqa: E731
    np.testing.assert_allclose(
        grad(lambda x: ops.max_pool(x, window, stride, pads)),
        grad(lambda x: _reduce_window_max(x, window, stride, pads)),
        atol=1e-6,
    )


def test_max_pool_gradient_goes_to_the_first_maximum_as_torch():
    torch = pytest.importorskip("torch")
    # Ties everywhere (ReLU zeros and repeated values): PyTorch routes each window's
    # gradient to its first maximum in row-major order; so must we.
    x = np.maximum(np.round(np.random.default_rng(0).normal(size=(2, 9, 10, 4)), 0), 0).astype(np.float32)
    ct = np.random.default_rng(1).normal(size=(2, 5, 5, 4)).astype(np.float32)
    t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    torch.nn.functional.max_pool2d(t, 3, 2, 1).backward(torch.tensor(ct.transpose(0, 3, 1, 2)))
    want = t.grad.numpy().transpose(0, 2, 3, 1)
    got = jax.grad(lambda x: jnp.vdot(ops.max_pool(x, 3, 2, ((1, 1), (1, 1))), ct))(jnp.asarray(x))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # vmap over a leading axis computes the same per example.
    per = jax.vmap(lambda x: ops.max_pool(x[None], 3, 2, ((1, 1), (1, 1)))[0])(jnp.asarray(x))
    np.testing.assert_array_equal(per, ops.max_pool(jnp.asarray(x), 3, 2, ((1, 1), (1, 1))))


def test_max_pool_errors():
    with pytest.raises(ValueError, match="NHWC"):
        ops.max_pool(jnp.ones((4, 4, 3)))


@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 2), (2, 0)), "SAME", "VALID"])
def test_conv_general_dilated_input_gradient_as_a_forward_convolution_is_autodiffs(padding):
    # The custom VJP (unit stride, NHWC x HWIO on CPU) against lax's own transpose, both gradients,
    # also under vmap; a strided convolution goes to lax itself and must give the same values.
    x = jax.random.normal(jax.random.key(0), (3, 2, 9, 7, 5))
    k = jax.random.normal(jax.random.key(1), (3, 3, 5, 4))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv, strides):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=dn)))

    for strides in ((1, 1), (2, 1)):
        ours, theirs = loss(ops.conv_general_dilated, strides), loss(lax.conv_general_dilated, strides)
        custom = "custom_vjp_call" in str(jax.make_jaxpr(ours)(x[0], k))
        assert custom == (strides == (1, 1)), (strides, custom)  # the fast path is the one taken
        got = jax.jit(jax.vmap(jax.grad(ours, (0, 1)), (0, None)))(x, k)
        want = jax.jit(jax.vmap(jax.grad(theirs, (0, 1)), (0, None)))(x, k)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    flax_conv = nn.Conv(4, (3, 3), padding=padding, conv_general_dilated=ops.conv_general_dilated)
    variables = flax_conv.init(jax.random.key(2), x[0])
    plain = nn.Conv(4, (3, 3), padding=padding).apply(variables, x[0])
    chex.assert_trees_all_close(flax_conv.apply(variables, x[0]), plain, rtol=1e-5, atol=1e-5)
