"""CLIP port: parity with ``transformers`` on small random configs, sites, tokens, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import clip

# XLA:CPU spends seconds compiling each CLIP program at the default LLVM -O2; the
# tests compile at -O0 (about 2x faster, same HLO optimisations and numerics).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SOS, PAD = 48, 0
# eos 7 is not the largest id, so "first eos" and "argmax" pool different tokens;
# eos 2 is the legacy rule (argmax of the ids: the original vocabulary's EOT is its largest token).
EOS = {"first_eos": 7, "legacy_argmax": 2}
IDS = {
    "first_eos": [[SOS, 30, 31, 7, PAD, PAD, PAD, PAD, PAD], [SOS, 40, 41, 42, 43, 7, 7, PAD, PAD]],
    "legacy_argmax": [[SOS, 30, 2, 49, PAD, PAD, PAD, PAD, PAD], [SOS, 40, 41, 42, 43, 49, PAD, PAD, PAD]],
}


@functools.cache
def checkpoint(rule: str, root: str):
    """A random ``transformers.CLIPModel`` saved to ``root``; patch 32, so it is a ViT-B/32 shape."""
    text = dict(
        vocab_size=50, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, eos_token_id=EOS[rule], bos_token_id=SOS, pad_token_id=PAD,
    )  # fmt: skip
    vision = dict(image_size=64, patch_size=32, hidden_size=24, intermediate_size=30, num_hidden_layers=2,
                  num_attention_heads=3)  # fmt: skip
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # a non-default temperature, so the scale's conversion is tested
    model.save_pretrained(root)
    return model


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("clip")


@pytest.fixture
def hf_dir(root):
    """The "first_eos" checkpoint's directory (saved once per module)."""
    checkpoint("first_eos", str(root / "first_eos"))
    return str(root / "first_eos")


def images(n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, 64, 64)).astype(np.float32)  # NCHW, normalised


@functools.cache
def forward(module):
    return jit(lambda p, x, ids, eot: module.apply(p, x, ids, eot))


@pytest.mark.parametrize("rule", ["first_eos", "legacy_argmax"])
def test_parity_with_transformers(rule, root):
    hf = checkpoint(rule, str(root / rule))
    module, params = clip.from_hf(root / rule)
    assert module.config.text.eos_token_id == EOS[rule] and module.config.vision.patch_size == 32
    ids, x = np.asarray(IDS[rule]), images()
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(x))
    eot = clip.eot_positions(ids, EOS[rule])
    np.testing.assert_array_equal(eot, [3, 5])
    logits, image, text = forward(module)(params, x.transpose(0, 2, 3, 1), ids, eot)
    for got, ref in [(logits, want.logits_per_image), (image, want.image_embeds), (text, want.text_embeds)]:
        ref = ref.numpy()
        assert np.abs(np.asarray(got) - ref).max() <= 1e-4 * np.abs(ref).max()


