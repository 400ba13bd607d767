"""jr.candidates.ensemble (issue #26 item 4): K prompts combined at inference in one vmapped pass."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import additive

import jaxreprog as jr


@pytest.fixture
def setup(tiny_model):
    program = jr.reprogram(tiny_model, input=additive(), output=jr.output.linear(7, 3))
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(0), 3))
    x = jax.random.uniform(jax.random.key(1), (6, 8, 8, 3))
    z = np.stack([program.apply(t, tiny_model.params, x) for t in jr.candidates.unstack(thetas)])
    return program, thetas, tiny_model.params, x, z


def test_each_rule_is_its_equation(setup):
    program, thetas, params, x, z = setup

    def run(program, *args, how="logits"):
        return jax.jit(lambda *a: jr.candidates.ensemble(program, *a, how=how))(*args)

    chex.assert_trees_all_close(run(program, thetas, params, x), z.mean(0), atol=1e-5)
    probs = jax.nn.softmax(z, -1).mean(0)
    chex.assert_trees_all_close(run(program, thetas, params, x, how="probs"), np.log(probs), atol=1e-5)
    votes = np.stack([np.bincount(row, minlength=3) for row in z.argmax(-1).T]) / 3
    vote = run(program, thetas, params, x, how="vote")
    np.testing.assert_allclose(vote, votes + 1e-3 / 3 * probs, atol=1e-6)
    majority = votes.max(-1) > 0.5  # rows where two of three agree: their label wins
    np.testing.assert_array_equal(vote.argmax(-1)[majority], votes.argmax(-1)[majority])
    split = ~majority  # three different labels: the most probable on average
    np.testing.assert_array_equal(vote.argmax(-1)[split], probs.argmax(-1)[split])


def test_weights_grad_and_vmap(setup):
    program, thetas, params, x, z = setup
    one = jr.candidates.ensemble(program, thetas, params, x, weights=[0.0, 2.0, 0.0])
    chex.assert_trees_all_close(one, z[1], atol=1e-5)
    grad = jax.grad(lambda t: jr.candidates.ensemble(program, t, params, x, how="probs").sum())(thetas)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grad))
    xs = jnp.stack([x, x[::-1]])
    many = jax.vmap(lambda x: jr.candidates.ensemble(program, thetas, params, x))(xs)
    chex.assert_trees_all_close(many[1], z.mean(0)[::-1], atol=1e-5)


def test_bad_input(setup):
    program, thetas, params, x, _ = setup
    with pytest.raises(ValueError, match="how must be"):
        jr.candidates.ensemble(program, thetas, params, x, how="max")
    with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
        jr.candidates.ensemble(program, thetas, params, x, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        jr.candidates.ensemble(program, thetas, params, x, weights=[1.0, -1.0, 1.0])


def test_an_ensemble_is_saved_as_its_stacked_prompts(tiny_model, tmp_path):
    """The ensemble persists as K stacked candidates (jr.save / jr.load), its weights in the metadata."""
    program = jr.reprogram(tiny_model, input=jr.input.pad(6, init="normal"), output=jr.output.linear(7, 3))
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(0), 3))
    params, x = tiny_model.params, jax.random.uniform(jax.random.key(1), (5, 6, 6, 3))
    weights = [0.5, 0.2, 0.3]
    jr.save(tmp_path / "ens", program, thetas, frozen_model=tiny_model, metadata={"weights": weights})
    back, loaded = jr.load(tmp_path / "ens", tiny_model)
    chex.assert_trees_all_equal(loaded, thetas)
    saved = json.loads((tmp_path / "ens" / "config.json").read_text())["metadata"]["weights"]
    for how in ("logits", "vote"):
        want = jr.candidates.ensemble(program, thetas, params, x, how=how, weights=weights)
        got = jr.candidates.ensemble(back, loaded, params, x, how=how, weights=saved)
        chex.assert_trees_all_close(got, want, atol=1e-6)
