"""BlackVIP's coordinator (Oh et al. CVPR 2023): shapes, jit/grad/vmap, input dependence, a frozen
encoder that never moves (backprop or SPSA-GC), and bad input."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import benchmark

import jaxreprog as jr
from jaxreprog.input.blackvip import coordinator

SPEC = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)


def small():
    return jr.input.blackvip(stages=2, features=8, channels=2, width=4)


def images(n=4, side=6, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, side, side, 3))


def test_shapes_and_tags():
    part = small()
    theta = part.init(jax.random.key(0), SPEC)
    chex.assert_shape(theta["trigger"], (2, 2, 2))
    chex.assert_shape([w for w in theta["encoder"]], [(12, 8), (32, 8)])
    out = jax.jit(lambda t, x: part.apply(t, x, SPEC))(theta, images())
    chex.assert_shape(out, (4, 8, 8, 3))
    chex.assert_shape(jax.jit(lambda t: part.visualize(t, SPEC))(theta), (8, 8, 3))
    assert jr.taxonomy.registry["blackvip"].tags == part.tags
    assert part.tags.operator == jr.taxonomy.Operator.ADDITIVE | jr.taxonomy.Operator.PARAMETRIC


def test_the_prompt_depends_on_the_input():
    part = small()
    theta = part.init(jax.random.key(0), SPEC)
    x = SPEC.normalize(images(2, 8))
    prompt = jax.jit(coordinator)(theta, x)
    chex.assert_shape(prompt, (2, 8, 8, 3))
    assert float(jnp.abs(prompt[0] - prompt[1]).mean()) > 1e-3
    # and only through the encoder's features: the same image, the same prompt
    chex.assert_trees_all_close(jax.jit(coordinator)(theta, x[:1]), prompt[:1], atol=1e-6)


def test_jit_grad_vmap(tiny_model):
    program = jr.reprogram(tiny_model, input=small())
    theta = program.init(jax.random.key(1))
    x = images()
    one = jax.jit(program.apply)(theta, tiny_model.params, x)  # op by op: tests/test_transforms.py
    chex.assert_shape(one, (4, 7))

    g = jax.jit(jax.grad(lambda t: jnp.sum(program.apply(t, tiny_model.params, x) ** 2)))(theta)["input"]
    assert all(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves((g["decoder"], g["trigger"])))
    for leaf in g["encoder"]:
        np.testing.assert_array_equal(leaf, 0.0)  # frozen: its gradient is stopped

    thetas = jr.candidates.stack([theta, program.init(jax.random.key(2))])
    many = jax.jit(jax.vmap(program.apply, in_axes=(0, None, None)))(thetas, tiny_model.params, x)
    chex.assert_shape(many, (2, 4, 7))
    chex.assert_trees_all_close(many[0], one, rtol=1e-5, atol=1e-5)
    assert not np.allclose(many[0], many[1])


@pytest.mark.parametrize(
    "gradient", ["backprop", jr.train.ZerothOrder(queries=2, smoothing=0.01, estimator="spsa_gc")]
)
def test_the_frozen_encoder_gets_no_update(tiny_model, gradient):
    program = jr.reprogram(tiny_model, input=small())
    init, step = jr.train.make_step(program, optax.sgd(0.05), gradient=gradient)
    theta = program.init(jax.random.key(1))
    state = init(theta)
    batch = (images(8, 8), jnp.arange(8) % 7)
    step = jax.jit(step)
    for _ in range(2):
        state, _ = step(state, tiny_model.params, batch, jax.random.key(0))
    chex.assert_trees_all_equal(state.theta["input"]["encoder"], theta["input"]["encoder"])
    assert not np.allclose(state.theta["input"]["trigger"], theta["input"]["trigger"])


def test_a_query_budget_below_one_step_is_a_clear_error(tiny_model):
    """FreqMap's mapping pass sends each of the 32 images once (32 queries); an SPSA-GC step at q = 2 on a
    batch of 16 costs (2q + 1) · 16 = 80. A budget of 32 + 79 pays for the map but not one step: fit refuses
    before training and names both costs. 32 + 80 trains exactly one step."""
    program = jr.reprogram(tiny_model, input=small(), output=jr.output.freqmap(7, 3, per_target=2))
    data = jr.data.from_arrays(np.asarray(images(32, 8)), np.arange(32) % 3, batch_size=16)
    zo = jr.train.ZerothOrder(queries=2, smoothing=0.01, estimator="spsa_gc", budget=32 + 79)
    fit = functools.partial(jr.train.fit, program, tiny_model, data, epochs=1, key=jax.random.key(0))
    match = (
        r"budget=111 is below one training step: .* 80 queries \(5 per example\); the mapping pass spent 32"
    )
    with pytest.raises(ValueError, match=match):
        fit(gradient=zo, progress=False)
    with pytest.raises(ValueError, match=r"budget=4 is below one step: .*5 queries"):  # below one example's
        jr.train.make_step(program, optax.sgd(0.1), gradient=zo._replace(budget=4))
    _, history = fit(gradient=zo._replace(budget=32 + 80), progress=False)
    assert history[-1]["queries"] == 112 and "query budget 112 reached" in history[-1]["stopped"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(stages=0), "stages must be an int >= 1"),
        (dict(features=2.5), r"blackvip: features must be an int >= 1, got 2.5 \(float\)"),
        (dict(epsilon=-1.0), "epsilon must be a finite number > 0"),
        (dict(epsilon=float("nan")), "epsilon must be a finite number > 0"),
        (dict(interpolation="sinc"), "interpolation must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):  # TypeError: not an int
        jr.input.blackvip(**kwargs)


def test_bad_canvas_and_theta_are_named():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*stages=16"):
        jr.input.blackvip(stages=4).init(jax.random.key(0), SPEC)
    part = small()
    theta = part.init(jax.random.key(0), SPEC)
    with pytest.raises(ValueError, match="theta must be the dict from init"):
        part.apply({"trigger": theta["trigger"]}, images(), SPEC)
    with pytest.raises(ValueError, match=r"theta\['trigger'\] has shape"):
        part.apply({**theta, "trigger": jnp.zeros((3, 3, 2))}, images(), SPEC)
    with pytest.raises(ValueError, match="must lie in"):
        part.apply(theta, 2.0 * images(), SPEC)


def _record(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


def test_benchmark_smoke(capsys):
    """benchmarks/blackvip_mnist.py --quick: a tiny random CNN and random images, budget-bound."""
    assert benchmark("blackvip_mnist").main(["--quick", "--methods", "blackvip"]) == 0
    (run,) = _record(capsys)["runs"]
    assert run["evaluations_per_example"] == 11 and 0 < run["queries"] <= 2 * 11 * 8 + 16


@pytest.mark.slow
def test_benchmark_on_mnist_at_equal_queries(capsys):
    """The real setting (EfficientNet-Lite0, MNIST-5k), a small budget: both methods stop within it."""
    argv = ["--budget", "8000", "--test", "100", "--methods", "bar", "blackvip"]
    assert benchmark("blackvip_mnist").main(argv) == 0
    record = _record(capsys)
    for run in record["runs"]:
        assert 0 < run["queries"] <= 8000 and 0.0 <= run["final_acc"] <= 1.0
