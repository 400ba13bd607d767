"""Input-location methods: exact definitions, jit / grad / vmap, validation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.test_util import check_grads

import jaxreprog as jr
from jaxreprog.input.smm import _conv, _max_pool, _norm, mask_net, upsample_patches
from jaxreprog.taxonomy import Format, Location, Operator

IDENTITY = jr.ImageSpec(size=32)  # normalize is exactly the identity: values can be compared bit for bit
IMAGENET = jr.ImageSpec(size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def images(n=2, size=(16, 16), channels=3, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, *size, channels))


# Every method at the tiny model's 8 px canvas: (factory, target image size or None = any size).
TINY = {
    "pad": (lambda: jr.input.pad(6), (6, 6)),
    "elsayed": (lambda: jr.input.elsayed((5, 6), l2=0.01), (5, 6)),
    "watermark": (lambda: jr.input.watermark(2), (5, 5)),
    "full": (lambda: jr.input.full(), (12, 12)),
    "pad_prompter": (lambda: jr.input.pad_prompter(2), (8, 8)),
    "patch": (lambda: jr.input.patch(3, position=(1, 4)), (8, 8)),
    "random_patch": (lambda: jr.input.random_patch(3), (8, 8)),
    "resize_pad": (lambda: jr.input.resize_pad(6, init_scale=0.9), (6, 6)),
    "smm": (lambda: jr.input.smm(patch_size=4), (8, 8)),
    "fixed": (lambda: jr.input.fixed(np.full((8, 8, 3), 0.1, np.float32)), (8, 8)),
}


def _nonzero(theta):
    """Move theta off its (often zero) initialisation so gradients are generic."""
    leaves, tree = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(7), max(len(leaves), 1))
    return jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        return nn.Dense(7)(x.mean(axis=(1, 2)))


def _tiny_model() -> jr.FrozenModel:
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)
    return jr.from_linen(TinyCNN(), TinyCNN().init(jax.random.key(0), jnp.zeros((1, *spec.shape))), spec)


TINY_MODEL = _tiny_model()


class TinySeqModel(nn.Module):
    num_classes: int = 5

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("name", sorted(TINY))
def test_tags_and_visualize(name):
    m = TINY[name][0]()
    assert m.tags.location == Location.INPUT and Operator.ADDITIVE in m.tags.operator
    theta = _nonzero(m.init(jax.random.key(0), TINY_MODEL.spec))
    image = m.visualize(theta, TINY_MODEL.spec)
    chex.assert_shape(image, TINY_MODEL.spec.shape)
    assert float(image.min()) >= 0 and float(image.max()) <= 1


LINEAR_IN_THETA = {  # smooth in theta: reverse-mode gradients checked numerically
    "pad": (jr.input.pad(20), (20, 20)),
    "elsayed": (jr.input.elsayed(20), (20, 20)),
    "watermark": (jr.input.watermark("medium"), (12, 12)),
    "pad_prompter": (jr.input.pad_prompter(4), (32, 32)),
    "random_patch": (jr.input.random_patch(5), (32, 32)),
}


@pytest.mark.parametrize("name", sorted(LINEAR_IN_THETA))
def test_gradients_match_finite_differences(name):
    m, size = LINEAR_IN_THETA[name]
    x = images(2, size)
    theta = _nonzero(m.init(jax.random.key(0), IMAGENET))
    w = jax.random.normal(jax.random.key(5), (2, 32, 32, 3))
    check_grads(
        lambda t: jnp.mean(w * m.apply(t, x, IMAGENET, key=jax.random.key(1))),
        (theta,),
        1,
        ("rev",),
        atol=1e-2,
        rtol=1e-2,
    )


# ------------------------------------------------------------------ padding VR


@pytest.mark.parametrize(
    ("target", "canvas", "top", "left"),
    [
        ((28, 28), (32, 32), 2, 2),
        ((27, 27), (32, 32), 3, 3),
        ((5, 6), (8, 11), 2, 3),
        ((32, 20), (32, 32), 0, 6),
    ],
)
def test_pad_layout_by_hand(target, canvas, top, left):
    spec = jr.ImageSpec(size=canvas)
    m = jr.input.pad(target)
    delta = jax.random.normal(jax.random.key(0), spec.shape)
    x = images(2, target)
    out = np.asarray(m.apply({"delta": delta}, x, spec))
    h, w = target
    np.testing.assert_array_equal(out[:, top : top + h, left : left + w], x)  # exact
    border = np.ones(canvas, bool)
    border[top : top + h, left : left + w] = False
    np.testing.assert_array_equal(
        out[:, border], np.broadcast_to(jax.nn.sigmoid(delta)[border], (2, border.sum(), 3))
    )


def test_pad_image_region_has_zero_gradient_and_normalises_after_adding():
    m = jr.input.pad(28)
    x = images(2, (28, 28))
    theta = {"delta": jax.random.normal(jax.random.key(0), IMAGENET.shape)}
    w = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    g = jax.grad(lambda t: jnp.sum(w * m.apply(t, x, IMAGENET)))(theta)["delta"]
    np.testing.assert_array_equal(g[2:30, 2:30], 0)
    assert np.all(np.asarray(g[:2]) != 0) and np.all(np.asarray(g[30:]) != 0)
    canvas = np.zeros((2, 32, 32, 3), np.float32)
    canvas[:, 2:30, 2:30] = x
    mask = np.ones((32, 32, 1), np.float32)
    mask[2:30, 2:30] = 0
    want = (canvas + np.asarray(jax.nn.sigmoid(theta["delta"])) * mask - IMAGENET.mean) / IMAGENET.std
    np.testing.assert_allclose(m.apply(theta, x, IMAGENET), want, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(m.init(jax.random.key(0), IMAGENET)["delta"]).max()) == 0  # zero init: grey border


def test_pad_grayscale_is_repeated_to_rgb():
    m = jr.input.pad(20)
    theta = _nonzero(m.init(jax.random.key(0), IMAGENET))
    gray = images(2, (20, 20), channels=1)
    np.testing.assert_array_equal(
        m.apply(theta, gray, IMAGENET), m.apply(theta, jnp.repeat(gray, 3, axis=-1), IMAGENET)
    )


def test_elsayed_is_tanh_program_in_minus_one_one_units():
    spec = jr.ImageSpec(size=12, value_range=(-1.0, 1.0))  # the paper's model units
    m = jr.input.elsayed(8, l2=0.05)
    w = jax.random.normal(jax.random.key(0), spec.shape)
    x = images(2, (8, 8))
    mask = np.ones((12, 12, 1), np.float32)
    mask[2:10, 2:10] = 0
    x_tilde = np.zeros((2, 12, 12, 3), np.float32)
    x_tilde[:, 2:10, 2:10] = 2 * np.asarray(x) - 1
    want = x_tilde + np.tanh(np.asarray(w) * mask)  # X_adv = X̃ + tanh(W ⊙ M)
    np.testing.assert_allclose(m.apply({"w": w}, x, spec), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.penalty({"w": w}), 0.05 * np.sum(np.square(w)), rtol=1e-6)
    assert jr.input.elsayed(8).penalty is None


# -------------------------------------------------------------- watermark / full


@pytest.mark.parametrize(
    ("width", "side", "border"),
    [("narrow", 224, 28), ("medium", 224, 56), ("narrow", 96, 12), ("medium", 96, 24), (3, 16, 3)],
)
def test_watermark_border_width(width, side, border):
    spec = jr.ImageSpec(size=side)
    m = jr.input.watermark(width)
    x = jnp.full((1, side, side, 3), 0.25)
    added = np.asarray(m.apply({"delta": jnp.ones(spec.shape)}, x, spec) - x)[0, ..., 0]
    want = np.ones((side, side))
    want[border : side - border, border : side - border] = 0
    np.testing.assert_array_equal(added, want)
    assert float(jnp.abs(m.init(jax.random.key(0), spec)["delta"]).max()) == 0


def test_watermark_width_pair_is_rows_then_cols():
    spec = jr.ImageSpec(size=(10, 12))
    x = jnp.full((1, 10, 12, 3), 0.25)
    added = np.asarray(jr.input.watermark((2, 3)).apply({"delta": jnp.ones(spec.shape)}, x, spec) - x)[
        0, ..., 0
    ]
    want = np.ones((10, 12))
    want[2:8, 3:9] = 0  # (2, 3) used to be read as 2 on every side
    np.testing.assert_array_equal(added, want)
    for width in (2.5, (2, 3, 4), "wide"):
        with pytest.raises((TypeError, ValueError), match="watermark: width"):
            jr.input.watermark(width)


def test_full_adds_everywhere_after_resize_and_normalise():
    m = jr.input.full()
    x = images(2, (16, 16))
    delta = jax.random.normal(jax.random.key(0), IMAGENET.shape)
    want = IMAGENET.normalize(jax.image.resize(x, (2, 32, 32, 3), "linear")) + delta
    np.testing.assert_allclose(m.apply({"delta": delta}, x, IMAGENET), want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- Bahng et al.


def test_pad_prompter_strips():
    m = jr.input.pad_prompter(3)
    spec = jr.ImageSpec(size=(10, 12))
    theta = m.init(jax.random.key(0), spec)
    assert {k: v.shape for k, v in theta.items()} == {
        "top": (3, 12, 3),
        "bottom": (3, 12, 3),
        "left": (4, 3, 3),
        "right": (4, 3, 3),
    }
    x = images(1, (10, 12))
    added = np.asarray(m.apply(theta, x, spec) - x)[0]
    np.testing.assert_allclose(added[:3], theta["top"], atol=1e-6)
    np.testing.assert_allclose(added[7:], theta["bottom"], atol=1e-6)
    np.testing.assert_allclose(added[3:7, :3], theta["left"], atol=1e-6)
    np.testing.assert_allclose(added[3:7, 9:], theta["right"], atol=1e-6)
    np.testing.assert_array_equal(added[3:7, 3:9], 0)


def test_fixed_patch_position():
    m = jr.input.patch((2, 3), position=(4, 1))
    spec = jr.ImageSpec(size=8)
    theta = m.init(jax.random.key(0), spec)
    x = images(1, (8, 8))
    added = np.asarray(m.apply(theta, x, spec) - x)[0]
    want = np.zeros((8, 8, 3), np.float32)
    want[4:6, 1:4] = theta["patch"]
    np.testing.assert_allclose(added, want, atol=1e-6)


def test_random_patch_location_is_uniform_over_valid_positions():
    canvas, p, n = 8, 6, 900  # 3 x 3 = 9 valid corners, 100 draws expected in each
    spec = jr.ImageSpec(size=canvas)
    m = jr.input.random_patch(p)
    theta = {"patch": jnp.ones((p, p, 3))}
    x = jnp.zeros((1, canvas, canvas, 3))
    keys = jax.random.split(jax.random.key(2024), n)
    prompts = jax.jit(jax.vmap(lambda k: m.apply(theta, x, spec, key=k)[0, ..., 0]))(keys)
    rows = np.argmax(np.asarray(prompts).max(axis=2) > 0, axis=1)
    cols = np.argmax(np.asarray(prompts).max(axis=1) > 0, axis=1)
    np.testing.assert_array_equal(np.asarray(prompts).sum(axis=(1, 2)), p * p)  # the whole patch, every time
    counts = np.bincount(rows * 3 + cols, minlength=9)
    assert counts.shape == (9,) and counts.min() > 0  # every corner, the last row and column included
    chi2 = float(np.sum((counts - n / 9) ** 2 / (n / 9)))
    assert chi2 < 26.12, (chi2, counts)  # χ²(8 dof) 0.999 quantile


def test_random_patch_same_key_same_output_and_needs_key():
    m = jr.input.random_patch(4)
    theta = m.init(jax.random.key(0), IMAGENET)
    x = images(2, (32, 32))
    a, b = (m.apply(theta, x, IMAGENET, key=jax.random.key(9)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    outs = {np.asarray(m.apply(theta, x, IMAGENET, key=jax.random.key(i))).tobytes() for i in range(8)}
    assert len(outs) > 1
    with pytest.raises(ValueError, match="random_patch: apply needs a PRNG key"):
        m.apply(theta, x, IMAGENET)


# ------------------------------------------------------------------ AutoVP


def test_resize_pad_is_pad_at_scale_one_and_zooms_about_the_centre():
    spec = jr.ImageSpec(size=64)
    x = images(2, (16, 16))
    delta = jax.random.normal(jax.random.key(0), spec.shape)
    m, p = jr.input.resize_pad(16), jr.input.pad(16)
    # one compiled program per part, not dozens of eager ops (each compiles on its own)
    apply = jax.jit(lambda part, theta: part.apply(theta, x, spec), static_argnums=0)
    np.testing.assert_allclose(
        apply(m, {"scale": jnp.float32(1), "delta": delta}), apply(p, {"delta": delta}), atol=1e-6
    )
    image_zoom = jr.input.resize_pad(16, zoom="image")  # the unpadded image zoomed (the pre-0.2 form)
    out = np.asarray(apply(image_zoom, {"scale": jnp.float32(2), "delta": delta}))
    np.testing.assert_allclose(out[:, 16:48, 16:48], jax.image.resize(x, (2, 32, 32, 3), "linear"), atol=1e-5)
    border = np.ones((64, 64), bool)
    border[16:48, 16:48] = False
    np.testing.assert_allclose(
        out[:, border], np.broadcast_to(jax.nn.sigmoid(delta)[border], (2, border.sum(), 3)), atol=1e-6
    )
    g = jax.jit(jax.grad(lambda s: jnp.sum(m.apply({"scale": s, "delta": delta}, x, spec) ** 2)))(1.5)
    assert np.isfinite(g) and g != 0


@pytest.mark.parametrize("scale", [0.7, 1.5, 2.0])
def test_resize_pad_zooms_the_padded_canvas_as_autovp_does(scale):
    """AutoVP zooms the zero-padded canvas (bilinear, no antialias): the image's edge pixels
    blend with the padding. Checked against scipy's bilinear sampling with zeros outside."""
    from scipy import ndimage

    spec = jr.ImageSpec(size=32)
    x = images(1, (12, 12))
    theta = {"scale": jnp.float32(scale), "delta": jnp.full(spec.shape, -40.0)}  # sigmoid(δ) ≈ 0
    out = np.asarray(jr.input.resize_pad(12).apply(theta, x, spec))[0]
    canvas = np.zeros((32, 32, 3), np.float32)
    canvas[10:22, 10:22] = x[0]
    u = (np.arange(32) + 0.5 - 16) / scale + 16 - 0.5  # output pixel centre -> input index
    rows, cols = np.meshgrid(u, u, indexing="ij")
    want = np.stack(
        [ndimage.map_coordinates(canvas[..., c], [rows, cols], order=1, mode="constant") for c in range(3)],
        -1,
    )
    np.testing.assert_allclose(out, want, atol=1e-5)
    ones = np.zeros((32, 32), np.float32)
    ones[10:22, 10:22] = 1
    covered = ndimage.map_coordinates(ones, [rows, cols], order=1, mode="constant")
    assert np.any((covered > 0.01) & (covered < 0.99))  # a ring of pixels blends image and padding
    prompt = np.asarray(jr.input.resize_pad(12).apply({**theta, "delta": -theta["delta"]}, x, spec))[0] - out
    np.testing.assert_allclose(prompt[..., 0], covered <= 0.5, atol=1e-5)  # the prompt where the image is not
    clipped = jr.input.resize_pad(12).apply({**theta, "scale": jnp.float32(9.0)}, x, spec)
    np.testing.assert_allclose(
        clipped, jr.input.resize_pad(12).apply({**theta, "scale": jnp.float32(5.0)}, x, spec), atol=1e-6
    )  # the zoom is clipped to AutoVP's [0.1, 5]
    with pytest.raises(ValueError, match=r"init_scale must lie in \[0.1, 5.0\]"):
        jr.input.resize_pad(12, init_scale=6.0)


