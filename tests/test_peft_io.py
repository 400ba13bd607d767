"""PEFT adapters in and out (issue #23 items 3-4): jr.from_peft, jr.to_peft, gpt2.reprogrammed_logits.

Adapters are built by ``peft`` itself on tiny random ``transformers`` GPT-2 / BERT models
(random adapter weights, not PEFT's zero init), saved with ``save_pretrained``, read onto
the same models converted by the zoo, and compared at 1e-4 with PEFT's own forward, with
right and left padding. With left padding PEFT's prompt tuning / P-tuning number positions
over the padding (it drops ``position_ids``), so there the reference is PEFT on the row with
no padding, and our left-padded outputs must equal our right-padded ones; PEFT's prefix
tuning takes ``position_ids = cumsum(mask) - 1`` (it adds the prefix length), so all rows compare.
"""

import copy
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_hf

import jaxreprog as jr
from jaxreprog.artifact import ArtifactError
from jaxreprog.models import gpt2

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

P, ENCODER = 3, 8
VOCAB, LAYERS, HEADS, WIDTH, LENGTHS, batch = (
    tiny_hf.VOCAB,
    tiny_hf.LAYERS,
    tiny_hf.HEADS,
    tiny_hf.WIDTH,
    tiny_hf.LENGTHS,
    tiny_hf.batch,
)
KINDS = ["prompt", "p_mlp", "p_lstm", "prefix", "prefix_mlp"]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    return tiny_hf.gpt2(tmp_path_factory.mktemp("gpt2"), torch, transformers)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_hf.llama(tmp_path_factory.mktemp("llama"), torch, transformers)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_hf.bert_encoder(tmp_path_factory.mktemp("bert"), torch, transformers)


def peft_config(kind, task_type):
    common = {"task_type": task_type, "num_virtual_tokens": P}
    if kind == "prompt":
        return peft.PromptTuningConfig(**common)
    if kind.startswith("p_"):
        return peft.PromptEncoderConfig(
            **common, encoder_reparameterization_type=kind[2:].upper(), encoder_hidden_size=ENCODER
        )
    return peft.PrefixTuningConfig(
        **common, prefix_projection=kind == "prefix_mlp", encoder_hidden_size=ENCODER
    )


def peft_model(reference, kind, seed=0):
    """A PEFT model of ``kind`` on a copy of ``reference``, every adapter weight random."""
    task = "CAUSAL_LM" if hasattr(reference, "lm_head") else "FEATURE_EXTRACTION"
    model = peft.get_peft_model(copy.deepcopy(reference), peft_config(kind, task)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.prompt_encoder["default"].parameters():
            w.copy_(torch.randn(w.shape, generator=generator) * 0.5)
    return model


def peft_output(model, ids, mask, side, prefix):
    """PEFT's forward at the input's own positions (the prompt's cut off)."""
    kwargs = {}
    if side == "left" and prefix:
        kwargs["position_ids"] = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
    out = (out.logits if hasattr(out, "logits") else out.last_hidden_state).numpy()
    return out[:, out.shape[1] - ids.shape[1] :]


def ours(model, program):
    """``(theta, ids, mask) ->`` outputs at the input's own positions (GPT-2: logits; BERT: states)."""
    if model.spec.causal:
        fn = lambda theta, x: gpt2.reprogrammed_logits(model, program, theta, model.params, x)  # noqa: E731
    else:

        def fn(theta, x):
            out = program.apply(theta, model.params, x)
            return out[:, out.shape[1] - x["input_ids"].shape[1] :]  # a soft prompt sits in front

    jitted = jax.jit(fn)

    def run(theta, ids, mask):
        x = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask, jnp.int32)}
        return np.asarray(jitted(theta, x))

    return run


# ------------------------------------------------------------------- from_peft


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["gpt", "encoder", "llama"])
def test_from_peft_matches_peft(request, tmp_path, family, kind):
    reference, model = request.getfixturevalue(family)
    adapter = peft_model(reference, kind)
    adapter.save_pretrained(tmp_path)
    program, theta = jr.from_peft(tmp_path, model)
    prefix = kind.startswith("prefix")
    assert set(program.parts) == {"hidden" if prefix else "embedding", "output"}
    assert program.parts["output"] is jr.core.IDENTITY
    chex.assert_trees_all_equal_shapes(theta, program.init(jax.random.key(0)))
    run = ours(model, program)
    got = {}
    for side in ("right", "left"):
        ids, mask = batch(side, seed=3)
        real = mask.astype(bool)
        got[side] = run(theta, ids, mask)
        want = peft_output(adapter, ids, mask, side, prefix)
        rows = real if side == "right" or prefix else real & (mask.sum(1) == mask.shape[1])[:, None]
        np.testing.assert_allclose(got[side][rows], want[rows], atol=1e-4)
    # the padding side changes nothing here (it does in PEFT's prompt tuning, hence rows above)
    right, left = (batch(s, seed=3)[1].astype(bool) for s in ("right", "left"))
    np.testing.assert_allclose(got["left"][left], got["right"][right], atol=1e-5)


