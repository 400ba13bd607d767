"""On 8 forced host devices (one subprocess): data-parallel fit equals fit on one device, and a sharded
frozen model (#25) on a 2 x 4 mesh gives the unsharded outputs, prompt gradients and training."""

import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import additive, host_devices_env

import jaxreprog as jr


def test_partial_batches_are_replicated_not_dropped():
    mesh = jr.train.data_mesh(jax.local_devices()[:1])
    batch = (np.zeros((3, 2), np.float32), np.zeros(3, np.int32))
    placed = jr.train.shard_batch(batch, mesh)
    np.testing.assert_array_equal(placed[0], batch[0])
    stacked = jr.train.shard_batch(jax.tree.map(lambda a: np.stack([a, a]), batch), mesh, axis=1)
    np.testing.assert_array_equal(stacked[1], np.zeros((2, 3)))
    params = jr.train.replicate({"w": jnp.ones(2)}, mesh)
    assert params["w"].sharding.is_fully_replicated
    with pytest.raises(ValueError, match="devices must not be empty"):
        jr.train.data_mesh([])


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])  # the tests folder
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    from conftest import TinyCNN, additive
    from test_train import argmax_map, toy_data
    import jaxreprog as jr
    from jaxreprog.models import gpt2

    assert jax.device_count() == 8, jax.devices()
    # data parallel: fit on the 8 devices (the default) equals fit on one
    module = TinyCNN()
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)
    model = jr.from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, *spec.shape))), spec)
    program = jr.reprogram(model, input=additive(), output=argmax_map())
    data = toy_data(n=40)  # batches of 16, 16 and a last one of 8: all split over 8 devices
    kwargs = dict(epochs=2, key=jax.random.key(0), candidates=2)
    one, h1 = jr.train.fit(program, model, data, devices=jax.devices()[:1], **kwargs)
    many, h8 = jr.train.fit(program, model, data, **kwargs)
    sharding = jr.train.shard_batch(next(iter(data)), jr.train.data_mesh())[0].sharding
    assert len(sharding.device_set) == 8 and not sharding.is_fully_replicated, sharding
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jr.train.metric(h1, "loss"), jr.train.metric(h8, "loss"), rtol=1e-5)
    grouped, _ = jr.train.fit(program, model, data, steps_per_call=2, **kwargs)  # a stack split on axis 1
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(grouped)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # a sharded frozen model on a 2 x 4 mesh: outputs, gradients and training equal one device's
    config = gpt2.GPT2Config(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, max_positions=32)
    model = gpt2.from_config(config, jax.random.key(0))
    mesh = jr.train.mesh(data=2, model=4)
    sharded = jr.shard(model, mesh)
    tp = jr.shard(model, mesh, rules=[("*/mlp/*/kernel", P(None, "model")), ("*wte*", P("model", None))])
    total = sum(a.nbytes for a in jax.tree.leaves(model.params))
    for m in (sharded, tp):
        here = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(m.params))
        assert here <= total / 4 * 1.1 or m is tp, (here, total)
    program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(4),
                           output=jr.output.verbalizer([[5], [9]], num_source=128))
    theta = program.init(jax.random.key(1))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 128, (8, 12)).astype(np.int32)
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    y = np.arange(8) % 2

    def loss(theta, params):
        return jr.train.cross_entropy(program.apply(theta, params, x), y).mean()

    want = jax.jit(jax.value_and_grad(loss))(theta, model.params)
    for m in (sharded, tp):
        got = jax.jit(jax.value_and_grad(loss))(theta, m.params)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    data = jr.data.from_arrays(x, y, batch_size=4)
    kwargs = dict(epochs=2, key=jax.random.key(0), optimizer=optax.adam(1e-2), progress=False)
    one, h1 = jr.train.fit(program, model, data, devices=jax.devices()[:1], **kwargs)
    many, h8 = jr.train.fit(program, sharded, data, **kwargs)
    # theta comes back whole (left to XLA it came back split over "model", and fit compiled its step twice)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(many)), jax.tree.leaves(many)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    accuracy = [jr.train.evaluate(program, m, t, data)[1] for m, t in ((sharded, many), (model, one))]
    assert accuracy[0] == accuracy[1], accuracy
    # memory_plan from shapes alone: the 2 x 4 mesh holds a quarter of the parameters per device
    shapes = jax.eval_shape(lambda: model.params)
    alone = jr.train.memory_plan(program, model._replace(params=shapes), x)
    split = jr.train.memory_plan(program, model._replace(params=shapes), x, mesh=mesh)
    assert split.params <= alone.params / 4 * 1.1 and split.arguments < alone.arguments, (alone, split)
    print("EQUAL")
    """
)


def _run_on_host_devices(script: str, count: int, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=host_devices_env(count),
        timeout=600,
    )
    assert result.returncode == 0 and "EQUAL" in result.stdout, result.stdout + result.stderr[-3000:]


def test_eight_devices_data_parallel_and_a_sharded_model_train_as_one_device():
    """One subprocess (8 forced devices) for both checks: each start compiles the step anew."""
    _run_on_host_devices(SCRIPT, 8, str(pathlib.Path(__file__).parent))


def test_mesh_and_shard_errors(tiny_model):
    with pytest.raises(ValueError, match="data=2 x model=2 = 4, but there are 1 devices"):
        jr.train.mesh(data=2, model=2)
    with pytest.raises(ValueError, match="mesh: model must be an int >= 1, got 0"):
        jr.train.mesh(model=0)
    with pytest.raises(ValueError, match="a 'model' axis"):
        jr.shard(tiny_model, jr.train.data_mesh())
    mesh = jr.train.mesh(model=1)
    with pytest.raises(ValueError, match=r"names 'tensor', not an axis of the mesh"):
        jr.shard(tiny_model, mesh, rules=[("*kernel", ("tensor",))])
    with pytest.raises(ValueError, match=r"params/conv/bias has shape \(4,\); the spec"):
        jr.shard(tiny_model, mesh, rules=[("*/bias", (None, "model"))])
    placed = jr.shard(tiny_model, mesh)  # a 1-device model axis: everything fits
    assert jr.train.sharding.mesh_of(placed.params) is mesh
    with pytest.raises(ValueError, match="devices= cannot be given too"):
        jr.train.fit(
            jr.reprogram(placed, input=additive()),
            placed,
            [(np.zeros((2, 8, 8, 3), np.float32), np.zeros(2, int))],
            epochs=1,
            key=jax.random.key(0),
            devices=jax.local_devices(),
        )
