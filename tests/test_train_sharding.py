"""Data parallelism: fit on 4 (forced host) devices equals fit on one device."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreprog as jr

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    from conftest import TinyCNN, additive, linear_alignment
    from test_train import argmax_map, toy_data
    import jaxreprog as jr

    assert jax.local_device_count() == 4, jax.local_devices()
    module = TinyCNN()
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7)
    model = jr.from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, *spec.shape))), spec)
    program = jr.reprogram(model, input=additive(), output=argmax_map())
    data = toy_data(n=40)  # batches of 16, 16 and a last one of 8: all split over 4 devices
    kwargs = dict(epochs=2, key=jax.random.key(0), candidates=2)
    one, h1 = jr.train.fit(program, model, data, devices=jax.local_devices()[:1], **kwargs)
    four, h4 = jr.train.fit(program, model, data, **kwargs)
    sharding = jr.train.shard_batch(next(iter(data)), jr.train.data_mesh())[0].sharding
    assert len(sharding.device_set) == 4 and not sharding.is_fully_replicated, sharding
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jr.train.metric(h1, "loss"), jr.train.metric(h4, "loss"), rtol=1e-5)
    grouped, _ = jr.train.fit(program, model, data, steps_per_call=2, **kwargs)  # a stack split on axis 1
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(grouped)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    print("EQUAL")
    """
)


def test_four_devices_equal_one():
    tests = str(pathlib.Path(__file__).parent)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=tests)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0 and "EQUAL" in result.stdout, result.stdout + result.stderr[-3000:]


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