def test_pefts_left_padding_moves_prompt_tuning_positions(gpt, tmp_path):
    """Why the left-padded prompt-tuning reference is the unpadded row: PEFT's padded rows differ."""
    reference, model = gpt
    adapter = peft_model(reference, "prompt")
    adapter.save_pretrained(tmp_path)
    program, theta = jr.from_peft(tmp_path, model)
    ids, mask = batch("left", seed=3)
    want = peft_output(adapter, ids, mask, "left", prefix=False)
    got = ours(model, program)(theta, ids, mask)
    padded = mask.astype(bool) & (mask.sum(1) < mask.shape[1])[:, None]
    assert np.abs(got[padded] - want[padded]).max() > 1e-2


# --------------------------------------------------------------------- to_peft


def lstm_theta(encoder):
    """PEFT's LSTM PromptEncoder weights as p_tuning(encoder="lstm") theta (PyTorch gates i, f, g, o)."""
    sd = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    theta = {"hidden": {}, "out": {}}
    for i in range(encoder.lstm_head.num_layers):
        for way, suffix in (("forward", ""), ("backward", "_reverse")):
            w_x, w_y, b_x, b_y = (
                sd[f"lstm_head.{t}_l{i}{suffix}"] for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            theta[f"lstm_{i}_{way}"] = {"w_x": w_x.T, "w_y": w_y.T, "b": b_x + b_y}
    for name, j in (("hidden", 0), ("out", 2)):
        theta[name] = {"kernel": sd[f"mlp_head.{j}.weight"].T, "bias": sd[f"mlp_head.{j}.bias"]}
    return {"inputs": jnp.asarray(sd["embedding.weight"]), "encoder": jax.tree.map(jnp.asarray, theta)}


def test_p_tuning_lstm_is_pefts_prompt_encoder(gpt):
    """encoder="lstm" is PEFT's: (P, D) inputs -> 2 stacked bi-LSTMs of `hidden` units each way ->
    Linear(2h, 2h) -> ReLU -> Linear(2h, D); the same weights give the same prompt."""
    reference, model = gpt
    adapter = peft_model(reference, "p_lstm", seed=4)
    encoder = adapter.prompt_encoder["default"]
    with torch.no_grad():
        want = encoder(torch.arange(P)[None]).numpy()[0]
    method = jr.embedding.p_tuning(P, encoder="lstm", hidden=ENCODER)
    theta = lstm_theta(encoder)
    chex.assert_trees_all_equal_shapes(theta, method.init(jax.random.key(0), model.spec))
    e = jr.models.text.embed(jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2)), jnp.zeros((VOCAB, WIDTH)))
    got = method.apply(theta, "embeddings", e, model.spec).h[0, :P]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


ROUND_TRIPS = {
    "soft_prompt": lambda: jr.embedding.soft_prompt(P),
    "p_tuning_lstm": lambda: jr.embedding.p_tuning(P, encoder="lstm", hidden=ENCODER),
    "p_tuning_mlp": lambda: jr.embedding.p_tuning(P, encoder="mlp", hidden=ENCODER),
    "prefix_tuning": lambda: jr.hidden.prefix_tuning(P, reparameterize=ENCODER),
    "p_tuning_v2": lambda: jr.hidden.p_tuning_v2(P),
}
EXPECTED = {
    "soft_prompt": "PROMPT_TUNING",
    "p_tuning_lstm": "P_TUNING",
    "p_tuning_mlp": "P_TUNING",
    "prefix_tuning": "PREFIX_TUNING",
    "p_tuning_v2": "PREFIX_TUNING",
}