def test_resize_pad_clamps_its_scale_after_every_step_as_autovp_does():
    """AutoVP clamps s to [0.1, 5] after each optimiser step: s stays on the boundary, not past
    it, and keeps its gradient there (it can move back), as in the reference."""
    import optax

    model = jr.FrozenModel(
        apply=lambda p, x: x.mean(axis=(1, 2)) @ p["w"], params={"w": jnp.eye(3)}, spec=jr.ImageSpec(size=16)
    )
    program = jr.reprogram(model, input=jr.input.resize_pad(8, init_scale=4.9))
    x, y = images(4, (8, 8)), jnp.array([0, 1, 2, 0])
    init, step = jr.train.make_step(program, optax.sgd(1e4))
    theta = program.init(jax.random.key(0))
    loss = lambda t: jr.train.cross_entropy(program.apply(t, model.params, x), y).mean()  # noqa: E731
    g = jax.jit(jax.grad(loss))(theta)
    direction = -float(jnp.sign(g["input"]["scale"]))
    state, _ = jax.jit(step)(init(theta), model.params, (x, y), jax.random.key(0))
    assert float(state.theta["input"]["scale"]) == (5.0 if direction > 0 else 0.1)
    at_bound = jax.jit(jax.grad(lambda t: program.apply(t, model.params, x).sum()))(state.theta)
    assert float(at_bound["input"]["scale"]) != 0.0


