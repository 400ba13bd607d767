"""MaPLe and IVLP on a tiny random CLIP (2 text layers, 3 vision layers, text width 16, vision width 12):
placement against a hand-written reference, gradient only into prompts and coupling, jit/vmap, bad input,
and the base-to-novel protocol's smoke run on synthetic data.

XLA:CPU compiles each CLIP program in seconds: the tests compile at -O0 and share compiled functions.
"""

import dataclasses
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr
from jaxreprog.models import clip
from jaxreprog.taxonomy import Format, Location, Operator

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

SOS, EOS, X = 28, 29, 3
NAMES = [[4, 5], [6], [7, 8, 9], [10]]  # four class names' token ids
B, DT, DV = 2, 16, 12  # prompt length, text and vision widths
CONFIG = clip.Config(
    text=clip.TextConfig(
        vocab_size=30, width=DT, mlp_dim=24, depth=2, num_heads=2, context_length=12, eos_token_id=EOS
    ),
    vision=clip.VisionConfig(image_size=8, patch_size=4, width=DV, mlp_dim=20, depth=3, num_heads=2),
    embed_dim=32,
)
MODULE = clip.CLIP(CONFIG)
IDS, EOT = clip.class_prompts(NAMES, prefix=[X] * B, sos_id=SOS, eos_id=EOS, context_length=12)


@functools.cache
def shared():
    """(params, classifier over "X X {name}" prompts, normalised images)."""
    params = clip.init_params(CONFIG, jax.random.key(0))
    model = clip.classifier(MODULE, params, IDS, EOT)
    x = model.spec.normalize(jax.random.uniform(jax.random.key(1), (3, 8, 8, 3)))
    return params, model, x


METHODS = {
    "maple": lambda: jr.hidden.maple(B, 2),
    "ivlp": lambda: jr.hidden.ivlp(B, 1, vision_length=3, vision_depth=2),  # J < both towers' depths
}


@functools.cache
def program(name):
    return jr.reprogram(shared()[1], hidden=METHODS[name]())


def moved(theta, seed=5):
    """Theta off its initial values (the deep coupling starts as copies; make every layer differ)."""
    leaves, tree = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


def per_layer_prompts(name, theta):
    """(text prompts per layer, vision prompts per layer), computed as the papers write them."""
    h = theta["hidden"]
    if name == "maple":
        c = h["coupling"]
        vision = [h["prompts"][i] @ c["kernel"][i] + c["bias"][i] for i in range(h["prompts"].shape[0])]
        return list(h["prompts"]), vision
    return list(h["text"]), list(h["vision"])


def reference_hook(text, vision):
    """The reference code's placement, written out: text prompts at positions 1..b (after SOS) of the
    class prompts and of text layer i's input (i < J); vision prompts appended to the embedded tokens,
    then the last b tokens of vision layer i's input replaced (i < J_v)."""

    def hook(site, value):
        if site == "text/embeddings":
            return value._replace(embeds=value.embeds.at[:, 1 : 1 + len(text[0])].set(text[0]))
        if site == "vision/embeddings":
            p = jnp.broadcast_to(vision[0], (value.shape[0], *vision[0].shape))
            return jnp.concatenate([value, p], axis=1)
        found = re.fullmatch(r"(text|vision)/layer_(\d+)/input", site)
        if found:
            tower, i = found.group(1), int(found.group(2))
            if tower == "text" and 0 < i < len(text):
                return value.at[:, 1 : 1 + len(text[i])].set(text[i])
            if tower == "vision" and 0 < i < len(vision):
                return value.at[:, -len(vision[i]) :].set(vision[i])
        return value

    return hook


@functools.cache
def compiled(name):
    """One compiled function per method (XLA:CPU compiles CLIP programs slowly): the program's logits, the
    reference placement's logits for the same theta, and the gradient of a cross-entropy w.r.t. theta
    and the frozen parameters."""
    prog = program(name)
    model = shared()[1]
    labels = jnp.arange(3) % len(NAMES)

    def loss(theta, params, x):
        logits = prog.apply(theta, params, x)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1)), logits

    def run(theta, params, x):
        (_, logits), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(theta, params, x)
        want = model.apply(params, x, hook=reference_hook(*per_layer_prompts(name, theta)))
        return logits, want, grads

    return jit(run)


def test_registered_with_tags():
    registry = jr.taxonomy.registry
    both = Location.EMBEDDING | Location.HIDDEN
    assert registry["maple"].tags == jr.Tags(
        Format.LEARNABLE, both, Operator.CONCATENATIVE | Operator.PARAMETRIC
    )
    assert registry["ivlp"].tags == jr.Tags(Format.LEARNABLE, both, Operator.CONCATENATIVE)
    assert registry["maple"].factory == "jr.hidden.maple" and registry["maple"].modality == "vision-language"


