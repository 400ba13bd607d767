"""jr.train.fit: the jit step, schedules, statistical refits, candidates, precision, NaN stops."""

import dataclasses
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import additive, linear_alignment

import jaxreprog as jr
from jaxreprog.taxonomy import Format, OutputAlignment, Tags

S, T = 7, 3  # TinyCNN's source classes, the target task's classes


def argmax_map(schedule=jr.Refit.EVERY_EPOCH) -> jr.Alignment:
    """Toy statistical alignment: target t reads the source class most often top-1 on t.

    d[s, t] counts training samples of target t whose top-1 source class is s;
    ``w = one_hot(argmax_s d[:, t])`` and target logits are ``source_logits @ w``.
    """

    def stats_init():
        return jnp.zeros((S, T))

    def stats_update(d, logits, labels):
        return d + jax.nn.one_hot(jnp.argmax(logits, -1), S).T @ jax.nn.one_hot(labels, T)

    def refit_from_stats(state, d):
        return {"w": jax.nn.one_hot(jnp.argmax(d, 0), S).T}

    return jr.Alignment(
        init=lambda key: {"w": jnp.eye(S, T)},
        apply=lambda state, logits: logits @ state["w"],
        tags=Tags(format=Format.FIXED, alignment=OutputAlignment.STATISTICAL),
        trainable=False,
        stats_init=stats_init,
        stats_update=stats_update,
        refit_from_stats=refit_from_stats,
        schedule=schedule,
    )


@pytest.fixture(scope="module")
def model(tiny_model):
    """conftest's TinyCNN (7 source classes), named so checkpoints can record it."""
    return tiny_model._replace(spec=dataclasses.replace(tiny_model.spec, name="tiny"))


def toy_arrays(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 8, 8, 3)).astype(np.float32)
    y = np.digitize(x[..., 0].mean((1, 2)), [0.49, 0.51]).astype(np.int32)  # 3 classes from the red mean
    return x, y


def toy_data(n=48, seed=0, batch_size=16, shuffle=True):
    return jr.data.from_arrays(
        *toy_arrays(n, seed), batch_size=batch_size, shuffle_seed=seed if shuffle else None
    )


def ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ------------------------------------------------------------------------- schedules


