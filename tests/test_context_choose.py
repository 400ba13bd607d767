"""Choosing a fixed context on validation: K candidate prefixes scored in one vmapped call."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import bert, gpt2

V = 32
BAG_SPEC = jr.TokenSpec(vocab_size=V, max_length=16, hidden_size=2, pad_id=0)


def bag_of_words() -> jr.FrozenModel:
    """Logits = sum of W[token] over real tokens: a model whose predictions a prefix shifts by hand.

    Token 1 ([CLS]) biases class 1 by 1.5; query tokens 10 / 11 give class 0 / 1 one point;
    prefix tokens 20 / 21 give class 0 / 1 one point; the pad id 0 gives class 0 a hundred,
    so any prefix padding that leaks into the input flips every prediction.
    """
    w = np.zeros((V, 2), np.float32)
    w[0, 0], w[1, 1], w[10, 0], w[11, 1], w[20, 0], w[21, 1] = 100.0, 1.5, 1.0, 1.0, 1.0, 1.0

    def apply(params, x, hook=None):
        del hook
        counts = (jax.nn.one_hot(x["input_ids"], V) * x["attention_mask"][..., None]).sum(1)
        return counts @ params["w"]

    return jr.FrozenModel(apply, {"w": jnp.asarray(w)}, BAG_SPEC)


def queries():
    ids = np.array([[1, 10, 2, 0], [1, 11, 2, 0], [1, 10, 2, 0], [1, 11, 2, 0]], np.int32)
    x = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray((ids > 0).astype(np.int32))}
    return x, jnp.array([0, 1, 0, 1], jnp.int32)


class TestSelectPrefix:
    def test_picks_the_prefix_that_cancels_the_bias(self):
        # Hand-computed: no prefix -> all class 1 (0.5); [20] cancels the [CLS] bias (1.0);
        # [20, 20, 20] -> all class 0 (0.5); [21] -> all class 1 (0.5).
        model = bag_of_words()
        ids, mask = jr.context.stack([[], [20], [20, 20, 20], [21]])
        choice = jr.context.select_prefix(model, model.params, ids, mask, queries())
        assert choice.index == 1
        np.testing.assert_allclose(choice.accuracy, [0.5, 1.0, 0.5, 0.5])

    def test_iterable_of_batches_pools_counts(self):
        model = bag_of_words()
        ids, mask = jr.context.stack([[20], [21]])
        x, y = queries()
        # Two batches of different sizes: 3 + 1 examples.
        parts = [({k: v[:3] for k, v in x.items()}, y[:3]), ({k: v[3:] for k, v in x.items()}, y[3:])]
        acc = jr.context.score_candidates(model, model.params, ids, mask, parts)
        np.testing.assert_allclose(acc, [1.0, 0.5])

    def test_errors(self):
        model = bag_of_words()
        x, y = queries()
        with pytest.raises(ValueError, match=r"prefixes must be \(K, P\)"):
            jr.context.score_candidates(model, model.params, jnp.array([20]), None, (x, y))
        with pytest.raises(ValueError, match="prefix_mask must have the shape"):
            jr.context.score_candidates(model, model.params, jnp.array([[20, 21]]), jnp.ones((1, 3)), (x, y))
        with pytest.raises(ValueError, match="max_length=16"):
            jr.context.score_candidates(model, model.params, jnp.full((1, 13), 20), None, (x, y))
        with pytest.raises(ValueError, match=r"align must return \(B, C\)"):
            jr.context.score_candidates(
                model, model.params, jnp.array([[20]]), None, (x, y), align=lambda s, o: o[:, 0]
            )
        with pytest.raises(ValueError, match="no examples"):
            jr.context.score_candidates(model, model.params, jnp.array([[20]]), None, [])
        with pytest.raises(ValueError, match=r"per-token keys \['token_type_ids'\]"):
            typed = {**x, "token_type_ids": jnp.zeros_like(x["input_ids"])}
            jr.context.score_candidates(model, model.params, jnp.array([[20]]), None, (typed, y))
        with pytest.raises(TypeError, match="token model"):
            image = jr.FrozenModel(model.apply, model.params, jr.ImageSpec((8, 8), 3, 2))
            jr.context.score_candidates(image, model.params, jnp.array([[20]]), None, (x, y))

    def test_repeated_calls_reuse_one_compiled_program(self, caplog):
        """Scoring new candidates of the same shapes with the same model and alignment (APE's
        propose-and-score rounds) compiles nothing more after the first call."""
        model, align = bag_of_words(), jr.output.identity(2)  # a new model: nothing compiled for it yet

        def score(candidates):
            ids, mask = jr.context.stack(candidates)
            return jr.context.score_candidates(model, model.params, ids, mask, queries(), align=align)

        score([[20], [21]])
        with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
            np.testing.assert_allclose(score([[21], [20]]), [0.5, 1.0])
            score([[20], [20]])
        assert not [r.getMessage() for r in caplog.records if "XLA compilation" in r.getMessage()]


def loop_accuracy(model, prefixes, x, y, head):
    """The reference: one fixed-instruction manipulation and one forward pass per candidate
    (outputs right-padded to one length, so the jitted model compiles once)."""
    apply = jax.jit(model.apply)
    length = x["input_ids"].shape[1] + max(map(len, prefixes))
    out = []
    for p in prefixes:
        xp = jr.context.instruction(p).apply((), x, model.spec)
        xp = {k: jnp.pad(v, ((0, 0), (0, length - v.shape[1]))) for k, v in xp.items()}
        scores = head(apply(model.params, xp))
        out.append(float(jnp.mean(jnp.argmax(scores, -1) == y)))
    return np.array(out)


def token_batch(key, b, length, vocab):
    ids = jax.random.randint(key, (b, length), 3, vocab)
    lengths = jnp.arange(b) % (length - 2) + 2
    mask = (jnp.arange(length)[None] < lengths[:, None]).astype(jnp.int32)
    return {"input_ids": jnp.where(mask == 1, ids.at[:, 0].set(1), 0), "attention_mask": mask}


PREFIXES = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]


class TestVmapEqualsLoop:
    def test_causal_lm_with_verbalizer(self):
        cfg = gpt2.GPT2Config(
            vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, max_positions=32, bos_id=1, eos_id=2
        )
        model = gpt2.from_config(cfg, jax.random.PRNGKey(0))
        x = token_batch(jax.random.PRNGKey(1), 12, 8, 40)
        verbalizer = jr.output.verbalizer([[20, 21], [22], [23, 24]], num_source=40)
        y = jnp.argmax(verbalizer.apply((), jax.jit(model.apply)(model.params, x)), -1)  # the model's labels
        y = jnp.where(jnp.arange(12) % 3 == 0, (y + 1) % 3, y)  # ... mostly right
        ids, mask = jr.context.stack(PREFIXES)
        acc = jr.context.score_candidates(model, model.params, ids, mask, (x, y), align=verbalizer)
        expected = loop_accuracy(model, PREFIXES, x, y, lambda o: verbalizer.apply((), o))
        np.testing.assert_allclose(acc, expected, atol=1e-6)
        assert len(set(expected.tolist())) > 1, "the candidates should differ, else the test proves little"

    def test_encoder_with_label_descriptions(self):
        cfg = bert.BertConfig(
            vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_positions=32
        )
        model = bert.from_config(cfg, jax.random.PRNGKey(0))
        x = token_batch(jax.random.PRNGKey(2), 16, 8, 40)
        descriptions = jax.jit(model.apply)(model.params, token_batch(jax.random.PRNGKey(3), 3, 4, 40))
        y = jax.random.randint(jax.random.PRNGKey(4), (16,), 0, 3)
        ids, mask = jr.context.stack(PREFIXES)
        choice = jr.context.select_prefix(
            model,
            model.params,
            ids,
            mask,
            (x, y),
            align=lambda d, e: jr.context.description_logits(e, d),
            align_state=descriptions,
        )
        expected = loop_accuracy(
            model, PREFIXES, x, y, lambda e: jr.context.description_logits(e, descriptions)
        )
        np.testing.assert_allclose(choice.accuracy, expected, atol=1e-6)
        assert choice.index == int(np.argmax(expected))


@pytest.fixture(scope="module")
def lm():
    cfg = gpt2.GPT2Config(
        vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, max_positions=32, bos_id=1, eos_id=2
    )
    return gpt2.from_config(cfg, jax.random.PRNGKey(5))


class TestLabelLoglik:
    def test_equals_teacher_forcing_by_hand(self, lm):
        x = token_batch(jax.random.PRNGKey(6), 3, 7, 40)
        words = [[20, 21, 22], [23], [24, 25]]
        labels, mask = jr.context.stack(words)
        logits_fn = lambda p, x: gpt2.logits(lm, p, x).logits  # noqa: E731
        got = jax.jit(lambda p, x: jr.context.label_loglik(logits_fn, p, x, labels, mask))(lm.params, x)
        chex.assert_shape(got, (3, 3))
        # Reference: every (prompt, label) sequence written out, right-padded, one forward pass.
        pairs = [(b, c, row, w) for b, row in enumerate(real_tokens(x)) for c, w in enumerate(words)]
        seqs = np.zeros((len(pairs), 12), np.int32)
        for i, (_, _, row, w) in enumerate(pairs):
            seqs[i, : len(row) + len(w)] = row + w
        one = {"input_ids": jnp.asarray(seqs), "attention_mask": jnp.asarray((seqs > 0).astype(np.int32))}
        logp = jax.nn.log_softmax(logits_fn(lm.params, one))
        for i, (b, c, row, w) in enumerate(pairs):
            want = sum(float(logp[i, len(row) - 1 + t, tok]) for t, tok in enumerate(w))
            np.testing.assert_allclose(got[b, c], want, rtol=1e-5, atol=1e-5)

    def test_one_token_labels_are_the_verbalizer(self, lm):
        x = token_batch(jax.random.PRNGKey(7), 6, 7, 40)
        words = [[20], [23], [31]]
        logits_fn = lambda p, x: gpt2.logits(lm, p, x).logits  # noqa: E731
        got = jax.jit(lambda p, x: jr.context.label_loglik(logits_fn, p, x, jnp.asarray(words)))(lm.params, x)
        next_logits = jax.jit(lm.apply)(lm.params, x)
        want = jax.nn.log_softmax(next_logits)[:, [20, 23, 31]]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        verbalizer = jr.output.verbalizer(words, num_source=40)
        np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(verbalizer.apply((), next_logits), -1))

    def test_errors(self, lm):
        x = token_batch(jax.random.PRNGKey(7), 2, 7, 40)
        with pytest.raises(ValueError, match=r"\(C, T\)"):
            jr.context.label_loglik(lambda p, x: None, lm.params, x, jnp.array([1, 2]))
        logits_fn = lambda p, x: gpt2.logits(lm, p, x).logits  # noqa: E731
        labels, mask = jnp.array([[20, 21], [23, 0]]), jnp.array([[1, 1], [0, 0]])
        with pytest.raises(ValueError, match="at least one real token"):  # class 1 scored 0.0 and won
            jr.context.label_loglik(logits_fn, lm.params, x, labels, mask)


def real_tokens(x):
    return [
        list(np.asarray(i)[np.asarray(m) == 1].tolist()) for i, m in zip(x["input_ids"], x["attention_mask"])
    ]


def test_encode_ignores_a_tokenizers_padding_and_truncation():
    # jr.data.load_tokenizer pads (and truncates) to a fixed length; a prompt must count
    # only real word pieces, and the query must never be cut by the tokenizer.
    tok = jr.data.load_tokenizer("all_minilm_l6_v2")
    tok.enable_padding(length=64)
    tok.enable_truncation(4)
    t = jr.context.Template(instruction="Topic:", demo="{input} = {answer}", query="{input} =")
    ids, kept = jr.context.encode(
        t, "stocks fell sharply today", [jr.context.Demo("a goal", "sport")], tokenize=tok, max_length=64
    )
    assert kept == 1 and 0 not in ids and len(ids) < 20
    assert tok.decode(ids) == "topic : a goal = sport stocks fell sharply today ="
    assert tok.padding is not None  # the caller's tokenizer is left as it was