@pytest.mark.parametrize("scale", [0.6, 1.3, 1.5, 2.0, 2.7])
@pytest.mark.parametrize(("size", "canvas"), [(11, 32), (10, 31), ((9, 12), (30, 31))])
def test_resize_pad_mask_is_exactly_the_pixels_the_image_misses(scale, size, canvas):
    # The border mask must be the complement of the zoomed image, also for odd S - s·size
    # (exactly for the image zoom; the canvas zoom blends a ring, tested against scipy above).
    spec = jr.ImageSpec(size=canvas)  # normalize is the identity
    m = jr.input.resize_pad(size, zoom="image")
    theta = m.init(jax.random.key(0), spec)
    x = jnp.ones((1, *((size, size) if isinstance(size, int) else size), 3))
    out = {
        d: np.asarray(m.apply({**theta, "scale": jnp.float32(scale), "delta": d + theta["delta"]}, x, spec))
        for d in (-40.0, 40.0)
    }  # sigmoid(δ) = 0, then 1
    image, mask = out[-40.0][0, ..., 0], (out[40.0] - out[-40.0])[0, ..., 0]
    np.testing.assert_array_equal(mask, image < 1e-6)
    np.testing.assert_allclose(image[image >= 1e-6], 1, atol=1e-5)  # no partly covered pixel


