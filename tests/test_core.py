"""Core algebra: reprogram, chain, frozen models, specs; jit / grad / vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyCNN, additive, linear_alignment, scale, site_shift
from flax import nnx

import jaxreprog as jr
from jaxreprog.taxonomy import Format, Location, Operator, OutputAlignment


def batch(n=5, size=8, seed=1):
    return jax.random.uniform(jax.random.key(seed), (n, size, size, 3))


class TestReprogramApply(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equals_nojit(self):
        model = _tiny()
        program = jr.reprogram(model, input=additive(), hidden=site_shift(), output=linear_alignment())
        theta = program.init(jax.random.key(0))
        x = batch()
        got = self.variant(program.apply)(theta, model.params, x)
        chex.assert_shape(got, (5, 3))
        want = linear_alignment().apply(
            theta["output"],
            model.apply(
                model.params,
                model.spec.normalize(x + theta["input"]["delta"]),
                hook=lambda s, v: v + theta["hidden"]["b"] if s == "features" else v,
            ),
        )
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)

    def test_no_manipulation_is_the_frozen_model(self):
        model = _tiny()
        program = jr.reprogram(model)
        x = model.spec.normalize(batch())
        chex.assert_trees_all_close(
            program.apply(program.init(jax.random.key(0)), model.params, x), model.apply(model.params, x)
        )
        assert program.tags.alignment == OutputAlignment.IDENTITY


def _tiny():
    module = TinyCNN()
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)
    return jr.from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, *spec.shape))), spec)


def test_gradients_reach_theta_only(tiny_model):
    program = jr.reprogram(tiny_model, input=additive(), hidden=site_shift(), output=linear_alignment())
    theta = program.init(jax.random.key(0))
    x, y = batch(), jnp.arange(5) % 3

    def loss(theta, params):
        logits = program.apply(theta, params, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(5), y])

    g_theta, g_params = jax.grad(loss, argnums=(0, 1))(theta, tiny_model.params)
    for leaf in jax.tree.leaves(g_theta):
        assert jnp.all(jnp.isfinite(leaf)) and jnp.any(leaf != 0)
    for leaf in jax.tree.leaves(g_params):  # frozen: stop_gradient inside apply
        np.testing.assert_array_equal(leaf, 0)


def test_frozen_params_are_an_argument_not_a_constant(tiny_model):
    program = jr.reprogram(tiny_model, input=additive())
    theta = program.init(jax.random.key(0))
    x = batch()

    def baked(text):  # the head kernel (4, 7) as a constant of the compiled program
        return any("constant" in line and "tensor<4x7xf32>" in line for line in text.splitlines())

    text = jax.jit(program.apply).lower(theta, tiny_model.params, x).as_text()
    main = text[text.index("@main(") : text.index("{", text.index("@main("))]
    assert "tensor<4x7xf32>" in main and not baked(text)  # an argument of the program, not a constant
    closed = jax.jit(lambda t, x: program.apply(t, tiny_model.params, x)).lower(theta, x).as_text()
    assert baked(closed)  # the control: closing over the weights does bake them in
    other = jax.tree.map(lambda p: p * 2, tiny_model.params)  # same compiled fn, new weights
    f = jax.jit(program.apply)
    assert not np.allclose(f(theta, tiny_model.params, x), f(theta, other, x))


def test_vmap_over_candidates_equals_loop(tiny_model):
    program = jr.reprogram(tiny_model, input=additive(), output=linear_alignment())
    keys = jax.random.split(jax.random.key(3), 4)
    thetas = jr.candidates.init(program, keys)
    x = batch()
    got = jr.candidates.apply(program, thetas, tiny_model.params, x)
    chex.assert_shape(got, (4, 5, 3))
    for i, k in enumerate(keys):
        chex.assert_trees_all_close(
            got[i], program.apply(program.init(k), tiny_model.params, x), rtol=1e-5, atol=1e-6
        )
    also = jax.vmap(program.apply, in_axes=(0, None, None))(thetas, tiny_model.params, x)
    chex.assert_trees_all_close(got, also)


def test_candidate_helpers_roundtrip(tiny_model):
    program = jr.reprogram(tiny_model, input=additive())
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(0), 3))
    assert jr.candidates.count(thetas) == 3
    parts = jr.candidates.unstack(thetas)
    chex.assert_trees_all_equal(jr.candidates.stack(parts), thetas)
    chex.assert_trees_all_equal(jr.candidates.select(thetas, 1), parts[1])
    with pytest.raises(IndexError, match="out of range for K=3"):
        jr.candidates.select(thetas, 3)
    with pytest.raises(ValueError, match="same tree structure"):
        jr.candidates.stack([{"a": 1.0}, {"b": 1.0}])


def test_candidates_init_rejects_a_single_key(tiny_model):
    program = jr.reprogram(tiny_model, input=additive())
    raw = jax.random.split(jax.random.PRNGKey(0), 3)  # legacy uint32 keys (3, 2)
    assert jr.candidates.count(jr.candidates.init(program, raw)) == 3
    single_raw, typed_grid = jax.random.PRNGKey(0), jax.random.split(jax.random.key(0), (3, 2))
    for keys in (single_raw, typed_grid, jax.random.key(0), jnp.zeros((3, 2), jnp.float32)):
        with pytest.raises(ValueError, match=r"keys must be a batch of K PRNG keys \(jax.random.split"):
            jr.candidates.init(program, keys)


def test_chain_order_and_tags(tiny_model):
    spec = tiny_model.spec
    a, s = additive(), scale()
    both = jr.chain(s, a)  # scale first, then add + normalize
    theta = both.init(jax.random.key(0), spec)
    x = batch()
    want = a.apply(theta[1], s.apply(theta[0], x, spec), spec)
    chex.assert_trees_all_close(both.apply(theta, x, spec), want)
    reverse = s.apply(theta[0], a.apply(theta[1], x, spec), spec)
    assert not np.allclose(both.apply(theta, x, spec), reverse)
    assert both.tags.operator == Operator.ADDITIVE | Operator.PARAMETRIC
    assert both.tags.location == Location.INPUT and both.tags.format == Format.LEARNABLE
    chex.assert_trees_all_close(both.penalty(theta), a.penalty(theta[1]))


def test_chain_of_hooks(tiny_model):
    h = jr.chain(site_shift(), site_shift())
    program = jr.reprogram(tiny_model, hidden=h)
    theta = program.init(jax.random.key(0))
    x = tiny_model.spec.normalize(batch())
    b = theta["hidden"][0]["b"] + theta["hidden"][1]["b"]
    want = tiny_model.apply(tiny_model.params, x, hook=lambda s, v: v + b if s == "features" else v)
    chex.assert_trees_all_close(program.apply(theta, tiny_model.params, x), want, rtol=1e-5)


def test_trainable_mask_and_penalty(tiny_model):
    frozen_align = jr.fixed(
        jr.Alignment(init=lambda k: {"w": jnp.eye(7)[:, :3]}, apply=lambda s, z: z @ s["w"])
    )
    program = jr.reprogram(tiny_model, input=additive(), output=frozen_align)
    theta = program.init(jax.random.key(0))
    mask = program.trainable(theta)
    assert mask == {"input": {"delta": True}, "output": {"w": False}}
    chex.assert_trees_all_close(program.penalty(theta), jnp.sum(theta["input"]["delta"] ** 2))
    g = jax.grad(lambda t: program.apply(t, tiny_model.params, batch()).sum())(theta)
    np.testing.assert_array_equal(g["output"]["w"], 0)  # non-trainable alignment state: stopped


def test_project_runs_after_every_update_and_composes(tiny_model):
    """A part's ``project`` is applied by make_step after each update (projected gradient
    descent); ``chain`` projects each part's theta; ``jr.fixed`` holds theta, projection too."""
    import optax

    box = additive()._replace(project=lambda t: {"delta": jnp.clip(t["delta"], -0.01, 0.01)})
    program = jr.reprogram(tiny_model, input=jr.chain(additive(), box), output=linear_alignment())
    theta = program.init(jax.random.key(0))
    theta["input"] = ({"delta": jnp.full((8, 8, 3), 3.0)}, {"delta": jnp.full((8, 8, 3), 3.0)})
    init, step = jr.train.make_step(program, optax.sgd(10.0))
    state, _ = jax.jit(step)(init(theta), tiny_model.params, (batch(), jnp.arange(5) % 3), jax.random.key(1))
    first, second = state.theta["input"]
    assert float(jnp.max(jnp.abs(second["delta"]))) <= 0.01  # projected into the box
    assert float(jnp.max(jnp.abs(first["delta"]))) > 0.01  # the unprojected part moved freely
    chex.assert_trees_all_equal(program.project(state.theta), state.theta)  # idempotent
    held = jr.reprogram(tiny_model, input=jr.fixed(box), output=linear_alignment())
    out = {**held.init(jax.random.key(0)), "input": {"delta": jnp.full((8, 8, 3), 3.0)}}
    chex.assert_trees_all_equal(held.project(out), out)


