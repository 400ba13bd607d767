"""Prefix tuning / P-tuning v2 positions against PEFT and Hugging Face (issue #21).

PEFT hands the prefix to a Hugging Face model as ``past_key_values`` of length ``P``:
the model's position ids then start at ``P`` (and PEFT adds ``P`` to position ids a
caller passes). ``positions="after_prefix"`` reproduces that; ``"from_zero"`` keeps the
real tokens at ``0..n-1``. The reference is PEFT itself when it is installed, and always
transformers called with the same ``past_key_values`` (a ``DynamicCache``), the
prefix's attention mask and ``position_ids = P + cumsum(mask) - 1``, which is what PEFT does.
"""

import copy
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_hf

import jaxreprog as jr
from jaxreprog.hooks import prepend_kv
from jaxreprog.models import gpt2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

P = 3
VOCAB, LAYERS, HEADS, WIDTH, LENGTHS, batch = (
    tiny_hf.VOCAB,
    tiny_hf.LAYERS,
    tiny_hf.HEADS,
    tiny_hf.WIDTH,
    tiny_hf.LENGTHS,
    tiny_hf.batch,
)


def ours(model, method, theta, ids, mask):
    """Every position's output (GPT-2: logits; BERT: token states) under ``method``."""
    x = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask, jnp.int32)}
    hook = lambda site, value: method.apply(theta, site, value, model.spec)  # noqa: E731
    if model.spec.causal:
        return np.asarray(jax.jit(lambda p, x: gpt2.logits(model, p, x, hook).logits)(model.params, x))
    return np.asarray(jax.jit(lambda p, x: model.apply(p, x, hook))(model.params, x))


def hf_with_cache(reference, kv, ids, mask):
    """transformers with ``kv`` ``(layers, 2, P, H, Dh)`` as ``past_key_values``, as PEFT calls it."""
    b = ids.shape[0]
    cache = transformers.DynamicCache()
    for layer, (k, v) in enumerate(np.asarray(kv)):
        k, v = (torch.tensor(t).permute(1, 0, 2)[None].expand(b, -1, -1, -1).contiguous() for t in (k, v))
        cache.update(k, v, layer)
    positions = P + np.maximum(np.cumsum(mask, 1) - 1, 0)
    # transformers 5 renames past_key_values to cache (the old name goes in 5.40)
    name = "cache" if "cache" in inspect.signature(reference.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = reference(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(np.concatenate([np.ones((b, P), np.int64), mask], 1)),
            position_ids=torch.tensor(positions),
            **{name: cache},
        )
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


def peft_output(peft_model, ids, mask, side):
    """PEFT's forward; with left padding the caller passes ``cumsum(mask) - 1`` (PEFT adds ``P``)."""
    kwargs = {}
    if side == "left":
        kwargs["position_ids"] = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
    with torch.no_grad():
        out = peft_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    return tiny_hf.gpt2(tmp_path_factory.mktemp("gpt2"), torch, transformers)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_hf.bert_encoder(tmp_path_factory.mktemp("bert"), torch, transformers)


def free_prefix(seed=0):
    """PEFT's prefix-encoder weight ``(P, layers * 2 * D)`` and the same prefix as theta."""
    weight = np.random.default_rng(seed).normal(size=(P, LAYERS * 2 * WIDTH)).astype(np.float32)
    kv = weight.reshape(P, LAYERS, 2, HEADS, WIDTH // HEADS).transpose(1, 2, 0, 3, 4)
    return weight, {"kv": jnp.asarray(kv)}


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("which", ["gpt", "encoder"])
def test_after_prefix_matches_hugging_face_past_key_values(request, which, side):
    reference, model = request.getfixturevalue(which)
    _, theta = free_prefix()
    ids, mask = batch(side)
    real = mask.astype(bool)
    want = hf_with_cache(reference, theta["kv"], ids, mask)
    got = ours(model, jr.hidden.p_tuning_v2(P), theta, ids, mask)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)
    old = ours(model, jr.hidden.p_tuning_v2(P, positions="from_zero"), theta, ids, mask)
    assert np.abs(old[real] - want[real]).max() > 1e-2, "from_zero reads other position embeddings"


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("projection", [False, True])
def test_gpt2_prefix_matches_peft(gpt, side, projection):
    peft = pytest.importorskip("peft")
    reference, model = gpt
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=projection, encoder_hidden_size=8
    )
    peft_model = peft.get_peft_model(copy.deepcopy(reference), config).eval()
    prefix = peft_model.prompt_encoder["default"]
    weight, theta = free_prefix(seed=2)
    with torch.no_grad():
        prefix.embedding.weight.copy_(torch.tensor(weight[:, :WIDTH] if projection else weight))
    if projection:  # PEFT's PrefixEncoder: Embedding(P, D) -> Linear -> Tanh -> Linear
        first, last = prefix.transform[0], prefix.transform[2]
        with torch.no_grad():
            last.weight.normal_(0, 0.3)
            last.bias.normal_(0, 0.3)
        theta = {
            "inputs": jnp.asarray(weight[:, :WIDTH]),
            "w1": jnp.asarray(first.weight.detach().numpy().T),
            "b1": jnp.asarray(first.bias.detach().numpy()),
            "w2": jnp.asarray(last.weight.detach().numpy().T),
            "b2": jnp.asarray(last.bias.detach().numpy()),
        }
    method = jr.hidden.prefix_tuning(P, reparameterize=8 if projection else None)
    ids, mask = batch(side, seed=3)
    real = mask.astype(bool)
    want = peft_output(peft_model, ids, mask, side)
    np.testing.assert_allclose(ours(model, method, theta, ids, mask)[real], want[real], atol=1e-4)