@pytest.mark.parametrize("scale", [0.75, 1.25])
def test_resize_pad_every_pixel_reads_the_image_or_the_prompt_under_jit(scale):
    # Under jit a mask computed by a separate formula rounded unlike the resampling on a boundary
    # pixel, which then read neither (0); whichever way XLA rounds, mask and image must agree.
    spec = jr.ImageSpec(size=32)  # normalize is the identity
    m = jr.input.resize_pad(28, init_scale=scale, zoom="image")

    @jax.jit
    def canvas(key, d):  # init inside the jit, as a vmapped or jitted training step does
        theta = m.init(key, spec)
        return m.apply({**theta, "delta": theta["delta"] + d}, jnp.ones((1, 28, 28, 3)), spec)[0, ..., 0]

    image = canvas(jax.random.key(0), -40.0)  # sigmoid(δ) = 0: the image alone
    prompt = canvas(jax.random.key(0), 40.0) - image  # sigmoid(δ) = 1: the mask
    np.testing.assert_allclose(image + prompt, 1.0, atol=1e-5)


# -------------------------------------------------------------------- SMM


def test_smm_mask_network_size_and_shapes():
    m = jr.input.smm()  # reference setting: 5 layers, patch 8, 3 channels
    spec = jr.ImageSpec(size=(32, 48))
    theta = m.init(jax.random.key(0), spec)
    assert sum(a.size for a in jax.tree.leaves(theta["net"])) == 26_499  # "~26.5k" (Cai et al. 2024)
    assert theta["delta"].shape == (32, 48, 3) and float(jnp.abs(theta["delta"]).max()) == 0
    x = IMAGENET.normalize(images(2, (32, 48)))
    chex.assert_shape(mask_net(theta["net"], x), (2, 4, 6, 3))
    chex.assert_shape(mask_net(theta["net"], x, mask_channels="shared"), (2, 4, 6, 1))
    theta1 = jr.input.smm(patch_size=1, norm="none").init(jax.random.key(0), spec)
    chex.assert_shape(mask_net(theta1["net"], x, patch_size=1, norm="none"), (2, 32, 48, 3))
    six = jr.input.smm(patch_size=32, layers=6).init(jax.random.key(0), jr.ImageSpec(size=64))
    chex.assert_shape(mask_net(six["net"], images(1, (64, 64)), patch_size=32, layers=6), (1, 2, 2, 3))