@pytest.mark.parametrize(
    "family, method",
    [
        ("gpt", "soft_prompt"),
        ("gpt", "p_tuning_lstm"),
        ("gpt", "prefix_tuning"),
        ("encoder", "p_tuning_mlp"),
        ("encoder", "p_tuning_v2"),
        ("llama", "soft_prompt"),
        ("llama", "p_tuning_v2"),
    ],
)
def test_to_peft_round_trip(request, tmp_path, family, method):
    """to_peft -> PeftModel.from_pretrained gives our program's outputs; from_peft reads it back."""
    reference, model = request.getfixturevalue(family)
    part = ROUND_TRIPS[method]()
    slot = "hidden" if method.startswith("prefix") or method.endswith("v2") else "embedding"
    program = jr.reprogram(model, **{slot: part})
    theta = program.init(jax.random.key(7))
    if slot == "hidden":  # prefixes of a visible size (the default init is std 0.02)
        theta = jax.tree.map(lambda a: a * 25 if a.ndim == 5 else a, theta)
        if model.spec.num_kv_heads:  # one key/value per group of query heads, as PEFT stores them
            theta = jax.tree.map(lambda a: share_groups(a, model.spec) if a.ndim == 5 else a, theta)
    assert jr.to_peft(tmp_path, program, theta) == tmp_path
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == EXPECTED[method]
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(reference), tmp_path).eval()
    ids, mask = batch("right", seed=5)
    real = mask.astype(bool)
    got = ours(model, program)(theta, ids, mask)
    want = peft_output(loaded, ids, mask, "right", slot == "hidden")
    np.testing.assert_allclose(got[real], want[real], atol=1e-4)
    back, theta_back = jr.from_peft(tmp_path, model)
    np.testing.assert_allclose(ours(model, back)(theta_back, ids, mask)[real], got[real], atol=1e-5)


PER_TASK = {
    "soft_prompt": lambda: jr.embedding.soft_prompt(P, tasks=3),
    "multitask_prompt": lambda: jr.embedding.multitask_prompt(P, 3, rank=2),
}


@pytest.mark.parametrize("method", sorted(PER_TASK))
def test_to_peft_writes_one_task_of_a_per_task_prompt(gpt, tmp_path, method):
    """task=k writes task k's prompt as PROMPT_TUNING: PEFT's forward with it is the single-task program
    soft_prompt(P, init=P_k), which is the per-task program on rows of task k; no task= is refused."""
    reference, model = gpt
    program = jr.reprogram(model, embedding=PER_TASK[method]())
    rng = np.random.default_rng(7)  # every task's prompt its own (MPT's task factors start near 1)
    shapes = jax.eval_shape(program.init, jax.random.key(7))
    theta = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
    with pytest.raises(ValueError, match=r"one prompt per task \(3 tasks\).*pass task=k \(k in \[0, 3\)\)"):
        jr.to_peft(tmp_path, program, theta)
    for bad, error in ((3, ValueError), (-1, ValueError), (True, TypeError), (1.0, TypeError)):
        with pytest.raises(error, match=r"to_peft: task must be an int in \[0, 2\], got"):
            jr.to_peft(tmp_path, program, theta, task=bad)
    jr.to_peft(tmp_path, program, theta, task=np.int64(1))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    prompts = theta["embedding"]["prompt"] if method == "soft_prompt" else None
    prompts = jr.embedding.task_prompts(theta["embedding"]) if prompts is None else prompts
    single = jr.reprogram(model, embedding=jr.embedding.soft_prompt(P, init=prompts[1]))
    one = single.init(jax.random.key(0))
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(reference), tmp_path).eval()
    ids, mask = batch("right", seed=5)
    real = mask.astype(bool)
    want = peft_output(loaded, ids, mask, "right", False)
    np.testing.assert_allclose(ours(model, single)(one, ids, mask)[real], want[real], atol=1e-4)
    x = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask, jnp.int32)}
    apply = jax.jit(program.apply)
    task1 = apply(theta, model.params, {**x, "task": jnp.full(len(ids), 1)})
    np.testing.assert_allclose(task1, jax.jit(single.apply)(one, model.params, x), atol=1e-5)
    task0 = apply(theta, model.params, {**x, "task": jnp.zeros(len(ids), jnp.int32)})
    assert np.abs(task0 - task1).max() > 1e-2  # another task's prompt would not pass the checks above
    plain = jr.reprogram(model, embedding=jr.embedding.soft_prompt(P))
    with pytest.raises(ValueError, match=r"one prompt for every input: drop task="):
        jr.to_peft(tmp_path, plain, plain.init(jax.random.key(0)), task=0)