def test_refit_replaces_output_state(tiny_model):
    align = jr.Alignment(
        init=lambda k: {"w": jnp.zeros(())},
        apply=lambda s, z: z + s["w"],
        stats_init=lambda: jnp.zeros(()),
        stats_update=lambda stats, logits, labels: stats + logits.mean(),
        refit_from_stats=lambda state, stats: {"w": state["w"] + stats},
    )
    program = jr.reprogram(tiny_model, input=additive(), output=align)
    theta = program.init(jax.random.key(0))
    new = program.refit(theta, jnp.ones((2, 7)), jnp.zeros(2, int))
    assert float(new["output"]["w"]) == 1.0
    chex.assert_trees_all_equal(new["input"], theta["input"])


def test_nnx_model():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.head = nnx.Linear(4, 7, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.conv(x)).mean(axis=(1, 2)))

    net = Net(nnx.Rngs(0))
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)
    model = jr.from_nnx(net, spec)
    program = jr.reprogram(model, input=additive(), output=linear_alignment())
    theta = program.init(jax.random.key(0))
    x = batch()
    want = linear_alignment().apply(theta["output"], net(spec.normalize(x + theta["input"]["delta"])))
    chex.assert_trees_all_close(jax.jit(program.apply)(theta, model.params, x), want, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda t: program.apply(t, model.params, x).sum())(theta)
    assert jnp.any(g["input"]["delta"] != 0)
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(1), 2))
    chex.assert_shape(jr.candidates.apply(program, thetas, model.params, x), (2, 5, 3))
    with pytest.raises(ValueError, match="no sites"):
        jr.reprogram(model, hidden=site_shift()).apply(
            {"hidden": {"b": jnp.zeros(4)}, "output": ()}, model.params, x
        )