def test_theta_shapes_and_init():
    _, model, _ = shared()
    assert (model.spec.text_layers, model.spec.num_layers) == (2, 3)  # the towers' depths, in the spec
    theta = jr.hidden.maple(B, 2).init(jax.random.key(0), model.spec)
    chex.assert_shape(theta["prompts"], (2, B, DT))
    chex.assert_shape(theta["coupling"]["kernel"], (2, DT, DV))
    chex.assert_shape(theta["coupling"]["bias"], (2, DV))
    bound = 1 / np.sqrt(DT)  # nn.Linear's U(±1/√fan_in); the deep couplings start as copies of one draw
    assert float(jnp.max(jnp.abs(theta["coupling"]["kernel"]))) <= bound
    init = jnp.arange(B * DT, dtype=jnp.float32).reshape(B, DT)
    theta = jr.hidden.maple(B, 2, init=init).init(jax.random.key(0), model.spec)
    chex.assert_trees_all_equal(theta["prompts"][0], init)
    theta = jr.hidden.ivlp(B, 2, vision_length=3, vision_depth=3).init(jax.random.key(0), model.spec)
    chex.assert_shape(theta["text"], (2, B, DT))
    chex.assert_shape(theta["vision"], (3, 3, DV))


@pytest.mark.parametrize("name", list(METHODS))
def test_jit_equals_the_reference_placement(name):
    """The compiled program equals the reference code's placement and coupling (jit), with the
    vision sequence 1 + 4 patches + b prompts long and every text prompt kept at length 12. IVLP
    prompts fewer layers than the towers have: the later layers run on what the last prompted
    layer made of the prompts."""
    params, model, x = shared()
    prog = program(name)
    theta = moved(prog.init(jax.random.key(2)))
    got, want, _ = compiled(name)(theta, params, x)
    chex.assert_shape(got, (3, len(NAMES)))
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    shapes = {}

    def record(site, value):
        shapes[site] = jnp.shape(getattr(value, "embeds", value))
        return value

    hook = prog.parts["hidden"].apply
    jax.eval_shape(
        lambda th: model.apply(params, x, hook=lambda s, v: record(s, hook(th["hidden"], s, v, model.spec))),
        theta,
    )
    b_vision = per_layer_prompts(name, theta)[1][0].shape[0]
    assert shapes["vision/layer_2/input"] == (3, 1 + 4 + b_vision, DV)
    assert shapes["text/layer_1/input"] == (len(NAMES), 12, DT)


@pytest.mark.parametrize("name", list(METHODS))
def test_grad_reaches_only_prompts_and_coupling(name):
    """Every prompted layer's prompts (and MaPLe's every layer's coupling) get a gradient; the frozen
    CLIP none. (jit, grad and vmap over candidates of every registered method, MaPLe and IVLP among
    them, are also proven by tests/test_transforms.py's table.)"""
    params, _, x = shared()
    prog = program(name)
    theta = moved(prog.init(jax.random.key(2)))
    _, _, (g_theta, g_params) = compiled(name)(theta, params, x)
    chex.assert_trees_all_equal_shapes(g_theta, theta)
    for path, g in jax.tree_util.tree_leaves_with_path(g_theta["hidden"]):
        per_layer = jnp.abs(g).reshape(g.shape[0], -1).max(axis=1)
        assert bool(jnp.all(per_layer > 0)), (
            f"{name}: a layer of {jax.tree_util.keystr(path)} gets no gradient"
        )
    for g in jax.tree.leaves(g_params):
        np.testing.assert_array_equal(g, 0)


