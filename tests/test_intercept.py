"""Hidden-site manipulation of any linen model by module path (nn.intercept_methods)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import bert
from jaxreprog.taxonomy import Format, Location, Operator

X = jax.random.uniform(jax.random.key(9), (5, 8, 8, 3))


def run(model, m, theta):
    hook = lambda site, value: m.apply(theta, site, value, model.spec)  # noqa: E731
    return jax.jit(lambda p, x: model.apply(p, x, hook))(model.params, X)


def test_additive_at_a_path_by_hand(tiny_model):
    """TinyCNN: logits = head(mean(relu(conv(x)) [+ δ])); adding δ at "features" shifts
    the logits by δ @ W_head exactly."""
    m = jr.hidden.additive("features", shape=4)
    theta = m.init(jax.random.key(0), tiny_model.spec)
    np.testing.assert_array_equal(theta["features"], 0)
    delta = jnp.array([0.5, -1.0, 2.0, 0.25])
    plain = jax.jit(tiny_model.apply)(tiny_model.params, X)
    np.testing.assert_allclose(run(tiny_model, m, theta), plain, atol=1e-6)
    got = run(tiny_model, m, {"features": delta})
    np.testing.assert_allclose(
        got - plain,
        jnp.broadcast_to(delta @ tiny_model.params["params"]["head"]["kernel"], plain.shape),
        atol=1e-5,
    )


def test_affine_by_hand(tiny_model):
    m = jr.hidden.affine("conv", shape=(4,))
    theta = m.init(jax.random.key(0), tiny_model.spec)
    np.testing.assert_allclose(
        run(tiny_model, m, theta), jax.jit(tiny_model.apply)(tiny_model.params, X), atol=1e-6
    )
    off = {"conv": {"gamma": -jnp.ones(4), "beta": jnp.zeros(4)}}  # conv output * 0 -> features 0
    bias = tiny_model.params["params"]["head"]["bias"]
    np.testing.assert_allclose(run(tiny_model, m, off), jnp.broadcast_to(bias, (5, 7)), atol=1e-6)


def test_globs_and_several_patterns_on_a_zoo_model():
    config = bert.BertConfig(
        vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16, max_positions=8
    )
    model = bert.from_config(config, jax.random.key(0))
    x = {"input_ids": jnp.array([[1, 4, 5, 2]]), "attention_mask": jnp.ones((1, 4), jnp.int32)}
    m = jr.hidden.additive(("layer_*/output", "layer_1/attention_out"), shape=8, std=1.0)
    theta = m.init(jax.random.key(1), model.spec)
    assert set(theta) == {"layer_*/output", "layer_1/attention_out"}
    seen = []

    def hook(site, value):
        seen.append(site)
        return m.apply(theta, site, value, model.spec)

    out = jax.jit(lambda p, x: model.apply(p, x, hook))(model.params, x)
    assert {"layer_0/output", "layer_1/output", "layer_1/attention_out", "embeddings", "layer_0/kv"} <= set(
        seen
    )
    assert not np.allclose(out, jax.jit(model.apply)(model.params, x), atol=1e-3)
    assert jr.hidden.intercept.matches("layer_*", "layer_0/kv")  # "*" crosses "/"
    assert not jr.hidden.intercept.matches("layer_?/output", "layer_0/output_norm")


def test_shape_mismatch_names_the_site(tiny_model):
    m = jr.hidden.additive("conv", shape=5)
    with pytest.raises(ValueError, match=r"site 'conv' .* ending in \(5,\)"):
        run(tiny_model, m, m.init(jax.random.key(0), tiny_model.spec))
    with pytest.raises(ValueError, match="shape"):
        jr.hidden.additive("conv", shape=())
    with pytest.raises(ValueError, match="path"):
        jr.hidden.affine("", shape=3)


def test_shape_accepts_numpy_ints_and_rejects_bools_and_floats():
    # np.int64 used to die in tuple(int64) with "not iterable"; floats were truncated by int().
    assert jr.hidden.additive("a", np.int64(5)).init(jax.random.key(0), None)["a"].shape == (5,)
    theta = jr.hidden.affine("a", np.array([2, 3])).init(jax.random.key(0), None)
    assert theta["a"]["gamma"].shape == (2, 3)
    for bad in (True, 2.5, (2, 3.0), "4", (np.True_,)):
        with pytest.raises(ValueError, match="shape must be an int or a sequence of ints"):
            jr.hidden.additive("a", bad)


def test_tags():
    assert jr.hidden.additive("a", 1).tags == jr.Tags(Format.LEARNABLE, Location.HIDDEN, Operator.ADDITIVE)
    assert jr.hidden.affine("a", 1).tags == jr.Tags(Format.LEARNABLE, Location.HIDDEN, Operator.PARAMETRIC)


# ---------------------------------------------------------------- one site selector


def test_select_glob_sequence_predicate():
    glob = jr.select("layer_*/kv")
    assert glob.matches("layer_3/kv") and glob("text/layer_0/kv") is False
    assert jr.select("*layer_*/kv")("text/layer_0/kv")  # "*" crosses "/"
    assert jr.select("embeddings")("embeddings") and not jr.select("embeddings")("embeddings_norm")
    several = jr.select(["conv", "layer_?/output"])
    assert several.names == ("conv", "layer_?/output") and several.parts("layer_1/output") == (1,)
    late = jr.select(lambda path: path.startswith("layer_1/"))
    assert late("layer_1/kv") and not late("layer_0/kv")
    assert jr.select(late) is late and isinstance(late, jr.Selector)
    assert not jr.select("*")("")  # "": the model's output, never a site
    assert jr.select(["a", "b"]).resolve(["b", "c", "a", "b"]) == ("b", "a")
    assert str(glob) == "jr.select('layer_*/kv')"
    for bad in ("", [], ["conv", ""]):
        with pytest.raises(ValueError, match="non-empty module-path glob"):
            jr.select(bad)
    with pytest.raises(TypeError, match="a predicate path -> bool or a jr.Selector"):
        jr.select(3)
    with pytest.raises(
        ValueError, match=r"jr.select\('x'\) matches none of the model's sites; its sites are: a, b"
    ):
        jr.select("x").resolve(["a", "b"])


@pytest.fixture(scope="module")
def tiny_bert():
    config = bert.BertConfig(
        vocab_size=20, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16, max_positions=8
    )
    return bert.from_config(config, jax.random.key(0))


BERT_X = {"input_ids": jnp.array([[1, 4, 5, 2]]), "attention_mask": jnp.ones((1, 4), jnp.int32)}


def test_sites_lists_a_model_without_running_it(tiny_model, tiny_bert):
    assert jr.sites(tiny_model) == ("conv", "features", "head")
    listed = jr.sites(tiny_bert)
    assert listed[:4] == ("lookup", "embeddings", "position_embeddings", "embeddings_norm")
    assert listed[-1] == "tokens" and "" not in listed
    assert [s for s in listed if jr.select("layer_*/kv")(s)] == ["layer_0/kv", "layer_1/kv"]
    assert jr.sites(tiny_bert, BERT_X) == listed
    assert jr.select("layer_*/kv").resolve(listed) == ("layer_0/kv", "layer_1/kv")
    with pytest.raises(TypeError, match="jr.FrozenModel"):
        jr.sites(tiny_bert.params)


def test_the_layer_number_is_what_a_glob_wildcard_matches():
    assert jr.select("*/layer_*/kv").layer("encoder/layer_3/kv") == 3  # "encoder" is no number
    assert jr.select("encoder/layer_*/input").layer("encoder/layer_12/input") == 12
    assert jr.select(("layer_*/kv", "*/layer_*/kv")).layer("text/layer_2/kv") == 2
    assert jr.select("layer_*/kv").layer("layer_2/query") is None  # not selected
    assert jr.select("layer_*").layer("layer_3/kv") is None  # "3/kv" is no number
    assert jr.select("block[0-9]_*/out").layer("block1_7/out") == 7  # brackets are no wildcards
    with pytest.raises(TypeError, match="names no layer number"):
        jr.select(lambda path: True).layer("layer_0/kv")


def test_per_layer_methods_read_the_layer_off_the_glob(tiny_bert):
    """``layers`` are layer numbers: the site whose ``*`` matches 1 is layer 1, whichever glob finds it;
    a glob selector on another method (a hidden shift at layer 1's output) chains with it."""
    by_glob = jr.hidden.p_tuning_v2(2, sites="*layer_*/kv", layers=[1])
    by_default = jr.hidden.p_tuning_v2(2, layers=[1])
    theta = by_default.init(jax.random.key(3), tiny_bert.spec)
    assert jax.tree.map(jnp.shape, by_glob.init(jax.random.key(3), tiny_bert.spec)) == jax.tree.map(
        jnp.shape, theta
    )

    def forward(m, t):
        return jr.reprogram(tiny_bert, hidden=m).apply({"hidden": t, "output": ()}, tiny_bert.params, BERT_X)

    np.testing.assert_allclose(forward(by_glob, theta), forward(by_default, theta), atol=1e-6)
    assert not np.allclose(forward(by_glob, theta), forward(jr.hidden.p_tuning_v2(2, layers=[0]), theta))
    shift = jr.hidden.additive(jr.select("layer_1/output"), shape=8, std=1.0)
    both = jr.chain(by_glob, shift)
    assert both.sites == jr.select(["*layer_*/kv", "layer_1/output"])  # globs: a glob union
    thetas = both.init(jax.random.key(4), tiny_bert.spec)
    assert set(thetas[1]) == {"layer_1/output"}
    assert not np.allclose(forward(both, thetas), forward(by_glob, thetas[0]), atol=1e-4)


def test_a_per_layer_method_needs_a_number_in_its_glob(tiny_bert):
    """A predicate (or a glob without '*') names no layer: an error when the method is built; a glob
    whose '*' matches no number at a site it selects: an error naming the site when traced."""
    for make in (jr.hidden.prefix_tuning, jr.hidden.p_tuning_v2, jr.hidden.vpt_deep):
        with pytest.raises(ValueError, match=r"sites must be globs .* the predicate jr.select\(<lambda>\)"):
            make(2, sites=lambda path: path.endswith("/kv"))
        with pytest.raises(ValueError, match=r"needs a '\*' where the layer number is .* \['layer_1/kv'\]"):
            make(2, sites=["layer_*/kv", "layer_1/kv"])
    vague = jr.reprogram(tiny_bert, hidden=jr.hidden.prefix_tuning(2, sites="layer_*", reparameterize=None))
    with pytest.raises(
        ValueError, match=r"prefix_tuning: site 'layer_0/\w+' is selected by jr.select\('layer_\*'\)"
    ):
        jax.eval_shape(vague.apply, vague.init(jax.random.key(0)), tiny_bert.params, BERT_X)


def test_reprogram_names_a_selector_that_matches_no_site(tiny_model, tiny_bert):
    typo = jr.reprogram(tiny_bert, embedding=jr.embedding.soft_prompt(2, sites="embedding"))
    assert typo.parts["embedding"].sites == jr.select("embedding")
    theta = typo.init(jax.random.key(0))
    with pytest.raises(
        ValueError,
        match=r"reprogram\(embedding=...\): jr.select\('embedding'\) matches none of the model's sites; "
        r"its sites are: lookup, embeddings, position_embeddings, ",
    ):
        jax.eval_shape(typo.apply, theta, tiny_bert.params, BERT_X)
    nowhere = jr.hidden.additive(lambda path: path.startswith("block"), shape=4)
    program = jr.reprogram(tiny_model, hidden=nowhere)
    with pytest.raises(
        ValueError,
        match=r"reprogram\(hidden=...\): jr.select\(<lambda>\) .* its sites are: conv, features, head($|\n)",
    ):
        jax.jit(program.apply)(program.init(jax.random.key(0)), tiny_model.params, X)
    # a chain selects what any part selects: one matching part is enough; a part without sites: unchecked
    some = jr.chain(jr.hidden.additive("features", 4), nowhere)
    assert some.sites("features") and some.sites("block1") and not some.sites("conv")
    program = jr.reprogram(tiny_model, hidden=some)
    jax.eval_shape(program.apply, program.init(jax.random.key(0)), tiny_model.params, X)
    assert jr.chain(nowhere, jr.SiteHook(lambda k, s: (), lambda t, site, v, s: v)).sites is None
    # outside reprogram, a hook that matches nothing leaves the model alone
    plain = jax.jit(tiny_model.apply)(tiny_model.params, X)
    np.testing.assert_allclose(run(tiny_model, nowhere, nowhere.init(jax.random.key(0), None)), plain)


def test_apply_carries_no_state_between_calls(tiny_bert):
    """The per-layer and embedding hooks are pure: called twice, rematerialised, in a scan, jitted and
    vmapped over candidates, the program gives the same logits (nothing is counted across calls)."""
    program = jr.reprogram(
        tiny_bert,
        embedding=jr.embedding.soft_prompt(2),
        hidden=jr.chain(
            # 4 tokens + 2 soft-prompt tokens + 5 prefix positions would pass the 8 positions
            jr.hidden.p_tuning_v2(2, layers=[1], positions="from_zero"),
            jr.hidden.prefix_tuning(3, layers=[0], reparameterize=4, positions="from_zero"),
        ),
    )
    theta = program.init(jax.random.key(5))
    params = tiny_bert.params
    # Each jax.jit(lambda ...) is a fresh trace: state kept across calls would show between them
    # (jitted, not eager: op by op, a BERT with three hooks takes ~20 s).
    first = jax.jit(lambda t: program.apply(t, params, BERT_X))(theta)
    np.testing.assert_array_equal(jax.jit(lambda t: program.apply(t, params, BERT_X))(theta), first)
    np.testing.assert_allclose(
        jax.jit(jax.checkpoint(lambda t: program.apply(t, params, BERT_X)))(theta), first, atol=1e-6
    )
    _, scanned = jax.jit(
        lambda t: jax.lax.scan(lambda c, _: (c, program.apply(t, params, BERT_X)), 0, None, length=3)
    )(theta)
    np.testing.assert_allclose(scanned, jnp.stack([first] * 3), atol=1e-6)

    def loss(t):
        return jnp.sum(jax.checkpoint(program.apply)(t, params, BERT_X) ** 2)

    plain_grad = jax.jit(jax.grad(lambda t: jnp.sum(program.apply(t, params, BERT_X) ** 2)))(theta)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), jax.jit(jax.grad(loss))(theta), plain_grad
    )
    thetas = jax.tree.map(lambda t: jnp.stack([t, t]), theta)
    batched = jax.jit(jax.vmap(program.apply, in_axes=(0, None, None)))(thetas, params, BERT_X)
    np.testing.assert_allclose(batched, jnp.stack([first, first]), atol=1e-6)


def test_a_hooks_own_modules_are_no_sites(tiny_bert):
    """P-tuning's encoder (a linen module) runs inside the hook call: a hook chained after it sees
    only the model's paths, and so does jr.sites."""
    recorded = []

    def record(theta, site, value, spec):
        recorded.append(site)
        return value

    after = jr.chain(jr.embedding.p_tuning(2, encoder="lstm"), jr.SiteHook(lambda k, s: (), record))
    program = jr.reprogram(tiny_bert, embedding=after)
    out = jax.jit(program.apply)(program.init(jax.random.key(0)), tiny_bert.params, BERT_X)
    chex.assert_tree_all_finite(out)
    assert set(recorded) - {""} == set(jr.sites(tiny_bert, BERT_X))
    assert jr.intercept is jr.core.intercept and not hasattr(jr.hooks, "intercept")
    assert not any(hasattr(jr.hooks, name) for name in ("Pass", "quiet"))
