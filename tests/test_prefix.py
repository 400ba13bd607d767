"""Prefix tuning (Li & Liang 2021) and P-tuning v2 (Liu et al. 2022): per-layer K/V prefixes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import pack

import jaxreprog as jr
from jaxreprog.models import bert, gpt2, text
from jaxreprog.taxonomy import Format, Location, Operator

GPT = gpt2.GPT2Config(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, max_positions=32)
BERT = bert.BertConfig(
    vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=24
)


ROWS = [np.array([1, 5, 6, 7, 2]), np.array([1, 9, 2]), np.array([1, 3, 4, 8, 2])]


@pytest.fixture(scope="module")
def lm():
    return gpt2.from_config(GPT, jax.random.key(0))


@pytest.fixture(scope="module")
def encoder():
    return bert.from_config(BERT, jax.random.key(1))


def test_prefix_equals_the_keys_and_values_of_prepended_tokens(lm):
    """With position embeddings zeroed, a causal LM reading tokens t then x equals the
    LM reading x with t's per-layer keys/values as the prefix."""
    params = jax.tree.map(lambda a: a, lm.params)
    params["params"]["wpe"]["embedding"] = jnp.zeros_like(params["params"]["wpe"]["embedding"])
    t = np.array([4, 11, 17])
    logits = jax.jit(lambda p, x, hook=None: gpt2.logits(lm, p, x, hook), static_argnums=2)
    cache = logits(params, pack([t], ["right"])).cache
    kv = jnp.stack([jnp.stack([c.k[0], c.v[0]]) for c in cache])  # (layers, 2, P, H, Dh)
    v2 = jr.hidden.p_tuning_v2(3)
    theta = v2.init(jax.random.key(0), lm.spec)
    chex.assert_trees_all_equal_shapes(theta, {"kv": kv})
    sides = ["left", "right", "right"]
    hook = lambda site, value: v2.apply({"kv": kv}, site, value, lm.spec)  # noqa: E731
    got = jax.jit(lambda p, x: lm.apply(p, x, hook))(params, pack(ROWS, sides))
    want = jax.jit(lm.apply)(params, pack([np.r_[t, r] for r in ROWS], sides))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_encoder_prefix_padding_and_pooling(encoder):
    v2 = jr.hidden.p_tuning_v2(4, std=1.0)
    program = jr.reprogram(encoder, hidden=v2)
    theta = program.init(jax.random.key(2))
    apply = jax.jit(program.apply)
    right = apply(theta, encoder.params, pack(ROWS, ["right"] * 3))
    np.testing.assert_allclose(
        apply(theta, encoder.params, pack(ROWS, ["left", "right", "left"])), right, atol=1e-6
    )
    assert not np.allclose(
        right, jax.jit(encoder.apply)(encoder.params, pack(ROWS, ["right"] * 3)), atol=1e-3
    )


def test_layers_subset_and_reparameterisation_shapes(encoder):
    spec = encoder.spec
    theta = jr.hidden.prefix_tuning(3, reparameterize=None, layers=[1]).init(jax.random.key(0), spec)
    chex.assert_shape(theta["kv"], (1, 2, 3, 2, 8))
    m = jr.hidden.prefix_tuning(3, reparameterize=None, layers=[1])
    kv = text.KeyValues(
        jnp.zeros((2, 5, 2, 8)), jnp.zeros((2, 5, 2, 8)), jnp.ones((2, 5), bool), jnp.zeros((2, 5), int)
    )
    assert m.apply(theta, "layer_0/kv", kv, spec) is kv
    out = m.apply(theta, "layer_1/kv", kv, spec)
    chex.assert_shape(out.k, (2, 8, 2, 8))
    np.testing.assert_array_equal(out.positions[:, :3], -1)
    assert bool(out.mask.all())
    np.testing.assert_array_equal(out.k[:, :3], jnp.broadcast_to(theta["kv"][0, 0], (2, 3, 2, 8)))
    reparam = jr.hidden.prefix_tuning(3, reparameterize=7).init(jax.random.key(0), spec)
    chex.assert_shape([reparam["inputs"], reparam["w1"], reparam["w2"]], [(3, 16), (16, 7), (7, 2 * 2 * 16)])


def test_tags_and_errors(encoder):
    tags = jr.Tags(Format.LEARNABLE, Location.HIDDEN, Operator.CONCATENATIVE)
    assert jr.hidden.prefix_tuning().tags == tags == jr.hidden.p_tuning_v2().tags
    assert {"prefix_tuning", "p_tuning_v2"} <= set(jr.taxonomy.registry)
    with pytest.raises(ValueError, match="layers"):
        jr.hidden.p_tuning_v2(2, layers=[2]).init(jax.random.key(0), encoder.spec)
    with pytest.raises(TypeError, match="num_layers"):
        jr.hidden.p_tuning_v2(2).init(
            jax.random.key(0), jr.TokenSpec(vocab_size=5, max_length=8, hidden_size=4)
        )
    with pytest.raises(ValueError, match="length"):
        jr.hidden.prefix_tuning(0)
    # NumPy ints are accepted (as by soft_prompt); bools and floats are not.
    assert jr.hidden.p_tuning_v2(np.int64(2)).init(jax.random.key(0), encoder.spec)["kv"].shape[2] == 2
    for bad in (True, 2.0):
        with pytest.raises(TypeError, match="prefix_tuning: length .* must be an int >= 1"):
            jr.hidden.prefix_tuning(bad)
    with pytest.raises(TypeError, match="KeyValues"):
        m = jr.hidden.p_tuning_v2(2)
        m.apply(m.init(jax.random.key(0), encoder.spec), "layer_0/kv", jnp.zeros(3), encoder.spec)
