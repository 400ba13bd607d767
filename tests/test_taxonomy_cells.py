"""The taxonomy's newer cells: an output-location prompt (jr.output.logit_prompt), the replacement
operator (jr.embedding.token_replacement) and the fixed+learnable format (jr.embedding.prompt_template).

jit/grad/vmap and save/load of each are tests/test_transforms.py's and tests/test_artifact.py's (their
EXAMPLES); these check what each computes. Models: test_transforms' tiny GPT-2 (32 tokens) and a source
model of 9 classes, so the compiled operations are shared.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_transforms import images, lm, source, tokens

import jaxreprog as jr
from jaxreprog.cli import main
from jaxreprog.models.text import word_embeddings
from jaxreprog.taxonomy import Format, Location, Operator, OutputAlignment, Tags

X = tokens([1, 5, 6, 7], [1, 9], [1, 3, 4])


def test_the_new_cells_are_tagged_and_in_the_table(capsys):
    assert str(Format.FIXED | Format.LEARNABLE) == "fixed+learnable"
    assert str(Location.OUTPUT) == "output" and str(Operator.REPLACEMENT) == "replacement"
    registry = jr.taxonomy.registry
    assert registry["logit_prompt"].tags == Tags(Format.LEARNABLE, Location.OUTPUT, Operator.ADDITIVE)
    assert registry["token_replacement"].tags == Tags(
        Format.LEARNABLE, Location.EMBEDDING, Operator.REPLACEMENT
    )
    assert registry["prompt_template"].tags == Tags(
        Format.FIXED | Format.LEARNABLE, Location.EMBEDDING, Operator.CONCATENATIVE
    )
    # a wrapper carries its inner alignment's tag; register fills only the axes it leaves open
    assert jr.output.logit_prompt(9, jr.output.ilm(9, 3)).tags == Tags(
        Format.LEARNABLE, Location.OUTPUT, Operator.ADDITIVE, OutputAlignment.STATISTICAL
    )
    assert jr.output.logit_prompt(9).tags.alignment == OutputAlignment.IDENTITY
    assert [m.name for m in jr.taxonomy.table(location=Location.OUTPUT)] == ["logit_prompt"]

    assert main(["taxonomy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip() and not line.endswith("registered.")}
    for name, cells in [
        ("logit_prompt", ("learnable", "output", "additive")),
        ("token_replacement", ("learnable", "embedding", "replacement")),
        ("prompt_template", ("fixed+learnable", "embedding", "concatenative")),
    ]:
        for column, cell in zip(("format", "location", "operator"), cells):
            assert rows[name][header.index(column) :].startswith(cell + " "), (name, column)


# ----------------------------------------------------------------- learnable · output · additive


def _logits_and_labels():
    logits = jax.random.normal(jax.random.key(0), (40, 9))
    return logits, jnp.arange(40) % 3


def test_logit_prompt_with_zero_delta_is_its_inner_map():
    logits, labels = _logits_and_labels()
    for inner in (jr.output.blm(9, 3), jr.output.verbalizer([[0, 4], [2], [5, 7]], num_source=9)):
        align = jr.output.logit_prompt(9, inner)
        state = align.refit(align.init(jax.random.key(1)), logits, labels)
        assert not jnp.any(state["delta"])
        own = inner.refit(inner.init(jax.random.key(1)), logits, labels)
        chex.assert_trees_all_close(state["inner"], own)
        np.testing.assert_array_equal(align.apply(state, logits), inner.apply(own, logits))
        assert align.schedule == inner.schedule


def test_logit_prompt_refits_its_inner_map_on_the_shifted_logits():
    logits, labels = _logits_and_labels()
    inner = jr.output.ilm(9, 3)
    align = jr.output.logit_prompt(9, inner)
    delta = jnp.asarray([0.0, 0, 0, 0, 0, 0, 5, 5, 5])  # sources 6..8 now win every top-1
    state = {**align.init(jax.random.key(0)), "delta": delta}
    refit = align.refit(state, logits, labels)
    want = inner.refit(state["inner"], logits + delta, labels)
    chex.assert_trees_all_equal(refit["inner"], want)
    assert set(np.flatnonzero(np.asarray(want["omega"]).sum(1))) == {6, 7, 8}
    np.testing.assert_array_equal(refit["delta"], delta)  # the refit moves only the inner map
    np.testing.assert_allclose(align.apply(refit, logits), inner.apply(want, logits + delta))
    # the trainers' path: collect() feeds stats_update the shifted logits, also per candidate
    stats = align.collect(align.stats_init(), state, logits, labels)
    chex.assert_trees_all_equal(stats, inner.stats_update(inner.stats_init(), logits + delta, labels))
    both = jr.output.per_candidate([align, inner])
    pc = both.init(jax.random.key(0))
    pc = {**pc, "states": (state, pc["states"][1])}
    got = both.refit(pc, logits, labels)["states"]
    chex.assert_trees_all_equal(got[0]["inner"], want)
    chex.assert_trees_all_equal(got[1], inner.refit(pc["states"][1], logits, labels))


def test_logit_prompt_learns_delta_and_its_inner_state_by_gradient():
    program = jr.reprogram(source(), output=jr.output.logit_prompt(9, jr.output.linear(9, 3)))
    theta = program.init(jax.random.key(0))
    assert program.trainable(theta)["output"] == {"delta": True, "inner": {"kernel": True, "bias": True}}
    x = images(4, 2)

    def loss(theta, params):
        return jnp.sum(program.apply(theta, params, x) * jnp.arange(3.0))

    g_theta, g_params = jax.grad(loss, argnums=(0, 1))(theta, source().params)
    assert jnp.any(g_theta["output"]["delta"] != 0) and jnp.any(g_theta["output"]["inner"]["kernel"] != 0)
    assert not any(jnp.any(g != 0) for g in jax.tree.leaves(g_params))
    fixed_inner = jr.output.logit_prompt(9, jr.fixed(jr.output.linear(9, 3)))
    assert jr.trainable_mask(fixed_inner, theta["output"])["inner"] == {"kernel": False, "bias": False}


def test_logit_prompt_errors():
    with pytest.raises(ValueError, match="logit_prompt: num_source must be an int >= 1, got 0"):
        jr.output.logit_prompt(0)
    with pytest.raises(TypeError, match="inner must be a jr.Alignment, got str"):
        jr.output.logit_prompt(9, "ilm")
    align = jr.output.logit_prompt(9)
    with pytest.raises(ValueError, match="num_source=9 on the last axis"):
        align.apply(align.init(jax.random.key(0)), jnp.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"state\['delta'\] must have shape \(9,\)"):
        align.apply({"delta": jnp.zeros((2, 9)), "inner": ()}, jnp.zeros((2, 9)))


# ----------------------------------------------------------------- learnable · embedding · replacement

MAP = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 31])  # target token t -> source token MAP[t]


def _mapped(x):
    return {**x, "input_ids": jnp.asarray(MAP)[x["input_ids"]]}


def test_token_replacement_with_one_hot_logits_is_the_model_on_mapped_ids():
    model = lm()
    plain = jax.jit(model.apply)(model.params, _mapped(X))
    one_hot = np.eye(32, dtype=np.float32)[MAP]
    for hard, scale in [(False, 100.0), (True, 0.3)]:  # straight-through: the argmax, at any scale
        emb = jr.embedding.token_replacement(12, init=scale * one_hot, hard=hard)
        program = jr.reprogram(model, embedding=emb)
        got = jax.jit(program.apply)(program.init(jax.random.key(0)), model.params, X)
        chex.assert_shape(got, (3, 32))  # the tied head keeps GPT-2's vocabulary
        np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)


def test_token_replacement_gradients_reach_only_theta():
    """Straight-through (hard) rows too; the soft ones are test_transforms' example."""
    model = lm()
    program = jr.reprogram(model, embedding=jr.embedding.token_replacement(12, hard=True))
    theta = program.init(jax.random.key(0))

    def loss(theta, params):
        return jnp.sum(program.apply(theta, params, X) * jnp.arange(32.0))

    g_theta, g_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, model.params)
    g = g_theta["embedding"]["logits"]
    assert g.shape == (12, 32) and bool(jnp.all(jnp.isfinite(g)))
    used = np.unique(np.asarray(X["input_ids"])[np.asarray(X["attention_mask"]) == 1])
    assert jnp.all(jnp.any(g[used] != 0, axis=1)), "every target token used gets a gradient"
    assert not jnp.any(g[10:] != 0), "unused target tokens get none"
    assert not any(jnp.any(a != 0) for a in jax.tree.leaves(g_params))


