"""Multitask prompt tuning (MPT, Wang et al. 2023), K soft prompts per task, and mixed-task batches:
each example's ``x["task"]`` picks its task's prompt inside one compiled program."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import pack

import jaxreprog as jr
from jaxreprog.models import bert, gpt2
from jaxreprog.taxonomy import Format, Location, Operator

BERT = bert.BertConfig(
    vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=24
)
GPT2 = gpt2.GPT2Config(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, max_positions=24)
K, L = 3, 4  # tasks, prompt tokens


@pytest.fixture(scope="module")
def models():
    return {
        "bert": bert.from_config(BERT, jax.random.key(0)),
        "gpt2": gpt2.from_config(GPT2, jax.random.key(1)),
    }


def batch(task, seed=0, lengths=(5, 3, 6, 4, 2, 6)):
    """Rows of random tokens (left- and right-padded alternately) with their task ids."""
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, 40, n) for n in lengths]
    sides = ["right" if i % 2 else "left" for i in range(len(rows))]
    return {**pack(rows, sides), "task": np.asarray(task, np.int32)}


TASKS = [2, 0, 2, 1, 0, 2]

METHODS = {
    "mpt": lambda: jr.embedding.multitask_prompt(L, K, rank=2, where="after_first"),
    "mpt_normal": lambda: jr.embedding.multitask_prompt(L, K, task_init="normal"),
    "soft_prompt": lambda: jr.embedding.soft_prompt(L, tasks=K, where="after_first"),
}


def prompts_of(theta):
    """Each task's ``(l, D)`` prompt of a K-task theta."""
    return theta["prompt"] if "prompt" in theta else jr.embedding.task_prompts(theta)


def test_registered_and_tagged():
    row = jr.taxonomy.registry["multitask_prompt"]
    assert row.paper == "Wang et al. 2023" and row.factory == "jr.embedding.multitask_prompt"
    tags = jr.embedding.multitask_prompt(L, K).tags
    assert tags.format == Format.LEARNABLE and tags.location == Location.EMBEDDING
    assert tags.operator == Operator.CONCATENATIVE | Operator.PARAMETRIC
    assert any(r["method"] == "multitask_prompt" for r in jr.taxonomy.table().rows())
    doc = jr.embedding.multitask_prompt.__doc__
    assert "Wang et al. ICLR 2023" in doc and "P_k = P* ∘ (u_k v_kᵀ)" in doc


def test_theta_shapes_and_the_equation(models):
    spec = models["bert"].spec
    theta = jr.embedding.multitask_prompt(L, K, rank=2).init(jax.random.key(0), spec)
    chex.assert_shape([theta["shared"], theta["u"], theta["v"]], [(L, 16), (K, L, 2), (K, 16, 2)])
    p = np.asarray(jr.embedding.task_prompts(theta))
    shared, u, v = map(np.asarray, (theta["shared"], theta["u"], theta["v"]))
    for k in range(K):
        np.testing.assert_allclose(p[k], shared * (u[k] @ v[k].T), rtol=1e-5, atol=1e-6)
    # "ones": every task starts at the shared prompt; "normal" (PEFT's): near zero.
    np.testing.assert_allclose(p, np.broadcast_to(shared, p.shape), rtol=0.15, atol=1e-3)
    small = jr.embedding.multitask_prompt(L, K, task_init="normal").init(jax.random.key(0), spec)
    assert np.abs(jr.embedding.task_prompts(small)).max() < 0.01 * np.abs(small["shared"]).max()
    stacked = jr.embedding.soft_prompt(L, tasks=K).init(jax.random.key(0), spec)["prompt"]
    chex.assert_shape(stacked, (K, L, 16))
    assert not np.allclose(stacked[0], stacked[1])  # K independent draws