def test_site_paths_visible_to_hooks(tiny_model):
    seen = []
    tiny_model.apply(tiny_model.params, jnp.zeros((1, 8, 8, 3)), hook=lambda s, v: seen.append(s) or v)
    assert {"conv", "features", "head"} <= set(seen)


class TestErrors:
    def test_wrong_slot_type(self, tiny_model):
        with pytest.raises(TypeError, match="input= must be a jr.InputTransform, got SiteHook"):
            jr.reprogram(tiny_model, input=site_shift())
        with pytest.raises(TypeError, match="hidden= must be a jr.SiteHook, got InputTransform"):
            jr.reprogram(tiny_model, hidden=additive())
        with pytest.raises(TypeError, match="output= must be a jr.Alignment, got InputTransform"):
            jr.reprogram(tiny_model, output=additive())
        with pytest.raises(
            TypeError, match=r"must be jr.InputTransform or all jr.SiteHook, got \(InputTransform, SiteHook\)"
        ):
            jr.chain(additive(), site_shift())
        with pytest.raises(TypeError, match="fixed: expected"):
            jr.fixed(lambda x: x)

    def test_types(self, tiny_model):
        with pytest.raises(TypeError, match="frozen_model must be a jr.FrozenModel"):
            jr.reprogram(tiny_model.params)
        with pytest.raises(TypeError, match="spec must be a jr.ImageSpec"):
            jr.from_linen(TinyCNN(), {}, spec={"size": 8})
        with pytest.raises(TypeError, match="module must be a flax.linen.Module"):
            jr.from_linen(object(), {}, jr.ImageSpec(8))

    def test_theta_keys(self, tiny_model):
        program = jr.reprogram(tiny_model, input=additive())
        with pytest.raises(ValueError, match=r"theta must be a dict with keys \['input', 'output'\]"):
            program.apply({"input": {}}, tiny_model.params, batch())

    def test_chain_needs_a_transform(self):
        with pytest.raises(ValueError, match="at least one"):
            jr.chain()

    def test_spec_validation(self):
        with pytest.raises(ValueError, match=r"ImageSpec.mean has 2 values; expected one per channel \(3\)"):
            jr.ImageSpec(size=8, mean=(0.5, 0.5))
        with pytest.raises(ValueError, match="std must be positive"):
            jr.ImageSpec(size=8, std=0)
        with pytest.raises(ValueError, match="value_range"):
            jr.ImageSpec(size=8, value_range=(1, 0))
        with pytest.raises(ValueError, match="2 class_names for num_classes=3"):
            jr.ImageSpec(size=8, num_classes=3, class_names=("a", "b"))

    def test_spec_validation_numpy_scalars_and_sequence_spec(self):
        spec = jr.ImageSpec(size=np.int64(8), mean=np.float32(0.5), std=np.float64(0.25))
        assert spec.size == (8, 8) and spec.mean == (0.5,) * 3 and spec.std == (0.25,) * 3
        with pytest.raises(TypeError, match=r"ImageSpec.size must be an int or a pair \(h, w\) of ints"):
            jr.ImageSpec(size=8.5)
        with pytest.raises(TypeError, match="ImageSpec.mean must be a number or one per channel"):
            jr.ImageSpec(size=8, mean="grey")
        with pytest.raises(ValueError, match="SequenceSpec.std must be positive"):
            jr.SequenceSpec(length=16, std=0.0)
        with pytest.raises(ValueError, match="SequenceSpec.value_range"):
            jr.SequenceSpec(length=16, value_range=(1.0, -1.0))
        with pytest.raises(ValueError, match="SequenceSpec: length must be an int >= 1, got 0"):
            jr.SequenceSpec(length=0)
        with pytest.raises(TypeError, match="SequenceSpec: channels must be an int >= 1"):
            jr.SequenceSpec(length=16, channels=2.0)


