"""ResNet: parity with transformers' ResNet (HF and torchvision names), BN folding, specs, loading errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import resnet

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# XLA:CPU's optimisation passes dominate these tiny programs' cost; the semantics under test do not change.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _hf_resnet(layer_type, hidden_sizes, depths, num_labels=5, seed=0, **config):
    """A small random transformers ResNet whose BN layers have non-trivial statistics (so folding matters)."""
    torch.manual_seed(seed)
    cfg = transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=hidden_sizes,
        depths=depths,
        layer_type=layer_type,
        num_labels=num_labels,
        **config,
    )
    model = transformers.ResNetForImageClassification(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _images(n=2, size=40, seed=0):
    return np.random.RandomState(seed).randn(n, 3, size, size).astype(np.float32)


def _logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).logits.numpy()


def _jax_logits(frozen, x):
    return np.asarray(jit(frozen.apply)(frozen.params, jnp.asarray(x.transpose(0, 2, 3, 1))))


def _assert_parity(got, want):
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _torchvision_state(hf_state):
    """Rename a transformers ResNet state dict to torchvision's names, written out independently."""
    out = {}
    for name, value in hf_state.items():
        parts = name.split(".")
        if name.startswith("resnet.embedder.embedder."):
            new = ("conv1." if parts[3] == "convolution" else "bn1.") + parts[-1]
        elif name.startswith("classifier.1."):
            new = "fc." + parts[-1]
        else:  # resnet.encoder.stages.S.layers.B.(layer.K|shortcut).(convolution|normalization).leaf
            stage, block = int(parts[3]) + 1, parts[5]
            if parts[6] == "shortcut":
                new = f"layer{stage}.{block}.downsample.{0 if parts[7] == 'convolution' else 1}.{parts[-1]}"
            else:
                k = int(parts[7]) + 1
                new = f"layer{stage}.{block}.{'conv' if parts[8] == 'convolution' else 'bn'}{k}.{parts[-1]}"
        out[new] = value
    return out


@pytest.mark.parametrize(
    "layer_type, hidden_sizes, depths",
    [("basic", [8, 16], [1, 2]), ("bottleneck", [16, 32], [2, 1])],
)
def test_parity_with_transformers_checkpoint_dir(tmp_path, layer_type, hidden_sizes, depths):
    model = _hf_resnet(layer_type, hidden_sizes, depths)
    model.save_pretrained(tmp_path)
    x = _images()
    frozen = resnet.from_checkpoint(tmp_path, size=40)
    _assert_parity(_jax_logits(frozen, x), _logits(model, x))


def test_parity_stride_in_1x1_bottleneck(tmp_path):
    model = _hf_resnet("bottleneck", [16, 32], [1, 1], downsample_in_bottleneck=True)
    model.save_pretrained(tmp_path)
    x = _images(size=36)
    _assert_parity(_jax_logits(resnet.from_checkpoint(tmp_path, size=36), x), _logits(model, x))


def test_torchvision_names_from_pth(tmp_path):
    model = _hf_resnet("bottleneck", [16, 32], [2, 2])
    state = _torchvision_state(model.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "fc.bias"} <= set(state)
    torch.save(state, tmp_path / "resnet.pth")
    x = _images(size=32)
    frozen = resnet.from_checkpoint(tmp_path / "resnet.pth", size=32)
    _assert_parity(_jax_logits(frozen, x), _logits(model, x))


def test_zoo_load_resnet18_with_imagenet_spec(tmp_path):
    model = _hf_resnet("basic", [8, 8, 16, 16], [2, 2, 2, 2], num_labels=1000)
    torch.save(_torchvision_state(model.state_dict()), tmp_path / "r18.pth")
    frozen = jr.models.load("resnet18", weights=tmp_path / "r18.pth", size=48)
    spec = frozen.spec
    assert spec.size == (48, 48) and spec.num_classes == 1000 and spec.name == "resnet18"
    assert spec.mean == resnet.IMAGENET_MEAN and spec.std == resnet.IMAGENET_STD
    assert spec.value_range == (0.0, 1.0)
    if spec.class_names is not None:  # ImageNet names ship with tensorflow-datasets
        assert spec.class_names[285] == "Egyptian cat"
    x = _images(size=48)
    _assert_parity(_jax_logits(frozen, x), _logits(model, x))
    # the spec drives an input manipulation's normalisation: x01 -> (x01 - mean) / std
    x01 = jnp.full((1, 48, 48, 3), 0.5)
    chex.assert_trees_all_close(
        spec.normalize(x01)[0, 0, 0], (0.5 - jnp.array(resnet.IMAGENET_MEAN)) / jnp.array(resnet.IMAGENET_STD)
    )
    with pytest.raises(ValueError, match=r"not resnet50 \(\(3, 4, 6, 3\) bottleneck"):
        jr.models.load("resnet50", weights=tmp_path / "r18.pth")