def test_smm_shared_mask_is_the_mean_of_the_last_hidden_features():
    # Reference (tmlr-group/SMM, channels=1): no output convolution; torch.mean over the last hidden
    # layer's ReLU features (after its pooling), the one mask broadcast to every channel.
    spec = jr.ImageSpec(size=16)
    m = jr.input.smm(patch_size=4, mask_channels="shared")
    theta = _nonzero(m.init(jax.random.key(0), spec))
    assert sorted(theta["net"]) == [f"{k}{i}" for k in ("conv", "norm") for i in range(4)]
    assert sum(a.size for a in jax.tree.leaves(theta["net"])) == 26_499 - (9 * 64 * 3 + 3)
    x = images(2, (16, 16))
    y = xn = spec.normalize(x)
    for i in range(4):
        y = jax.nn.relu(_norm(_conv(y, theta["net"][f"conv{i}"]), theta["net"][f"norm{i}"], "instance"))
        y = _max_pool(y) if i < 2 else y
    coarse = jnp.mean(y, axis=-1, keepdims=True)
    assert float(coarse.min()) >= 0
    want = xn + theta["delta"] * upsample_patches(coarse, 4)
    np.testing.assert_allclose(m.apply(theta, x, spec), want, rtol=1e-5, atol=1e-5)