def test_vr_multistep_by_hand():
    sched = jr.train.vr_multistep(0.01, 200)  # steps at 100 and 144, as the VR papers do
    got = [float(sched(t)) for t in (0, 99, 100, 143, 144, 199)]
    np.testing.assert_allclose(got, [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)
    with pytest.raises(ValueError, match="milestones"):
        jr.train.vr_multistep(0.01, 200, milestones=(50,))


def test_vr_adam_equals_adam_then_schedule():
    tx = jr.train.vr_adam(0.1, total_steps=4)
    ref = optax.adam(jr.train.vr_multistep(0.1, 4))
    p, s, r = jnp.ones(3), None, None
    s, r = tx.init(p), ref.init(p)
    for t in range(4):
        g = jnp.array([1.0, -2.0, 0.5]) * (t + 1)
        u, s = tx.update(g, s, p)
        v, r = ref.update(g, r, p)
        chex.assert_trees_all_close(u, v, rtol=1e-6)
    assert float(jr.train.hyperparams(s, "learning_rate")) == pytest.approx(0.1)


def test_set_hyperparams_needs_injection():
    state = optax.adam(1e-2).init(jnp.ones(2))
    with pytest.raises(ValueError, match="no injected hyperparameter 'learning_rate'"):
        jr.train.set_hyperparams(state, {"learning_rate": 0.1})


# ------------------------------------------------------------------------------ fit


def test_fit_lowers_the_loss_and_records_history(model):
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    data = toy_data()
    theta, history = jr.train.fit(
        program, model, data, epochs=4, key=jax.random.key(0), eval_data=data, learning_rate=0.05
    )
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    loss = jr.train.metric(history, "loss")
    assert loss[-1] < loss[0]
    assert set(history[0]) >= {"epoch", "loss", "train_acc", "eval_loss", "eval_acc", "lr", "seconds"}
    # VR schedule: 12 steps, x0.1 from steps 6 and 8; epochs 1..4 end at steps 2, 5, 8, 11
    np.testing.assert_allclose(jr.train.metric(history, "lr"), [0.05, 0.05, 5e-4, 5e-4], rtol=1e-5)
    loss_eval, acc_eval = jr.train.evaluate(program, model, theta, data)
    np.testing.assert_allclose([loss_eval, acc_eval], [history[-1]["eval_loss"], history[-1]["eval_acc"]])


def test_callback_sees_each_epochs_theta(model):
    """The epoch callback gets each record and a theta that survives the next (donating) step:
    epoch e's theta equals what an ``epochs=e`` run of the same schedule returns."""
    program = jr.reprogram(model, input=additive(), output=jr.output.ilm(S, T))
    data, tx = toy_data(), optax.adam(0.05)
    seen = []
    theta, history = jr.train.fit(
        program, model, data, epochs=3, key=jax.random.key(0), optimizer=tx, eval_data=data,
        callback=lambda record, theta: seen.append((record, theta)),
    )  # fmt: skip
    assert [r["epoch"] for r, _ in seen] == [1, 2, 3]
    assert [r for r, _ in seen] == history
    chex.assert_trees_all_close(seen[-1][1], theta)
    two, _ = jr.train.fit(program, model, data, epochs=2, key=jax.random.key(0), optimizer=tx)
    chex.assert_trees_all_close(seen[1][1], two)
    assert not np.allclose(seen[1][1]["input"]["delta"], theta["input"]["delta"])


def test_stochastic_programs_are_evaluated_with_a_key(model):
    """A random-location patch (Bahng et al. 2022) needs a key at evaluation too: ``fit`` passes
    one per batch, ``evaluate`` takes one (same key, same result) and refuses to guess without."""
    program = jr.reprogram(model, input=jr.input.random_patch(3), output=linear_alignment(S, T))
    data = toy_data()
    theta, history = jr.train.fit(program, model, data, epochs=1, key=jax.random.key(0), eval_data=data)
    assert np.isfinite(history[0]["eval_loss"])
    key = jax.random.key(7)
    first = jr.train.evaluate(program, model, theta, data, key=key)
    np.testing.assert_array_equal(first, jr.train.evaluate(program, model, theta, data, key=key))
    assert first[0] != jr.train.evaluate(program, model, theta, data, key=jax.random.key(8))[0]
    with pytest.raises(ValueError, match="needs a PRNG key"):
        jr.train.evaluate(program, model, theta, data)
    # evaluate_alignments draws the same per-batch keys: one mapping scores as evaluate does
    states = jax.tree.map(lambda a: a[None], theta["output"])
    got = jr.train.evaluate_alignments(program, model, theta, states, data, key=key)
    np.testing.assert_allclose(got, [first[1]])


def noisy() -> jr.InputTransform:
    """A stochastic additive prompt: x -> normalize(x + delta + N(0, 1) drawn from the key)."""

    def apply(theta, x, spec, *, key=None):
        return spec.normalize(x + theta["delta"] + jax.random.normal(key, x.shape))

    return additive()._replace(apply=apply, penalty=None)


def test_evaluation_draws_keys_apart_from_training(model):
    """Epoch e's evaluation must not replay training step e's noise: with a frozen prompt, one
    batch and ``eval_data`` = ``train_data``, the training and evaluation losses are two draws."""
    program = jr.reprogram(model, input=noisy(), output=linear_alignment(S, T))
    data = toy_data(n=16, shuffle=False)
    _, history = jr.train.fit(
        program, model, data, epochs=2, key=jax.random.key(0), optimizer=optax.set_to_zero(), eval_data=data
    )
    for h in history:
        assert abs(float(h["loss"]) - float(h["eval_loss"])) > 1e-4, h


def test_epoch_metrics_average_over_examples(model):
    """A ragged last batch (16, 16, 8) weighs by its size: with a frozen prompt the epoch's loss
    is ``evaluate``'s example mean plus the penalty, and its accuracy is ``evaluate``'s."""
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    data = toy_data(n=40)
    theta = program.init(jax.random.key(1))
    _, history = jr.train.fit(
        program, model, data, epochs=1, key=jax.random.key(0), theta=theta, optimizer=optax.set_to_zero()
    )
    loss, acc = jr.train.evaluate(program, model, theta, data)
    np.testing.assert_allclose(history[0]["loss"], loss + float(program.penalty(theta)), rtol=1e-5)
    np.testing.assert_allclose(history[0]["train_acc"], acc, rtol=1e-6)


def _hand_written_fit(program, model, data, theta0, lr, refit_pass):
    """The reference procedure for an EVERY_EPOCH alignment, by hand: an initial forward pass
    maps; each epoch trains (plain SGD, the additive prompt's L2 penalty) and then refits from
    its own logits (``"training"``) or from a pass with its final prompt (``"fresh"``)."""
    align = program.alignment

    @jax.jit
    def count(stats, delta, state, x, y):
        src = program.source_logits({"input": {"delta": delta}, "output": state}, model.params, x)
        return align.stats_update(stats, src, y)

    @jax.jit
    @jax.grad
    def grad(delta, state, x, y):
        theta = {"input": {"delta": delta}, "output": state}
        return ce(program.apply(theta, model.params, x), y) + jnp.sum(delta**2)

    def forward_pass(delta, state):
        stats = align.stats_init()
        for x, y in data.epoch(0):
            stats = count(stats, delta, state, x, y)
        return align.refit_from_stats(state, stats)

    delta, state = theta0["input"]["delta"], theta0["output"]
    state = forward_pass(delta, state)
    for epoch in range(2):
        stats = align.stats_init()
        for x, y in data.epoch(epoch):
            stats = count(stats, delta, state, x, y)
            delta = delta - lr * grad(delta, state, x, y)
        state = (
            align.refit_from_stats(state, stats) if refit_pass == "training" else forward_pass(delta, state)
        )
    return {"input": {"delta": delta}, "output": state}


@pytest.mark.parametrize("alignment", ["argmax", "blm_plus"])
def test_fit_step_equals_a_hand_written_loop(model, alignment):
    """Two epochs of a statistical alignment refit EVERY_EPOCH equal the reference procedure,
    with either source of statistics; for BLM+ (soft counts) the two sources differ."""
    output = argmax_map() if alignment == "argmax" else jr.output.blm_plus(S, T, k=2)
    program = jr.reprogram(model, input=additive(), output=output)
    data = toy_data(shuffle=False)
    theta0 = program.init(jax.random.key(3))
    got = {}
    for refit_pass in ("training", "fresh"):
        got[refit_pass], _ = jr.train.fit(
            program, model, data, epochs=2, key=jax.random.key(0), theta=theta0, optimizer=optax.sgd(0.5),
            refit_pass=refit_pass,
        )  # fmt: skip
        want = _hand_written_fit(program, model, data, theta0, 0.5, refit_pass)
        chex.assert_trees_all_close(got[refit_pass], want, rtol=1e-5, atol=1e-6)
    if alignment == "blm_plus":
        omega = [np.asarray(got[r]["output"]["omega"]) for r in ("training", "fresh")]
        assert np.abs(omega[0] - omega[1]).max() > 1e-3


def test_refit_once_keeps_the_initial_map(model):
    program = jr.reprogram(model, input=additive(), output=argmax_map(jr.Refit.ONCE))
    data, (x, y) = toy_data(shuffle=False), toy_arrays()
    theta0 = program.init(jax.random.key(3))
    src = program.source_logits(theta0, model.params, x)
    d = program.alignment.stats_update(jnp.zeros((S, T)), src, y)
    want = program.alignment.refit_from_stats(theta0["output"], d)["w"]
    got, _ = jr.train.fit(program, model, data, epochs=2, key=jax.random.key(0), theta=theta0)
    np.testing.assert_array_equal(got["output"]["w"], want)
    assert not np.allclose(got["input"]["delta"], theta0["input"]["delta"])


def test_optimiser_never_touches_non_learnable_state(model):
    """Weight decay would shrink every leaf it sees; the alignment state must stay put.
    And the compiled step receives the frozen parameters as an argument (a tracer),
    never as constants captured by a closure."""
    seen, inner = [], model.apply

    def apply(params, x, hook=None):
        seen.append(isinstance(jax.tree.leaves(params)[0], jax.core.Tracer))
        return inner(params, x, hook=hook)

    model = model._replace(apply=apply)
    program = jr.reprogram(model, input=additive(), output=argmax_map(jr.Refit.NEVER))
    theta0 = program.init(jax.random.key(1))
    theta, _ = jr.train.fit(
        program, model, toy_data(), epochs=1, key=jax.random.key(0), theta=theta0,
        optimizer=optax.adamw(1e-2, weight_decay=10.0),
    )  # fmt: skip
    np.testing.assert_array_equal(theta["output"]["w"], theta0["output"]["w"])
    assert not np.allclose(theta["input"]["delta"], theta0["input"]["delta"])
    assert seen and all(seen)


# ----------------------------------------------------------------------- candidates


def test_candidates_equal_independent_runs(model):
    """K stacked prompts with their own learning rates and their own ILM maps refit every
    epoch (Chen et al. 2023) train in one vmapped step exactly as K separate runs."""
    program = jr.reprogram(model, input=additive(), output=jr.output.ilm(S, T))
    data, key = toy_data(), jax.random.key(0)
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(5), 2))
    lrs = [{"learning_rate": 0.1}, {"learning_rate": 0.01}]
    got, history = jr.train.fit(
        program, model, data, epochs=2, key=key, theta=thetas, candidates=lrs, eval_data=data
    )
    assert jr.train.metric(history, "eval_acc").shape == (2, 2)
    np.testing.assert_allclose(history[0]["lr"], [0.1, 0.01], rtol=1e-6)
    for i, theta_i in enumerate(jr.candidates.unstack(thetas)):
        want, h = jr.train.fit(
            program, model, data, epochs=2, key=key, theta=theta_i, eval_data=data, **lrs[i]
        )
        chex.assert_trees_all_close(jr.candidates.select(got, i), want, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(
            jr.train.metric(history, "loss")[:, i], jr.train.metric(h, "loss"), rtol=1e-5
        )
        np.testing.assert_allclose(history[-1]["eval_acc"][i], h[-1]["eval_acc"])


@pytest.mark.parametrize(
    "candidates, refit_pass, manipulation",
    [(None, "training", additive), (2, "training", additive), (2, "fresh", lambda: jr.input.random_patch(3))],
)
def test_steps_per_call_runs_the_same_steps(model, candidates, refit_pass, manipulation):
    """Groups of steps in one ``lax.scan`` take the same steps as one call per step: five
    batches of 16 and a ragged 8 run as two scanned pairs and two single steps per epoch. The
    forward-only passes that map ILM (before training; every epoch with ``"fresh"``) are
    grouped too, and give each batch the same key (a random-location patch draws from it)."""
    program = jr.reprogram(model, input=manipulation(), output=jr.output.ilm(S, T))
    data, key = toy_data(n=88), jax.random.key(0)
    runs = [
        jr.train.fit(program, model, data, epochs=2, key=key, candidates=candidates, eval_data=data,
                     steps_per_call=n, learning_rate=0.05, refit_pass=refit_pass)
        for n in (1, 2)
    ]  # fmt: skip
    (want, h1), (got, h2) = runs
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-6)
    for name in ("loss", "train_acc", "eval_acc", "lr"):
        np.testing.assert_allclose(jr.train.metric(h2, name), jr.train.metric(h1, name), rtol=1e-5)
    assert not np.allclose(jr.train.metric(h2, "loss")[0], jr.train.metric(h2, "loss")[1])