def share_groups(kv, spec):
    """``(L, 2, p, H, Dh)`` prefixes with each group of query heads given its first head's."""
    group = spec.num_heads // spec.num_kv_heads
    return jnp.repeat(kv[:, :, :, ::group], group, axis=3)


def test_to_peft_refuses_prefixes_that_grouped_query_attention_cannot_hold(llama, tmp_path):
    _, model = llama
    program = jr.reprogram(model, hidden=jr.hidden.p_tuning_v2(P))
    theta = program.init(jax.random.key(0))  # every query head its own key: PEFT holds one per group
    with pytest.raises(ValueError, match="4 query heads, 2 key/value heads.*one per key/value head"):
        jr.to_peft(tmp_path, program, theta)


# ------------------------------------------------------------- reprogrammed_logits


def test_reprogrammed_logits_every_position(gpt):
    """Prompt positions removed; the last real position is program.apply's; jit, grad and vmap work."""
    _, model = gpt
    ids, mask = batch("left", seed=1)
    x = {"input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.asarray(mask, jnp.int32)}
    unprompted = jr.reprogram(model)  # no prompt: the model's own logits at every position
    got = gpt2.reprogrammed_logits(model, unprompted, {"output": ()}, model.params, x)  # eager, once
    every = jax.jit(lambda x, hook=None: gpt2.logits(model, model.params, x, hook).logits, static_argnums=1)
    chex.assert_trees_all_close(got, every(x), atol=1e-6)

    program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(P))
    theta = program.init(jax.random.key(1))
    fn = jax.jit(lambda t, x: gpt2.reprogrammed_logits(model, program, t, model.params, x))
    out = fn(theta, x)
    chex.assert_shape(out, (*ids.shape, VOCAB))
    hook = lambda site, value: program.parts["embedding"].apply(theta["embedding"], site, value, model.spec)  # noqa: E731
    chex.assert_trees_all_close(out, every(x, hook)[:, P:], atol=1e-5)  # the prompt's P columns in front
    chex.assert_trees_all_close(out[:, -1], jax.jit(program.apply)(theta, model.params, x), atol=1e-5)
    grad = jax.jit(jax.grad(lambda t: jnp.sum(fn(t, x)[:, -1] ** 2)))(theta)
    assert np.abs(np.asarray(grad["embedding"]["prompt"])).sum() > 0
    thetas = jax.tree.map(lambda *a: jnp.stack(a), theta, program.init(jax.random.key(2)))
    batched = jax.jit(jax.vmap(fn, in_axes=(0, None)))(thetas, x)
    for k in range(2):
        chex.assert_trees_all_close(batched[k], fn(jax.tree.map(lambda a, k=k: a[k], thetas), x), atol=1e-5)
    other = gpt2.from_config(
        gpt2.GPT2Config(vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2, max_positions=24),
        jax.random.key(0),
    )
    with pytest.raises(ValueError, match="program was built for"):
        gpt2.reprogrammed_logits(other, program, theta, other.params, x)


# ------------------------------------------------------------------- bad input


@pytest.fixture
def written(gpt, tmp_path):
    """A PREFIX_TUNING adapter written by to_peft (PEFT's format) and the tiny GPT-2."""
    _, model = gpt
    program = jr.reprogram(model, hidden=jr.hidden.prefix_tuning(P, reparameterize=None))
    jr.to_peft(tmp_path, program, program.init(jax.random.key(0)))
    return tmp_path, model


def edit_config(folder, **fields):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_from_peft_refuses_lora(gpt, tmp_path):
    reference, model = gpt
    config = peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn"], r=2)
    peft.get_peft_model(copy.deepcopy(reference), config).save_pretrained(tmp_path)
    with pytest.raises(ArtifactError, match=r"adapter_config.json: field 'peft_type' is 'LORA'"):
        jr.from_peft(tmp_path, model)