@pytest.mark.parametrize("name", ["bert", "gpt2"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_mixed_batch_equals_each_single_task_program(models, name, method):
    """Row i of one mixed-task call == the single-task program with task[i]'s prompt on row i alone."""
    model = models[name]
    program = jr.reprogram(model, embedding=METHODS[method]())
    theta = program.init(jax.random.key(3))
    x = batch(TASKS)
    mixed = np.asarray(jax.jit(program.apply)(theta, model.params, x))
    prompts = prompts_of(theta["embedding"])
    where = "prefix" if method == "mpt_normal" else "after_first"
    single = jr.reprogram(model, embedding=jr.embedding.soft_prompt(L, where=where))  # one task's program
    apply_single = jax.jit(single.apply)
    for i, task in enumerate(TASKS):
        row = {k: v[i : i + 1] for k, v in x.items() if k != "task"}
        want = apply_single({"embedding": {"prompt": prompts[task]}, "output": ()}, model.params, row)
        np.testing.assert_allclose(mixed[i], np.asarray(want)[0], rtol=1e-5, atol=1e-5)
    # Another task's prompt gives another output: the task id matters.
    other = np.asarray(program.apply(theta, model.params, {**x, "task": (x["task"] + 1) % K}))
    assert not np.allclose(other, mixed, atol=1e-4)


@pytest.mark.parametrize("method", ["mpt", "soft_prompt"])
def test_gradient_reaches_only_the_tasks_present(models, method):
    model = models["bert"]
    program = jr.reprogram(model, embedding=METHODS[method]())
    theta = program.init(jax.random.key(4))
    x = batch([2, 0, 2, 0, 0, 2])  # no example of task 1

    def loss(theta):
        return jnp.sum(program.apply(theta, model.params, x) ** 2)

    g = jax.jit(jax.grad(loss))(theta)["embedding"]
    for name, leaf in g.items():
        if name == "shared":  # P* is every task's
            assert np.abs(leaf).sum() > 0
            continue
        per_task = np.abs(np.asarray(leaf)).reshape(K, -1).sum(1)
        assert per_task[1] == 0 and per_task[0] > 0 and per_task[2] > 0, (name, per_task)


def test_vmap_over_candidates(models):
    """The candidate axis (vmap over theta) composes with the task axis: C × K prompts, one call."""
    model = models["gpt2"]
    program = jr.reprogram(model, embedding=METHODS["mpt"]())
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(5), 2))
    x = batch(TASKS, seed=1)
    both = np.asarray(jax.jit(lambda t, p, x: jr.candidates.apply(program, t, p, x))(thetas, model.params, x))
    chex.assert_shape(both, (2, len(TASKS), 40))
    for c in range(2):
        alone = program.apply(jr.candidates.select(thetas, c), model.params, x)
        np.testing.assert_allclose(both[c], alone, rtol=1e-5, atol=1e-5)


def test_fit_and_make_step_train_a_mixed_batch(models):
    """jr.train.fit and make_step (with candidates) take a batch whose x carries 'task'."""
    model = models["bert"]
    program = jr.reprogram(model, embedding=METHODS["mpt"](), output=jr.output.linear(16, 2))
    x = batch(TASKS, seed=2)
    y = np.array([0, 1, 1, 0, 1, 0])
    data = jr.data.from_arrays(x, y, batch_size=3, shuffle_seed=0, epochs=3)
    theta0 = program.init(jax.random.key(6))
    theta, history = jr.train.fit(
        program,
        model,
        data,
        epochs=3,
        key=jax.random.key(0),
        optimizer=optax.adam(0.05),
        theta=theta0,
        progress=False,
    )
    assert history[-1]["loss"] < history[0]["loss"]
    assert not np.allclose(theta["embedding"]["u"], theta0["embedding"]["u"])

    init, step = jr.train.make_step(program, optax.adam(0.05), candidates=True)
    state = init(jr.candidates.init(program, jax.random.split(jax.random.key(7), 2)))
    state, metrics = jax.jit(step)(state, model.params, (x, y), jax.random.key(0))
    chex.assert_shape(metrics["loss"], (2,))
    assert np.all(np.isfinite(metrics["loss"])) and int(state.step[0]) == 1


