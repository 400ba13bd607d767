"""The Llama family (Llama 3, Qwen2, Qwen3, Mistral, Gemma 2/3): parity with transformers on tiny
random models, padding, sharded checkpoints, refused options, prompts and KV-cache generation."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import pack

import jaxreprog as jr
from jaxreprog.models import llama, text

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 64
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention: two query heads per key/value head
    initializer_range=0.2,
    max_position_embeddings=48,
)
# Each family with the options that set it apart, at sizes where they matter: sliding windows of 4
# under 11-token rows, RoPE scalings whose every branch is taken at head_dim 8, soft caps the logits reach.
FAMILIES = {
    "llama": (
        "LlamaConfig",
        dict(
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=0.5,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
            bos_token_id=1,
            eos_token_id=[2, 3],
            mlp_bias=True,
        ),
    ),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": (
        "Qwen3Config",
        dict(
            head_dim=16,
            attention_bias=True,
            rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.0),
        ),
    ),
    "mistral": ("MistralConfig", dict(sliding_window=4)),
    "gemma2": (
        "Gemma2Config",
        dict(
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=12,
            attn_logit_softcapping=1.0,
            final_logit_softcapping=2.0,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=12,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
}


# Options that set each family apart, each switched off in turn: the parity test covers them only
# if each changes the reference's logits.
DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
TOGGLES = {
    "llama": [{"rope_parameters": DEFAULT_ROPE}, {"mlp_bias": False}],
    "qwen2": [{"zero": "self_attn.k_proj.bias"}],
    "qwen3": [{"rope_parameters": DEFAULT_ROPE}, {"attention_bias": False}],
    "mistral": [{"sliding_window": None}],
    "gemma2": [
        {"sliding_window": 64},
        {"attn_logit_softcapping": None},
        {"final_logit_softcapping": None},
        {"query_pre_attn_scalar": 16},
    ],
    "gemma3": [
        {"sliding_window": 64},
        {"rope_parameters": {"sliding_attention": DEFAULT_ROPE, "full_attention": DEFAULT_ROPE}},
    ],
}


def reference_model(name, edit=None):
    """The family's random transformers model; ``edit`` changes its config (same weights), or
    ``{"zero": suffix}`` zeroes the parameters named ``*suffix``."""
    edit = dict(edit or {})
    zero = edit.pop("zero", None)
    torch.manual_seed(0)
    cls, extra = FAMILIES[name]
    config = getattr(transformers, cls)(**{**COMMON, **extra, **edit})
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # norms and biases away from their 0 / 1 init, so that a wrong (1 + w) shows
        for key, p in model.named_parameters():
            if "norm" in key or key.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
            if zero and key.endswith(zero):
                p.zero_()
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    """A random transformers model of each family and its conversion through save_pretrained -> load."""
    reference = reference_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(folder)
    return reference, jr.models.load(request.param, weights=str(folder)), folder


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    reference = reference_model("llama")
    folder = tmp_path_factory.mktemp("llama_single")
    reference.save_pretrained(folder)
    return reference, jr.models.load("llama", weights=str(folder)), folder


def ragged(lengths, sides, seed=0):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(4, VOCAB, n) for n in lengths]
    return pack(rows, sides), rows


def reference_logits(reference, row):
    with torch.no_grad():
        return reference(torch.tensor(np.asarray(row)[None], dtype=torch.long)).logits[0].numpy()


def hook_of(manipulation, theta, spec):
    return lambda site, value: manipulation.apply(theta, site, value, spec)


def generate(model, x, steps, hook=None, use_cache=True, key=None):
    run = jax.jit(lambda p, x: llama.generate(model, p, x, steps, hook=hook, use_cache=use_cache, key=key))
    return np.asarray(run(model.params, x))


def test_logits_match_transformers_with_left_and_right_padding(pair):
    reference, model, _ = pair
    x, rows = ragged([11, 7, 3, 9], ["right", "left", "right", "left"])
    every, last = jax.jit(lambda p, x: (llama.logits(model, p, x).logits, model.apply(p, x)))(model.params, x)
    for i, row in enumerate(rows):
        want = reference_logits(reference, row)
        tol = 1e-4 * np.abs(want).max()
        got = np.asarray(every[i])[np.asarray(x["attention_mask"][i], bool)]
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        np.testing.assert_allclose(np.asarray(last[i]), want[-1], rtol=0, atol=tol)
    name = reference.config.model_type.removesuffix("_text")
    want = reference_logits(reference, rows[0])
    for edit in TOGGLES[name]:
        other = reference_logits(reference_model(name, edit), rows[0])
        assert np.abs(other - want).max() > 0.01 * np.abs(want).max(), f"{name}: {edit} changes nothing"


def test_each_family_reads_its_options():
    """Each family's distinguishing options reach the config (the parity test shows they are
    computed as transformers does)."""
    configs = {
        name: llama.DecoderConfig.from_hf(reference_model(name).config.to_dict(), name) for name in FAMILIES
    }
    assert configs["llama"].rope(0).kind == "llama3" and configs["llama"].num_kv_heads == 2
    assert configs["llama"].eos_id == 2 and not configs["llama"].tie_embeddings
    assert configs["qwen2"].qkv_bias and not configs["qwen2"].o_bias and configs["qwen2"].tie_embeddings
    assert (
        configs["qwen3"].qk_norm
        and configs["qwen3"].o_bias
        and configs["llama"].mlp_bias
        and configs["qwen3"].rope(1) == llama.Rope(1000.0, "linear", 2.0)
    )
    assert configs["mistral"].windows == (4, 4)
    no_window = {**reference_model("mistral").config.to_dict(), "sliding_window": None}  # Mistral v0.2 on
    assert llama.DecoderConfig.from_hf(no_window, "mistral").windows == (None, None)
    legacy = {  # Llama 3.1's config.json before transformers 5
        k: v for k, v in reference_model("llama").config.to_dict().items() if k != "rope_parameters"
    }
    legacy.update(
        rope_theta=5e5,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    assert llama.DecoderConfig.from_hf(legacy, "llama").rope(0) == llama.Rope(
        5e5, "llama3", 8.0, 1.0, 4.0, 32
    )
    legacy = {  # Gemma 3 (4B and up) before transformers 5: the scaling is the global layers'
        k: v
        for k, v in reference_model("gemma3").config.to_dict().items()
        if k not in ("rope_parameters", "layer_types")
    }
    legacy.update(rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=2)
    legacy.update(rope_scaling={"rope_type": "linear", "factor": 8.0})
    g3_legacy = llama.DecoderConfig.from_hf(legacy, "gemma3")
    assert g3_legacy.ropes == (llama.Rope(1e4), llama.Rope(1e6, "linear", 8.0)) and g3_legacy.windows == (
        4,
        None,
    )
    g2, g3 = configs["gemma2"], configs["gemma3"]
    assert g2.windows == (4, None) and (g2.attn_softcap, g2.final_softcap) == (1.0, 2.0)
    assert g2.attn_scale == pytest.approx(12**-0.5) and g2.gemma and g2.activation == "gelu_pytorch_tanh"
    assert g3.windows == (4, None) and g3.qk_norm and [r.theta for r in g3.ropes] == [10000.0, 1e6]
    inv = llama.Rope(10000.0, "llama3", 8.0, 0.5, 4.0, 32).inv_freq(8)
    default = llama.Rope(10000.0).inv_freq(8)
    ratio = default / inv  # wavelengths 2π·{1, 10, 100, 1000} against 8 and 64: kept, blended, scaled
    assert (
        ratio[0] == 1 and 1 < ratio[1] < 8 and ratio[2] == pytest.approx(8) and ratio[3] == pytest.approx(8)
    )


@pytest.mark.parametrize(
    "name, edit, match",
    [
        ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn'"),
        ("llama", {"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_parameters": None}, "'dynamic'"),
        ("llama", {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ("llama", {"hidden_act": "relu"}, "hidden_act='relu'"),
        ("llama", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
        ("llama", {"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
        ("mistral", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ("gemma2", {"layer_types": ["chunked_attention", "full_attention"]}, "chunked_attention"),
        ("qwen2", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "load\\('llama'"),
        ("gemma3", {"model_type": "gemma3"}, "text-only"),
        ("llama", {"architectures": ["LlamaForSequenceClassification"]}, "LlamaForCausalLM"),
    ],
)
def test_unsupported_options_are_refused_by_name(name, edit, match):
    cls, extra = FAMILIES[name]
    config = getattr(transformers, cls)(**COMMON, **extra).to_dict()
    config["architectures"] = [f"{cls.removesuffix('Config').removesuffix('Text')}ForCausalLM"]
    with pytest.raises(ValueError, match=match):
        llama.DecoderConfig.from_hf({**config, **edit}, name)


def test_wrong_name_for_the_checkpoint_and_missing_weights(llama_pair):
    _, _, folder = llama_pair
    with pytest.raises(ValueError, match="model_type 'llama', not 'qwen2'.*load\\('llama'"):
        jr.models.load("qwen2", weights=str(folder))
    with pytest.raises(ValueError, match="weights="):
        jr.models.load("gemma2")
    assert {"llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3"} <= set(jr.models.names())


def test_sharded_checkpoint_loads_the_same_and_a_missing_shard_is_named(llama_pair, tmp_path):
    reference, model, _ = llama_pair
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    sharded = jr.models.load("llama", weights=str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, sharded.params, model.params)

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / shards[-1], moved / shards[-1])
    with pytest.raises(jr.models.CheckpointError, match=f"{shards[-1]}: missing"):
        jr.models.load("llama", weights=str(tmp_path))
    shutil.move(moved / shards[-1], tmp_path / shards[-1])
    name = next(k for k, v in index["weight_map"].items() if v == shards[0])
    index["weight_map"][name] = shards[-1]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(jr.models.CheckpointError, match=f"{shards[-1]}: lacks tensor '{name}'"):
        jr.models.load("llama", weights=str(tmp_path))


def test_bfloat16_checkpoints_load_as_float32_and_damaged_ones_are_named(llama_pair, tmp_path):
    reference, model, _ = llama_pair
    reference.to(torch.bfloat16).save_pretrained(tmp_path)
    reference.to(torch.float32)
    half = jr.models.load("llama", weights=str(tmp_path))
    rounded = jax.tree.map(lambda a: np.asarray(a).astype(jnp.bfloat16).astype(np.float32), model.params)
    jax.tree.map(np.testing.assert_array_equal, half.params, rounded)
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(
        jr.models.CheckpointError, match=r"model.safetensors: tensor .*\(truncated or damaged\)"
    ):
        jr.models.load("llama", weights=str(tmp_path))


def test_convert_refuses_checkpoints_that_do_not_match_the_config(llama_pair):
    reference, _, _ = llama_pair
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    config = llama.DecoderConfig.from_hf(reference.config.to_dict(), "llama")
    extra = {**state, "model.layers.2.input_layernorm.weight": state["model.norm.weight"]}
    with pytest.raises(ValueError, match=r"llama checkpoint has 1 tensors the model does not use"):
        llama.convert(extra, config)
    with pytest.raises(KeyError, match="lm_head.weight"):
        llama.convert({k: v for k, v in state.items() if k != "lm_head.weight"}, config)
    with pytest.raises(ValueError, match=r"shape mismatch .*k_proj.*\(32, 16\).*\(32, 32\)"):
        llama.convert(state, config._replace(num_heads=2, num_kv_heads=2, head_dim=16))


def test_spec_and_sites():
    model = llama.from_config(
        llama.DecoderConfig(
            family="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=8, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, max_positions=16, qk_norm=True,
        ),
        jax.random.key(0),
    )  # fmt: skip
    spec = model.spec
    assert type(spec) is jr.TokenSpec and (spec.num_heads, spec.head_dim, spec.head_size) == (4, 16, 16)
    assert spec.num_kv_heads == 2  # grouped-query attention
    assert spec.causal and spec.pad_id == 0
    sites = jr.sites(model)
    assert {
        "lookup",
        "embeddings",
        "layer_0/kv",
        "layer_1/kv",
        "layer_1",
        "layer_0/q_norm",
        "norm",
        "lm_head",
    } <= set(sites)
    kv = []
    jax.eval_shape(lambda p, x: model.apply(p, x, lambda s, v: kv.append(v) or v if s == "layer_0/kv" else v),
                   model.params, ragged([3], ["right"])[0])  # fmt: skip
    assert kv[0].k.shape == (1, 3, 4, 16)  # the two key/value heads, each repeated for its two query heads
    with pytest.raises(ValueError, match="16 positions"):
        jax.eval_shape(lambda p, x: llama.generate(model, p, x, 10), model.params, ragged([8], ["right"])[0])


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    reference = reference_model("gemma2")
    folder = tmp_path_factory.mktemp("gemma2_prompts")
    reference.save_pretrained(folder)
    return jr.models.load("gemma2", weights=str(folder))


def test_soft_prompt_of_token_embeddings_equals_the_tokens(gemma):
    """Gemma's "embeddings" site carries √D-scaled vectors and word_embeddings gives them, so a soft
    prompt made of three tokens' embeddings is those tokens."""
    model = gemma
    sides = ["left", "right"]
    x, rows = ragged([6, 3], sides, seed=4)
    prompt_ids = np.array([5, 9, 11], np.int32)
    sp = jr.embedding.soft_prompt(3, init=text.word_embeddings(model.params)[prompt_ids])
    hook = hook_of(sp, sp.init(jax.random.key(0), model.spec), model.spec)
    apply = jax.jit(model.apply, static_argnums=2)
    got = apply(model.params, x, hook)
    want = apply(model.params, pack([np.r_[prompt_ids, r] for r in rows], sides), None)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_gemma_token_replacement_at_the_lookup_site_is_the_model_on_mapped_ids(gemma):
    """Gemma has the "lookup" site too: its √D scale multiplies what the (replaced) table gives."""
    model = gemma
    x, _ = ragged([6, 3], ["left", "right"], seed=5)
    mapping = np.arange(VOCAB)[::-1].copy()  # target token t reads source token V - 1 - t
    emb = jr.embedding.token_replacement(VOCAB, init=100.0 * np.eye(VOCAB, dtype=np.float32)[mapping])
    program = jr.reprogram(model, embedding=emb)
    got = jax.jit(program.apply)(program.init(jax.random.key(0)), model.params, x)
    mapped = {**x, "input_ids": jnp.asarray(mapping)[x["input_ids"]]}
    want = jax.jit(model.apply)(model.params, mapped)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["qwen3", "gemma2"])
