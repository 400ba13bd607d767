"""CoOp / CoCoOp on a tiny random CLIP: exact reductions to zero-shot CLIP, shapes, jit/grad/vmap.

XLA:CPU compiles each CLIP program in seconds, so the tests share a few compiled
functions (one zero-shot reference with the prompts as arguments, one program per method)
and vary only their inputs.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import clip
from jaxreprog.taxonomy import Format, Location, Operator

# XLA:CPU spends seconds compiling each CLIP program at the default LLVM -O2; the
# tests compile at -O0 (about 2x faster, same HLO optimisations and numerics).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

SOS, EOS, X = 28, 29, 3
PHRASE = [10, 11, 12, 10]  # "a photo of a"
NAMES = [[4, 5], [6], [7, 8, 9]]  # three class names' token ids
M, N, D, E = 4, 3, 16, 32
CONFIG = clip.Config(
    text=clip.TextConfig(
        vocab_size=30, width=D, mlp_dim=24, depth=1, num_heads=2, context_length=12, eos_token_id=EOS
    ),
    vision=clip.VisionConfig(image_size=8, patch_size=4, width=12, mlp_dim=20, depth=1, num_heads=2),
    embed_dim=E,
)
MODULE = clip.CLIP(CONFIG)


def prompts(prefix):
    return clip.class_prompts(NAMES, prefix=prefix, sos_id=SOS, eos_id=EOS, context_length=12)


@functools.cache
def shared():
    """(params, classifier over "X X X X {name}" prompts, normalised images, zero-shot reference)."""
    params = clip.init_params(CONFIG, jax.random.key(0))
    model = clip.classifier(MODULE, params, *prompts([X] * M))
    x = model.spec.normalize(jax.random.uniform(jax.random.key(1), (5, 8, 8, 3)))
    classify = jit(lambda p, x, ids, eot: MODULE.apply(p, x, ids, eot, method="classify"))

    def zero_shot(prefix):
        return classify(params, x, *prompts(prefix))

    return params, model, x, zero_shot


@functools.cache
def program(kind):
    """One program per method and its compiled apply, shared by the tests."""
    method = {
        "unified": jr.embedding.coop(M),
        "specific": jr.embedding.coop(M, class_specific=True),
        "cocoop": jr.embedding.cocoop(M),
    }[kind]
    program = jr.reprogram(shared()[1], embedding=method)
    return program, jit(program.apply)


@pytest.fixture
def tiny():
    return shared()


def context(c):
    return {"embedding": {"context": c}, "output": ()}


def test_registered_with_tags():
    assert jr.taxonomy.registry["coop"].tags == jr.Tags(
        Format.LEARNABLE, Location.EMBEDDING, Operator.CONCATENATIVE
    )
    tags = jr.embedding.cocoop().tags
    assert tags.location == Location.EMBEDDING and Operator.PARAMETRIC in tags.operator


def test_init_shapes_and_values(tiny):
    params, model, _, _ = tiny
    unified = jr.embedding.coop(M).init(jax.random.key(0), model.spec)["context"]
    specific = jr.embedding.coop(M, class_specific=True).init(jax.random.key(0), model.spec)["context"]
    chex.assert_shape(unified, (M, D))
    chex.assert_shape(specific, (N, M, D))
    big = jr.embedding.coop(64).init(jax.random.key(0), clip.CLIPSpec(size=8, text_width=512))
    assert abs(float(big["context"].std()) - 0.02) < 2e-3  # N(0, 0.02²), Zhou et al.
    phrase = clip.token_embeddings(params, PHRASE)
    from_phrase = jr.embedding.coop(M, class_specific=True, init=phrase).init(jax.random.key(0), model.spec)
    chex.assert_trees_all_equal(from_phrase["context"], jnp.broadcast_to(phrase, (N, M, D)))


def test_context_from_placeholder_embeddings_is_zero_shot(tiny):
    params, _, x, zero_shot = tiny
    _, apply = program("unified")
    got = apply(context(clip.token_embeddings(params, [X] * M)), params, x)
    chex.assert_trees_all_close(got, zero_shot([X] * M), rtol=1e-6, atol=1e-6)


def test_context_from_phrase_equals_the_written_template(tiny):
    params, _, x, zero_shot = tiny
    _, apply = program("unified")
    got = apply(context(clip.token_embeddings(params, PHRASE)), params, x)
    chex.assert_trees_all_close(got, zero_shot(PHRASE), rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, zero_shot([X] * M), atol=1e-3)  # the context does matter


def test_class_specific_context_is_a_per_class_template(tiny):
    params, _, x, zero_shot = tiny
    phrases = [PHRASE, [13, 14, 15, 16], [17, 17, 18, 19]]
    _, apply = program("specific")
    got = apply(context(jnp.stack([clip.token_embeddings(params, p) for p in phrases])), params, x)
    for c, phrase in enumerate(phrases):  # class c's column is zero-shot CLIP with class c's own phrase
        chex.assert_trees_all_close(got[:, c], zero_shot(phrase)[:, c], rtol=1e-6, atol=1e-6)


def test_cocoop_is_coop_with_a_per_image_context(tiny):
    params, _, x, _ = tiny
    cocoop, apply = program("cocoop")
    theta = cocoop.init(jax.random.key(4))
    chex.assert_shape(theta["embedding"]["meta_net"]["w1"], (E, E // 16))  # Linear(E -> E/16)
    chex.assert_shape(theta["embedding"]["meta_net"]["w2"], (E // 16, D))  # Linear(-> D)
    got = apply(theta, params, x)
    chex.assert_shape(got, (5, N))

    net, ctx = theta["embedding"]["meta_net"], theta["embedding"]["context"]
    f = jit(lambda p, x: MODULE.apply(p, x, method="encode_image"))(params, x)
    f = f / jnp.linalg.norm(f, axis=-1, keepdims=True)
    bias = jax.nn.relu(f @ net["w1"] + net["b1"]) @ net["w2"] + net["b2"]
    assert float(jnp.abs(bias[0] - bias[1]).max()) > 1e-4  # each image gets its own context
    _, coop_apply = program("unified")
    for b in range(5):  # image b's logits are CoOp's with context ctx + π(x_b)
        chex.assert_trees_all_close(
            got[b], coop_apply(context(ctx + bias[b]), params, x)[b], rtol=1e-5, atol=1e-5
        )

    silent = {**net, "w2": jnp.zeros_like(net["w2"]), "b2": jnp.zeros_like(net["b2"])}
    got = apply({"embedding": {"context": ctx, "meta_net": silent}, "output": ()}, params, x)
    chex.assert_trees_all_close(got, coop_apply(context(ctx), params, x), rtol=1e-5, atol=1e-6)


def test_errors(tiny):  # raised while tracing: eval_shape compiles nothing
    params, model, x, _ = tiny
    short = clip.classifier(MODULE, params, *prompts([X] * 2))
    program = jr.reprogram(short, embedding=jr.embedding.coop(M))
    with pytest.raises(ValueError, match="placeholder"):
        jax.eval_shape(program.apply, program.init(jax.random.key(0)), params, x)
    program = jr.reprogram(model, embedding=jr.embedding.coop(M, class_specific=True))
    with pytest.raises(ValueError, match="2 classes"):
        jax.eval_shape(program.apply, context(jnp.zeros((2, M, D))), params, x)
    with pytest.raises(ValueError, match="width"):
        jax.eval_shape(program.apply, context(jnp.zeros((N, M, D + 1))), params, x)
    with pytest.raises(ValueError, match="pass hidden_size="):
        jr.embedding.coop(M).init(jax.random.key(0), jr.ImageSpec(size=8))
    with pytest.raises(ValueError, match=r"length \(number of context vectors\)"):
        jr.embedding.coop(0)
    assert jr.embedding.coop(np.int64(M)).init(jax.random.key(0), model.spec)["context"].shape == (M, D)
    for bad in (True, 2.0):
        with pytest.raises(TypeError, match="coop: length .* must be an int >= 1"):
            jr.embedding.coop(bad)
        with pytest.raises(TypeError, match="cocoop: length .* must be an int >= 1"):
            jr.embedding.cocoop(bad)
        with pytest.raises(TypeError, match="cocoop: hidden .* must be an int >= 1"):
            jr.embedding.cocoop(M, hidden=bad)
    with pytest.raises(ValueError, match="cocoop: hidden .* must be an int >= 1, got 0"):
        jr.embedding.cocoop(M, hidden=0)  # was taken as "unset" and silently became E // 16
    # hidden_size= was ignored when init= was given: the mismatch surfaced only at apply time.
    with pytest.raises(ValueError, match="coop: init has width 16 but hidden_size=8"):
        jr.embedding.coop(M, init=np.zeros((M, D)), hidden_size=8)
    with pytest.raises(ValueError, match="cocoop: init has width 16 but hidden_size=8"):
        jr.embedding.cocoop(M, init=np.zeros((M, D)), hidden_size=8)
    with pytest.raises(ValueError, match=r"coop: init must have shape \(4, D\), got \(3, 16\)"):
        jr.embedding.coop(M, init=np.zeros((3, D)))
    with pytest.raises(ValueError, match="init has width 8; the model's text width is 16"):
        jr.embedding.cocoop(M, init=np.zeros((M, 8))).init(jax.random.key(0), model.spec)
    cocoop = jr.embedding.cocoop(M)
    theta = cocoop.init(jax.random.key(0), model.spec)
    text_only = jr.from_linen(MODULE, params, model.spec, method="encode_text", eot_index=prompts([X] * M)[1])
    with pytest.raises(ValueError, match="image features"):  # the text tower alone has none
        hook = lambda s, v: cocoop.apply(theta, s, v, model.spec)  # noqa: E731
        jax.eval_shape(lambda p: text_only.apply(p, prompts([X] * M)[0], hook=hook), params)


def test_keyword_names():
    """One word per meaning: ``length`` context tokens, ``hidden_size`` the text width ``D``, ``hidden``
    the meta-net's width (as ``p_tuning(hidden=)``); the old keywords are gone."""
    spec = clip.CLIPSpec(size=8, text_width=D, embed_dim=32)
    theta = jr.embedding.coop(length=M, hidden_size=D).init(jax.random.key(0), jr.ImageSpec(size=8))
    assert theta["context"].shape == (M, D)
    theta = jr.embedding.cocoop(length=M, hidden_size=D, hidden=5).init(jax.random.key(0), spec)
    chex.assert_shape([theta["context"], theta["meta_net"]["w1"]], [(M, D), (32, 5)])
    for old in ({"num_context": M}, {"width": D}, {"hidden_dim": 5}):
        with pytest.raises(TypeError):
            jr.embedding.cocoop(**old)


def test_composes_with_vpt_on_the_vision_tower(tiny):
    params, model, x, _ = tiny
    both = jr.chain(jr.embedding.vpt_shallow(2, sites="vision/embeddings"), jr.embedding.coop(M))
    program = jr.reprogram(model, embedding=both)
    theta = program.init(jax.random.key(0))
    chex.assert_shape([theta["embedding"][0]["prompts"], theta["embedding"][1]["context"]], [(2, 12), (M, D)])
    chex.assert_shape(jax.eval_shape(program.apply, theta, params, x), (5, N))