def test_token_replacement_errors():
    with pytest.raises(ValueError, match="temperature τ must be a number > 0, got 0"):
        jr.embedding.token_replacement(12, temperature=0)
    with pytest.raises(ValueError, match="token_replacement: num_target .V_t. must be an int >= 1, got 0"):
        jr.embedding.token_replacement(0)
    with pytest.raises(ValueError, match=r"init must be \(V_t=12, V_s\) logits, got shape \(5, 32\)"):
        jr.embedding.token_replacement(12, init=np.zeros((5, 32)))
    model = lm()
    with pytest.raises(ValueError, match="init has 30 columns; the model's vocabulary has 32"):
        jr.reprogram(model, embedding=jr.embedding.token_replacement(12, init=np.zeros((12, 30)))).init(
            jax.random.key(0)
        )
    program = jr.reprogram(model, embedding=jr.embedding.token_replacement(12))
    theta = program.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"token ids in \[0, 12\) .*e.g. 20"):  # checked eagerly
        program.apply(theta, model.params, tokens([1, 20]))
    wrong = {**theta, "embedding": {"logits": jnp.zeros((12, 31))}}
    with pytest.raises(ValueError, match=r"theta\['logits'\] must be \(V_t=12, V_s=32\), got \(12, 31\)"):
        jax.eval_shape(program.apply, wrong, model.params, X)