def test_smm_conv_equals_lax_conv():
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
    p = {"w": jax.random.normal(jax.random.key(1), (3, 3, 3, 4)), "b": jnp.arange(4.0)}
    want = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(_conv(x, p), want + p["b"], rtol=1e-5, atol=1e-5)


def test_smm_patch_upsampling_is_exact_copy():
    coarse = jax.random.normal(jax.random.key(0), (2, 3, 4, 3))
    up = upsample_patches(coarse, 8)
    want = np.kron(np.asarray(coarse), np.ones((1, 8, 8, 1), np.float32))
    np.testing.assert_array_equal(up, want)


def test_smm_max_pool_routes_the_gradient_to_each_windows_argmax():
    x = jax.random.permutation(jax.random.key(0), jnp.arange(2 * 4 * 6 * 3.0)).reshape(2, 4, 6, 3)
    want = x.reshape(2, 2, 2, 3, 2, 3).max(axis=(2, 4))
    np.testing.assert_array_equal(_max_pool(x), want)
    g = jax.random.normal(jax.random.key(1), want.shape)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(_max_pool(x) * g)))(x)
    is_max = x == upsample_patches(want, 2)
    np.testing.assert_array_equal(grad, jnp.where(is_max, upsample_patches(g, 2), 0.0))
    # Finite after a normalisation that XLA recomputes in the backward pass: with reshape + max
    # this was 0/0 (an empty max-equality mask) at LLVM -O0, which the test process runs at.
    w, norm = jax.random.normal(jax.random.key(2), (3, 3)), {"scale": jnp.ones(3), "bias": jnp.zeros(3)}

    def loss(x):
        return jnp.sum(_max_pool(jax.nn.relu(_norm(jnp.tanh(x @ w) * 1.7 + 0.3, norm, "instance"))) ** 2)

    chex.assert_tree_all_finite(jax.jit(jax.grad(loss))(x))


def test_smm_apply_is_x_plus_delta_times_mask():
    spec = IMAGENET
    m = jr.input.smm()
    theta = _nonzero(m.init(jax.random.key(0), spec))
    x = images(3, (32, 32))
    xn = spec.normalize(x)
    want = xn + theta["delta"] * upsample_patches(mask_net(theta["net"], xn), 8)
    np.testing.assert_allclose(m.apply(theta, x, spec), want, rtol=1e-5, atol=1e-5)
    # instance norm: each image's output is independent of the rest of its batch
    np.testing.assert_allclose(m.apply(theta, x[:1], spec), m.apply(theta, x, spec)[:1], rtol=1e-5, atol=1e-5)
    mb = jr.input.smm(norm="batch")
    assert not np.allclose(mb.apply(theta, x[:1], spec), mb.apply(theta, x, spec)[:1], atol=1e-4)


# ------------------------------------------------------------------- fixed