def test_steps_per_call_keeps_the_query_budget(model):
    """BAR's query budget stops training at the same step whether steps are grouped or not
    (here inside epoch 2's first group of two)."""
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    data, key = toy_data(), jax.random.key(0)
    per_step = (4 + 1) * 16
    zo = jr.train.ZerothOrder(queries=4, smoothing=0.01, budget=4 * per_step)
    runs = [
        jr.train.fit(program, model, data, epochs=3, key=key, gradient=zo, steps_per_call=n) for n in (1, 2)
    ]
    (want, h1), (got, h2) = runs
    assert [h["queries"] for h in h2] == [h["queries"] for h in h1] == [3 * per_step, 4 * per_step]
    assert "query budget" in h2[-1]["stopped"]
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-6)


def test_query_budget_spent_at_an_epoch_end_adds_no_empty_epoch(model):
    """A budget that one epoch spends exactly stops training there: the next epoch trains no
    step, so it records no (0/0) metrics and its ILM refit does not remap from empty counts."""
    program = jr.reprogram(model, input=additive(), output=jr.output.ilm(S, T))
    data, key = toy_data(), jax.random.key(0)
    per_step = (4 + 1) * 16
    runs = [
        jr.train.fit(program, model, data, epochs=e, key=key, optimizer=optax.adam(0.05),
                     gradient=jr.train.ZerothOrder(queries=4, smoothing=0.01, budget=budget))
        for e, budget in ((3, 48 + 3 * per_step), (1, None))  # the initial map's pass: 48 queries
    ]  # fmt: skip
    (got, history), (want, one) = runs
    assert [h["epoch"] for h in history] == [1] and "query budget" in history[0]["stopped"]
    np.testing.assert_array_equal(history[0]["loss"], one[0]["loss"])
    chex.assert_trees_all_equal(got, want)


