"""Checkpoints: bit-identical resumes, foreign models refused, truncation detected, atomic saves."""

import dataclasses
import json
import unittest.mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import additive, linear_alignment
from test_train import argmax_map, toy_data

import jaxreprog as jr


@pytest.fixture
def model(tiny_model):
    return tiny_model._replace(spec=dataclasses.replace(tiny_model.spec, name="tiny-0"))


class InterruptedAt:
    """Data whose epoch ``stop`` is never delivered: the process 'dies' there."""

    def __init__(self, data, stop):
        self.data, self.stop = data, stop

    def __len__(self):
        return len(self.data)

    def epoch(self, e):
        if e == self.stop:
            raise KeyboardInterrupt(f"killed before epoch {e + 1}")
        return self.data.epoch(e)


def test_resume_continues_bit_identically_and_refuses_another_model(tmp_path, model):
    program = jr.reprogram(model, input=additive(), output=argmax_map())
    data, key = toy_data(), jax.random.key(0)
    straight, history = jr.train.fit(program, model, data, epochs=3, key=key)

    with pytest.raises(KeyboardInterrupt):
        jr.train.fit(program, model, InterruptedAt(data, 2), epochs=3, key=key, checkpoint_dir=tmp_path)
    assert jr.train.latest_step(tmp_path) == 2
    resumed, resumed_history = jr.train.fit(program, model, data, epochs=3, key=key, checkpoint_dir=tmp_path)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)  # bit-identical, alignment state included
    assert [h["epoch"] for h in resumed_history] == [1, 2, 3]
    np.testing.assert_array_equal(jr.train.metric(resumed_history, "loss"), jr.train.metric(history, "loss"))

    other = model._replace(params=jax.tree.map(lambda p: p + 1e-3, model.params))
    with pytest.raises(ValueError, match=r"written for base model 'tiny-0'.*same frozen model"):
        jr.train.fit(program, other, data, epochs=4, key=key, checkpoint_dir=tmp_path)
    # another schedule, seed or refit would not continue the saved run: refused, naming what differs
    changes = [({"epochs": 4}, "epochs: saved 3, now 4"), ({"key": jax.random.key(1)}, "seed: saved"),
               ({"refit_pass": "fresh"}, "refit_pass: saved 'training', now 'fresh'")]  # fmt: skip
    for change, match in changes:
        with pytest.raises(ValueError, match=f"other settings \\({match}.*new checkpoint_dir"):
            jr.train.fit(program, model, data, **{"epochs": 3, "key": key, **change}, checkpoint_dir=tmp_path)


def test_rerun_after_a_query_budget_stop_returns_the_same_run(tmp_path, model):
    """A run that BAR's budget stopped (inside epoch 2) and its rerun from the checkpoint
    directory end alike: the rerun trains no empty epoch, refits nothing, and its history
    (restored from the checkpoint) still says why training stopped."""
    program = jr.reprogram(model, input=additive(), output=jr.output.ilm(7, 3))
    data, key = toy_data(), jax.random.key(0)
    zo = jr.train.ZerothOrder(queries=4, smoothing=0.01, budget=48 + 4 * (4 + 1) * 16)  # map pass + 4 steps
    runs = [
        jr.train.fit(program, model, data, epochs=3, key=key, gradient=zo, checkpoint_dir=tmp_path)
        for _ in range(2)
    ]
    (first, h1), (again, h2) = runs
    assert [h["epoch"] for h in h2] == [h["epoch"] for h in h1] == [1, 2]
    assert "query budget" in h2[-1]["stopped"] and h2[-1]["stopped"] == h1[-1]["stopped"]
    np.testing.assert_array_equal(jr.train.metric(h2, "loss"), jr.train.metric(h1, "loss"))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    assert jr.train.latest_step(tmp_path) == 2


def _state():
    return {"theta": {"delta": jnp.arange(300.0)}, "step": jnp.int32(7)}


def test_metadata_records_model_program_config(tmp_path, model):
    program = jr.reprogram(model, input=additive(), output=argmax_map())
    jr.train.fit(program, model, toy_data(n=16), epochs=1, key=jax.random.key(4), checkpoint_dir=tmp_path)
    theta = program.init(jax.random.key(0))
    like = {"theta": theta, "opt_state": None, "step": jnp.int32(0)}
    with pytest.raises(jr.train.CheckpointError, match="another program or optimiser"):
        jr.train.restore(tmp_path, like)  # wrong structure: never a partial load
    meta = _metadata(tmp_path)
    assert meta["model_name"] == "tiny-0"
    assert meta["params_sha256"] == jr.train.fingerprint(model.params)
    assert '"input": "InputTransform conftest.additive.<locals>.apply' in meta["config"]["program"]
    assert "Alignment" in meta["config"]["program"] and "alignment=statistical" in meta["config"]["program"]
    assert (
        meta["config"]["epochs"] == 1
        and meta["seed"] == np.asarray(jax.random.key_data(jax.random.key(4))).tolist()
    )


def _metadata(directory):
    with ocp.CheckpointManager(directory.absolute()) as m:
        return m.restore(m.latest_step(), args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))[
            "metadata"
        ]


