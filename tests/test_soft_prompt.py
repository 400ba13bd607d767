"""Soft prompts (Lester et al. 2021) and P-tuning at the zoo models' embedding site."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import pack

import jaxreprog as jr
from jaxreprog.models import bert, text
from jaxreprog.taxonomy import Format, Location, Operator

CONFIG = bert.BertConfig(
    vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=24
)


@pytest.fixture(scope="module")
def model():
    return bert.from_config(CONFIG, jax.random.key(0))


ROWS = [np.array([1, 5, 6, 7, 2]), np.array([1, 9, 2]), np.array([1, 3, 4, 8, 2])]


def test_insert_positions_by_hand():
    """Two rows: [a b c _] (right-padded) and [_ a b c] (left-padded), a 2-token prompt."""
    mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]])
    e = text.embed(jnp.zeros((2, 4), jnp.int32), mask, jnp.zeros((1, 3)))
    chex.assert_trees_all_equal(e.positions, jnp.array([[0, 1, 2, 2], [0, 0, 1, 2]]))
    p = jnp.ones((2, 3))
    want = {
        "prefix": [[0, 1, 2, 3, 4, 4], [0, 1, 2, 2, 3, 4]],
        "after_first": [[1, 2, 0, 3, 4, 4], [1, 2, 0, 0, 3, 4]],
        "suffix": [[0, 1, 2, 2, 3, 4], [0, 0, 1, 2, 3, 4]],
    }
    for where, positions in want.items():
        out = text.insert(e, p, where)
        chex.assert_shape(out.h, (2, 6, 3))
        real = np.asarray(out.mask)
        np.testing.assert_array_equal(np.where(real, out.positions, -9), np.where(real, positions, -9))
        assert out.prompt.sum() == 4 and out.mask.sum() == 10
    with pytest.raises(ValueError, match="where"):
        text.insert(e, p, "middle")
    with pytest.raises(ValueError, match=r"tokens must be \(P, 3\)"):
        text.insert(e, jnp.ones((2, 4)), "prefix")


@pytest.mark.parametrize("where", ["prefix", "after_first"])
def test_soft_prompt_equals_prompt_tokens(model, where):
    """A prompt of token embeddings gives the token states of the sequence with those
    tokens spliced in: masks, position ids and pooling flags are rebuilt correctly."""
    ids = np.array([11, 12, 13])
    sp = jr.embedding.soft_prompt(3, init=text.word_embeddings(model.params)[ids], where=where)
    theta = sp.init(jax.random.key(0), model.spec)
    states = jr.from_linen(bert.Bert(CONFIG, pooling="none"), model.params, model.spec)
    hook = lambda site, value: sp.apply(theta, site, value, model.spec)  # noqa: E731
    sides = ["left", "right", "right"]
    x = pack(ROWS, sides)
    got = np.asarray(jax.jit(lambda p, x: states.apply(p, x, hook))(model.params, x))
    spliced = pack([np.r_[ids, r] if where == "prefix" else np.r_[r[:1], ids, r[1:]] for r in ROWS], sides)
    want = np.asarray(jax.jit(states.apply)(model.params, spliced))
    first = int(where == "after_first")
    for i in range(len(ROWS)):
        # The prompt is stored before the row; order the real entries by their position ids.
        real = np.r_[np.ones(3, bool), np.asarray(x["attention_mask"][i], bool)]
        n = real.sum() - 3
        token_positions = np.where(np.arange(n) >= first, np.arange(n) + 3, np.arange(n))
        order = np.argsort(np.r_[np.arange(3) + first, token_positions])
        want_rows = want[i][np.asarray(spliced["attention_mask"][i], bool)]
        np.testing.assert_allclose(got[i][real][order], want_rows, atol=1e-5)


def test_pooling_skips_the_prompt_and_padding_side_does_not_matter(model):
    sp = jr.embedding.soft_prompt(4)
    program = jr.reprogram(model, embedding=sp)
    theta = program.init(jax.random.key(1))
    apply = jax.jit(program.apply)
    z_right = apply(theta, model.params, pack(ROWS, ["right"] * 3))
    z_left = apply(theta, model.params, pack(ROWS, ["left", "right", "left"]))
    np.testing.assert_allclose(z_left, z_right, atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(z_right, axis=-1), 1.0, atol=1e-6)
    assert not np.allclose(z_right, jax.jit(model.apply)(model.params, pack(ROWS, ["right"] * 3)), atol=1e-3)


def test_inits(model):
    spec, key = model.spec, jax.random.key(2)
    table = np.asarray(text.word_embeddings(model.params))
    p = jr.embedding.soft_prompt(5, scale=0.3).init(key, spec)["prompt"]
    chex.assert_shape(p, (5, 16))
    assert float(jnp.abs(p).max()) <= 0.3
    p = np.asarray(
        jr.embedding.soft_prompt(6, init="vocab", table=table, vocab_ids=[3, 4]).init(key, spec)["prompt"]
    )
    assert all(any(np.array_equal(row, table[i]) for i in (3, 4)) for row in p)
    labels = [[5, 6], [7]]
    p = np.asarray(
        jr.embedding.soft_prompt(3, init="labels", table=table, label_ids=labels).init(key, spec)["prompt"]
    )
    np.testing.assert_allclose(p[0], table[[5, 6]].mean(0), atol=1e-6)
    np.testing.assert_allclose(p[1], table[7], atol=1e-6)
    assert any(np.array_equal(p[2], t) for t in table)
    saved = np.arange(32.0).reshape(2, 16)
    np.testing.assert_array_equal(jr.embedding.soft_prompt(2, init=saved).init(key, spec)["prompt"], saved)
    with pytest.raises(ValueError, match="table="):
        jr.embedding.soft_prompt(2, init="vocab")
    with pytest.raises(ValueError, match="label_ids="):
        jr.embedding.soft_prompt(2, init="labels", table=table)
    with pytest.raises(ValueError, match="label_ids must be non-empty"):  # was a NaN prompt row
        jr.embedding.soft_prompt(3, init="labels", table=table, label_ids=[[5], []])
    with pytest.raises(ValueError, match=r"label_ids has ids outside .*\[0, 40\)"):  # was clamped to 39
        jr.embedding.soft_prompt(3, init="labels", table=table, label_ids=[[5], [40]])
    with pytest.raises(ValueError, match="vocab_ids has ids outside"):
        jr.embedding.soft_prompt(3, init="vocab", table=table, vocab_ids=[3, -1])
    with pytest.raises(ValueError, match=r"\(length=3, D\)"):
        jr.embedding.soft_prompt(3, init=saved)
    with pytest.raises(ValueError, match="hidden size is 16"):
        jr.embedding.soft_prompt(2, init=np.zeros((2, 8))).init(key, spec)
    with pytest.raises(ValueError, match="length"):
        jr.embedding.soft_prompt(0)
    assert jr.embedding.soft_prompt(np.int64(2)).init(key, spec)["prompt"].shape == (2, 16)
    for bad in (True, 2.0):
        with pytest.raises(TypeError, match="soft_prompt: length .* must be an int >= 1"):
            jr.embedding.soft_prompt(bad)
    with pytest.raises(TypeError, match="TokenSpec"):
        jr.embedding.soft_prompt(2).init(key, jr.ImageSpec(size=8))


def test_apply_checks_the_prompt_shape(model):
    # Only the width was checked: a saved prompt of another length went in silently.
    e = text.embed(jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4)), jnp.zeros((3, 16)))
    sp = jr.embedding.soft_prompt(3)
    assert sp.apply({"prompt": jnp.zeros((3, 16))}, "embeddings", e, model.spec).h.shape == (2, 7, 16)
    with pytest.raises(ValueError, match=r"\(length=3, D\), got shape \(5, 16\)"):
        sp.apply({"prompt": jnp.zeros((5, 16))}, "embeddings", e, model.spec)
    with pytest.raises(ValueError, match="width 8"):
        sp.apply({"prompt": jnp.zeros((3, 8))}, "embeddings", e, model.spec)
    pt = jr.embedding.p_tuning(3, encoder="mlp1", hidden=6)
    theta = pt.init(jax.random.key(0), model.spec)
    with pytest.raises(ValueError, match=r"\(length=3, D\), got shape \(4, 16\)"):
        pt.apply({**theta, "inputs": jnp.zeros((4, 6))}, "embeddings", e, model.spec)


def test_tags_and_registry():
    assert jr.embedding.soft_prompt(2).tags == jr.Tags(
        Format.LEARNABLE, Location.EMBEDDING, Operator.CONCATENATIVE
    )
    assert Operator.PARAMETRIC in jr.embedding.p_tuning(2).tags.operator
    assert {"soft_prompt", "p_tuning"} <= set(jr.taxonomy.registry)


def test_p_tuning_encoders(model):
    mlp = {"hidden", "out"}
    lstm = {f"lstm_{i}_{way}" for i in (0, 1) for way in ("forward", "backward")}
    for encoder, keys, width in (("lstm", {*lstm, *mlp}, 16), ("mlp1", mlp, 6)):
        m = jr.embedding.p_tuning(5, encoder=encoder, hidden=6)
        theta = m.init(jax.random.key(0), model.spec)
        chex.assert_shape(theta["inputs"], (5, width))  # the LSTM reads (P, D), as PEFT's
        assert set(theta["encoder"]) == keys
        e = text.embed(jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4)), jnp.zeros((3, 16)))
        out = m.apply(theta, "embeddings", e, model.spec)
        chex.assert_shape(out.h, (2, 9, 16))
        assert m.apply(theta, "layer_0/kv", e, model.spec) is e
    with pytest.raises(ValueError, match="p_tuning: hidden must be an int >= 1, got 0"):
        jr.embedding.p_tuning(2, hidden=0)
    with pytest.raises(ValueError, match="p_tuning: lstm_layers must be an int >= 1, got 0"):
        jr.embedding.p_tuning(2, lstm_layers=0)
    with pytest.raises(ValueError, match="encoder"):
        jr.embedding.p_tuning(2, encoder="gru")


def test_p_tuning_mlp_is_pefts_prompt_encoder(model):
    """encoder="mlp" is PEFT's PromptEncoder MLP: (P, D) inputs -> Linear(D, h) -> ReLU ->
    Linear(h, h) -> ReLU -> Linear(h, D), here in torch with the same weights (and PEFT's
    own module when peft is installed)."""
    torch = pytest.importorskip("torch")
    m = jr.embedding.p_tuning(5, encoder="mlp", hidden=12)
    theta = m.init(jax.random.key(3), model.spec)
    chex.assert_shape(theta["inputs"], (5, 16))  # PEFT's embedding: (num_virtual_tokens, token_dim)
    assert set(theta["encoder"]) == {"hidden_1", "hidden_2", "out"}
    e = text.embed(jnp.ones((2, 4), jnp.int32), jnp.ones((2, 4)), jnp.zeros((40, 16)))
    got = np.asarray(m.apply(theta, "embeddings", e, model.spec).h[0, :5])
    layers = [torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 12), torch.nn.ReLU()]
    head = torch.nn.Sequential(*layers, torch.nn.Linear(12, 16))
    with torch.no_grad():
        for i, name in ((0, "hidden_1"), (2, "hidden_2"), (4, "out")):
            head[i].weight.copy_(torch.tensor(np.asarray(theta["encoder"][name]["kernel"]).T))
            head[i].bias.copy_(torch.tensor(np.asarray(theta["encoder"][name]["bias"])))
        want = head(torch.tensor(np.asarray(theta["inputs"]))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    try:
        import peft
    except ImportError:
        return
    config = peft.PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=5,
        token_dim=16,
        num_transformer_submodules=1,
        num_attention_heads=2,
        num_layers=2,
        encoder_reparameterization_type="MLP",
        encoder_hidden_size=12,
    )
    reference = peft.PromptEncoder(config)
    with torch.no_grad():
        reference.embedding.weight.copy_(torch.tensor(np.asarray(theta["inputs"])))
        reference.mlp_head.load_state_dict(head.state_dict())
        want = reference(torch.arange(5)[None]).numpy()[0]
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_minilm_soft_prompt_smoke():
    """A few Adam steps of prompt tuning on the real MiniLM lower the cosine-head loss."""
    model = jr.models.load("all_minilm_l6_v2")
    tok = bert.tokenizer(max_length=16)
    texts = ["shares fell", "profits rose", "the team won", "a late goal", "markets slid", "he scored"]
    labels = jnp.array([0, 0, 1, 1, 0, 1])
    enc = tok.encode_batch(texts + ["business news", "sport news"])
    x = {
        "input_ids": jnp.asarray([e.ids for e in enc], jnp.int32),
        "attention_mask": jnp.asarray([e.attention_mask for e in enc], jnp.int32),
    }
    embed = jax.jit(model.apply)
    protos = embed(model.params, jax.tree.map(lambda a: a[6:], x))
    batch = jax.tree.map(lambda a: a[:6], x)
    program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(4, scale=0.1))
    opt = optax.adam(0.05)

    def loss(theta):
        z = program.apply(theta, model.params, batch)
        return optax.softmax_cross_entropy_with_integer_labels(z @ protos.T / 0.05, labels).mean()

    @jax.jit
    def step(theta, state):
        value, g = jax.value_and_grad(loss)(theta)
        updates, state = opt.update(g, state)
        return optax.apply_updates(theta, updates), state, value

    theta = program.init(jax.random.key(0))
    state = opt.init(theta)
    losses = []
    for _ in range(4):
        theta, state, value = step(theta, state)
        losses.append(float(value))
    assert losses[-1] < losses[0], losses