@pytest.mark.parametrize("refit_pass", ["training", "fresh"])
def test_mapping_passes_count_against_the_query_budget(model, refit_pass):
    """A black-box model answers the mapping passes too: one query per training example for
    the initial map, and per epoch with the reference's fresh refit."""
    program = jr.reprogram(model, input=additive(), output=jr.output.ilm(S, T))
    per_step, n = (4 + 1) * 16, 48
    zo = jr.train.ZerothOrder(queries=4, smoothing=0.01)
    _, history = jr.train.fit(program, model, toy_data(n), epochs=2, key=jax.random.key(0), gradient=zo,
                              refit_pass=refit_pass)  # fmt: skip
    refit = n if refit_pass == "fresh" else 0  # "training" refits from the steps' own queries
    assert [h["queries"] for h in history] == [n + 3 * per_step + refit, n + 6 * per_step + 2 * refit]


def test_best_candidate_selects_by_validation():
    history = [{"eval_acc": np.array([0.2, 0.5, 0.1])}, {"eval_acc": np.array([0.3, 0.4, 0.6])}]
    assert jr.train.best_candidate(history) == 2
    with pytest.raises(ValueError, match="eval_data"):
        jr.train.best_candidate([{"eval_acc": None}])


def test_evaluate_alignments_shares_one_forward_pass(model):
    program = jr.reprogram(model, input=additive(), output=argmax_map())
    theta = program.init(jax.random.key(0))
    perms = [np.random.default_rng(i).permutation(S)[:T] for i in range(4)]
    states = {"w": jnp.stack([jax.nn.one_hot(p, S).T for p in perms])}
    data = toy_data()
    got = jr.train.evaluate_alignments(program, model, theta, states, data)
    chex.assert_shape(got, (4,))
    for i in range(4):
        _, acc = jr.train.evaluate(program, model, {**theta, "output": {"w": states["w"][i]}}, data)
        assert got[i] == pytest.approx(float(acc))