def test_from_peft_bad_files(written):
    from safetensors.numpy import save_file

    folder, model = written
    weights = folder / "adapter_model.safetensors"
    good = weights.read_bytes()
    save_file({"prompt_embeddings": np.zeros((P, 5), np.float32)}, str(weights))
    with pytest.raises(
        ArtifactError, match=r"adapter_model.safetensors: tensor 'prompt_embeddings' has shape"
    ):
        jr.from_peft(folder, model)
    save_file({"prompt_embeddings": np.zeros((P, 64), np.float32), "x": np.zeros(1)}, str(weights))
    with pytest.raises(
        ArtifactError, match=r"adapter_model.safetensors: expected the one tensor .* also \['x'\]"
    ):
        jr.from_peft(folder, model)
    weights.write_bytes(good[:40])
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        jr.from_peft(folder, model)
    weights.unlink()
    (folder / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"adapter_model.safetensors is missing .* adapter_model.bin"):
        jr.from_peft(folder, model)
    edit_config(folder, num_transformer_submodules=2)
    with pytest.raises(ArtifactError, match="field 'num_transformer_submodules' is 2"):
        jr.from_peft(folder, model)
    edit_config(folder, num_virtual_tokens="3")
    with pytest.raises(ArtifactError, match="field 'num_virtual_tokens' must be a positive int"):
        jr.from_peft(folder, model)
    (folder / "adapter_config.json").write_text("{")
    with pytest.raises(ArtifactError, match="adapter_config.json: not a JSON config"):
        jr.from_peft(folder, model)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(ArtifactError, match="adapter_config.json is missing"):
        jr.from_peft(folder, model)


def test_from_peft_refuses_another_width(written):
    folder, _ = written
    config = gpt2.GPT2Config(
        vocab_size=VOCAB, hidden_size=8, num_layers=LAYERS, num_heads=HEADS, max_positions=24
    )
    narrow = gpt2.from_config(config, jax.random.key(0))
    with pytest.raises(ArtifactError, match=r"field 'token_dim' is 16, but the base model 'gpt2' has 8"):
        jr.from_peft(folder, narrow)
    with pytest.raises(TypeError, match="text FrozenModel"):
        jr.from_peft(folder, "gpt2")


def test_to_peft_refuses_what_peft_cannot_express(gpt, tmp_path):
    from flax import linen as nn

    _, model = gpt
    image = jr.from_linen(
        nn.Dense(3),
        {"params": {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)}},
        jr.ImageSpec(size=8, num_classes=3),
    )
    vr = jr.reprogram(image, input=jr.input.pad(target_size=4))
    with pytest.raises(ValueError, match=r"the input part \(jr.input.pad\) has no PEFT counterpart"):
        jr.to_peft(tmp_path, vr, vr.init(jax.random.key(0)))
    mapped = jr.reprogram(model, embedding=jr.embedding.soft_prompt(P), output=jr.output.rlm(VOCAB, 2))
    theta = mapped.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"the output part \(jr.output.rlm\) .* drop_output=True"):
        jr.to_peft(tmp_path, mapped, theta)
    jr.to_peft(tmp_path, mapped, theta, drop_output=True)
    _, back = jr.from_peft(tmp_path, model)
    np.testing.assert_array_equal(back["embedding"]["prompt"], theta["embedding"]["prompt"])
    cases = {
        r"where='suffix'": jr.reprogram(model, embedding=jr.embedding.soft_prompt(P, where="suffix")),
        r"positions='from_zero'": jr.reprogram(model, hidden=jr.hidden.p_tuning_v2(P, positions="from_zero")),
        r"no keys at layers \[1\]": jr.reprogram(model, hidden=jr.hidden.p_tuning_v2(P, layers=[0])),
        r"does not act at the text model's 'embeddings'": jr.reprogram(
            model, embedding=jr.embedding.soft_prompt(P, sites="layer_0")
        ),
        r"embedding part \(jr.chain\)": jr.reprogram(
            model, embedding=jr.chain(jr.embedding.soft_prompt(P), jr.embedding.soft_prompt(P))
        ),
        r"embedding \(jr.embedding.soft_prompt\) and hidden": jr.reprogram(
            model, embedding=jr.embedding.soft_prompt(P), hidden=jr.hidden.p_tuning_v2(P)
        ),
        r"embedding part \(a SiteHook of your own\)": jr.reprogram(
            model, embedding=jr.SiteHook(lambda k, s: (), lambda t, site, v, s: v)
        ),
    }
    for message, program in cases.items():
        with pytest.raises(ValueError, match=message):
            jr.to_peft(tmp_path, program, program.init(jax.random.key(0)))
    program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(P))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), program.init(jax.random.key(0)))
    with pytest.raises(
        ValueError, match=r"theta\['embedding'\]\['prompt'\] has shape \(2, 3, 16\).*candidates"
    ):
        jr.to_peft(tmp_path, program, stacked)