def test_truncated_or_corrupted_checkpoint_is_an_error(tmp_path):
    state = _state()
    jr.train.save(tmp_path, 1, state, {"params_sha256": "x"})
    restored, _ = jr.train.restore(tmp_path, state, params_sha256="x")
    np.testing.assert_array_equal(restored["theta"]["delta"], state["theta"]["delta"])
    chunks = [p for p in (tmp_path / "1" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert chunks
    for chunk in chunks:  # orbax may keep two copies of a chunk: cut them all
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with pytest.raises(jr.train.CheckpointError, match="truncated or corrupted"):
        jr.train.restore(tmp_path, state)
    for chunk in chunks:
        chunk.unlink()
    with pytest.raises(jr.train.CheckpointError, match="truncated or corrupted"):
        jr.train.restore(tmp_path, state)
    with pytest.raises(jr.train.CheckpointError, match="no complete checkpoint"):
        jr.train.restore(tmp_path / "empty", state)


def test_files_are_checked_before_orbax_reads_and_without_the_list_orbax_fails_clearly(tmp_path):
    state = _state()
    jr.train.save(tmp_path, 1, state, {})
    listed = tmp_path / "1" / jr.train.checkpoint.FILES
    files = json.loads(listed.read_text())
    assert "_METADATA" in files and any(name.startswith(("d/", "ocdbt")) for name in files)
    (tmp_path / "1" / "state" / "_METADATA").write_text("{}")  # any one file changed
    with pytest.raises(jr.train.CheckpointError, match="its files differ from those saved"):
        jr.train.restore(tmp_path, state)
    listed.unlink()  # a checkpoint without the list (interrupted after the commit): orbax's own error
    with pytest.raises(jr.train.CheckpointError, match="truncated or corrupted"):
        jr.train.restore(tmp_path, state)


def test_corrupted_bytes_fail_the_checksum(tmp_path):
    state = _state()
    jr.train.save(tmp_path, 1, state, {})
    with (
        unittest.mock.patch.object(jr.train.checkpoint, "_content_sha256", return_value="0" * 64),
        pytest.raises(jr.train.CheckpointError, match="does not match the checksum"),
    ):
        jr.train.restore(tmp_path, state)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    state = _state()
    jr.train.save(tmp_path, 1, state, {})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    handler = ocp.handlers.JsonCheckpointHandler
    with (
        unittest.mock.patch.object(handler, "save", killed),
        unittest.mock.patch.object(handler, "async_save", killed),
        pytest.raises(KeyboardInterrupt),
    ):
        jr.train.save(tmp_path, 2, {**state, "step": jnp.int32(8)}, {})
    assert jr.train.latest_step(tmp_path) == 1
    restored, meta = jr.train.restore(tmp_path, state)
    assert int(restored["step"]) == 7 and meta["step"] == 1
    jr.train.save(tmp_path, 2, {**state, "step": jnp.int32(8)}, {})  # a retry succeeds
    assert int(jr.train.restore(tmp_path, state)[0]["step"]) == 8


def test_resume_refuses_a_foreign_run(tmp_path, model):
    """Another program, theta structure or optimiser in the same directory is refused, naming it."""
    data, key = toy_data(n=16), jax.random.key(0)
    program = jr.reprogram(model, input=additive(), output=argmax_map())

    def fit(program, tx):
        return jr.train.fit(program, model, data, epochs=1, key=key, checkpoint_dir=tmp_path, optimizer=tx)

    fit(program, optax.adam(0.1))
    other_output = jr.reprogram(model, input=additive(), output=linear_alignment(7, 3))
    with pytest.raises(ValueError, match=r"other settings \(program: saved .*argmax_map.*linear_alignment"):
        fit(other_output, optax.adam(0.1))
    other_shape = jr.reprogram(model, input=additive(shape=(8, 8, 1)), output=argmax_map())
    with pytest.raises(ValueError, match=r"theta: saved"):
        fit(other_shape, optax.adam(0.1))
    changed = r"other settings \(optimizer: saved '-0.1 -0.1', now '-1e-06 -1e-06'\)"
    with pytest.raises(ValueError, match=changed):
        fit(program, optax.adam(1e-6))
    _, history = fit(program, optax.adam(0.1))  # the same settings resume: nothing left to train
    assert len(history) == 1


def test_edited_metadata_stray_folders_and_templateless_restore(tmp_path, model):
    program = jr.reprogram(model, input=additive(), output=argmax_map())
    data, key = toy_data(n=16), jax.random.key(0)
    theta, _ = jr.train.fit(program, model, data, epochs=1, key=key, checkpoint_dir=tmp_path)
    state, meta = jr.train.restore(tmp_path)  # no template: read as saved, not "corrupted"
    chex.assert_trees_all_close(state["theta"], theta)
    assert meta["step"] == 1
    (tmp_path / "7").mkdir()  # a stray empty step folder does not hide the real latest
    assert jr.train.latest_step(tmp_path) == 1
    _, history = jr.train.fit(program, model, data, epochs=1, key=key, checkpoint_dir=tmp_path)
    assert len(history) == 1  # resumed from step 1, not blocked by 7/
    path = tmp_path / "1" / "metadata" / "metadata"
    path.write_text(path.read_text().replace('"epochs": 1', '"epochs": 5'))
    with pytest.raises(jr.train.CheckpointError, match="metadata was edited"):
        jr.train.restore(tmp_path)
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        jr.train.fit(program, model, data, epochs=1, key=key, checkpoint_dir=a_file)