@pytest.mark.parametrize("name", list(METHODS))
def test_vmap_over_candidates_equals_a_loop(name):
    params, _, x = shared()
    prog = program(name)
    thetas = [moved(prog.init(jax.random.key(k)), seed=k) for k in range(2)]
    got = jit(jax.vmap(prog.apply, in_axes=(0, None, None)))(jr.candidates.stack(thetas), params, x)
    chex.assert_shape(got, (2, 3, len(NAMES)))
    for k, theta in enumerate(thetas):
        chex.assert_trees_all_close(got[k], compiled(name)(theta, params, x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: jr.hidden.maple(B, 3), r"depth=3 prompts more layers than the text tower has \(2\)"),
        (lambda: jr.hidden.ivlp(B, 2, vision_depth=4), r"vision_depth=4 .* vision tower has \(3\)"),
        (lambda: jr.hidden.maple(B, 2, init=np.zeros((B, 7))), r"init must be \(2, 16\)"),
    ],
)
def test_bad_input_at_init(build, match):
    with pytest.raises(ValueError, match=match):
        build().init(jax.random.key(0), shared()[1].spec)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: jr.hidden.maple(0), "maple: length must be an int >= 1, got 0"),
        (lambda: jr.hidden.maple(True), r"maple: length must be an int >= 1, got True \(bool\)"),
        (lambda: jr.hidden.maple(2, 0), "maple: depth must be an int >= 1"),
        (lambda: jr.hidden.ivlp(2, 2.5), r"ivlp: depth must be an int >= 1, got 2.5 \(float\)"),
        (lambda: jr.hidden.ivlp(2, vision_length=-1), "ivlp: vision_length must be an int >= 1"),
        (lambda: jr.hidden.maple(2, init=np.zeros((3, DT))), r"maple: init must have shape \(2, D\)"),
        (lambda: jr.hidden.maple(towers=("text",)), "maple: towers must be two distinct module paths"),
        (lambda: jr.hidden.ivlp(towers=("text", "text")), "ivlp: towers must be two distinct"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(
        (TypeError, ValueError), match=match
    ):  # TypeError: not an int; ValueError: a bad value
        build()


def test_bad_model():
    """A spec without the towers' sizes, and prompts too short for the text prompt length."""
    with pytest.raises(ValueError, match="maple: needs the CLIP classifier's text_layers"):
        jr.hidden.maple(2, 1).init(jax.random.key(0), jr.ImageSpec(size=8))
    params, model, x = shared()
    prog = jr.reprogram(model, hidden=jr.hidden.maple(4, 1))  # "SOS X X 6 EOS": 4 tokens do not fit
    with pytest.raises(ValueError, match="maple: the class prompts need 4 placeholder tokens"):
        jax.eval_shape(prog.apply, prog.init(jax.random.key(0)), params, x)
    prog = jr.reprogram(model, hidden=jr.hidden.maple(B, 2))
    theta = prog.init(jax.random.key(0))
    theta["hidden"]["prompts"] = theta["hidden"]["prompts"][:, :1]
    with pytest.raises(ValueError, match=r"maple: theta\['prompts'\] must be \(depth, 2, width\)"):
        jax.eval_shape(prog.apply, theta, params, x)


# ------------------------------------------------------------------ base to novel


def synthetic(n_per_class: int, seed: int):
    """Images whose class is a bright quadrant pattern, plus noise: learnable by a prompt."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(NAMES)), n_per_class)
    x = 0.3 * rng.random((len(y), 8, 8, 3), np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] += 0.7
    return np.asarray(shared()[1].spec.normalize(x)), y.astype(np.int32)


SMALL = clip.Config(  # one layer per tower: the smoke run compiles a training step and two evaluations
    dataclasses.replace(CONFIG.text, depth=1), dataclasses.replace(CONFIG.vision, depth=1), CONFIG.embed_dim
)


@functools.cache
def small_params():
    return clip.init_params(SMALL, jax.random.key(0))


def classifier(classes):
    return clip.classifier(clip.CLIP(SMALL), small_params(), IDS[classes], EOT[classes])


def test_base_to_novel_smoke():
    """Two seeds in one run: (K,) base, novel and harmonic accuracies on 2 base + 2 novel classes."""
    result = jr.train.base_to_novel(
        jr.hidden.maple(B, 1),
        classifier,
        synthetic(6, 0),
        synthetic(3, 1),
        epochs=1,
        seeds=2,
        shots=4,
        batch_size=4,
        key=jax.random.key(0),
    )
    np.testing.assert_array_equal(result.base_classes, [0, 1])
    np.testing.assert_array_equal(result.novel_classes, [2, 3])
    for acc in (result.base, result.novel, result.harmonic):
        chex.assert_shape(acc, (2,))
        assert np.all((acc >= 0) & (acc <= 1))
    np.testing.assert_allclose(result.harmonic, jr.train.harmonic_mean(result.base, result.novel))
    assert jr.candidates.count(result.theta) == 2
    assert not np.allclose(result.theta["hidden"]["prompts"][0], result.theta["hidden"]["prompts"][1])
    summary = result.summary()
    assert summary["base"] == pytest.approx(float(np.mean(result.base)))
    assert summary["harmonic"] == pytest.approx(
        2 * summary["base"] * summary["novel"] / (summary["base"] + summary["novel"])
        if summary["base"] + summary["novel"]
        else 0.0
    )


def test_base_to_novel_split_and_bad_input():
    base, novel = jr.train.split_classes(5)
    np.testing.assert_array_equal(base, [0, 1, 2])  # ⌈5/2⌉ base classes, as CoCoOp
    np.testing.assert_array_equal(novel, [3, 4])
    np.testing.assert_allclose(jr.train.harmonic_mean([0.8, 0.0], [0.6, 0.0]), [2 * 0.48 / 1.4, 0.0])
    data = synthetic(2, 0)
    run = functools.partial(jr.train.base_to_novel, epochs=1, key=jax.random.key(0))
    method = jr.hidden.maple(B, 1)
    with pytest.raises(ValueError, match=r"base_to_novel: num_base must be an int in \[1, 3\], got 4"):
        run(method, classifier, data, data, num_base=4)
    with pytest.raises(ValueError, match="base_to_novel: seeds must be an int >= 1, got 0"):
        run(method, classifier, data, data, seeds=0)
    with pytest.raises(ValueError, match=r"train labels must lie in \[0, num_classes=3\)"):
        run(method, classifier, data, data, num_classes=3)
    with pytest.raises(TypeError, match="method must be a jr.SiteHook"):
        run(jr.input.pad(6), classifier, data, data)
    with pytest.raises(ValueError, match="gave a model over 4 classes; expected the 2 base classes"):
        run(method, lambda c: classifier(np.arange(4)), data, data)
