"""GPT-2: parity with transformers, padding, KV-cache generation with prompts and prefixes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import pack

import jaxreprog as jr
from jaxreprog.models import gpt2, text

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random transformers GPT-2 and its conversion through save_pretrained -> load."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=48,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    reference = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("gpt2")
    reference.save_pretrained(folder)
    return reference, jr.models.load("gpt2", weights=str(folder))


def ragged(lengths, side, seed=0):
    """Random token rows of the given lengths, padded on ``side`` (one side or one per row)."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, VOCAB, n) for n in lengths]
    sides = [side] * len(rows) if isinstance(side, str) else side
    return pack(rows, sides), rows


def generate(model, x, steps, hook=None, use_cache=True):
    run = jax.jit(lambda p, x: gpt2.generate(model, p, x, steps, hook=hook, use_cache=use_cache))
    return np.asarray(run(model.params, x))


def logits(model, x, hook=None):
    return jax.jit(lambda p, x: gpt2.logits(model, p, x, hook))(model.params, x)


def reference_logits(reference, row):
    with torch.no_grad():
        return reference(torch.tensor(np.asarray(row)[None], dtype=torch.long)).logits[0].numpy()


def hook_of(manipulation, theta, spec):
    return lambda site, value: manipulation.apply(theta, site, value, spec)


def test_logits_match_transformers(pair):
    reference, model = pair
    x, rows = ragged([11, 11, 11], "right")
    ours = np.asarray(logits(model, x).logits)
    for i, row in enumerate(rows):
        want = reference_logits(reference, row)
        np.testing.assert_allclose(ours[i], want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_padding_side_gives_the_unpadded_logits(pair):
    reference, model = pair
    x, rows = ragged([9, 5, 2, 5, 2], ["left", "left", "left", "right", "right"], seed=1)
    out = logits(model, x)
    last = np.asarray(jax.jit(model.apply)(model.params, x))
    for i, row in enumerate(rows):
        want = reference_logits(reference, row)
        got = np.asarray(out.logits[i])[np.asarray(x["attention_mask"][i], bool)]
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
        np.testing.assert_allclose(last[i], want[-1], atol=1e-4 * np.abs(want).max())


def test_padding_tokens_are_hidden(pair):
    _, model = pair
    x, _ = ragged([9, 4, 4], ["left", "left", "right"], seed=2)
    other = {**x, "input_ids": jnp.where(x["attention_mask"] == 1, x["input_ids"], 7)}
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(model.params, x), apply(model.params, other))


def test_generate_matches_transformers_and_cache_matches_recompute(pair):
    reference, model = pair
    x, rows = ragged([7, 7], "right", seed=3)
    cached = generate(model, x, 6)
    with torch.no_grad():
        want = reference.generate(
            torch.tensor(np.stack(rows), dtype=torch.long),
            attention_mask=torch.ones(2, 7, dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )[:, 7:]
    np.testing.assert_array_equal(cached, want.numpy())
    np.testing.assert_array_equal(generate(model, x, 6, use_cache=False), cached)
    assert len(np.unique(cached)) > 2, "the toy model should not repeat one token"


@pytest.mark.parametrize("where", ["prefix", "after_first", "suffix"])
def test_soft_prompt_generation_equals_prompt_tokens(pair, where):
    """A soft prompt made of token embeddings generates what the tokens themselves do,
    with the cache and without, left- and right-padded rows alike: the prompt wraps the
    input once and generated tokens follow it (without the cache a suffix prompt used to
    be re-inserted after the tokens generated so far)."""
    _, model = pair
    sides = ["left", "right", "right"]
    x, rows = ragged([6, 3, 5], sides, seed=4)
    prompt_ids = np.array([5, 9, 11], np.int32)
    sp = jr.embedding.soft_prompt(3, init=text.word_embeddings(model.params)[prompt_ids], where=where)
    hook = hook_of(sp, sp.init(jax.random.key(0), model.spec), model.spec)
    cached = generate(model, x, 5, hook)
    np.testing.assert_array_equal(cached, generate(model, x, 5, hook, use_cache=False))
    wrap = {
        "prefix": lambda r: np.r_[prompt_ids, r],
        "after_first": lambda r: np.r_[r[:1], prompt_ids, r[1:]],
        "suffix": lambda r: np.r_[r, prompt_ids],
    }[where]
    np.testing.assert_array_equal(cached, generate(model, pack([wrap(r) for r in rows], sides), 5))


def test_prefix_generation_cache_equals_recompute(pair):
    _, model = pair
    x, _ = ragged([6, 3], ["left", "right"], seed=6)
    pt = jr.hidden.prefix_tuning(4, reparameterize=16, std=1.0)
    hook = hook_of(pt, pt.init(jax.random.key(1), model.spec), model.spec)
    cached = generate(model, x, 6, hook)
    np.testing.assert_array_equal(cached, generate(model, x, 6, hook, use_cache=False))
    assert not np.array_equal(cached, generate(model, x, 6)), "the prefix should change the generation"


@pytest.mark.parametrize("flag", [{"scale_attn_by_inverse_layer_idx": True}, {"scale_attn_weights": False}])
def test_unsupported_attention_scaling_is_refused(tmp_path, flag):
    # Such checkpoints used to load and give other logits than transformers (0.29 off for 3.8).
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=8, **flag)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attention scale"):
        jr.models.load("gpt2", weights=str(tmp_path))