def test_chain_and_save_load_keep_the_task_axis(models, tmp_path):
    model = models["bert"]
    mpt = METHODS["mpt"]()
    x = batch(TASKS)
    program = jr.reprogram(model, embedding=mpt)
    theta = program.init(jax.random.key(8))
    want = program.apply(theta, model.params, x)
    # A chain binds each part's theta with the part's own bind.
    shift = jr.SiteHook(lambda key, spec: (), lambda t, site, value, spec: value)
    chained = jr.reprogram(model, embedding=jr.chain(shift, mpt))
    got = chained.apply({**theta, "embedding": ((), theta["embedding"])}, model.params, x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # An artifact rebuilds the registered factory, bind and all.
    jr.save(tmp_path / "mpt", program, theta, frozen_model=model)
    loaded, theta_loaded = jr.load(tmp_path / "mpt", model)
    np.testing.assert_allclose(loaded.apply(theta_loaded, model.params, x), want, rtol=1e-6)


def test_transfer_spot(models):
    """SPoT (Vu et al. 2022): a trained prompt initialises a new task's, as an array or a theta."""
    spec = models["bert"].spec
    key = jax.random.key(9)
    trained = {"prompt": jax.random.normal(key, (L, 16))}
    # A soft prompt from a trained soft prompt's theta; K per-task prompts all from it.
    np.testing.assert_array_equal(
        jr.embedding.soft_prompt(L, init=trained).init(key, spec)["prompt"], trained["prompt"]
    )
    stacked = jr.embedding.soft_prompt(L, tasks=K, init=trained).init(key, spec)["prompt"]
    np.testing.assert_array_equal(stacked, np.broadcast_to(trained["prompt"], (K, L, 16)))
    # A new task appended to K trained ones: rows of a (K + 1, l, D) array.
    grown = np.concatenate([stacked, stacked[:1]])
    chex.assert_shape(
        jr.embedding.soft_prompt(L, tasks=K + 1, init=grown).init(key, spec)["prompt"], (K + 1, L, 16)
    )
    # MPT's shared prompt from a single-task prompt; fresh task factors start every task there.
    mpt = jr.embedding.multitask_prompt(L, 2, init=trained).init(key, spec)
    np.testing.assert_array_equal(mpt["shared"], trained["prompt"])
    np.testing.assert_allclose(
        jr.embedding.task_prompts(mpt), np.broadcast_to(trained["prompt"], (2, L, 16)), rtol=0.15, atol=1e-2
    )
    # A trained MPT theta: rows picked for the new tasks (PEFT's EXACT_SOURCE_TASK, per task).
    source = jr.embedding.multitask_prompt(L, K, rank=2).init(jax.random.key(10), spec)
    rows = np.array([2, 0])
    picked = {"shared": source["shared"], "u": source["u"][rows], "v": source["v"][rows]}
    target = jr.embedding.multitask_prompt(L, 2, rank=2, init=picked).init(key, spec)
    np.testing.assert_allclose(jr.embedding.task_prompts(target), jr.embedding.task_prompts(source)[rows])
    # ...or only its shared prompt; and a single-task soft prompt from MPT's task 1.
    only = jr.embedding.multitask_prompt(L, 5, init={"shared": source["shared"]}).init(key, spec)
    np.testing.assert_array_equal(only["shared"], source["shared"])
    task1 = jr.embedding.task_prompts(source)[1]
    np.testing.assert_array_equal(jr.embedding.soft_prompt(L, init=task1).init(key, spec)["prompt"], task1)


def test_bad_task_ids(models):
    model = models["bert"]
    program = jr.reprogram(model, embedding=METHODS["mpt"]())
    theta = program.init(jax.random.key(11))
    x = batch(TASKS)
    plain = {k: v for k, v in x.items() if k != "task"}
    with pytest.raises(
        ValueError, match=r"needs each example's task id: give the batch an entry x\['task'\]"
    ):
        program.apply(theta, model.params, plain)
    with pytest.raises(ValueError, match=r"task ids in \[0, 3\): got 1 outside, e.g. 3"):
        program.apply(theta, model.params, {**x, "task": np.array([0, 1, 3, 0, 0, 0])})
    with pytest.raises(ValueError, match=r"got 2 outside, e.g. -1"):
        program.apply(theta, model.params, {**x, "task": np.array([0, -1, 2, 0, -2, 0])})
    with pytest.raises(TypeError, match="integer task ids, got dtype float32"):
        program.apply(theta, model.params, {**x, "task": np.zeros(6, np.float32)})
    for shape in [(6, 1), (5,), ()]:
        with pytest.raises(ValueError, match=r"one task id per example, shape \(6,\)"):
            program.apply(theta, model.params, {**x, "task": np.zeros(shape, np.int32)})
    # Under jit the values are unknown: a bad id's prompt (and row) is NaN, never another task's;
    # the other rows are untouched; jr.checked raises.
    bad = {**x, "task": np.array([0, 3, 2, -1, 1, 2])}
    out = np.asarray(jax.jit(program.apply)(theta, model.params, bad))
    assert np.isnan(out[[1, 3]]).all() and np.isfinite(out[[0, 2, 4, 5]]).all()
    good = np.asarray(program.apply(theta, model.params, {**x, "task": np.array([0, 0, 2, 0, 1, 2])}))
    np.testing.assert_allclose(out[[0, 2, 4, 5]], good[[0, 2, 4, 5]], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match=r"task ids in \[0, 3\)"):
        jr.checked(jax.jit(program.apply))(theta, model.params, bad)
    # A direct call of the hook (no batch, so no task ids) says how it is meant to run.
    hook = program.parts["embedding"]
    e = jr.hooks.Embedded(
        jnp.zeros((1, 2, 16)), jnp.ones((1, 2), bool), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), bool)
    )
    with pytest.raises(ValueError, match="unbound theta"):
        hook.apply(theta["embedding"], "embeddings", e, model.spec)


