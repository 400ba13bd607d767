"""What ``jr.train.fit(progress=True)`` tells on stderr: the phase (map / train / refit / eval)
and epoch as the bar's description, each candidate's loss by name, and a one-line summary."""

import re

import jax
import numpy as np
import pytest

import jaxreprog as jr


@pytest.fixture(scope="module")
def setup(tiny_model):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, 6, 6, 3)).astype(np.float32)
    y = np.arange(24) % 3
    train = jr.data.from_arrays(x, y, batch_size=8, shuffle_seed=0)
    val = jr.data.from_arrays(x[:8], y[:8], batch_size=8)
    program = jr.reprogram(
        tiny_model,
        input=jr.input.pad(target_size=6),
        output=jr.output.per_candidate([jr.output.rlm(7, 3), jr.output.ilm(7, 3)]),
    )
    theta0 = jr.candidates.init(program, jax.random.split(jax.random.key(0), 2))
    theta0["output"]["which"] = np.eye(2, dtype=np.float32)
    return tiny_model, program, theta0, train, val


def _fit(setup, **kw):
    model, program, theta0, train, val = setup
    args = {"epochs": 2, "key": jax.random.key(1), "candidates": theta0, "eval_data": val, "log_every": 1}
    return jr.train.fit(program, model, train, **{**args, **kw})


def test_the_bar_names_phases_and_candidates_and_fit_ends_with_a_summary(setup, capsys):
    _, history = _fit(setup, progress=True, candidate_names=["RLM", "ILM"])
    err = capsys.readouterr().err
    # every phase shows as the bar's description while it runs (never a frozen "train")
    for phase in ("map", "train 1/2", "refit 1/2", "eval 1/2", "train 2/2", "refit 2/2", "eval 2/2"):
        assert f"{phase}:" in err, phase
    assert err.index("map:") < err.index("train 1/2:") < err.index("refit 1/2:") < err.index("eval 1/2:")
    # each candidate's loss, by name
    assert re.search(r"loss RLM \d[\d.e+-]* ILM \d[\d.e+-]*", err)
    # one summary line, last: epochs, steps, seconds, the final losses and validation accuracies
    summary = err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"fit: 2 epochs, 6 steps, [\d.]+ s; final loss RLM (\S+) ILM (\S+); val acc RLM (\S+)% ILM (\S+)%",
        summary,
    )
    assert match, summary
    np.testing.assert_allclose([float(v) for v in match.groups()[:2]], history[-1]["loss"], rtol=5e-3)
    np.testing.assert_allclose(
        [float(v) / 100 for v in match.groups()[2:]], history[-1]["eval_acc"], atol=5e-4
    )


def test_candidates_without_names_are_numbered_and_one_prompt_has_one_loss(setup, tiny_model, capsys):
    _fit(setup, progress=True, epochs=1)
    err = capsys.readouterr().err.replace("\r", "\n")  # the bar redraws with carriage returns
    assert re.search(r"loss #0 \S+ #1 \S+", err)
    assert re.search(r"^fit: 1 epoch, 3 steps, .*final loss #0 \S+ #1 \S+", err, re.M)

    _, _, _, train, _ = setup
    program = jr.reprogram(tiny_model, input=jr.input.pad(target_size=6), output=jr.output.rlm(7, 3))
    jr.train.fit(program, tiny_model, train, epochs=1, key=jax.random.key(0), progress=True, log_every=1)
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "refit" not in err and "eval" not in err  # RLM never refits; no eval_data
    assert re.search(r"^fit: 1 epoch, 3 steps, [\d.]+ s; final loss [\d.]+$", err, re.M)


def test_no_progress_writes_nothing(setup, tiny_model, capsys):
    train = setup[3]
    program = jr.reprogram(tiny_model, input=jr.input.pad(target_size=6), output=jr.output.rlm(7, 3))
    jr.train.fit(program, tiny_model, train, epochs=1, key=jax.random.key(0), progress=False, log_every=1)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("names", "error", "message"),
    [
        (["RLM"], ValueError, "candidate_names has 1 names for 2 candidate"),
        ("RL", TypeError, "candidate_names must be a sequence of str"),
        (["RLM", 3], TypeError, "candidate_names must be a sequence of str"),
    ],
)
def test_wrong_candidate_names_are_one_clear_error(setup, names, error, message):
    with pytest.raises(error, match=message):
        _fit(setup, candidate_names=names)