def test_image_spec_normalize_rejects_integer_images():
    spec = jr.ImageSpec(size=2, mean=0.485, std=0.229)
    with pytest.raises(
        TypeError, match=r"ImageSpec.normalize: x01 must be floating point images in \[0, 1\]"
    ):
        spec.normalize(jnp.ones((1, 2, 2, 3), jnp.uint8))  # mean/std were cast to 0, 0: a division by zero
    with pytest.raises(TypeError, match="ImageSpec.denormalize: x must be floating point"):
        spec.denormalize(jnp.ones((1, 2, 2, 3), jnp.int32))
    chex.assert_trees_all_close(spec.normalize(jnp.ones((1, 2, 2, 3))), jnp.full((1, 2, 2, 3), 0.515 / 0.229))


def test_token_spec_validation():
    spec = jr.TokenSpec(
        vocab_size=np.int64(10), max_length=8, hidden_size=6, num_heads=3, class_names=["a", "b"]
    )
    assert spec.vocab_size == 10 and spec.head_dim == 2 and spec.class_names == ("a", "b")
    for bad, match in [
        ({"vocab_size": 0}, "TokenSpec: vocab_size must be an int >= 1, got 0"),
        ({"max_length": -1}, "TokenSpec: max_length must be an int >= 1, got -1"),
        ({"num_layers": -1}, "TokenSpec: num_layers must be an int >= 0, got -1"),
        ({"num_heads": 4}, r"TokenSpec: hidden_size=6 must be divisible by num_heads=4"),
        ({"pad_id": -1}, r"TokenSpec: pad_id must be a token id in \[0, 10\), got -1"),
        ({"eos_id": -2}, r"TokenSpec: eos_id must be a token id in \[0, 10\)"),
        ({"bos_id": 10}, r"TokenSpec: bos_id must be a token id in \[0, 10\), got 10"),
        ({"num_classes": 3, "class_names": ("a", "b")}, "TokenSpec: 2 class_names for num_classes=3"),
        ({"num_heads": 4, "head_size": 0}, "TokenSpec: head_size must be an int >= 1, got 0"),
        ({"num_heads": 3, "num_kv_heads": 2}, "TokenSpec: num_kv_heads must divide num_heads=3, got 2"),
    ]:
        with pytest.raises(ValueError, match=match):
            jr.TokenSpec(**{"vocab_size": 10, "max_length": 8, "hidden_size": 6, **bad})
    with pytest.raises(TypeError, match=r"TokenSpec: hidden_size must be an int >= 1, got 6.5 \(float\)"):
        jr.TokenSpec(vocab_size=10, max_length=8, hidden_size=6.5)
    gemma_like = jr.TokenSpec(vocab_size=10, max_length=8, hidden_size=6, num_heads=4, head_size=5)
    assert gemma_like.head_dim == 5  # heads need not divide the width when their size is given