def compiles(caplog, name: str) -> int:
    """How many times ``jit(name)`` was compiled while ``jax.log_compiles`` logged into ``caplog``."""
    return sum(f"XLA compilation of jit({name})" in r.getMessage() for r in caplog.records)


def test_evaluation_compiles_once_for_fresh_and_trained_thetas(model, caplog):
    """jit compiles once per placement of its arguments: ``fit`` replicates theta on its mesh,
    so evaluating a fresh theta and then a trained one (the usual zero-shot-then-trained
    comparison) compiled the forward pass twice; both are placed alike now."""
    program = jr.reprogram(model, input=additive(), output=argmax_map())  # fresh: nothing cached yet
    theta0, data = program.init(jax.random.key(0)), toy_data()
    states = jax.tree.map(lambda a: a[None], theta0["output"])
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
        jr.train.evaluate(program, model, theta0, data)
        jr.train.evaluate_alignments(program, model, theta0, states, data)
        theta, _ = jr.train.fit(program, model, data, epochs=1, key=jax.random.key(0))
        jr.train.evaluate(program, model, theta, data)
        jr.train.evaluate_alignments(program, model, theta, states, data)
    assert (compiles(caplog, "sums"), compiles(caplog, "correct")) == (1, 1)


# --------------------------------------------------------------------- precision, NaN


def test_bf16_forward_keeps_fp32_prompt_and_loss(model):
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    data = toy_data()
    theta, history = jr.train.fit(program, model, data, epochs=1, key=jax.random.key(0), precision="bf16")
    for leaf in jax.tree.leaves(theta):
        assert leaf.dtype == jnp.float32
    assert np.isfinite(jr.train.metric(history, "loss")).all()
    from jaxreprog.train.loop import _bf16_program

    jaxpr = str(jax.make_jaxpr(_bf16_program(program, model).apply)(theta, model.params, toy_arrays()[0][:2]))
    assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr


