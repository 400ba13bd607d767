"""Black-box reprogramming (BAR, SPSA-GC): the estimators' maths, the step's update, query
counting, and training on real data (digits)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import additive
from flax import linen as nn
from sklearn.datasets import load_digits

import jaxreprog as jr


def test_estimate_is_unbiased_for_a_linear_loss():
    """For L(θ) = a·θ each finite difference is exactly a·u, and E[d (a·u) u] = a on the sphere."""
    a = jnp.array([1.0, -2.0, 0.5, 3.0])
    theta = {"w": jnp.zeros(4), "frozen": jnp.ones(2)}
    mask = {"w": True, "frozen": False}
    (loss, aux), g = jr.train.zo_gradient(
        lambda t: (t["w"] @ a, "aux"), theta, jax.random.key(0), queries=20000, smoothing=0.1, mask=mask
    )
    assert float(loss) == 0.0 and aux == "aux"
    np.testing.assert_allclose(g["w"], a, atol=0.12)
    np.testing.assert_array_equal(g["frozen"], 0.0)
    (_, _), g = jr.train.zo_gradient(
        lambda t: (t["w"] @ a, None),
        theta,
        jax.random.key(0),
        queries=20000,
        directions="gaussian",
        mask=mask,
    )
    np.testing.assert_allclose(g["w"], a, atol=0.12)


def test_estimate_has_clearly_positive_cosine_with_the_true_gradient(tiny_model):
    model = tiny_model
    program = jr.reprogram(model, input=additive())
    theta = program.init(jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (32, 8, 8, 3))
    y = jnp.arange(32) % 7

    def loss(theta):
        logits = program.apply(theta, model.params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), None

    true = jax.jit(jax.grad(lambda t: loss(t)[0]))(theta)["input"]["delta"].ravel()
    (_, _), est = jax.jit(lambda t, k: jr.train.zo_gradient(loss, t, k, queries=64, smoothing=1e-3))(
        theta, jax.random.key(3)
    )
    est = est["input"]["delta"].ravel()
    cosine = float(est @ true / (jnp.linalg.norm(est) * jnp.linalg.norm(true)))
    # d = 192, q = 64: a sphere estimate's expected cosine is about sqrt(q / d) ≈ 0.58
    assert cosine > 0.3, cosine


def test_zo_gradient_validates_its_arguments():
    f = lambda t: (jnp.sum(t), None)  # noqa: E731
    with pytest.raises(ValueError, match="queries must be an int >= 1"):
        jr.train.zo_gradient(f, jnp.ones(2), jax.random.key(0), queries=0)
    with pytest.raises(ValueError, match="directions must be"):
        jr.train.zo_gradient(f, jnp.ones(2), jax.random.key(0), directions="cube")
    with pytest.raises(ValueError, match="no trainable leaves"):
        jr.train.zo_gradient(f, jnp.ones(2), jax.random.key(0), mask=False)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x.reshape(len(x), -1)))
        return nn.Dense(5)(x)


@pytest.fixture(scope="module")
def digits_task():
    """A frozen MLP trained on digits 0-4, to be reprogrammed (black-box) to digits 5-9."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target
    src, tgt = y < 5, y >= 5
    module = MLP()
    spec = jr.ImageSpec(size=8, channels=1, mean=0.5, std=0.5, num_classes=5, name="digits0-4-mlp")
    params = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    tx = optax.adam(1e-2)
    xs, ys = spec.normalize(jnp.asarray(x[src])), jnp.asarray(y[src])

    @jax.jit
    def step(params, opt):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(module.apply(p, xs), ys).mean()  # noqa: E731
        g = jax.grad(loss)(params)
        updates, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, updates), opt

    opt = tx.init(params)
    for _ in range(150):
        params, opt = step(params, opt)
    assert float(jnp.mean(jnp.argmax(module.apply(params, xs), -1) == ys)) > 0.95  # a real source model
    model = jr.from_linen(module, params, spec)
    xt, yt = x[tgt], (y[tgt] - 5).astype(np.int32)
    train = jr.data.from_arrays(xt[:600], yt[:600], batch_size=100, shuffle_seed=0)
    held_out = jr.data.from_arrays(xt[600:], yt[600:], batch_size=300)
    return model, train, held_out