def test_fixed_add_and_paste():
    spec = jr.ImageSpec(size=4)
    pattern = np.linspace(0, 1, 48, dtype=np.float32).reshape(4, 4, 3)
    mask = np.zeros((4, 4), np.float32)
    mask[1:3, 1:3] = 1
    x = images(2, (4, 4))
    added = jr.input.fixed(pattern)
    assert added.init(jax.random.key(0), spec) == ()
    assert added.tags.format == Format.FIXED
    np.testing.assert_allclose(added.apply((), x, spec), np.asarray(x) + pattern, atol=1e-6)
    pasted = jr.input.fixed(pattern, mask, mode="paste")
    want = np.asarray(x).copy()
    want[:, 1:3, 1:3] = pattern[1:3, 1:3]
    np.testing.assert_allclose(pasted.apply((), x, spec), want, atol=1e-6)
    np.testing.assert_allclose(
        pasted.visualize((), spec), np.where(mask[..., None] > 0, pattern, 0.5), atol=1e-6
    )


# ---------------------------------------------------------------- sequence


def test_sequence_pad_by_hand_and_through_a_frozen_model():
    spec = jr.SequenceSpec(length=10, mean=0.1, std=2.0, num_classes=5)
    m = jr.input.sequence_pad(4, l2=0.05)
    delta = jnp.arange(10.0)[:, None]
    x = jnp.array([[0.1, -0.2, 0.3, 0.9]])
    out = np.asarray(m.apply({"delta": delta}, x, spec))[0, :, 0] * 2.0 + 0.1
    np.testing.assert_allclose(
        out, [0, 1, 2, 0.1, -0.2, 0.3, 0.9, 7, 8, 9], atol=1e-6
    )  # ⌊(10 − 4)/2⌋ = 3 before
    np.testing.assert_allclose(m.penalty({"delta": delta}), 0.05 * 285)
    vis = m.visualize({"delta": delta / 10}, spec)
    chex.assert_shape(vis, (10, 1))
    np.testing.assert_allclose(vis[:3, 0], [0.5, 0.55, 0.6], atol=1e-6)

    module = TinySeqModel()
    frozen = jr.from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, 10, 1))), spec)
    program = jr.reprogram(frozen, input=m)
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(1), 2))
    got = jax.jit(lambda t: jr.candidates.apply(program, t, frozen.params, x))(thetas)
    chex.assert_shape(got, (2, 1, 5))
    g = jax.jit(jax.grad(lambda t: jnp.sum(program.apply(t, frozen.params, x) ** 2)))(
        _nonzero(program.init(jax.random.key(0)))
    )
    assert bool(jnp.any(g["input"]["delta"] != 0))
    with pytest.raises(ValueError, match=r"sequence_pad: x must lie in \[-1, 1\]"):
        m.apply({"delta": delta}, 3 * x, spec)


def test_sequence_pad_visualize_with_a_range_that_excludes_zero():
    spec = jr.SequenceSpec(length=6, value_range=(0.5, 2.5))  # a zero series used to fail the range check
    vis = np.asarray(jr.input.sequence_pad(2).visualize({"delta": jnp.ones((6, 1))}, spec))[:, 0]
    np.testing.assert_allclose(
        vis, [0.25, 0.25, 0, 0, 0.25, 0.25], atol=1e-6
    )  # quiet target: the low end 0.5


# -------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "x", "match"),
    [
        (
            lambda: jr.input.pad(16),
            jnp.zeros((16, 16, 3)),
            r"pad: x must be a batch of images \(N, H, W, C\)",
        ),
        (lambda: jr.input.pad(16), jnp.zeros((1, 16, 16, 3), jnp.uint8), "pad: x must be floating point"),
        (lambda: jr.input.pad(16), jnp.zeros((1, 16, 16, 2)), "pad: x has 2 channels"),
        (lambda: jr.input.pad(16), jnp.zeros((1, 17, 16, 3)), r"expected target_size=\(16, 16\)"),
        (lambda: jr.input.pad(16), jnp.full((1, 16, 16, 3), 255.0), r"pad: x must lie in \[0, 1\]"),
        (lambda: jr.input.full(), jnp.full((1, 16, 16, 3), jnp.nan), "full: x contains NaN"),
        (lambda: jr.input.smm(), -jnp.ones((1, 16, 16, 3)), r"smm: x must lie in \[0, 1\]"),
    ],
)
def test_bad_inputs_name_the_argument(build, x, match):
    m = build()
    theta = m.init(jax.random.key(0), IMAGENET)
    with pytest.raises((ValueError, TypeError), match=match):
        m.apply(theta, x, IMAGENET)