def test_bert_prefix_matches_peft(encoder):
    peft = pytest.importorskip("peft")
    reference, model = encoder
    config = peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=P)
    peft_model = peft.get_peft_model(copy.deepcopy(reference), config).eval()
    weight, theta = free_prefix(seed=4)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(torch.tensor(weight))
    for side in ("right", "left"):
        ids, mask = batch(side, seed=5)
        real = mask.astype(bool)
        want = peft_output(peft_model, ids, mask, side)
        got = ours(model, jr.hidden.prefix_tuning(P, reparameterize=None), theta, ids, mask)
        np.testing.assert_allclose(got[real], want[real], atol=1e-4)


def test_from_zero_is_the_plain_key_value_prefix(gpt):
    """from_zero leaves the embeddings alone: exactly K/V prepended at the kv sites."""
    _, model = gpt
    _, theta = free_prefix()
    ids, mask = batch("right")
    method = jr.hidden.p_tuning_v2(P, positions="from_zero")

    class Plain:
        @staticmethod
        def apply(theta, site, value, spec):
            if site.startswith("layer_") and site.endswith("/kv"):
                kv = theta["kv"][int(site.split("_")[1].split("/")[0])]
                return prepend_kv(value, kv[0], kv[1])
            return value

    np.testing.assert_array_equal(ours(model, method, theta, ids, mask), ours(model, Plain, theta, ids, mask))
    e = jr.models.text.embed(jnp.asarray(ids), jnp.asarray(mask), model.params["params"]["wte"]["embedding"])
    assert method.apply(theta, "embeddings", e, model.spec) is e
    shifted = jr.hidden.p_tuning_v2(P).apply(theta, "embeddings", e, model.spec)
    np.testing.assert_array_equal(shifted.positions, e.positions + P)
    assert jr.hidden.p_tuning_v2(P).apply(theta, "embeddings_step", e, model.spec) is e


def test_positions_errors(gpt):
    _, model = gpt
    with pytest.raises(ValueError, match="positions must be 'after_prefix' or 'from_zero'"):
        jr.hidden.prefix_tuning(2, positions="shifted")
    _, theta = free_prefix()
    ids = np.ones((1, 22), np.int64)  # 22 tokens + 3 prefix > 24 positions
    with pytest.raises(ValueError, match="positions='after_prefix' puts 22 tokens at positions 3..24"):
        ours(model, jr.hidden.p_tuning_v2(P), theta, ids, np.ones_like(ids))
    ours(model, jr.hidden.p_tuning_v2(P, positions="from_zero"), theta, ids, np.ones_like(ids))
