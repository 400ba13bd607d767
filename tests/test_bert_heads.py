"""BERT's own heads (issue #23 item 4): pooler, sequence classification and masked LM, read from
Hugging Face checkpoints and compared with transformers at 1e-4; the masked-LM logits keep the
input's positions when a soft prompt is inserted."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG = dict(
    vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=32,
)  # fmt: skip
IDS = np.array([[2, 7, 9, 11, 3], [2, 5, 4, 3, 0]])
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random BertForMaskedLM and BertForSequenceClassification (3 labels), saved as HF folders."""
    torch.manual_seed(0)
    folders = {}
    for name, cls, extra in (
        ("mlm", transformers.BertForMaskedLM, {}),
        ("classifier", transformers.BertForSequenceClassification, {"num_labels": 3}),
    ):
        model = cls(transformers.BertConfig(**CONFIG, **extra)).eval()
        with torch.no_grad():  # random, not the initialiser's zeros, so every tensor matters
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        folders[name] = (folder, model)
    return folders


def _x():
    return {"input_ids": jnp.asarray(IDS, jnp.int32), "attention_mask": jnp.asarray(MASK, jnp.int32)}


def _torch(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK))


def test_classifier_and_pooler_match_transformers(saved):
    folder, reference = saved["classifier"]
    model = bert.load("bert", weights=folder, head="classifier")
    got = jax.jit(model.apply)(model.params, _x())
    np.testing.assert_allclose(got, _torch(reference).logits.numpy(), atol=1e-4)
    pooler = bert.load("bert", weights=folder, head="pooler")
    with torch.no_grad():
        want = reference.bert(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK)).pooler_output
    np.testing.assert_allclose(jax.jit(pooler.apply)(pooler.params, _x()), want.numpy(), atol=1e-4)


def test_masked_lm_matches_transformers_and_keeps_the_input_positions_under_a_prompt(saved):
    folder, reference = saved["mlm"]
    model = bert.load("bert", weights=folder, head="mlm")
    got = jax.jit(model.apply)(model.params, _x())
    want = _torch(reference).logits.numpy()
    np.testing.assert_allclose(got[MASK == 1], want[MASK == 1], atol=1e-4)
    program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(3))
    theta = program.init(jax.random.key(0))
    out = jax.jit(program.apply)(theta, model.params, _x())
    chex.assert_shape(out, (2, 5, CONFIG["vocab_size"]))  # the input's 5 positions, not 8
    grad = jax.jit(jax.grad(lambda t: jnp.sum(program.apply(t, model.params, _x())[:, 1] ** 2)))(theta)
    assert np.abs(np.asarray(grad["embedding"]["prompt"])).sum() > 0


def test_a_missing_head_or_a_bad_name_is_a_clear_error(saved, tmp_path):
    folder, _ = saved["mlm"]
    with pytest.raises(KeyError, match="pooler.dense.weight"):
        bert.load("bert", weights=folder, head="classifier")
    with pytest.raises(ValueError, match="head must be None, 'pooler', 'classifier' or 'mlm'"):
        bert.load("bert", weights=folder, head="qa")