def test_bad_configuration_names_the_argument():
    with pytest.raises(ValueError, match=r"pad: target_size=\(40, 40\) must be smaller"):
        jr.input.pad(40).init(jax.random.key(0), IMAGENET)
    with pytest.raises(TypeError, match="pad: spec must be a jr.ImageSpec"):
        jr.input.pad(16).init(jax.random.key(0), jr.SequenceSpec(length=4))
    for size in ("28", (27.5, 28), True):  # a str used to read as (2, 8), a float was truncated
        with pytest.raises(TypeError, match=r"pad: target_size must be an int or a pair \(h, w\)"):
            jr.input.pad(size)
    assert jr.input.pad(np.int64(16)).init(jax.random.key(0), IMAGENET)["delta"].shape == (32, 32, 3)
    with pytest.raises(ValueError, match="pad: init must be one of"):
        jr.input.pad(16, init="ones")
    with pytest.raises(ValueError, match=r"pad: theta\['delta'\] has shape \(8, 8, 3\)"):
        jr.input.pad(6).apply({"delta": jnp.zeros((8, 8, 3))}, images(1, (6, 6)), IMAGENET)
    with pytest.raises(ValueError, match="smm: patch_size=8 must divide"):
        jr.input.smm().init(jax.random.key(0), jr.ImageSpec(size=36))
    with pytest.raises(ValueError, match="smm: patch_size must be one of"):
        jr.input.smm(patch_size=32)
    with pytest.raises(ValueError, match="watermark: width=.* is too wide"):
        jr.input.watermark(20).init(jax.random.key(0), IMAGENET)
    with pytest.raises(ValueError, match="pad_prompter: width=16 needs"):
        jr.input.pad_prompter(16).init(jax.random.key(0), IMAGENET)
    for width in ((3, 5), 2.5, "3"):  # a pair used to keep its first entry silently
        with pytest.raises(TypeError, match="pad_prompter: width must be"):
            jr.input.pad_prompter(width)
    with pytest.raises(ValueError, match="patch: position=.* outside the canvas"):
        jr.input.patch(8, position=(30, 0)).init(jax.random.key(0), IMAGENET)
    for position in ((1.5, 0), (1, 2, 3), 4, ("1", 2), (True, 0)):  # floats were truncated by int()
        with pytest.raises(TypeError, match=r"patch: position must be a pair \(row, col\) of ints"):
            jr.input.patch(8, position=position)
    assert jr.input.patch(8, position=(np.int64(1), 2)).init(jax.random.key(0), IMAGENET)["patch"].shape == (
        8,
        8,
        3,
    )
    with pytest.raises(ValueError, match="fixed: mode='paste' needs a mask"):
        jr.input.fixed(np.zeros((32, 32, 3), np.float32), mode="paste")
    nan = np.full((32, 32), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"fixed: mask values must lie in \[0, 1\] \(no NaN\)"):
        jr.input.fixed(np.zeros((32, 32, 3), np.float32), nan, mode="paste")
    with pytest.raises(ValueError, match="fixed: pattern has NaN/inf values"):
        jr.input.fixed(nan)
    with pytest.raises(ValueError, match=r"fixed: pattern has shape \(16, 16, 3\)"):
        jr.input.fixed(np.zeros((16, 16, 3), np.float32)).init(jax.random.key(0), IMAGENET)
    with pytest.raises(ValueError, match="sequence_pad: target_length=20 must be smaller"):
        jr.input.sequence_pad(20).init(jax.random.key(0), jr.SequenceSpec(length=16))


def test_value_checks_skip_tracers():
    m = jr.input.pad(16)
    theta = m.init(jax.random.key(0), IMAGENET)
    bad = jnp.full((1, 16, 16, 3), 2.0)  # out of range, but traced: no concretization error
    chex.assert_shape(jax.jit(lambda x: m.apply(theta, x, IMAGENET))(bad), (1, 32, 32, 3))