def test_bar_lowers_the_loss_on_digits_within_its_query_budget(digits_task):
    model, train, held_out = digits_task
    program = jr.reprogram(model, input=additive(shape=(8, 8, 1)))
    key = jax.random.key(0)
    theta0 = program.init(jax.random.split(key)[0])
    loss0, _ = jr.train.evaluate(program, model, theta0, held_out)
    per_step = (16 + 1) * 100  # (q + 1) queries of a batch of 100
    zo = jr.train.ZerothOrder(queries=16, smoothing=0.01, budget=22 * per_step)
    theta, history = jr.train.fit(
        program, model, train, epochs=5, key=key, gradient=zo, learning_rate=0.1, eval_data=held_out
    )
    assert history[-1]["eval_loss"] < 0.9 * loss0, (loss0, jr.train.metric(history, "eval_loss"))
    # 6 steps per epoch: the budget allows 22 steps, so training stops inside epoch 4
    assert [h["queries"] for h in history] == [6 * per_step, 12 * per_step, 18 * per_step, 22 * per_step]
    assert "query budget" in history[-1]["stopped"] and "stopped" not in history[-2]
    chex.assert_tree_all_finite(theta)


# ------------------------------------------------------------------ SPSA-GC (BlackVIP)


@pytest.mark.parametrize("directions", ["rademacher", "segmented"])
def test_spsa_estimate_is_unbiased_for_a_linear_loss(directions):
    """For L(θ) = a·θ each central difference is exactly a·Δ, and E[(a·Δ) Δ⁻¹] = a."""
    a = jnp.array([1.0, -2.0, 0.5, 3.0])
    theta = {"w": jnp.zeros(4), "frozen": jnp.ones(2)}
    mask = {"w": True, "frozen": False}
    (loss, aux), g = jr.train.spsa_gradient(
        lambda t: (t["w"] @ a, "aux"),
        theta,
        jax.random.key(0),
        queries=20000,
        directions=directions,
        mask=mask,
    )
    assert float(loss) == 0.0 and aux == "aux"
    np.testing.assert_allclose(g["w"], a, atol=0.15)
    np.testing.assert_array_equal(g["frozen"], 0.0)


def test_spsa_estimate_is_taken_at_the_look_ahead_point():
    """L = |θ|²/2 has gradient θ: the estimate at θ + shift is θ + shift (exact for a quadratic,
    the central difference cancels the curvature), while loss and aux stay at θ."""
    theta = {"w": jnp.array([1.0, -1.0, 2.0])}
    shift = {"w": jnp.array([0.5, 0.5, -1.0])}
    (loss, aux), g = jr.train.spsa_gradient(
        lambda t: (0.5 * jnp.sum(t["w"] ** 2), t["w"]), theta, jax.random.key(1), queries=4000, shift=shift
    )
    np.testing.assert_allclose(loss, 3.0)
    np.testing.assert_array_equal(aux, theta["w"])
    np.testing.assert_allclose(g["w"], theta["w"] + shift["w"], atol=0.15)


def test_spsa_gc_step_follows_the_paper_recurrence(tiny_model):
    """Two steps of make_step equal m₁ = −a₀ĝ(θ₀), θ₁ = θ₀ + m₁; m₂ = βm₁ − a₁ĝ(θ₁ + βm₁), θ₂ = θ₁ + m₂,
    with c_i = c/(i+1)^γ and ĝ from spsa_gradient under the step's keys; and K = 2 candidates
    vmapped equal each run alone."""
    model = tiny_model
    program = jr.reprogram(model, input=additive())
    zo = jr.train.ZerothOrder(
        queries=3, smoothing=0.02, estimator="spsa_gc", momentum=0.8, smoothing_decay=0.2
    )
    gain = jr.train.spsa_gain(0.05)
    init, step = make = jr.train.make_step(program, optax.sgd(gain), gradient=zo)
    x = jax.random.uniform(jax.random.key(2), (8, 8, 8, 3))
    y = jnp.arange(8) % 7
    key = jax.random.key(3)
    theta0 = program.init(jax.random.key(1))

    def objective(t):
        logits = program.apply(t, model.params, x)
        return jr.train.cross_entropy(logits, y).mean() + program.penalty(t), None

    def ghat(t, m, i):
        _, zo_key = jax.random.split(jax.random.fold_in(key, i))
        shift = jax.tree.map(lambda v: 0.8 * v, m)
        return jr.train.spsa_gradient(objective, t, zo_key, queries=3, smoothing=0.02 / (i + 1.0) ** 0.2,
                                      shift=shift)[1]  # fmt: skip

    m = jax.tree.map(jnp.zeros_like, theta0)
    want = [theta0]
    for i in range(2):
        m = jax.tree.map(lambda m, g: 0.8 * m - gain(i) * g, m, ghat(want[-1], m, i))
        want.append(jax.tree.map(jnp.add, want[-1], m))
    state = init(theta0)
    for _ in range(2):
        state, _ = jax.jit(step)(state, model.params, (x, y), key)
    chex.assert_trees_all_close(state.theta, want[-1], rtol=1e-4, atol=2e-5)
    chex.assert_trees_all_close(state.opt_state.momentum, m, rtol=1e-4, atol=2e-5)
    del make
    init_k, step_k = jr.train.make_step(program, optax.sgd(gain), gradient=zo, candidates=True)
    thetas = jax.tree.map(lambda a, b: jnp.stack([a, b]), theta0, program.init(jax.random.key(9)))
    states = init_k(thetas)
    for _ in range(2):
        states, _ = jax.jit(step_k)(states, model.params, (x, y), key)
    chex.assert_trees_all_close(jr.candidates.select(states.theta, 0), want[-1], rtol=1e-4, atol=2e-5)