def test_bad_arguments(models):
    spec = models["bert"].spec
    mpt = jr.embedding.multitask_prompt
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="multitask_prompt: tasks .* must be an int >= 1"):
            mpt(L, bad)
        with pytest.raises(error, match="soft_prompt: tasks .* must be an int >= 1"):
            jr.embedding.soft_prompt(L, tasks=bad)
        with pytest.raises(error, match="multitask_prompt: rank must be an int >= 1"):
            mpt(L, K, rank=bad)
    with pytest.raises(ValueError, match="task_init"):
        mpt(L, K, task_init="zeros")
    with pytest.raises(ValueError, match="length"):
        mpt(0, K)
    with pytest.raises(ValueError, match=r"init array must be \(length=4, D\), got \(3, 16\)"):
        mpt(L, K, init=np.zeros((3, 16)))
    with pytest.raises(ValueError, match=r"\(length=4, D\) or \(tasks=3, length=4, D\), got \(2, 4, 16\)"):
        jr.embedding.soft_prompt(L, tasks=K, init=np.zeros((2, L, 16)))
    with pytest.raises(ValueError, match="got keys"):
        mpt(L, K, init={"prompt": np.zeros((L, 16)), "u": 1})
    with pytest.raises(ValueError, match=r"u \(3, 4, 1\) and v \(3, D, 1\).*pick or average"):
        mpt(L, K, init=jr.embedding.multitask_prompt(L, 2).init(jax.random.key(0), spec))
    with pytest.raises(ValueError, match="hidden size is 16"):
        mpt(L, K, init=np.zeros((L, 8))).init(jax.random.key(0), spec)
    with pytest.raises(ValueError, match="task_prompts: theta must be"):
        jr.embedding.task_prompts({"prompt": np.zeros((L, 16))})
