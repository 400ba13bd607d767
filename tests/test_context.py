"""Prompt instruction: templates, fixed-context insertion, demonstration selection, parsing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreprog as jr
from jaxreprog.context import select

SPEC = jr.TokenSpec(vocab_size=100, max_length=32, hidden_size=8, pad_id=0)


def tokens(rows, length, side="right"):
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(length - len(r), length)
        ids[i, sl], mask[i, sl] = r, 1
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask)}


def real_rows(x):
    return [list(np.asarray(i)[np.asarray(m) == 1]) for i, m in zip(x["input_ids"], x["attention_mask"])]


class TestTemplate:
    def test_render_order(self):
        t = jr.context.Template(instruction="Classify.", demo="Q: {input} A: {answer}", query="Q: {input} A:")
        demos = [jr.context.Demo("a", "1"), jr.context.Demo("b", "2")]
        assert jr.context.render(t, "c", demos) == "Classify.\n\nQ: a A: 1\n\nQ: b A: 2\n\nQ: c A:"

    def test_truncation_drops_far_demos_first_never_the_query(self):
        t = jr.context.Template(instruction="I", demo="{input}{answer}", query="{input}", separator="")
        demos = [jr.context.Demo("aa", "1"), jr.context.Demo("bb", "2")]
        tok = list  # one id per character
        ids, kept = jr.context.encode(t, "qqq", demos, tokenize=tok, max_length=7)
        assert kept == 1 and "".join(ids) == "Ibb2qqq"
        ids, kept = jr.context.encode(t, "qqq", demos, tokenize=tok, max_length=3)
        assert kept == 0 and "".join(ids) == "qqq"
        with pytest.raises(ValueError, match="never cuts the query"):
            jr.context.encode(t, "qqqq", demos, tokenize=tok, max_length=3)

    def test_cot_template_needs_rationale(self):
        t = jr.context.Template(demo="{input} {rationale} The answer is {answer}.")
        with pytest.raises(ValueError, match="need a rationale"):
            jr.context.render(t, "q", [jr.context.Demo("x", "1")])
        text = jr.context.render(t, "q", [jr.context.Demo("2+2?", "4", "2 and 2 make 4.")])
        assert "2 and 2 make 4. The answer is 4." in text

    def test_bad_template(self):
        with pytest.raises(ValueError, match="query must contain an {input} slot"):
            jr.context.Template(query="no slot")


class TestInsert:
    @pytest.mark.parametrize("in_side", ["right", "left"])
    @pytest.mark.parametrize("out_side", ["right", "left"])
    def test_prefix_suffix_and_padding(self, in_side, out_side):
        x = tokens([[101, 5, 6, 102], [101, 7, 102]], 6, in_side)
        out = jr.context.insert(x, [9, 8], suffix=[50], keep_first=1, padding_side=out_side)
        assert real_rows(out) == [[101, 9, 8, 5, 6, 102, 50], [101, 9, 8, 7, 102, 50]]
        chex.assert_shape(out["input_ids"], (2, 9))
        m = np.asarray(out["attention_mask"])
        first_real = m.argmax(1)
        if out_side == "right":
            np.testing.assert_array_equal(first_real, 0)
        else:
            np.testing.assert_array_equal(m[:, -1], 1)
        assert np.all(np.asarray(out["input_ids"])[m == 0] == 0)

    def test_bad_keep_first_or_suffix(self):
        # keep_first=-1 used to put the prefix before the last column: inside some rows, after others.
        x = tokens([[101, 5, 6, 102], [101, 7, 102]], 4)
        with pytest.raises(ValueError, match="insert: keep_first must be an int >= 0, got -1"):
            jr.context.insert(x, [9], keep_first=-1)
        with pytest.raises(ValueError, match=r"suffix must be \(S,\)"):
            jr.context.insert(x, [9], suffix=[[50]])

    @settings(max_examples=25, deadline=None)
    @given(
        st.lists(st.lists(st.integers(1, 99), min_size=1, max_size=5), min_size=1, max_size=3),
        st.lists(st.integers(1, 99), min_size=0, max_size=3),
        st.sampled_from(["right", "left"]),
    )
    def test_property_real_tokens(self, rows, prefix, side):
        x = tokens(rows, 6, side)
        out = jr.context.insert(x, jnp.asarray(prefix, jnp.int32), padding_side=side)
        assert real_rows(out) == [prefix + r for r in rows]

    def test_vmap_over_candidate_prefixes(self):
        x = tokens([[101, 5, 102], [101, 6, 7, 102]], 5)
        ids, mask = jr.context.stack([[9], [8, 8, 8]])
        f = jax.jit(jax.vmap(lambda p, m: jr.context.insert(x, p, m, keep_first=1)))
        out = f(ids, mask)
        chex.assert_shape(out["input_ids"], (2, 2, 8))
        assert real_rows(jax.tree.map(lambda a: a[0], out)) == [[101, 9, 5, 102], [101, 9, 6, 7, 102]]
        assert real_rows(jax.tree.map(lambda a: a[1], out))[0] == [101, 8, 8, 8, 5, 102]

    def test_manipulation_tags_jit_and_errors(self):
        m = jr.context.instruction([9, 9])
        assert m.tags == jr.Tags(jr.Format.FIXED, jr.Location.INPUT, jr.Operator.CONCATENATIVE)
        x = tokens([[101, 5, 102]], 4)
        theta = m.init(jax.random.key(0), SPEC)
        out = jax.jit(m.apply, static_argnums=2)(theta, x, SPEC)
        assert real_rows(out) == [[101, 9, 9, 5, 102]]
        with pytest.raises(ValueError, match="max_length=4"):
            m.apply(theta, x, jr.TokenSpec(vocab_size=100, max_length=4, hidden_size=8))
        with pytest.raises(TypeError, match="TokenSpec"):
            m.apply(theta, x, jr.ImageSpec(8))
        with pytest.raises(ValueError, match="'input_ids' and 'attention_mask'"):
            m.apply(theta, {"input_ids": x["input_ids"]}, SPEC)
        with pytest.raises(ValueError, match="non-empty"):
            jr.context.demonstrations([])

    def test_other_per_token_keys_are_refused(self):
        # They kept length L while input_ids grew to L + P: a silently misaligned batch.
        m, x = jr.context.instruction([9, 9]), tokens([[101, 5, 102]], 4)
        with pytest.raises(ValueError, match=r"per-token keys \['position_ids', 'token_type_ids'\]"):
            m.apply(
                (),
                {**x, "token_type_ids": jnp.zeros((1, 4), jnp.int32), "position_ids": x["input_ids"]},
                SPEC,
            )
        out = m.apply((), {**x, "label": jnp.ones((1,), jnp.int32)}, SPEC)  # not per token: passes through
        assert real_rows(out) == [[101, 9, 9, 5, 102]] and out["label"].shape == (1,)


# The fixed contexts (their jit / grad / vmap: tests/test_transforms.py).
CONTEXTS = {
    "instruction": lambda: jr.context.instruction([9, 9], suffix=[50]),
    "demonstrations": lambda: jr.context.demonstrations([20, 21, 22, 23], padding_side="left"),
    "chain_of_thought": lambda: jr.context.chain_of_thought([30, 31, 32], suffix=[50, 51], keep_first=0),
}


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_fixed_context_is_differentiable_through(name):
    """A fixed context learns nothing (theta is ()), but a differentiable model reading its output
    differentiates through it: w.r.t. an embedding table, the gradient counts every real token,
    the context's included."""
    m = CONTEXTS[name]()
    theta = m.init(jax.random.key(0), SPEC)
    assert theta == () and m.tags.format == jr.Format.FIXED
    x = tokens([[1, 5, 6, 2], [1, 7, 2], [1, 2]], 5, "left")
    out = m.apply(theta, x, SPEC)

    def loss(w):
        out = m.apply(theta, x, SPEC)
        return jnp.sum(w[out["input_ids"]] * out["attention_mask"][..., None])

    g = jax.jit(jax.grad(loss))(jax.random.normal(jax.random.key(1), (SPEC.vocab_size, 3)))
    ids, mask = np.asarray(out["input_ids"]), np.asarray(out["attention_mask"])
    assert mask.sum() > np.asarray(x["attention_mask"]).sum()  # the context is in the batch
    counts = np.bincount(ids[mask == 1], minlength=SPEC.vocab_size).astype(np.float32)
    np.testing.assert_array_equal(g, np.broadcast_to(counts[:, None], g.shape))