# ------------------------------------------------------- fixed+learnable · embedding · concatenative


def _slots_as(ids):
    return np.asarray(word_embeddings(lm().params)[jnp.asarray(ids)])


def test_a_template_whose_slots_are_token_embeddings_is_that_instruction():
    model = lm()
    template = jr.embedding.prompt_template(
        [4, None, 6], suffix=[None, 8], where="after_first", init=_slots_as([20, 21])
    )
    program = jr.reprogram(model, embedding=template)
    got = jax.jit(program.apply)(program.init(jax.random.key(0)), model.params, X)
    fixed = jr.reprogram(model, input=jr.context.instruction([4, 20, 6], suffix=[21, 8], keep_first=1))
    want = jax.jit(fixed.apply)(fixed.init(jax.random.key(0)), model.params, X)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_template_is_a_soft_prompt_of_its_vectors():
    """Fixed tokens' rows of the frozen table and the slots, inserted where a soft prompt inserts."""
    model = lm()
    slots = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
    template = jr.embedding.prompt_template([None, 4, None], init=slots)
    vectors = np.stack([slots[0], _slots_as([4])[0], slots[1]])
    prompt = jr.embedding.soft_prompt(3, init=vectors)
    out = []
    for part in (template, prompt):
        program = jr.reprogram(model, embedding=part)
        every = jax.jit(
            lambda theta, params, program=program: jr.models.gpt2.reprogrammed_logits(
                model, program, theta, params, X
            )
        )
        out.append(every(program.init(jax.random.key(0)), model.params))
    chex.assert_shape(out[0], (3, 4, 32))  # the template's positions are dropped, as a soft prompt's
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-5)


def test_a_templates_gradient_reaches_only_its_slots():
    model = lm()
    program = jr.reprogram(model, embedding=jr.embedding.prompt_template([4, None], suffix=[None]))
    theta = program.init(jax.random.key(0))

    def loss(theta, params):
        return jnp.sum(program.apply(theta, params, X) * jnp.arange(32.0))

    g_theta, g_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, model.params)
    assert g_theta["embedding"]["slots"].shape == (2, 16)
    assert jnp.all(jnp.any(g_theta["embedding"]["slots"] != 0, axis=1))
    assert not any(jnp.any(a != 0) for a in jax.tree.leaves(g_params))


def test_template_errors():
    with pytest.raises(ValueError, match="no slot .None.; a template of fixed tokens only is jr.context"):
        jr.embedding.prompt_template([4, 5], suffix=[6])
    with pytest.raises(ValueError, match="template must hold token ids .ints >= 0. and None"):
        jr.embedding.prompt_template([None, -1])
    with pytest.raises(ValueError, match="where must be 'prefix' or 'after_first', got 'suffix'"):
        jr.embedding.prompt_template([None], where="suffix")
    with pytest.raises(ValueError, match=r"init must be \(2 slots, D\), got shape \(3, 16\)"):
        jr.embedding.prompt_template([None, None], init=np.zeros((3, 16)))
    model = lm()
    outside = jr.reprogram(model, embedding=jr.embedding.prompt_template([None, 32]))
    with pytest.raises(ValueError, match=r"token ids must lie in the model's vocabulary \[0, 32\), got 32"):
        outside.init(jax.random.key(0))
    program = jr.reprogram(model, embedding=jr.embedding.prompt_template([None]))
    theta = program.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"token ids in \[0, 32\) .*e.g. 32"):  # not the slot's row 32
        program.apply(theta, model.params, tokens([1, 32]))