def test_convert_refuses_checkpoints_that_do_not_match_the_config(pair):
    # A checkpoint with more layers, other sizes or an untied LM head used to load silently.
    reference, _ = pair
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    config = gpt2.GPT2Config.from_hf(reference.config.to_dict())
    buffers = {"transformer.h.0.attn.bias": np.ones((1, 1, 48, 48)), "transformer.h.1.attn.masked_bias": -1e4}
    assert "lm_head.weight" in state  # tied to wte: not reported
    gpt2.convert({**state, **buffers}, config)
    extra = {**state, "transformer.h.2.ln_1.weight": state["transformer.h.1.ln_1.weight"]}
    with pytest.raises(
        ValueError, match=r"GPT-2 checkpoint has 1 tensors the model does not use.*'h\.2\.ln_1"
    ):
        gpt2.convert(extra, config)
    untied = {**state, "lm_head.weight": state["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="does not use.*'lm_head.weight'"):
        gpt2.convert(untied, config)
    with pytest.raises(
        ValueError, match=r"shape mismatch .*'wpe'.*checkpoint has \(48, 32\).*expects \(64, 32\)"
    ):
        gpt2.convert(state, config._replace(max_positions=64))


def test_errors(pair):
    _, model = pair
    with pytest.raises(ValueError, match="weights="):
        jr.models.load("gpt2")
    with pytest.raises(ValueError, match="attention_mask"):
        model.apply(model.params, {"input_ids": jnp.zeros((1, 3), jnp.int32)})
    with pytest.raises(ValueError, match="48 positions"):
        jax.eval_shape(lambda p, x: gpt2.generate(model, p, x, 10), model.params, ragged([40], "right")[0])
    with pytest.raises(TypeError, match="GPT-2 FrozenModel"):
        gpt2.generate(jr.FrozenModel(lambda p, x: x, {}, model.spec), {}, ragged([3], "right")[0], 2)


def test_special_ids_outside_a_small_vocabulary_are_dropped_from_the_spec():
    """GPT2Config's defaults name token 50256; a 32-token test model has no such token, so its
    spec has no bos/eos and pads with 0 (TokenSpec refuses ids outside the vocabulary)."""
    config = gpt2.GPT2Config(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, max_positions=8)
    spec = gpt2.from_config(config, jax.random.key(0)).spec
    assert (spec.bos_id, spec.eos_id, spec.pad_id) == (None, None, 0)
    spec = gpt2.from_config(config._replace(eos_id=5), jax.random.key(0)).spec
    assert (spec.bos_id, spec.eos_id, spec.pad_id) == (None, 5, 5)
