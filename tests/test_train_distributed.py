"""A run of two processes (issue #25 item 4): jax.distributed on two local CPU processes trains the same
prompt as one process with two devices on the same global batches, and writes one checkpoint."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import host_devices_env

from jaxreprog.train import distributed

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import jax
    from jaxreprog.train import distributed

    pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if n > 1:
        assert distributed.initialize(f"localhost:{port}", n, pid)
    import jax.numpy as jnp
    import optax
    from flax import linen as nn
    import jaxreprog as jr

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(nn.relu(nn.Conv(4, (3, 3))(x)).mean((1, 2)))

    net = Net()
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=5)
    model = jr.from_linen(net, net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))), spec)
    program = jr.reprogram(model, input=jr.input.pad(6), output=jr.output.ilm(5, 3))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 6, 6, 3)).astype(np.float32)
    y = (np.arange(32) % 3).astype(np.int32)
    data = jr.data.from_arrays(x, y, batch_size=8, shuffle_seed=0)
    theta, history = jr.train.fit(
        program, model, data, epochs=2, key=jax.random.key(1), optimizer=optax.adam(0.05),
        progress=False, checkpoint_dir=os.path.join(out, "checkpoint"),
    )
    assert jax.device_count() == 2 and jax.process_count() == n, (jax.device_count(), jax.process_count())
    if distributed.is_primary():
        flat = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(theta)])
        np.save(os.path.join(out, "theta.npy"), flat)
    print("DONE", jax.process_index(), history[-1]["loss"])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one_process_with_two_devices(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    alone = subprocess.run(
        [sys.executable, "-c", SCRIPT, "0", "1", "0", str(one)],
        capture_output=True,
        text=True,
        env=host_devices_env(2),
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(i), "2", port, str(two)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=host_devices_env(1),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "DONE" in out, err[-3000:]
    np.testing.assert_allclose(np.load(two / "theta.npy"), np.load(one / "theta.npy"), rtol=1e-5, atol=1e-6)
    steps = sorted(os.listdir(two / "checkpoint"))
    assert steps and all(s.isdigit() for s in steps), steps  # one checkpoint per epoch, written once


def test_initialize_arguments(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False  # one process: nothing to join
    with pytest.raises(ValueError, match="together; missing"):
        distributed.initialize("localhost:1234")
    with pytest.raises(ValueError, match="HOST:PORT"):
        distributed.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match=r"distributed: process_id must be an int in \[0, 1\], got 2"):
        distributed.initialize("localhost:1234", 2, 2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
        distributed.initialize()