def test_image_spec_normalize_roundtrip():
    spec = jr.ImageSpec(size=(4, 6), mean=127.0, std=128.0, value_range=(0, 255))
    assert spec.shape == (4, 6, 3)
    x = jax.random.uniform(jax.random.key(0), (2, *spec.shape))
    chex.assert_trees_all_close(spec.normalize(x), (255 * x - 127) / 128, rtol=1e-6)
    chex.assert_trees_all_close(spec.denormalize(spec.normalize(x)), x, atol=1e-6)
    assert hash(spec) == hash(jr.ImageSpec(size=(4, 6), mean=127.0, std=128.0, value_range=(0, 255)))


def test_fixed_and_trainable_masks(tiny_model):
    pad = additive()
    assert jr.fixed(pad).trainable is False and pad.trainable is True
    program = jr.reprogram(tiny_model, input=jr.fixed(pad), output=linear_alignment())
    theta = program.init(jax.random.key(0))
    assert program.trainable(theta) == {"input": {"delta": False}, "output": {"w": True}}
    g = jax.grad(lambda t: program.apply(t, tiny_model.params, batch()).sum())(theta)
    np.testing.assert_array_equal(g["input"]["delta"], 0)  # a fixed part's gradient is stopped
    assert np.any(g["output"]["w"] != 0)
    # a per-leaf mask: learn "b", keep "a"
    two = jr.InputTransform(
        lambda k, s: {"a": jnp.ones(()), "b": jnp.ones(())},
        lambda t, x, s, *, key=None: x * t["a"] + t["b"],
        trainable=lambda t: {"a": False, "b": True},
    )
    both = jr.chain(two, pad)
    mask = jr.reprogram(tiny_model, input=both).trainable(
        jr.reprogram(tiny_model, input=both).init(jax.random.key(0))
    )
    assert mask["input"] == ({"a": False, "b": True}, {"delta": True})
    bad = two._replace(trainable=lambda t: {"a": False})
    with pytest.raises(ValueError, match="trainable must give one bool per leaf"):
        jr.trainable_mask(bad, {"a": 1.0, "b": 2.0})


def test_frozen_model_repr_is_one_line_without_weights(tiny_model):
    text = repr(tiny_model)
    n = sum(a.size for a in jax.tree.leaves(tiny_model.params))
    mib = 4 * n / 2**20
    assert text == f"FrozenModel('unnamed', images 8x8x3 -> 7 classes, {n:,} parameters, {mib:.1f} MiB)"
    assert "\n" not in text and str(tiny_model) == text


def test_programs_and_parts_show_how_they_were_built(tiny_model):
    program = jr.reprogram(
        tiny_model,
        input=jr.chain(jr.fixed(jr.input.pad(6)), jr.input.full()),
        output=jr.output.ilm(7, 3),  # held by design (refit from statistics): no jr.fixed shown
    )
    assert repr(program) == (
        "Reprogrammed(input=jr.chain(transforms=(jr.fixed(jr.input.pad(target_size=6, init='zero')), "
        "jr.input.full(interpolation='linear'))), "
        "output=jr.output.ilm(num_source=7, num_target=3, guarded=False, guard_samples=2048))"
    )
    assert repr(jr.fixed(jr.output.linear(7, 3, use_bias=False))) == (
        "jr.fixed(jr.output.linear(num_source=7, num_target=3, use_bias=False, kernel_init=None))"
    )
    assert repr(additive()) == "InputTransform(<own>)"
    init = jnp.zeros((3, 4))
    assert "init=float32[3, 4]" in repr(jr.embedding.soft_prompt(3, init=init))


def test_treescope_renders_parts_and_models_without_functions_or_weights(tiny_model):
    treescope = pytest.importorskip("treescope")
    program = jr.reprogram(tiny_model, input=jr.input.pad(6), output=jr.output.linear(7, 3))
    text = treescope.render_to_text(program)
    assert "factory='jr.input.pad'" in text and "arguments={'target_size': 6" in text
    assert "<function" not in text  # the functions are the library's, not the reader's business
    model = treescope.render_to_text(tiny_model)
    assert model.startswith("FrozenModel(\n  spec=ImageSpec(") and "<function" not in model
    assert "<script" in treescope.render_to_html(program)  # what a notebook shows
