"""Remat (issue #22 item 4, #25 item 2): each zoo transformer's blocks under jax.checkpoint give the
plain model's outputs and prompt gradients, with the frozen model's hooks still reaching every site."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import bert, gpt2
from jaxreprog.models.vit import ViT, ViTSpec

TOKENS = {
    "input_ids": jnp.array([[1, 5, 6, 7, 2], [1, 9, 3, 0, 0]], jnp.int32),
    "attention_mask": jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.int32),
}


def _gpt2(remat):
    config = gpt2.GPT2Config(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, max_positions=32)
    return gpt2.from_config(config, jax.random.key(0), remat=remat)


def _bert(remat):
    config = bert.BertConfig(
        vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=32
    )
    return bert.from_config(config, jax.random.key(0), remat=remat)


def _vit(remat):
    module = ViT(4, 16, 2, 2, 32, image_size=(16, 16), num_classes=5, remat=remat)
    spec = ViTSpec(size=16, mean=0.5, std=0.5, num_classes=5, hidden_size=16, num_layers=2, num_heads=2,
                   patch_size=4)  # fmt: skip
    x = jnp.zeros((1, 16, 16, 3))
    return jr.from_linen(module, jax.jit(ViT(4, 16, 2, 2, 32, image_size=(16, 16), num_classes=5).init)(
        jax.random.key(0), x), spec)  # fmt: skip


CASES = {
    "gpt2": (_gpt2, lambda: jr.hidden.prefix_tuning(2, std=0.5), TOKENS),
    "bert": (_bert, lambda: jr.hidden.p_tuning_v2(2, std=0.5), TOKENS),
    "vit": (_vit, lambda: jr.hidden.vpt_deep(2), jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))),
}


@pytest.mark.parametrize(("name", "policy"), [("gpt2", "full"), ("bert", "dots"), ("vit", "dots_no_batch")])
def test_remat_gives_the_plain_outputs_and_gradients(name, policy):
    build, part, x = CASES[name]
    plain, remat = build(None), build(policy)
    chex.assert_trees_all_equal(plain.params, remat.params)  # same parameter tree and names

    def loss_and_grad(model):
        program = jr.reprogram(model, hidden=part())
        theta = program.init(jax.random.key(2))
        loss = lambda t: jnp.sum(program.apply(t, model.params, x) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(theta), jax.make_jaxpr(jax.grad(loss))(theta)

    (want, want_grad), plain_jaxpr = loss_and_grad(plain)
    (got, got_grad), remat_jaxpr = loss_and_grad(remat)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    chex.assert_trees_all_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    assert "remat" not in str(plain_jaxpr) and "remat" in str(remat_jaxpr)  # the blocks are checkpointed


def test_remat_through_load_and_bad_policies():
    with pytest.raises(ValueError, match=r"remat must be None or one of 'full', 'dots'"):
        _gpt2("everything")
    with pytest.raises(ValueError, match="remat must be"):
        jr.models.load("all_minilm_l6_v2", remat="yes")
    with pytest.raises(ValueError, match="remat must be"):
        jr.models.load("gpt2", weights="unused", remat="full_")  # before any file is read