def test_zoo_load_is_the_zero_shot_classifier(hf_dir):
    hf = checkpoint("first_eos", hf_dir)
    ids, x = np.asarray(IDS["first_eos"]), images()
    model = jr.models.load("clip_vit_b32", weights=hf_dir, class_token_ids=ids, class_names=["cat", "dog"])
    assert isinstance(model.spec, clip.CLIPSpec) and isinstance(model.spec, jr.ImageSpec)
    assert (model.spec.num_classes, model.spec.text_width, model.spec.embed_dim) == (2, 32, 12)
    assert model.spec.mean == pytest.approx(clip.OPENAI_MEAN) and model.spec.size == (64, 64)
    got = jit(model.apply)(model.params, jnp.asarray(x.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(x)).logits_per_image.numpy()
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_sites(hf_dir):
    model = jr.models.load("clip_vit_b32", weights=hf_dir, class_token_ids=IDS["first_eos"])
    seen = {}

    def hook(site, value):
        seen[site] = value
        return value

    jax.eval_shape(lambda p: model.apply(p, jnp.zeros((3, 64, 64, 3)), hook=hook), model.params)
    text = seen["text/embeddings"]
    assert isinstance(text, clip.PromptEmbeddings)
    chex.assert_shape([text.embeds, text.image_features], [(2, 9, 32), (3, 12)])
    np.testing.assert_array_equal(text.eot_index, [3, 5])
    assert isinstance(text.eot_index, np.ndarray)  # a constant, so hooks can check it concretely
    chex.assert_shape(seen["vision/embeddings"], (3, 1 + 4, 24))
    for tower, shape in [("text", (2, 9, 32)), ("vision", (3, 5, 24))]:
        for i in range(2):
            chex.assert_shape([seen[f"{tower}/layer_{i}/input"], seen[f"{tower}/layer_{i}"]], [shape, shape])


def test_inserted_tokens_get_positions_and_causal_mask_rebuilt(hf_dir):
    """A hook that inserts token 20 after SOS (updating the EOT index) equals writing it in the ids."""
    module, params = clip.from_hf(hf_dir)
    ids, x = np.asarray(IDS["first_eos"])[:, :8], images().transpose(0, 2, 3, 1)
    model = clip.classifier(module, params, ids)
    table = params["params"]["text"]["token_embedding"]["embedding"]

    def insert(site, value):
        if site != "text/embeddings":
            return value
        e = value.embeds
        new = jnp.broadcast_to(table[20], (e.shape[0], 1, e.shape[-1]))
        return value._replace(
            embeds=jnp.concatenate([e[:, :1], new, e[:, 1:]], 1), eot_index=value.eot_index + 1
        )

    got = jit(lambda p, x: model.apply(p, x, hook=insert))(params, x)
    written = np.insert(ids, 1, 20, axis=1)
    logits, _, _ = forward(module)(params, x, written, clip.eot_positions(written, 7))
    chex.assert_trees_all_close(got, logits, rtol=1e-5, atol=1e-5)


def test_eot_positions_and_class_prompts():
    ids = np.array([[5, 9, 3, 3, 0], [5, 3, 9, 0, 0]])
    np.testing.assert_array_equal(clip.eot_positions(ids, 3), [2, 1])  # first eos
    np.testing.assert_array_equal(clip.eot_positions(ids, 2), [1, 2])  # legacy: argmax
    with pytest.raises(ValueError, match="rows \\[0\\]"):
        clip.eot_positions([[1, 2], [4, 4]], 4)
    ids, eot = clip.class_prompts([[7, 8], [9]], prefix=[3, 3], sos_id=1, eos_id=2, context_length=7)
    np.testing.assert_array_equal(ids, [[1, 3, 3, 7, 8, 2, 0], [1, 3, 3, 9, 2, 0, 0]])
    np.testing.assert_array_equal(eot, [5, 4])
    with pytest.raises(ValueError, match="context_length=4"):
        clip.class_prompts([[7, 8]], prefix=[3], sos_id=1, eos_id=2, context_length=4)


def test_tokenize_with_a_tokenizers_tokenizer(hf_dir):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {
        "<sos>": SOS,
        "<eos>": 7,
        "<unk>": 1,
        "a": 10,
        "photo": 11,
        "of": 12,
        "cat": 13,
        "dog": 14,
        ".": 15,
    }
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<sos> $A <eos>", special_tokens=[("<sos>", SOS), ("<eos>", 7)]
    )
    ids, eot = clip.tokenize(tok, ["a photo of a cat .", "dog"], context_length=8)
    np.testing.assert_array_equal(ids, [[SOS, 10, 11, 12, 10, 13, 15, 7], [SOS, 14, 7, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(eot, [7, 2])
    ids, eot = clip.tokenize(tok, ["a photo of a cat ."], context_length=5)  # truncated, EOT kept
    np.testing.assert_array_equal(ids, [[SOS, 10, 11, 12, 7]])
    model = jr.models.load("clip_vit_b32", weights=hf_dir, class_names=["cat", "dog"], tokenizer=tok)
    assert model.spec.class_names == ("cat", "dog")
    chex.assert_shape(jax.eval_shape(model.apply, model.params, jnp.zeros((1, 64, 64, 3))), (1, 2))


def test_errors(hf_dir, tmp_path):
    with pytest.raises(ValueError, match="no pretrained CLIP ships offline"):
        jr.models.load("clip_vit_b32")
    with pytest.raises(ValueError, match="class prompts"):
        jr.models.load("clip_vit_b32", weights=hf_dir)
    with pytest.raises(FileNotFoundError, match="config.json"):
        clip.from_hf(tmp_path)
    module, params = clip.from_hf(hf_dir)
    with pytest.raises(ValueError, match="vocab_size=50"):
        clip.classifier(module, params, [[SOS, 50, 7]])
    with pytest.raises(ValueError, match="no eos_token_id=7"):
        clip.classifier(module, params, [[SOS, 5, 6]])
    with pytest.raises(ValueError, match="context_length=16"):
        clip.classifier(module, params, np.full((1, 17), 7))
    model = clip.classifier(module, params, IDS["first_eos"])
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(model.apply, model.params, jnp.zeros((1, 3, 64, 64)))
    from safetensors.numpy import load_file

    state = load_file(f"{hf_dir}/model.safetensors")
    deeper = clip.Config(
        clip.TextConfig(**{**vars(module.config.text), "depth": 3}), module.config.vision, 12
    )
    with pytest.raises(ValueError, match="lacks tensor 'text_model.encoder.layers.2"):
        clip.convert(state, deeper)
    with pytest.raises(ValueError, match="does not use"):
        clip.convert({**state, "extra.weight": np.zeros(1)}, module.config)
    wider = clip.Config(module.config.text, module.config.vision, 13)
    with pytest.raises(
        ValueError, match=r"shape mismatch for parameter .*projection.*\(32, 12\).*\(32, 13\)"
    ):
        clip.convert(state, wider)