def test_soft_prompt_and_prefix_tuning_train(name, tmp_path, gemma):
    """Through jr.reprogram, with GQA and heads not hidden_size / num_heads wide: finite, non-zero
    gradients for both parts."""
    if name == "gemma2":
        model = gemma
    else:
        reference_model(name).save_pretrained(tmp_path)
        model = jr.models.load(name, weights=str(tmp_path))
    program = jr.reprogram(
        model,
        embedding=jr.embedding.soft_prompt(3),
        hidden=jr.hidden.prefix_tuning(2, reparameterize=None, std=0.5),
    )
    theta = program.init(jax.random.key(1))
    x, _ = ragged([5, 3], ["left", "right"], seed=5)
    y = jnp.array([3, 7])

    def loss(theta):
        z = program.apply(theta, model.params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1))

    value, grads = jax.jit(jax.value_and_grad(loss))(theta)
    assert np.isfinite(value)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0
    assert jax.tree.leaves(grads["hidden"])[0].shape == (2, 2, 2, 4, model.spec.head_dim)


def test_generation_matches_transformers_and_the_cache_matches_recompute(llama_pair):
    reference, model, _ = llama_pair
    (x, rows), (shorter, _) = ragged([7, 7], ["right"] * 2, seed=3), ragged([7, 4], ["left"] * 2, seed=3)
    x = {k: jnp.concatenate([x[k], shorter[k]]) for k in x}  # rows 0 and 2 are the same tokens
    cached = generate(model, x, 6)
    with torch.no_grad():
        want = reference.generate(
            torch.tensor(np.stack(rows), dtype=torch.long),
            attention_mask=torch.ones(2, 7, dtype=torch.long),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )[:, 7:]
    np.testing.assert_array_equal(cached[:2], want.numpy())
    np.testing.assert_array_equal(cached[2], cached[0])
    np.testing.assert_array_equal(generate(model, x, 6, use_cache=False), cached)