def test_nan_loss_stops_with_step_and_last_finite_loss():
    # A linear frozen model: XLA:CPU's jitted relu maps NaN to 0, which would hide the NaN.
    spec = jr.ImageSpec(size=8, num_classes=S)
    w = jax.random.normal(jax.random.key(0), (8 * 8 * 3, S))
    model = jr.FrozenModel(lambda p, x, hook=None: x.reshape(len(x), -1) @ p["w"], {"w": w}, spec)
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    x, y = toy_arrays()
    x[37] = np.nan  # the third batch (step 2) of epoch 1
    data = jr.data.from_arrays(x, y, batch_size=16)
    for steps_per_call in (1, 2):  # in a scanned group, the step is still named
        with pytest.raises(
            FloatingPointError,
            match=r"step 2 \(epoch 1\).*last finite loss was \d.*: batch 3 of train_data has NaN",
        ):
            jr.train.fit(program, model, data, epochs=2, key=jax.random.key(0), steps_per_call=steps_per_call)


def test_clear_errors(model):
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    data, key = toy_data(), jax.random.key(0)
    with pytest.raises(ValueError, match="fit: epochs must be an int >= 1, got 0"):
        jr.train.fit(program, model, data, epochs=0, key=key)
    with pytest.raises(ValueError, match="refit_pass must be 'training' or 'fresh'"):
        jr.train.fit(program, model, data, epochs=1, key=key, refit_pass="epoch")
    with pytest.raises(ValueError, match="steps_per_call must be an int >= 1"):
        jr.train.fit(program, model, data, epochs=1, key=key, steps_per_call=0)
    with pytest.raises(TypeError, match="candidates must be"):
        jr.train.fit(program, model, data, epochs=1, key=key, candidates="many")
    stacked = jr.candidates.init(program, jax.random.split(key, 2))
    with pytest.raises(ValueError, match="stacked theta already; do not pass theta="):
        jr.train.fit(program, model, data, epochs=1, key=key, candidates=stacked, theta=stacked)
    with pytest.raises(ValueError, match="no injected hyperparameter"):
        jr.train.fit(program, model, data, epochs=1, key=key, optimizer=optax.adam(1e-2),
                     candidates=[{"learning_rate": 0.1}, {"learning_rate": 0.2}])  # fmt: skip
    with pytest.raises(ValueError, match="1-D integer"):
        x, y = toy_arrays()
        jr.train.fit(program, model, [(x[:4], y[:4].astype(np.float32))], epochs=1, key=key)
    with pytest.raises(ValueError, match=r"x has \[48\] examples but y has 3"):
        jr.data.from_arrays(x, y[:3], batch_size=4)
    with pytest.raises(ValueError, match="train_data is empty"):
        jr.train.fit(program, model, [], epochs=1, key=key, optimizer=optax.sgd(0.1))


# ------------------------------------------------------------------------ make_step


def test_make_step_is_the_step_fit_runs(model):
    """A hand-written loop over make_step's step reproduces fit's theta exactly (same keys)."""
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    data = toy_data(shuffle=False)
    key = jax.random.key(3)
    init_key, train_key, _, _ = jax.random.split(key, 4)
    tx = optax.adam(0.05)
    theta, _ = jr.train.fit(program, model, data, epochs=2, key=key, optimizer=tx)

    init, step = jr.train.make_step(program, tx)
    step = jax.jit(step)
    state = init(program.init(init_key))
    for epoch in range(2):
        for batch in data.epoch(epoch):
            state, metrics = step(state, model.params, batch, train_key)
            assert set(metrics) == {"loss", "accuracy"}
    assert int(state.step) == 6
    chex.assert_trees_all_close(state.theta, theta, rtol=1e-5, atol=1e-6)


def test_make_step_trains_candidates_in_one_vmap(model):
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    init, step = jr.train.make_step(program, optax.sgd(0.1), candidates=True)
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(0), 3))
    state = init(thetas)
    x, y = next(iter(toy_data()))
    state, metrics = jax.jit(step)(state, model.params, (x, y), jax.random.key(1))
    chex.assert_shape([metrics["loss"], metrics["accuracy"], state.step], [(3,), (3,), (3,)])
    # each candidate equals the single-candidate step on its own theta
    one_init, one_step = jr.train.make_step(program, optax.sgd(0.1))
    for i in range(3):
        alone, m = one_step(
            one_init(jr.candidates.select(thetas, i)), model.params, (x, y), jax.random.key(1)
        )
        chex.assert_trees_all_close(jr.candidates.select(state.theta, i), alone.theta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-5)


