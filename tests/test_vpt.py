"""VPT shallow and deep (Jia et al. 2022) on a tiny random zoo ViT: insertion, init, jit / grad / vmap."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.embedding.vpt import prompt_bound
from jaxreprog.models.vit import EncoderLayer, ViT, ViTSpec
from jaxreprog.taxonomy import Format, Location, Operator

P, D, L, N = 3, 16, 2, 16  # prompts, width, depth, patches
SHALLOW, DEEP = jr.embedding.vpt_shallow(P), jr.hidden.vpt_deep(P)
# XLA:CPU's optimisation passes dominate these tiny programs' cost; the semantics under test do not change.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def model() -> jr.FrozenModel:
    """A random 2-layer ViT (parameters drawn with numpy: no init to compile)."""
    module = ViT(
        patch_size=4,
        hidden_size=D,
        num_layers=L,
        num_heads=2,
        mlp_size=32,
        image_size=(16, 16),
        num_classes=5,
    )
    spec = ViTSpec(
        size=16, mean=0.5, std=0.5, num_classes=5, hidden_size=D, num_layers=L, num_heads=2, patch_size=4
    )
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *spec.shape)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), jnp.float32), shapes)
    return jr.from_linen(module, variables, spec)


def _x(n=4, seed=1):
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 16, 16, 3)), jnp.float32)


@functools.partial(jit, static_argnums=(0, 1, 2))
def _run(apply, spec, vpt, params, theta, x):
    seen = {}

    def record(site, value):
        value = vpt.apply(theta, site, value, spec) if vpt else value
        if m := re.fullmatch(r"encoder/layer_(\d+)/input", site):
            seen[int(m.group(1))] = value
        return value

    return seen, apply(params, spec.normalize(x), hook=record)


def _sequences(model, x, vpt=None, theta=None):
    """(the token sequence entering each layer, as {layer index: (B, T, D)}; logits), as numpy."""
    return jax.tree.map(np.asarray, _run(model.apply, model.spec, vpt, model.params, theta, x))


def _init(vpt, spec, seed=0):
    return jax.tree.map(np.asarray, jit(vpt.init, static_argnums=1)(jax.random.key(seed), spec))


def _without_prompts(seq):
    return np.delete(seq, np.arange(1, 1 + P), axis=1)


def test_tags_and_registry():
    assert SHALLOW.tags == jr.Tags(Format.LEARNABLE, Location.EMBEDDING, Operator.CONCATENATIVE)
    assert DEEP.tags == jr.Tags(Format.LEARNABLE, Location.HIDDEN, Operator.CONCATENATIVE)
    assert {"vpt_shallow", "vpt_deep"} <= set(jr.taxonomy.registry)


def test_init_follows_jia_et_al(model):
    a = math.sqrt(6.0 / (3 * 4 * 4 + D))  # U(-a, a), fan-in of the 4x4x3 patch projection, fan-out D
    assert prompt_bound(4, D) == pytest.approx(a)
    shallow, deep = _init(SHALLOW, model.spec)["prompts"], _init(DEEP, model.spec)["prompts"]
    chex.assert_shape([shallow, deep], [(P, D), (L, P, D)])
    for t in (shallow, deep):
        assert a >= np.abs(t).max() > 0.5 * a
    big = _init(jr.embedding.vpt_shallow(2000, hidden_size=8, patch_size=2), jr.ImageSpec(size=8))["prompts"]
    assert big.std() == pytest.approx(prompt_bound(2, 8) / math.sqrt(3), rel=0.05)  # std of U(-a, a)


def test_shallow_inserts_after_cls_at_first_layer(model):
    theta, x = _init(SHALLOW, model.spec, seed=2), _x()
    plain, _ = _sequences(model, x)
    prompted, logits = _sequences(model, x, SHALLOW, theta)
    chex.assert_shape(logits, (4, 5))
    seq = prompted[0]
    chex.assert_shape(seq, (4, 1 + P + N, D))
    np.testing.assert_array_equal(seq[:, 1 : 1 + P], np.broadcast_to(theta["prompts"], (4, P, D)))
    np.testing.assert_allclose(_without_prompts(seq), plain[0], rtol=1e-6)
    # zero prompts differ from no prompts only by the inserted (zero) tokens at the site
    zeroed, zero_logits = _sequences(model, x, SHALLOW, {"prompts": np.zeros((P, D), np.float32)})
    np.testing.assert_allclose(_without_prompts(zeroed[0]), plain[0], rtol=1e-6)
    assert np.abs(zeroed[0][:, 1 : 1 + P]).max() == 0.0
    assert not np.allclose(zero_logits, logits)
    # the next layer gets layer 0's outputs for the prompts: nothing is replaced (shallow)
    assert prompted[1].shape == (4, 1 + P + N, D)
    assert not np.allclose(prompted[1][:, 1 : 1 + P], theta["prompts"])


def test_deep_replaces_prompts_at_every_layer(model):
    theta, x = _init(DEEP, model.spec, seed=3), _x()
    plain, _ = _sequences(model, x)
    seqs, logits = _sequences(model, x, DEEP, theta)
    chex.assert_shape(logits, (4, 5))
    np.testing.assert_allclose(_without_prompts(seqs[0]), plain[0], rtol=1e-6)
    for i in range(L):
        chex.assert_shape(seqs[i], (4, 1 + P + N, D))
        np.testing.assert_array_equal(seqs[i][:, 1 : 1 + P], np.broadcast_to(theta["prompts"][i], (4, P, D)))
    # the other tokens entering layer 1 are layer 0's outputs: rerun layer 0 by hand on its input
    layer0 = {"params": model.params["params"]["encoder"]["layer_0"]}
    out0 = np.asarray(jit(EncoderLayer(num_heads=2, mlp_size=32, eps=1e-12).apply)(layer0, seqs[0]))
    np.testing.assert_allclose(_without_prompts(seqs[1]), _without_prompts(out0), atol=1e-5)


def test_deep_on_first_layers_only_equals_shallow(model):
    vpt = jr.hidden.vpt_deep(P, num_layers=1)
    theta = _init(vpt, model.spec, seed=3)
    chex.assert_shape(theta["prompts"], (1, P, D))
    _, deep_logits = _sequences(model, _x(), vpt, theta)
    _, shallow_logits = _sequences(model, _x(), SHALLOW, {"prompts": theta["prompts"][0]})
    np.testing.assert_allclose(deep_logits, shallow_logits, atol=1e-6)


def test_deep_reads_the_layer_off_the_site_on_every_call(model):
    """Layer ``i`` is the site whose ``*`` matches ``i``: nothing is counted across calls, so a second
    call, a rematerialised one (jax.checkpoint) and each step of a scan give the same logits."""
    program = jr.reprogram(model, hidden=jr.hidden.vpt_deep(P, sites=["encoder/layer_*/input", "x/layer_*"]))
    theta, x = program.init(jax.random.key(4)), _x()
    first = program.apply(theta, model.params, x)
    np.testing.assert_array_equal(program.apply(theta, model.params, x), first)
    np.testing.assert_allclose(jax.checkpoint(program.apply)(theta, model.params, x), first, atol=1e-6)
    _, steps = jax.lax.scan(lambda c, _: (c, program.apply(theta, model.params, x)), 0, None, length=2)
    np.testing.assert_allclose(steps, jnp.stack([first, first]), atol=1e-6)
    deep = jr.reprogram(model, hidden=DEEP)
    np.testing.assert_allclose(deep.apply(theta, model.params, x), first, atol=1e-6)


def test_errors(model):
    plain = jr.ImageSpec(size=16)
    with pytest.raises(
        ValueError, match="vpt_shallow: needs the frozen ViT's hidden_size.*pass hidden_size="
    ):
        SHALLOW.init(jax.random.key(0), plain)
    with pytest.raises(ValueError, match="vpt_deep: needs the frozen ViT's num_layers"):
        jr.hidden.vpt_deep(P, hidden_size=D, patch_size=4).init(jax.random.key(0), plain)
    with pytest.raises(
        ValueError, match=r"vpt_shallow: length \(number of prompt tokens\) must be an int >= 1, got 0"
    ):
        jr.embedding.vpt_shallow(0)
    # NumPy ints are accepted (as by soft_prompt); bools and floats are not.
    sizes = dict(hidden_size=D, patch_size=4)
    shallow = jr.embedding.vpt_shallow(np.int64(2), **sizes).init(jax.random.key(0), plain)
    deep = jr.hidden.vpt_deep(np.int64(2), num_layers=1, **sizes).init(jax.random.key(0), plain)
    assert shallow["prompts"].shape[0] == deep["prompts"].shape[1] == 2
    for bad in (True, 2.0):
        with pytest.raises(TypeError, match="vpt_shallow: length .* must be an int >= 1"):
            jr.embedding.vpt_shallow(bad)
        with pytest.raises(TypeError, match="vpt_deep: length .* must be an int >= 1"):
            jr.hidden.vpt_deep(bad)
    # length= as for soft_prompt / prefix_tuning; the old keyword is gone.
    shallow = jr.embedding.vpt_shallow(length=3, **sizes).init(jax.random.key(0), plain)
    deep = jr.hidden.vpt_deep(length=3, num_layers=1, **sizes).init(jax.random.key(0), plain)
    assert shallow["prompts"].shape[0] == deep["prompts"].shape[1] == 3
    for make in (jr.embedding.vpt_shallow, jr.hidden.vpt_deep):
        with pytest.raises(TypeError):
            make(num_tokens=3)
    with pytest.raises(
        ValueError, match=r"vpt_deep: every glob of sites needs a '\*' .* \['encoder/input'\]"
    ):
        jr.hidden.vpt_deep(P, sites="encoder/input")  # no '*': no layer number
    with pytest.raises(
        ValueError, match=r"reprogram\(hidden=...\): jr.select\('vision/layer_\*/input'\) matches none"
    ):
        jax.eval_shape(
            jr.reprogram(model, hidden=jr.hidden.vpt_deep(P, sites="vision/layer_*/input")).apply,
            {"hidden": {"prompts": jnp.zeros((L, P, D))}, "output": ()},
            model.params,
            _x(),
        )
    narrow = jr.embedding.vpt_shallow(P, hidden_size=8, patch_size=4)
    theta = {"prompts": jnp.zeros((P, 8))}
    with pytest.raises(
        ValueError, match=r"vpt_shallow: expected a token sequence \(B, T, 8\) at the site, got"
    ):
        jax.eval_shape(
            jr.reprogram(model, embedding=narrow).apply,
            {"embedding": theta, "output": ()},
            model.params,
            _x(),
        )
    with pytest.raises(ValueError, match=r"theta\['prompts'\] must be \(3, D\)"):
        narrow.apply({"prompts": jnp.zeros((2, 8))}, "embeddings", jnp.zeros((1, 5, 8)), plain)
    deep, prompts = jr.hidden.vpt_deep(P), {"prompts": jnp.zeros((L, P, D))}
    deep.apply(prompts, "encoder/layer_0/input", jnp.zeros((1, 3, D)), plain)  # layer 0: the first matched
    with pytest.raises(ValueError, match=r"the sequence has 3 tokens, fewer than \[CLS\] \+ 3 prompts"):
        deep.apply(prompts, "encoder/layer_1/input", jnp.zeros((1, 3, D)), plain)
    assert narrow.apply(theta, "encoder/layer_0/input", "untouched", plain) == "untouched"