def test_sampled_generation_with_sliding_windows_cache_matches_recompute(gemma):
    """Past the window (4) in both the input and the decoding steps, with a prefix in the cache."""
    model = gemma
    x, _ = ragged([6, 3], ["left", "right"], seed=6)
    pt = jr.hidden.prefix_tuning(2, reparameterize=None, std=1.0)
    hook = hook_of(pt, pt.init(jax.random.key(1), model.spec), model.spec)
    key = jax.random.key(7)
    cached = generate(model, x, 6, hook, key=key)
    np.testing.assert_array_equal(cached, generate(model, x, 6, hook, use_cache=False, key=key))
    assert len(np.unique(cached)) > 2


MESH_LOAD = """
import sys
import jax, jax.numpy as jnp, numpy as np
import jaxreprog as jr
from jaxreprog.models import llama

mesh = jr.train.mesh(data=2, model=4)
direct = jr.models.load("llama", weights=sys.argv[1], mesh=mesh, rules=llama.TENSOR_PARALLEL)
moved = jr.shard(jr.models.load("llama", weights=sys.argv[1]), mesh, llama.TENSOR_PARALLEL)
for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(moved.params)):
    assert a.sharding == b.sharding, (a.sharding, b.sharding)
    np.testing.assert_array_equal(a, b)
total = sum(a.nbytes for a in jax.tree.leaves(direct.params))
here = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(direct.params))
assert here <= total / 4 * 1.1, (here, total)  # the norms, replicated, are the 10%
print("EQUAL")
"""


def test_loads_in_bfloat16_and_straight_onto_a_mesh(llama_pair):
    from test_train_sharding import _run_on_host_devices

    _, model, folder = llama_pair
    half = jr.models.load("llama", weights=str(folder), dtype=jnp.bfloat16)
    assert {a.dtype for a in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
    x, _ = ragged([9, 5], ["right", "left"])
    want = np.asarray(model.apply(model.params, x))
    got = np.asarray(jax.jit(half.apply)(half.params, x), np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * np.abs(want).max())  # bf16's 8 bits
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        jr.models.load("llama", weights=str(folder), dtype=jnp.int8)
    with pytest.raises(ValueError, match="rules= places the weights over a mesh: pass mesh= too"):
        jr.models.load("llama", weights=str(folder), rules=llama.TENSOR_PARALLEL)
    _run_on_host_devices(MESH_LOAD, 8, str(folder))
