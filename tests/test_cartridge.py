"""Cartridges (Eyuboglu et al. 2025): a trainable K/V prefix initialised from the frozen model's own cache.

The defining property: initialised from the cache of a text T, the program reads x exactly as the frozen
model reads T + x — every position's logits, the last token's, and greedy generation with and without the
KV cache — on GPT-2 and on Llama-family decoders (GQA with llama3 RoPE scaling and q/k/v biases; Qwen3's
q/k norms and heads not hidden_size / num_heads wide; Gemma 2's soft caps, sliding window and √D-scaled
embeddings). Tolerance: 1e-5 of the logits' scale (float32; the sums run in another order).
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import pack

import jaxreprog as jr
from jaxreprog.models import bert, causal, gpt2, llama, text
from jaxreprog.taxonomy import Format, Location, Operator

GPT = gpt2.GPT2Config(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, max_positions=32)
DECODERS = {
    "llama": llama.DecoderConfig(
        family="llama", vocab_size=48, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, max_positions=32, qkv_bias=True,
        ropes=(llama.Rope(kind="llama3", factor=8.0, low_freq_factor=0.5, original_max_positions=16),) * 2,
    ),
    "qwen3": llama.DecoderConfig(
        family="qwen3", vocab_size=48, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
        num_kv_heads=1, head_dim=16, max_positions=32, qk_norm=True,
    ),
    "gemma2": llama.DecoderConfig(
        family="gemma2", vocab_size=48, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=16, max_positions=32, activation="gelu_pytorch_tanh", gemma=True,
        attn_scale=16**-0.5, attn_softcap=50.0, final_softcap=30.0, windows=(24, None), tie_embeddings=True,
    ),
}  # fmt: skip
TEXT = np.array([3, 7, 11, 4, 9, 13])


ROWS = [np.array([1, 5, 6, 7, 2]), np.array([1, 9, 2]), np.array([8, 3, 4, 10])]
SIDES = ["left", "right", "right"]


def _sharpened(model, scale):
    """The model with its weights times ``scale``: a random model whose greedy tokens vary (no near-ties)."""
    return jr.FrozenModel(model.apply, jax.tree.map(lambda a: a * scale, model.params), model.spec)


@pytest.fixture(scope="module", params=["gpt2", *DECODERS])
def lm(request):
    if request.param == "gpt2":
        return _sharpened(gpt2.from_config(GPT, jax.random.key(0)), 3.0)
    return llama.from_config(DECODERS[request.param], jax.random.key(1))


@pytest.fixture(scope="module")
def small():
    return gpt2.from_config(GPT, jax.random.key(0))


def hook_of(part, theta, spec):
    return lambda site, value: part.apply(theta, site, value, spec)


def test_initialised_from_the_cache_of_t_it_reads_x_as_the_model_reads_t_then_x(lm):
    cart = jr.hidden.cartridge(jr.hidden.kv_cache(lm, lm.params, TEXT))
    program = jr.reprogram(lm, hidden=cart)
    theta = program.init(jax.random.key(0))
    x = pack(ROWS, SIDES)
    joined = pack([np.r_[TEXT, r] for r in ROWS], SIDES)
    got = jax.jit(program.apply)(theta, lm.params, x)
    want = jax.jit(lm.apply)(lm.params, joined)
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    assert not np.allclose(got, jax.jit(lm.apply)(lm.params, x), atol=1e-2 * scale)  # T matters

    # every position: x's own L positions against T + x's positions after T (right padding)
    right = pack(ROWS, ["right"] * 3)
    every = jax.jit(lambda t, p, x: causal.reprogrammed_logits(lm, program, t, p, x))(theta, lm.params, right)
    full = jax.jit(lambda p, x: causal.logits(lm, p, x).logits)(
        lm.params, pack([np.r_[TEXT, r] for r in ROWS], ["right"] * 3)
    )[:, len(TEXT) :]
    mask = np.asarray(right["attention_mask"], bool)
    np.testing.assert_allclose(np.asarray(every)[mask], np.asarray(full)[mask], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("lm", ["gpt2", "llama"], indirect=True)
def test_generation_through_the_kv_cache_equals_the_text_then_x(lm):
    """Greedy tokens after x with the cartridge: cached == recomputed == the frozen model after T + x."""
    cart = jr.hidden.cartridge(jr.hidden.kv_cache(lm, lm.params, TEXT), frozen=0)
    hook = hook_of(cart, cart.init(jax.random.key(0), lm.spec), lm.spec)
    x = pack(ROWS, SIDES)

    def generate(x, hook, use_cache=True):
        run = jax.jit(lambda p, x: causal.generate(lm, p, x, 6, hook=hook, use_cache=use_cache))
        return np.asarray(run(lm.params, x))

    cached = generate(x, hook)
    np.testing.assert_array_equal(cached, generate(x, hook, use_cache=False))
    np.testing.assert_array_equal(cached, generate(pack([np.r_[TEXT, r] for r in ROWS], SIDES), None))
    assert len(np.unique(cached)) > 3, "the toy model should not repeat one token"


def test_length_takes_the_first_tokens_and_frozen_splits_theta(small):
    cache = jr.hidden.kv_cache(small, small.params, TEXT)
    chex.assert_shape(cache, (2, 2, 6, 2, 8))
    np.testing.assert_allclose(jr.hidden.kv_cache(small, small.params, TEXT[:3]), cache[:, :, :3], atol=1e-6)
    cart = jr.hidden.cartridge(cache, length=3, frozen=2)
    theta = cart.init(jax.random.key(0), small.spec)
    chex.assert_shape([theta["frozen"], theta["kv"]], [(2, 2, 2, 2, 8), (2, 2, 1, 2, 8)])
    assert jr.core.trainable_mask(cart, theta) == {"frozen": False, "kv": True}
    x = pack(ROWS, SIDES)
    got = jax.jit(lambda t, p, x: small.apply(p, x, hook_of(cart, t, small.spec)))(theta, small.params, x)
    want = jax.jit(small.apply)(small.params, pack([np.r_[TEXT[:3], r] for r in ROWS], SIDES))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))

    # layers: a cache of some layers, a cartridge at those layers
    one = jr.hidden.kv_cache(small, small.params, TEXT, layers=[1])
    np.testing.assert_array_equal(one, cache[1:])
    part = jr.hidden.cartridge(one, layers=[1], frozen=0)
    kv = text.KeyValues(
        jnp.zeros((2, 5, 2, 8)), jnp.zeros((2, 5, 2, 8)), jnp.ones((2, 5), bool), jnp.zeros((2, 5), int)
    )
    theta = part.init(jax.random.key(0), small.spec)
    assert part.apply(theta, "layer_0/kv", kv, small.spec) is kv
    out = part.apply(theta, "layer_1/kv", kv, small.spec)
    np.testing.assert_array_equal(out.k[:, :6], jnp.broadcast_to(cache[1, 0], (2, 6, 2, 8)))
    np.testing.assert_array_equal(out.positions[:, :6], -1)


def test_grouped_query_heads_are_learned_once_and_repeated():
    model = llama.from_config(DECODERS["llama"], jax.random.key(1))
    cache = jr.hidden.kv_cache(model, model.params, TEXT)
    chex.assert_shape(cache, (2, 2, 6, 2, 8))  # the model's 2 key/value heads, not its 4 query heads

    def site(params, x):  # the frozen model's own keys at layer 1's site, for T + x
        seen = {}

        def hook(site, value):
            if site == "layer_1/kv":
                seen["kv"] = value
            return value

        model.apply(params, x, hook)
        return seen["kv"]

    kv = jax.jit(site)(model.params, pack([np.r_[TEXT, ROWS[0]]], ["right"]))
    cart = jr.hidden.cartridge(cache)
    prefix = cart.apply(cart.init(jax.random.key(0), model.spec), "layer_1/kv", kv, model.spec)
    np.testing.assert_allclose(prefix.k[:, :6], kv.k[:, :6], atol=1e-6)  # head i: key/value head i // 2
    np.testing.assert_allclose(prefix.v[:, :6], kv.v[:, :6], atol=1e-6)
    zeros = jr.hidden.cartridge("zeros", length=3, frozen=0).init(jax.random.key(0), model.spec)
    chex.assert_shape(zeros["kv"], (2, 2, 3, 2, 8))
    assert not np.any(zeros["kv"])


def test_zero_init_adds_nothing_through_the_values_and_only_dilutes_through_the_keys(small):
    """Zero keys and values: each attention output is the frozen one times Z / (Z + P) (Z: the sum of
    exp(score) over the real keys); exactly the frozen model where the cartridge acts nowhere."""
    q = jax.random.normal(jax.random.key(0), (2, 4, 2, 8))
    k, v = jax.random.normal(jax.random.key(1), (2, 2, 5, 2, 8))
    mask = jnp.ones((2, 5), bool).at[1, :2].set(False)
    positions = text.positions_from_mask(mask)
    kv = text.KeyValues(k, v, mask, positions)
    cart = jr.hidden.cartridge("zeros", length=3, frozen=0)
    theta = cart.init(jax.random.key(0), small.spec)
    assert not np.any(theta["kv"])
    q_pos = positions[:, 1:]
    zero = text.attend(q, cart.apply(theta, "layer_0/kv", kv, small.spec), q_pos, causal=True)
    plain = text.attend(q, kv, q_pos, causal=True)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(8.0)
    seen = mask[:, None, None, :] & (positions[:, None, None, :] <= q_pos[:, None, :, None])
    z = jnp.sum(jnp.where(seen, jnp.exp(scores), 0.0), axis=-1)  # (B, H, Q)
    np.testing.assert_allclose(zero, plain * jnp.swapaxes(z / (z + 3), 1, 2)[..., None], rtol=1e-5, atol=1e-6)

    x = pack(ROWS, SIDES)
    frozen = jax.jit(small.apply)(small.params, x)
    nowhere = jr.reprogram(small, hidden=jr.hidden.cartridge("zeros", length=3, layers=[]))
    np.testing.assert_array_equal(
        jax.jit(nowhere.apply)(nowhere.init(jax.random.key(0)), small.params, x), frozen
    )
    program = jr.reprogram(small, hidden=jr.hidden.cartridge("zeros", length=3, positions="from_zero"))
    assert not np.allclose(
        jax.jit(program.apply)(program.init(jax.random.key(0)), small.params, x), frozen, atol=1e-4
    )


def test_jit_grad_vmap_and_the_gradient_reaches_only_the_prefix(small):
    program = jr.reprogram(small, hidden=jr.hidden.cartridge(jr.hidden.kv_cache(small, small.params, TEXT)))
    theta = program.init(jax.random.key(0))
    x, y = pack(ROWS, SIDES), jnp.array([3, 7, 1])

    def loss(theta, params):
        logp = jax.nn.log_softmax(program.apply(theta, params, x))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    g_theta, g_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, small.params)
    assert np.all(np.isfinite(g_theta["hidden"]["kv"])) and np.abs(g_theta["hidden"]["kv"]).max() > 0
    assert not np.any(g_theta["hidden"]["frozen"])  # the attention sink stays
    assert all(not np.any(g) for g in jax.tree.leaves(g_params))  # the frozen weights get none

    thetas = jax.tree.map(lambda a: jnp.stack([a, a + 0.1]), theta)
    batched = jax.jit(jax.vmap(program.apply, in_axes=(0, None, None)))(thetas, small.params, x)
    for i in range(2):
        one = jax.tree.map(lambda a, i=i: a[i], thetas)
        np.testing.assert_allclose(batched[i], jax.jit(program.apply)(one, small.params, x), atol=1e-5)


def test_tags_registry_and_save_load(small, tmp_path):
    tags = jr.Tags(Format.LEARNABLE, Location.HIDDEN, Operator.CONCATENATIVE)
    assert jr.hidden.cartridge("zeros", length=2).tags == tags
    assert jr.taxonomy.registry["cartridge"].paper == "Eyuboglu et al. 2025"
    program = jr.reprogram(
        small, hidden=jr.hidden.cartridge(jr.hidden.kv_cache(small, small.params, TEXT[:4]))
    )
    theta = jax.tree.map(lambda a: a + 0.5, program.init(jax.random.key(0)))
    jr.save(tmp_path / "cart", program, theta, frozen_model=small)
    loaded, loaded_theta = jr.load(tmp_path / "cart", small)
    x = pack(ROWS, SIDES)
    np.testing.assert_allclose(
        jax.jit(loaded.apply)(loaded_theta, small.params, x),
        jax.jit(program.apply)(theta, small.params, x),
        atol=1e-6,
    )


def test_save_writes_the_cache_once_and_load_restarts_from_the_saved_theta(small, tmp_path):
    from safetensors.numpy import load_file, save_file

    cache = jr.hidden.kv_cache(small, small.params, TEXT)
    program = jr.reprogram(small, hidden=jr.hidden.cartridge(cache, length=5))
    theta = jax.tree.map(lambda a: a + 0.5, program.init(jax.random.key(0)))
    folder = jr.save(tmp_path / "cart", program, theta, frozen_model=small)
    one_copy = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(theta))
    assert one_copy <= (folder / "prompt.safetensors").stat().st_size < one_copy + 1024  # + the header
    assert set(load_file(str(folder / "prompt.safetensors"))) == {
        "theta/['hidden']['frozen']",
        "theta/['hidden']['kv']",
    }
    loaded, loaded_theta = jr.load(folder, small)
    x = pack(ROWS, SIDES)
    chex.assert_trees_all_equal(loaded_theta, theta)
    chex.assert_trees_all_equal(
        loaded.apply(loaded_theta, small.params, x), program.apply(theta, small.params, x)
    )
    chex.assert_trees_all_equal(loaded.init(jax.random.key(1)), theta)  # its init: the saved prompt

    # inside a jr.chain, and with K stacked candidates (the loaded init: the first's)
    chained = jr.reprogram(small, hidden=jr.chain(jr.hidden.prefix_tuning(2), jr.hidden.cartridge(cache)))
    thetas = jax.vmap(chained.init)(jax.random.split(jax.random.key(2), 3))
    thetas = jax.tree.map(lambda a: a + jnp.arange(3.0).reshape(-1, *[1] * (a.ndim - 1)), thetas)
    loaded, loaded_thetas = jr.load(jr.save(tmp_path / "chain", chained, thetas, frozen_model=small), small)
    chex.assert_trees_all_equal(loaded_thetas, thetas)
    chex.assert_trees_all_equal(
        loaded.init(jax.random.key(0))["hidden"][1], jax.tree.map(lambda a: a[0], thetas["hidden"][1])
    )

    # an artifact that holds the cache as an argument array (as saved before) still loads as saved
    config = json.loads((folder / "config.json").read_text())
    config["parts"]["hidden"]["arguments"]["init"] = {"__array__": "arguments/hidden/init"}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(folder / "prompt.safetensors"))
    save_file({**tensors, "arguments/hidden/init": np.asarray(cache)}, str(folder / "prompt.safetensors"))
    loaded, loaded_theta = jr.load(folder, small)
    chex.assert_trees_all_equal(loaded_theta, theta)
    chex.assert_trees_all_equal(loaded.init(jax.random.key(0)), program.init(jax.random.key(0)))


def test_bad_input(small):
    kv_cache = jr.hidden.kv_cache
    with pytest.raises(ValueError, match="longer than this model's context of 32 positions"):
        kv_cache(small, small.params, np.arange(33) % 32)
    with pytest.raises(ValueError, match="text is empty"):
        kv_cache(small, small.params, [])
    with pytest.raises(ValueError, match="1-D integer token ids"):
        kv_cache(small, small.params, TEXT[None])
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 32\)"):
        kv_cache(small, small.params, [1, 40])
    encoder = bert.from_config(
        bert.BertConfig(
            vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=24
        ),
        jax.random.key(1),
    )
    with pytest.raises(TypeError, match="causal LM"):
        kv_cache(encoder, encoder.params, TEXT)

    # a cache of another model: other layers, heads or head width
    decoder = llama.from_config(DECODERS["qwen3"], jax.random.key(1))
    foreign = jr.hidden.cartridge(kv_cache(decoder, decoder.params, TEXT))
    with pytest.raises(ValueError, match=r"computed by another model"):
        jr.reprogram(small, hidden=foreign).init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"computed by another model"):
        jr.hidden.cartridge(kv_cache(small, small.params, TEXT, layers=[1])).init(
            jax.random.key(0), small.spec
        )

    # the cache fills the context: no room for the input after it
    with pytest.raises(ValueError, match="leaving no room"):
        jr.hidden.cartridge(kv_cache(small, small.params, np.arange(32) % 32)).init(
            jax.random.key(0), small.spec
        )
    program = jr.reprogram(
        small, hidden=jr.hidden.cartridge(kv_cache(small, small.params, np.arange(30) % 32))
    )
    with pytest.raises(ValueError, match="past this model's 32 positions"):
        program.apply(program.init(jax.random.key(0)), small.params, pack(ROWS, SIDES))

    cache = kv_cache(small, small.params, TEXT)
    for kwargs, message in [
        (dict(init="random", length=2), "init must be 'zeros' or a kv_cache array"),
        (dict(init="zeros"), "needs length="),
        (dict(init=cache[0]), "layers, 2, tokens"),
        (dict(init=cache, length=7), "init caches 6 tokens"),
        (dict(init=cache, frozen=6), "leaves none of the 6 tokens"),
        (dict(init=cache.at[0, 0, 0, 0, 0].set(jnp.nan)), "NaN"),
        (dict(init=cache, kv_heads=1), "init has 2 key/value heads"),
        (dict(init="zeros", length=2, positions="shifted"), "positions must be"),
        (dict(init="zeros", length=True), r"cartridge: length must be an int >= 1, got True \(bool\)"),
    ]:
        with pytest.raises((TypeError, ValueError), match=message):  # TypeError: not an int
            jr.hidden.cartridge(**kwargs)
    with pytest.raises(ValueError, match="does not divide"):
        jr.hidden.cartridge("zeros", length=2, kv_heads=3).init(jax.random.key(0), small.spec)
