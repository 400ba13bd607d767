"""ViT: parity with transformers' ViT (hub, transformers-5 and timm names), sites, spec, loading errors."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import vit

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# XLA:CPU's optimisation passes dominate these tiny programs' cost; the semantics under test do not change.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

HEADS = 4


def _hf_vit(seed=0, **config):
    torch.manual_seed(seed)
    cfg = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    model = transformers.ViTForImageClassification(transformers.ViTConfig(**{**cfg, **config})).eval()
    with torch.no_grad():  # HF initialises LayerNorms to (1, 0) and cls_token near 0: make them matter
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def hf_model():
    return _hf_vit()


def _images(n=2, size=32, seed=0):
    return np.random.RandomState(seed).randn(n, 3, size, size).astype(np.float32)


def _logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).logits.numpy()


def _jax_logits(frozen, x):
    return np.asarray(jit(frozen.apply)(frozen.params, jnp.asarray(x.transpose(0, 2, 3, 1))))


def _assert_parity(got, want):
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_parity_with_transformers_checkpoint_dir(tmp_path, hf_model):
    hf_model.config.id2label = {i: f"class {i}" for i in range(5)}
    hf_model.save_pretrained(tmp_path)
    frozen = vit.from_checkpoint(tmp_path)
    x = _images()
    _assert_parity(_jax_logits(frozen, x), _logits(hf_model, x))
    spec = frozen.spec
    assert isinstance(spec, vit.ViTSpec) and isinstance(spec, jr.ImageSpec)
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.patch_size) == (32, 2, HEADS, 8)
    assert spec.size == (32, 32) and spec.num_classes == 5 and spec.class_names[3] == "class 3"
    assert spec.mean == (0.5,) * 3 and spec.std == (0.5,) * 3


def test_preprocessor_config_sets_normalisation(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})
    )
    spec = vit.from_checkpoint(tmp_path / "model.safetensors").spec
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


def test_parity_transformers5_names_state_dict(hf_model):
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    assert "vit.layers.0.attention.q_proj.weight" in state  # transformers 5's in-memory names
    x = _images(seed=1)
    _assert_parity(_jax_logits(vit.from_checkpoint(state, num_heads=HEADS), x), _logits(hf_model, x))


def _timm_state(model):
    """``model``'s state dict under timm's names."""
    sd = {k: v for k, v in model.state_dict().items()}
    timm = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["vit.layernorm.weight"],
        "norm.bias": sd["vit.layernorm.bias"],
        "head.weight": sd["classifier.weight"],
        "head.bias": sd["classifier.bias"],
    }
    for i in range(2):
        hf, t = f"vit.layers.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            timm[t + "attn.qkv." + leaf] = torch.cat([sd[f"{hf}attention.{p}_proj.{leaf}"] for p in "qkv"])
            timm[t + "attn.proj." + leaf] = sd[f"{hf}attention.o_proj.{leaf}"]
            timm[t + "norm1." + leaf] = sd[f"{hf}layernorm_before.{leaf}"]
            timm[t + "norm2." + leaf] = sd[f"{hf}layernorm_after.{leaf}"]
            timm[t + "mlp.fc1." + leaf] = sd[f"{hf}mlp.fc1.{leaf}"]
            timm[t + "mlp.fc2." + leaf] = sd[f"{hf}mlp.fc2.{leaf}"]
    return timm


def test_parity_timm_names_from_pth(tmp_path):
    model = _hf_vit(seed=1, layer_norm_eps=1e-6)  # timm ViTs use eps 1e-6
    torch.save(_timm_state(model), tmp_path / "vit.pth")
    x = _images(seed=2)
    frozen = vit.from_checkpoint(tmp_path / "vit.pth", num_heads=HEADS)
    _assert_parity(_jax_logits(frozen, x), _logits(model, x))


def test_parity_without_qkv_bias():
    model = _hf_vit(seed=3, qkv_bias=False, num_labels=3)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert not any(k.endswith("q_proj.bias") for k in state)
    x = _images(seed=3)
    _assert_parity(_jax_logits(vit.from_checkpoint(state, num_heads=HEADS), x), _logits(model, x))


def test_unknown_tensors_are_refused_and_the_pooler_ignored(hf_model):
    # Variants this ViT does not implement (timm's pre-norm and layer-scale ViTs) loaded silently and
    # ran without those tensors.
    timm = {k: v.numpy() for k, v in _timm_state(hf_model).items()}
    extra = {"norm_pre.weight": np.ones(32), "norm_pre.bias": np.zeros(32), "blocks.0.ls1.gamma": np.ones(32)}
    with pytest.raises(
        ValueError, match=r"ViT checkpoint has 3 tensors the model does not use.*'blocks\.0\.ls1"
    ):
        vit.from_checkpoint({**timm, **extra}, num_heads=HEADS)
    # An average-pooled ViT (fc_norm instead of norm) is named, not reported as lacking norm.weight.
    timm["fc_norm.weight"], timm["fc_norm.bias"] = timm.pop("norm.weight"), timm.pop("norm.bias")
    with pytest.raises(ValueError, match=r"does not use.*'fc_norm\.bias', 'fc_norm\.weight'"):
        vit.from_checkpoint(timm, num_heads=HEADS)
    hf = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    with pytest.raises(ValueError, match="does not use.*'vit.layers.0.layer_scale'"):
        vit.from_checkpoint({**hf, "vit.layers.0.layer_scale": np.ones(32)}, num_heads=HEADS)
    # ViTModel (no head) keeps a pooler (dense + tanh) that the [CLS] features do not use.
    encoder = transformers.ViTModel(hf_model.config).eval()
    encoder.load_state_dict(
        {k.removeprefix("vit."): v for k, v in hf_model.state_dict().items()}, strict=False
    )
    state = {k: v.numpy() for k, v in encoder.state_dict().items()}
    assert "pooler.dense.weight" in state
    frozen = vit.from_checkpoint(state, num_heads=HEADS)
    x = _images()
    with torch.no_grad():
        want = encoder(torch.from_numpy(x)).last_hidden_state[:, 0].numpy()
    _assert_parity(_jax_logits(frozen, x), want)


def test_sites_and_any_sequence_length(hf_model):
    frozen = vit.from_checkpoint({k: v.numpy() for k, v in hf_model.state_dict().items()}, num_heads=HEADS)
    x = jnp.asarray(_images().transpose(0, 2, 3, 1))
    seen = {}

    def record(site, value):
        seen[site] = value.shape
        return value

    plain = jit(frozen.apply)(frozen.params, x)
    hooked = jit(lambda p, x: frozen.apply(p, x, hook=record))(frozen.params, x)
    chex.assert_trees_all_close(hooked, plain)
    assert seen["embeddings"] == (2, 17, 32)
    assert seen["encoder/layer_0/input"] == seen["encoder/layer_1/input"] == (2, 17, 32)
    assert seen["encoder/layer_1/attn/key"] == (2, 17, HEADS, 8) and seen["features"] == (2, 32)

    def grow(site, value):  # three extra tokens after [CLS]: layers run on 20 tokens, output shape unchanged
        if site != "embeddings":
            return value
        return jnp.concatenate([value[:, :1], jnp.ones((2, 3, 32)), value[:, 1:]], axis=1)

    grown = jit(lambda p, x: frozen.apply(p, x, hook=lambda s, v: record(s, grow(s, v))))(frozen.params, x)
    chex.assert_shape(grown, (2, 5))
    assert seen["encoder/layer_1/input"] == (2, 20, 32)
    assert not np.allclose(grown, plain)


def test_vit_b16_load_and_errors(tmp_path, hf_model):
    with pytest.raises(ValueError, match="no pretrained vit_b16 weights install offline: pass weights="):
        jr.models.load("vit_b16")
    hf_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hold a ViT with .*'hidden_size': 32.*not vit_b16"):
        jr.models.load("vit_b16", weights=tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        vit.from_checkpoint(tmp_path / "nope.safetensors")
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    with pytest.raises(ValueError, match="pass num_heads="):
        vit.from_checkpoint(state)
    with pytest.raises(ValueError, match="num_heads must be a positive divisor of the hidden size 32, got 5"):
        vit.from_checkpoint(state, num_heads=5)
    with pytest.raises(ValueError, match="not a ViT checkpoint"):
        vit.from_checkpoint({"conv1.weight": np.zeros((8, 3, 7, 7))}, num_heads=HEADS)
    bad = dict(state)
    bad["vit.layers.1.mlp.fc2.weight"] = bad["vit.layers.1.mlp.fc2.weight"][:, :48]
    with pytest.raises(ValueError, match=r"shape mismatch .*layer_1.*fc2.*kernel.*\(48, 32\).*\(64, 32\)"):
        vit.from_checkpoint(bad, num_heads=HEADS)
    frozen = vit.from_checkpoint(state, num_heads=HEADS)
    with pytest.raises(ValueError, match=r"x must be \(B, 32, 32, C\)"):
        frozen.apply(frozen.params, jnp.zeros((1, 48, 48, 3)))