class TestSelection:
    def test_knn_and_order(self):
        pool = jnp.asarray([[1.0, 0], [0, 1], [1, 1], [-1, 0]])
        idx, sims = select.knn(jnp.asarray([[1.0, 0.1]]), pool, 3)
        np.testing.assert_array_equal(idx, [[0, 2, 1]])
        assert np.all(np.diff(np.asarray(sims[0])) <= 0)
        np.testing.assert_array_equal(select.order(idx, "nearest_last"), [[1, 2, 0]])
        r = select.order(idx, "random", key=jax.random.key(0))
        assert sorted(np.asarray(r[0]).tolist()) == [0, 1, 2]
        with pytest.raises(ValueError, match="must share D"):
            select.knn(jnp.ones((1, 3)), pool, 1)

    def test_knn_zero_embedding_is_not_nan(self):
        pool = jnp.asarray([[1.0, 0], [0, 0], [0, 1]])
        idx, sims = select.knn(jnp.asarray([[0.0, 0], [0, 2]]), pool, 3)
        np.testing.assert_array_equal(idx, [[0, 1, 2], [2, 0, 1]])  # all ties: lowest index first
        np.testing.assert_allclose(sims, [[0, 0, 0], [1, 0, 0]])

    def test_random_is_seeded_and_distinct(self):
        a = select.random(jax.random.key(1), 10, 5)
        np.testing.assert_array_equal(a, select.random(jax.random.key(1), 10, 5))
        assert len(set(np.asarray(a).tolist())) == 5
        with pytest.raises(ValueError, match="k must be in"):
            select.random(jax.random.key(1), 3, 5)

    def test_balanced(self):
        labels = jnp.asarray([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
        idx = select.balanced(jax.random.key(0), labels, 2, 3)
        assert sorted(np.bincount(np.asarray(labels)[np.asarray(idx)]).tolist()) == [2, 2, 2]
        assert len(set(np.asarray(idx).tolist())) == 6
        with pytest.raises(ValueError, match="per_class=4"):
            select.balanced(jax.random.key(0), labels, 4, 3)

    def test_balanced_jits_with_closed_over_labels(self):
        labels = jnp.asarray([0, 1, 2, 0, 1, 2])  # a concrete array whose jnp ops are traced under jit
        idx = jax.jit(lambda k: select.balanced(k, labels, 2, 3))(jax.random.key(0))
        assert sorted(np.asarray(labels)[np.asarray(idx)].tolist()) == [0, 0, 1, 1, 2, 2]

    def test_balanced_rejects_out_of_range_labels(self):
        # bincount clips -1 to class 0: without the check, class 0's picks are the -1 examples.
        labels = jnp.asarray([0, 0, 1, 1, -1, -1])
        with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=2\)"):
            select.balanced(jax.random.key(0), labels, 2, 2)
        with pytest.raises(ValueError, match="num_classes=2"):
            select.balanced(jax.random.key(0), jnp.asarray([0, 0, 1, 1, 2]), 2, 2)


class TestParsing:
    def test_extract(self):
        text = "3 apples plus 4 is 7. The answer is 7."
        assert jr.context.extract(text) == "7"
        assert jr.context.extract("no answer here") is None
        assert jr.context.extract("x=1, then x=2", r"x=(\d)") == "2"
        assert jr.context.extract("x=1, then x=2", r"x=(\d)", last=False) == "1"

    def test_extract_keeps_decimals_and_thousands(self):
        assert jr.context.extract("Half of 7 is 3.5. The answer is 3.5.") == "3.5"
        assert jr.context.extract("The answer is 1,000, so") == "1,000"
        assert jr.context.extract("The answer is: (B).") == "B"
        assert jr.context.extract("The answer is 42...") == "42"
        assert jr.context.extract("The answer isn't obvious.") is None

    def test_verbalize(self):
        words = {0: ["sport", "football"], 1: ["politics"]}
        assert jr.context.verbalize("This is about Football.", words) == 0
        assert jr.context.verbalize("politics, then sport", words) == 1
        assert jr.context.verbalize("sportsmanship", words) == -1
        assert jr.context.verbalize(None, words) == -1

    def test_verbalize_label_words_with_punctuation(self):
        assert jr.context.verbalize("The answer is (B).", [["(A)"], ["(B)"]]) == 1
        assert jr.context.verbalize("score: -1", {0: ["+1"], 1: ["-1"]}) == 1
        assert jr.context.verbalize("x(A)", [["(A)"]]) == -1
        with pytest.raises(ValueError, match="non-empty label words"):
            jr.context.verbalize("yes", [["yes"], [""]])
        with pytest.raises(ValueError, match="non-empty label words"):
            jr.context.verbalize("yes", ["yes", "no"])

    def test_vote(self):
        answers = jnp.asarray([[1, 2, -1], [1, 0, -1], [2, 0, -1]])
        np.testing.assert_array_equal(jr.context.vote(answers, 3), [1, 0, -1])
        np.testing.assert_array_equal(jax.jit(jr.context.vote, static_argnums=1)(answers, 3), [1, 0, -1])
        # A class id >= num_classes was silently an abstention (one_hot gives a zero row).
        with pytest.raises(ValueError, match=r"\[0, num_classes=3\) or -1 .* values in \[-1, 3\]"):
            jr.context.vote(jnp.asarray([[3, 1], [-1, 1]]), 3)
        with pytest.raises(ValueError, match="values in"):
            jr.context.vote(jnp.asarray([[-2, 1]]), 3)
        with pytest.raises(ValueError, match="vote: num_classes must be an int >= 1, got 0"):
            jr.context.vote(answers, 0)
        assert jr.context.vote_text(["4", None, "5", "4"]) == "4"
        assert jr.context.vote_text(["5", "4"]) == "5"
        assert jr.context.vote_text([None]) is None


def test_description_logits():
    e = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
    d = jnp.asarray([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = jr.context.description_logits(e, d, temperature=0.5)
    chex.assert_trees_all_close(z[0], jnp.asarray([2.0, 0.0, np.sqrt(0.5) * 2]), rtol=1e-6)
    np.testing.assert_array_equal(jnp.argmax(z, -1), [0, 1])
    with pytest.raises(ValueError, match="temperature"):
        jr.context.description_logits(e, d, temperature=0)


def test_description_logits_zero_embedding_is_finite():
    e, d = jnp.asarray([[0.0, 0.0], [1.0, 0.0]]), jnp.asarray([[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(jr.context.description_logits(e, d, temperature=0.5), [[0, 0], [2, 0]])
    grads = jax.grad(lambda e, d: jr.context.description_logits(e, d).sum(), argnums=(0, 1))(e, d)
    assert all(bool(jnp.isfinite(g).all()) for g in grads)
