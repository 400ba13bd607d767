"""BAR black-box reprogramming: the estimator's maths, and training on real data (digits)."""

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
