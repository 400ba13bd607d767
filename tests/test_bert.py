"""BERT / all-MiniLM-L6-v2: parity with transformers on the real weights, padding, pooling."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import pack

import jaxreprog as jr
from jaxreprog.models import bert, checkpoint

TEXTS = [
    "Shares in the bank fell sharply after the announcement.",
    "The striker scored twice in the final minutes.",
    "a",
    "New phones will ship with faster chips and longer battery life, the company said on Monday.",
]


def encode(texts, max_length=32):
    enc = bert.tokenizer(max_length=max_length).encode_batch(texts)
    return {
        "input_ids": jnp.asarray([e.ids for e in enc], jnp.int32),
        "attention_mask": jnp.asarray([e.attention_mask for e in enc], jnp.int32),
    }


@pytest.fixture(scope="module")
def minilm():
    return jr.models.load("all_minilm_l6_v2")


def test_minilm_matches_transformers(minilm):
    """Mean-pooled, L2-normalised sentence embeddings equal sentence-transformers' recipe
    run by transformers.BertModel (PyTorch) on the same safetensors file."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    x = encode(TEXTS)
    ours = np.asarray(jax.jit(minilm.apply)(minilm.params, x))
    reference = transformers.BertModel.from_pretrained(bert._package_dir()).eval()
    ids, mask = (torch.tensor(np.asarray(x[k]), dtype=torch.long) for k in ("input_ids", "attention_mask"))
    with torch.no_grad():
        h = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask[..., None].float()
        want = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1).numpy()
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, want, atol=1e-5)
    # Paraphrase structure the model is known for: finance is closer to finance than to sport.
    z = np.asarray(jax.jit(minilm.apply)(minilm.params, encode(["Stocks dropped.", "Bank shares slid."])))
    assert z[0] @ z[1] > z[0] @ ours[1]


def test_tokenizer_matches_transformers_wordpiece():
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertTokenizer(f"{bert._package_dir()}/vocab.txt", do_lower_case=True)
    for t in TEXTS:
        assert bert.tokenizer().encode(t).ids == reference(t)["input_ids"]


def test_spec(minilm):
    s = minilm.spec
    assert (s.vocab_size, s.hidden_size, s.num_layers, s.num_heads, s.max_length) == (30522, 384, 6, 12, 512)
    assert (s.bos_id, s.eos_id, s.pad_id, s.causal) == (101, 102, 0, False)


@pytest.fixture(scope="module")
def tiny():
    return bert.BertConfig(
        vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=24
    )


ROWS = [np.array([1, 5, 6, 7, 8, 2]), np.array([1, 9, 2]), np.array([1, 3, 4, 2])]


def test_padding_side_and_padded_ids_do_not_matter(tiny):
    model = bert.from_config(tiny, jax.random.key(0))
    apply = jax.jit(model.apply)
    right = apply(model.params, pack(ROWS, ["right"] * 3))
    left = apply(model.params, pack(ROWS, ["left"] * 3))
    np.testing.assert_allclose(left, right, atol=1e-6)
    x = pack(ROWS, ["left", "right", "left"])
    noisy = {**x, "input_ids": jnp.where(x["attention_mask"] == 1, x["input_ids"], 17)}
    np.testing.assert_allclose(apply(model.params, noisy), right, atol=1e-6)
    one = apply(model.params, pack(ROWS[1:2], ["right"]))
    np.testing.assert_allclose(one[0], right[1], atol=1e-6)


def test_pooling(tiny):
    model = bert.from_config(tiny, jax.random.key(1))
    x = pack(ROWS, ["left", "right", "right"])

    def pooled(**kw):
        return np.asarray(jax.jit(bert.Bert(tiny, **kw).apply)(model.params, x))

    h, mask = pooled(pooling="none"), np.asarray(x["attention_mask"], bool)
    np.testing.assert_allclose(
        pooled(pooling="cls", normalize=False), np.stack([h[i][mask[i]][0] for i in range(3)]), atol=1e-6
    )
    want = np.stack([h[i][mask[i]].mean(0) for i in range(3)])
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(pooled(), want, atol=1e-6)


def test_errors(tiny):
    model = bert.from_config(tiny, jax.random.key(0))
    with pytest.raises(ValueError, match="attention_mask"):
        model.apply(model.params, {"input_ids": jnp.zeros((1, 3), jnp.int32)})
    with pytest.raises(TypeError, match="integer token ids"):
        model.apply(model.params, {"input_ids": jnp.zeros((1, 3)), "attention_mask": jnp.ones((1, 3))})
    with pytest.raises(ValueError, match="24 positions"):
        x = {"input_ids": jnp.zeros((1, 30), jnp.int32), "attention_mask": jnp.ones((1, 30), jnp.int32)}
        model.apply(model.params, x)
    with pytest.raises(ValueError, match="pooling"):
        bert.load(pooling="max")
    with pytest.raises(ValueError, match="weights="):
        bert.load("bert_base")


def test_token_lists_are_accepted(tiny):
    # Python lists used to fail with AttributeError ('list' object has no attribute 'ndim').
    model = bert.from_config(tiny, jax.random.key(0))
    x = pack(ROWS, ["right"] * 3)
    lists = {k: np.asarray(v).tolist() for k, v in x.items()}
    np.testing.assert_array_equal(model.apply(model.params, lists), model.apply(model.params, x))
    with pytest.raises(ValueError, match=r"must be \(B, L\) integer arrays"):
        model.apply(model.params, {"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]]})


def test_convert_refuses_checkpoints_that_do_not_match_the_config():
    # A checkpoint with more layers or other sizes used to load silently.
    folder = bert._model_dir(None)
    state = checkpoint.read_safetensors(f"{folder}/model.safetensors")
    with open(f"{folder}/config.json") as f:
        hf = json.load(f)
    config = bert.BertConfig.from_hf(hf)
    assert {"embeddings.position_ids", "pooler.dense.weight"} <= set(state)  # buffers and pooler: ignored
    heads = {"classifier.weight": np.zeros((2, 384), np.float32)}  # a BertFor* checkpoint's head: ignored
    bert.convert({**{f"bert.{k}": v for k, v in state.items()}, **heads}, config)
    with pytest.raises(
        ValueError, match=r"BERT checkpoint has 16 tensors the model does not use.*'encoder\.layer\.5\."
    ):
        bert.convert(state, config._replace(num_layers=5))
    with pytest.raises(
        ValueError, match=r"shape mismatch .*'position_embeddings'.*\(512, 384\).*\(256, 384\)"
    ):
        bert.convert(state, config._replace(max_positions=256))
    for key, value in [("position_embedding_type", "relative_key"), ("hidden_act", "relu")]:
        with pytest.raises(ValueError, match=f"only {key}="):
            bert.BertConfig.from_hf({**hf, key: value})
