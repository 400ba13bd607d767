"""A run of two processes (issue #25 item 4): jax.distributed on two local CPU processes of two devices
each trains the same prompts as one process with four devices on the same global batches: data parallel
(each process reads only its half of every batch; one checkpoint written), and a jr.shard model whose
"model" axis spans the two processes; a bad label in one process's rows raises in both."""

import json
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
    import json, os, sys
    import numpy as np
    import jax
    from jaxreprog.train import distributed

    pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if n > 1:
        assert distributed.initialize(f"localhost:{port}", n, pid)
    import jax.numpy as jnp
    import optax
    import pytest
    from flax import linen as nn
    import jaxreprog as jr
    from jaxreprog.data import pipeline

    reads = []  # the rows each batch read took: what this process read and preprocessed
    take = pipeline._Memory.take
    pipeline._Memory.take = lambda self, index: (reads.append(len(index)), take(self, index))[1]

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
    assert jax.device_count() == 4 and jax.process_count() == n, (jax.device_count(), jax.process_count())
    thetas, rows = {}, {}

    def run(name, program, frozen, data, **kw):
        reads.clear()
        theta, _ = jr.train.fit(
            program, frozen, data, epochs=1, key=jax.random.key(1), optimizer=optax.adam(0.05),
            progress=False, **kw,
        )
        thetas[name] = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(theta)])
        rows[name] = list(reads)

    # data parallel over 4 devices, ILM's mapping pass
    run("data", program, model, data, checkpoint_dir=os.path.join(out, "checkpoint"))
    # batches placed from this process's rows, or from all of them: a stack of two (fit's
    # steps_per_call), a last batch of 4 (split) and of 2 (the 4-device axis replicates it)
    data_mesh, P = jr.train.data_mesh(), jax.sharding.PartitionSpec
    for size, axis, spec in ((8, 1, P(None, "data")), (4, 0, P("data")), (2, 0, P())):
        batch = np.arange(2 * size * 3).reshape(2, size, 3) if axis else np.arange(size * 3).reshape(size, 3)
        held = jr.train.local_rows(size, data_mesh)
        rows[f"batch of {size}"] = [held.start, held.stop]
        for part in (batch[:, held] if axis else batch[held], batch):
            placed = jr.train.shard_batch(part, data_mesh, axis=axis, size=size)
            assert placed.shape == batch.shape and placed.sharding.spec == spec, placed.sharding
            for piece in placed.addressable_shards:
                np.testing.assert_array_equal(piece.data, batch[piece.index])
    # data=2 x model=2, the model axis across the processes: [[p0 d0, p1 d0], [p0 d1, p1 d1]]
    mesh = jr.train.mesh(data=2, model=2, devices=np.asarray(jax.devices()).reshape(2, 2).T.ravel())
    sharded = jr.shard(model, mesh)
    kernel = sharded.params["params"]["Conv_0"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "model"), kernel.sharding
    assert kernel.is_fully_addressable == (n == 1)
    dense = jr.reprogram(model, input=jr.input.pad(6), output=jr.output.linear(5, 3))  # no mapping pass
    run("model", dense, sharded, data)
    if n > 1:
        odd = jr.data.from_arrays(x, y, batch_size=3)
        with pytest.raises(ValueError, match=f"batch_size=3 does not divide over the {n} processes"):
            jr.train.evaluate(program, model, program.init(jax.random.key(0)), odd)
    # a bad label in process 1's rows of the first batch: every process raises the same error
    bad = jr.data.from_arrays(x, np.where(np.arange(32) == 5, 7, y), batch_size=8)
    with pytest.raises(ValueError, match=r"in \\[0, 3\\) .* got labels in \\[0, 7\\] in batch 1 of epoch 1"):
        jr.train.evaluate(program, model, program.init(jax.random.key(0)), bad)
    with open(os.path.join(out, f"rows{pid}.json"), "w") as f:
        json.dump(rows, f)
    if distributed.is_primary():
        np.savez(os.path.join(out, "theta.npz"), **thetas)
    print("DONE", jax.process_index())
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one_process_with_four_devices(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    alone = subprocess.run(
        [sys.executable, "-c", SCRIPT, "0", "1", "0", str(one)],
        capture_output=True,
        text=True,
        env=host_devices_env(4),
    )
    assert alone.returncode == 0, alone.stderr[-3000:]
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(i), "2", port, str(two)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=host_devices_env(2),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "DONE" in out, err[-3000:]
    want, got = np.load(one / "theta.npz"), np.load(two / "theta.npz")
    for name in ("data", "model"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    steps = sorted(os.listdir(two / "checkpoint"))
    assert steps and all(s.isdigit() for s in steps), steps  # one checkpoint per epoch, written once
    # Rows read per batch (the first read: fit's look at the first batch's shapes). One process reads
    # whole batches; two over a 4-device "data" axis read half of each, but all of a batch the axis
    # does not divide (replicated); with the "model" axis across them, each process's devices hold
    # every row, so each reads all of them.
    alone = json.loads((one / "rows0.json").read_text())
    assert alone["data"] == [8] * 9 and alone["model"] == [8] * 5, alone  # ILM's mapping pass, the epoch
    assert all(alone[f"batch of {n}"] == [0, n] for n in (8, 4, 2)), alone
    for pid in (0, 1):
        rows = json.loads((two / f"rows{pid}.json").read_text())
        assert rows["data"] == [4] * 9 and rows["model"] == alone["model"], (pid, rows)
        for n in (8, 4):
            assert rows[f"batch of {n}"] == [pid * n // 2, (pid + 1) * n // 2], (pid, rows)
        assert rows["batch of 2"] == [0, 2], (pid, rows)


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