def test_spsa_gc_lowers_the_loss_on_digits_and_counts_2q_plus_1_queries(digits_task):
    model, train, held_out = digits_task
    program = jr.reprogram(model, input=additive(shape=(8, 8, 1)))
    key = jax.random.key(0)
    theta0 = program.init(jax.random.split(key, 4)[0])
    loss0, _ = jr.train.evaluate(program, model, theta0, held_out)
    per_step = (2 * 8 + 1) * 100  # 2q perturbed evaluations + one at θ, a batch of 100
    zo = jr.train.ZerothOrder(queries=8, smoothing=0.01, estimator="spsa_gc", budget=22 * per_step)
    assert zo.evaluations == 17
    theta, history = jr.train.fit(
        program, model, train, epochs=5, key=key, gradient=zo, learning_rate=0.01, eval_data=held_out
    )
    assert history[-1]["eval_loss"] < 0.9 * loss0, (loss0, jr.train.metric(history, "eval_loss"))
    assert [h["queries"] for h in history] == [6 * per_step, 12 * per_step, 18 * per_step, 22 * per_step]
    assert "query budget" in history[-1]["stopped"]
    np.testing.assert_allclose(history[0]["lr"], 0.01 / (6 + 1.0) ** 0.4, rtol=1e-5)  # a_5 (a, A, α)
    chex.assert_tree_all_finite(theta)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (dict(estimator="adam"), "estimator must be 'bar' or 'spsa_gc'"),
        (dict(estimator="spsa_gc", directions="sphere"), "directions must be 'rademacher' or 'segmented'"),
        (dict(directions="rademacher"), "directions must be 'sphere' or 'gaussian'"),
        (dict(momentum=0.9), "momentum is SPSA-GC's"),
        (dict(estimator="spsa_gc", momentum=1.0), r"momentum must be a number in \[0, 1\)"),
        (dict(estimator="spsa_gc", momentum=float("nan")), r"momentum must be a number in \[0, 1\)"),
        (dict(estimator="spsa_gc", smoothing_decay=-0.1), "smoothing_decay must be a finite number >= 0"),
        (dict(estimator="spsa_gc", smoothing=0.0), "smoothing must be a finite number > 0"),
        (
            dict(estimator="spsa_gc", queries=5, budget=10),
            r"budget=10 is below one step.*11 queries.*2q \+ 1",
        ),
        (dict(queries=5, budget=5), r"budget=5 is below one step.*6 queries.*q \+ 1"),
    ],
)
def test_zeroth_order_config_errors_name_the_field(tiny_model, config, match):
    program = jr.reprogram(tiny_model, input=additive())
    with pytest.raises(ValueError, match=match):
        jr.train.make_step(program, optax.sgd(0.1), gradient=jr.train.ZerothOrder(**config))


def test_fit_refuses_a_budget_below_one_step(tiny_model):
    """A batch of 16 at q = 2 costs 5 · 16 = 80 queries: a budget of 79 buys no step."""
    program = jr.reprogram(tiny_model, input=additive())
    rng = np.random.default_rng(0)
    data = jr.data.from_arrays(rng.uniform(size=(32, 8, 8, 3)).astype(np.float32), np.arange(32) % 7,
                               batch_size=16)  # fmt: skip
    zo = jr.train.ZerothOrder(queries=2, estimator="spsa_gc", budget=79)
    with pytest.raises(ValueError, match=r"budget=79 is below one training step.*costs 80 queries"):
        jr.train.fit(program, tiny_model, data, epochs=1, key=jax.random.key(0), gradient=zo)


def test_spsa_gain_and_spsa_gradient_validate_their_arguments():
    for bad in (dict(a=0.0), dict(offset=-1.0), dict(decay=float("inf"))):
        with pytest.raises(ValueError, match=f"spsa_gain: {next(iter(bad))} must be a finite number"):
            jr.train.spsa_gain(**bad)
    np.testing.assert_allclose(jr.train.spsa_gain(0.01)(0), 0.01 / 2.0**0.4, rtol=1e-6)
    f = lambda t: (jnp.sum(t), None)  # noqa: E731
    with pytest.raises(ValueError, match="directions must be 'rademacher' or 'segmented'"):
        jr.train.spsa_gradient(f, jnp.ones(2), jax.random.key(0), directions="sphere")
    with pytest.raises(ValueError, match="queries must be an int >= 1"):
        jr.train.spsa_gradient(f, jnp.ones(2), jax.random.key(0), queries=0, smoothing=jnp.float32(0.1))