def test_make_step_leaves_fixed_parts_and_accumulates_statistics(model):
    program = jr.reprogram(model, input=jr.fixed(additive()), output=argmax_map())
    init, step = jr.train.make_step(program, optax.sgd(1.0))
    theta = program.init(jax.random.key(0))
    state, _ = step(init(theta), model.params, next(iter(toy_data())), jax.random.key(0))
    chex.assert_trees_all_equal(state.theta, theta)  # nothing learns: input fixed, map statistical
    assert float(state.stats.sum()) == 16  # one count per example (accumulate: EVERY_EPOCH)
    refit = program.alignment.refit_from_stats(state.theta["output"], state.stats)
    assert refit["w"].shape == (S, T)


def test_make_step_skips_a_non_finite_step(model):
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    init, step = jr.train.make_step(program, optax.sgd(0.1))
    theta = program.init(jax.random.key(0))
    x, y = next(iter(toy_data()))
    state, metrics = step(init(theta), model.params, (x * jnp.nan, y), jax.random.key(0))
    assert not np.isfinite(metrics["loss"]) and int(state.bad_step) == 0
    chex.assert_trees_all_equal(state.theta, theta)


def test_make_step_bad_arguments(model):
    program = jr.reprogram(model, input=additive())
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        jr.train.make_step(program, "adam")
    with pytest.raises(TypeError, match="program must be a jr.Reprogrammed"):
        jr.train.make_step(model, optax.adam(1e-2))
    init, step = jr.train.make_step(program, optax.adam(1e-2), loss=ce)  # a mean, not per example
    with pytest.raises(ValueError, match=r"loss must return one value per example, shape \(16,\)"):
        step(init(program.init(jax.random.key(0))), model.params, next(iter(toy_data())), jax.random.key(0))


def test_fit_with_a_regression_loss(model):
    """A custom loss through fit: MSE on float targets (no accuracy is reported)."""
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, 2))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 8, 8, 3)).astype(np.float32)
    y = np.stack([x[..., 0].mean((1, 2)), x[..., 1].mean((1, 2))], -1).astype(np.float32)
    data = jr.data.from_arrays(x, y, batch_size=16, shuffle_seed=0)
    theta, history = jr.train.fit(
        program, model, data, epochs=5, key=jax.random.key(0), loss=jr.train.mse,
        optimizer=optax.adam(0.05), eval_data=data,
    )  # fmt: skip
    loss = jr.train.metric(history, "loss")
    assert loss[-1] < loss[0] / 2
    assert history[-1]["train_acc"] is None and history[-1]["eval_acc"] is None
    eval_loss, acc = jr.train.evaluate(program, model, theta, data, loss=jr.train.mse)
    assert acc is None
    np.testing.assert_allclose(eval_loss, history[-1]["eval_loss"], rtol=1e-6)
    np.testing.assert_allclose(jr.train.mse(jnp.ones((2, 3)), jnp.zeros((2, 3))), [1.0, 1.0])