def test_class_names_from_config(tmp_path):
    model = _hf_resnet("basic", [8], [1], num_labels=3)
    model.config.id2label = {0: "cat", 1: "dog", 2: "eel"}
    model.save_pretrained(tmp_path)
    assert resnet.from_checkpoint(tmp_path).spec.class_names == ("cat", "dog", "eel")
    assert resnet.from_checkpoint(tmp_path).spec.size == (224, 224)


def test_gradient_wrt_input_and_features_site(tmp_path):
    model = _hf_resnet("basic", [8], [1])
    model.save_pretrained(tmp_path)
    frozen = resnet.from_checkpoint(tmp_path, size=16)
    x = jnp.asarray(_images(size=16).transpose(0, 2, 3, 1))
    g = jit(jax.grad(lambda x: frozen.apply(frozen.params, x).sum()))(x)
    chex.assert_shape(g, x.shape)
    assert float(jnp.abs(g).sum()) > 0
    seen = {}
    jit(lambda p, x: frozen.apply(p, x, hook=lambda s, v: seen.setdefault(s, v.shape) and v))(
        frozen.params, x
    )
    assert seen["features"] == (2, 8) and seen["layer1_0"] == (2, 4, 4, 8)


def test_one_image_without_batch_axis_is_refused(tmp_path):
    # flax convolutions accept an unbatched (H, W, C) image; the pooling then averaged W and C.
    _hf_resnet("basic", [8], [1]).save_pretrained(tmp_path)
    frozen = resnet.from_checkpoint(tmp_path, size=16)
    with pytest.raises(ValueError, match=r"NHWC images \(B, H, W, C\), got shape \(16, 16, 3\)"):
        frozen.apply(frozen.params, jnp.zeros((16, 16, 3)))


def test_loading_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'resnet19'; known models: .*resnet18, resnet50"):
        jr.models.load("resnet19")
    with pytest.raises(ValueError, match="no pretrained resnet18 weights install offline: pass weights="):
        jr.models.load("resnet18")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pth"):
        resnet.from_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        resnet.from_checkpoint(tmp_path)
    state = {
        k: v.numpy() for k, v in _torchvision_state(_hf_resnet("basic", [8, 16], [1, 2]).state_dict()).items()
    }
    with pytest.raises(ValueError, match="not a ResNet checkpoint"):
        resnet.from_checkpoint({k: v for k, v in state.items() if not k.startswith("conv1")})
    with pytest.raises(ValueError, match="ResNet checkpoint lacks tensor 'layer1.0.bn2.running_var'"):
        resnet.from_checkpoint({k: v for k, v in state.items() if k != "layer1.0.bn2.running_var"})
    state["layer2.1.conv1.weight"] = state["layer2.1.conv1.weight"][:, :8]
    with pytest.raises(
        ValueError,
        match=r"shape mismatch for parameter layer2\.1\.conv1\.kernel: checkpoint has \(3, 3, 8, 16\), "
        r"the model expects \(3, 3, 16, 16\)",
    ):
        resnet.from_checkpoint(state)


def test_unsupported_tensors_and_settings_are_refused(tmp_path):
    # A squeeze-excitation block's tensors and a GELU ResNet used to load silently and run other numbers.
    state = {k: v.numpy() for k, v in _torchvision_state(_hf_resnet("basic", [8], [1]).state_dict()).items()}
    assert any(k.endswith("num_batches_tracked") for k in state)  # buffers: ignored
    resnet.from_checkpoint(state)
    with pytest.raises(
        ValueError, match=r"ResNet checkpoint has 1 tensors the model does not use.*'layer1\.0\.se"
    ):
        resnet.from_checkpoint({**state, "layer1.0.se.fc1.weight": np.ones((2, 8, 1, 1), np.float32)})
    _hf_resnet("basic", [8], [1], hidden_act="gelu").save_pretrained(tmp_path)
    with pytest.raises(NotImplementedError, match="hidden_act='gelu'; only 'relu'"):
        resnet.from_checkpoint(tmp_path)