def test_a_users_own_parts_need_no_tags_or_registry(model, tmp_path):
    """Plain tuples of functions: reprogram, chain, candidates, fit and checkpoints take them."""

    def init(key, spec):
        return {"bias": jnp.zeros(spec.shape)}

    def apply(theta, x, spec, *, key=None):
        return spec.normalize(x + theta["bias"])

    def scale_init(key, spec):
        return {"gain": jnp.ones(())}

    mine = jr.chain(
        jr.InputTransform(init, apply),
        jr.InputTransform(scale_init, lambda t, x, s, *, key=None: x * t["gain"]),
    )
    head = jr.Alignment(lambda key: {"w": jnp.eye(S)[:, :T]}, lambda state, z: z @ state["w"])
    program = jr.reprogram(model, input=mine, output=head)
    assert program.tags == Tags()
    data = toy_data()
    theta, history = jr.train.fit(
        program, model, data, epochs=2, key=jax.random.key(0), optimizer=optax.adam(0.05),
        checkpoint_dir=tmp_path / "run", candidates=2,
    )  # fmt: skip
    assert jr.candidates.count(theta) == 2 and history[-1]["loss"].shape == (2,)
    first = program.init(jax.random.key(0))
    assert not np.allclose(jr.candidates.select(theta, 0)["output"]["w"], first["output"]["w"])  # head learns
    again, _ = jr.train.fit(
        program,
        model,
        data,
        epochs=2,
        key=jax.random.key(0),
        optimizer=optax.adam(0.05),
        checkpoint_dir=tmp_path / "run",
        candidates=2,
    )  # fmt: skip  (resumed: nothing left to train)
    chex.assert_trees_all_equal(again, theta)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"epochs": 2.5}, TypeError, r"epochs must be an int >= 1, got 2.5 \(float\)"),
        ({"epochs": True}, TypeError, r"epochs must be an int >= 1, got True \(bool\)"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be an optax.GradientTransformation"),
        ({"learning_rate": "0.1"}, ValueError, "learning_rate must be a finite number > 0, got '0.1'"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate must be a finite number > 0"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate must be a finite number > 0, got nan"),
        ({"train_data": []}, ValueError, "train_data is empty"),
    ],
)
def test_fit_arguments_fail_before_any_compilation(model, kwargs, error, match):
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    args = {"train_data": toy_data(), "epochs": 1, **kwargs}
    with jax.log_compiles(), pytest.raises(error, match=match):
        jr.train.fit(program, model, key=jax.random.key(0), **args)


def test_labels_outside_the_target_classes_are_an_error(model):
    program = jr.reprogram(model, input=additive(), output=linear_alignment(S, T))
    x, y = toy_arrays()
    y[20] = T  # batch 2
    bad = jr.data.from_arrays(x, y, batch_size=16)
    match = (
        r"labels must lie in \[0, 3\) \(the program's 3 target classes\), got labels in \[0, 3\] in batch 2"
    )
    with pytest.raises(ValueError, match=match):
        jr.train.fit(program, model, bad, epochs=1, key=jax.random.key(0))
    theta = program.init(jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        jr.train.evaluate(program, model, theta, bad)
    y[20] = -1
    with pytest.raises(ValueError, match=r"got labels in \[-1, 2\]"):
        jr.train.fit(
            program, model, jr.data.from_arrays(x, y, batch_size=16), epochs=1, key=jax.random.key(0)
        )
    statistical = jr.reprogram(model, input=additive(), output=argmax_map())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):  # before the initial refit
        jr.train.fit(
            statistical, model, jr.data.from_arrays(x, y, batch_size=16), epochs=1, key=jax.random.key(0)
        )
    # int64 labels beyond int32 (the range is gathered over processes as int32) keep their side
    wide = y.astype(np.int64)
    wide[20] = 2**40
    with pytest.raises(ValueError, match=r"got labels in \[0, 2147483647\] in batch 2"):
        jr.train.evaluate(program, model, theta, [(x[i : i + 16], wide[i : i + 16]) for i in (0, 16)])


def _compiled_names(run) -> list[str]:
    """The jitted functions XLA compiles while ``run()`` runs (jax.log_compiles' records)."""
    import logging

    names: list[str] = []

    class Record(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Compiling "):
                names.append(message.split()[1])

    handler = Record()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()
    finally:
        logger.removeHandler(handler)
    return names


def test_fit_compiles_each_program_once(model):
    """Epochs reuse the compiled step, statistics pass, refit and evaluation (#22): 3 epochs compile
    what 1 does; a second fit of the same program recompiles its step (it closes over the optimiser)
    but reuses the cached evaluation."""
    program = jr.reprogram(model, input=additive(), output=jr.output.ilm(num_source=S, num_target=T))

    def run(epochs):
        data = toy_data()  # 48 examples, batches of 16: no ragged batch, one shape
        kwargs = {"epochs": epochs, "key": jax.random.key(0), "eval_data": data, "progress": False}
        return _compiled_names(lambda: jr.train.fit(program, model, data, **kwargs))

    first, again = run(3), run(1)
    ours = ("train_step", "stats_fn", "refit_fn", "reset_stats", "sums")
    counts = {n: sum(c == f"jit({n})" for c in first) for n in ours}
    assert counts == dict.fromkeys(ours, 1), counts
    assert "jit(sums)" not in again and "jit(train_step)" in again
