"""Output alignments: hand-computed cases, streaming statistics, jit / grad / vmap, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from conftest import additive
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreprog as jr
from jaxreprog.taxonomy import OutputAlignment

S, C = 9, 3  # default toy sizes: 9 source classes, 3 target classes

# every factory at the toy sizes, keyed by factory name (jr.output.<name>; ilm_guarded a variant);
# the statistical ones are refitted in the tests. (jit / grad / vmap of every registered method:
# tests/test_transforms.py.)
FACTORIES = {
    "identity": lambda: jr.output.identity(S),
    "rlm": lambda: jr.output.rlm(S, C),
    "flm": lambda: jr.output.flm(S, C),
    "ilm": lambda: jr.output.ilm(S, C),
    "ilm_guarded": lambda: jr.output.ilm(S, C, guarded=True, guard_samples=8),
    "blm": lambda: jr.output.blm(S, C),
    "blm_plus": lambda: jr.output.blm_plus(S, C, k=2),
    "freqmap": lambda: jr.output.freqmap(S, C, per_target=2),
    "linear": lambda: jr.output.linear(S, C),
    "verbalizer": lambda: jr.output.verbalizer([[0, 4], [2], [5, 7, 8]], num_source=S),
}
STATISTICAL = ("flm", "ilm", "ilm_guarded", "blm", "blm_plus", "freqmap")


def toy_batch(n=24, seed=0):
    """Logits whose top-1 source class depends on the label (plus noise), and labels."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    labels = jax.random.randint(k1, (n,), 0, C)
    noise = jax.random.normal(k2, (n, S))
    return noise + 3.0 * jax.nn.one_hot(2 * labels + 1, S), labels  # class t plants source 2t + 1


def rows(top1, num_source):
    """Logits whose argmax is ``top1`` (one row per entry)."""
    return 5.0 * jax.nn.one_hot(jnp.asarray(top1), num_source) + 0.1 * jnp.arange(num_source) / num_source


def targets(state):  # a one-to-one map as source indices
    return np.asarray(jr.output.map_indices(state["omega"]))


# ------------------------------------------------------------------ greedy assignment


def greedy_reference(d, per_target=1):
    """A loop written from the papers' description: argmax of the flattened matrix over its open
    entries (the papers close entries with -1, enough for their counts >= 0, not for any score)."""
    d = np.array(d, float)
    omega, is_open = np.zeros_like(d), np.ones(d.shape, bool)
    for _ in range(per_target * d.shape[1]):
        flat = np.flatnonzero(is_open)
        s, t = divmod(int(flat[np.argmax(d.ravel()[flat])]), d.shape[1])
        omega[s, t] = 1
        is_open[s, :] = False
        if omega[:, t].sum() == per_target:
            is_open[:, t] = False
    return omega


def test_greedy_hand_computed_5x3_with_a_tie():
    d = jnp.array([[3, 0, 1], [4, 2, 0], [0, 5, 1], [1, 1, 2], [0, 3, 2]], jnp.float32)
    # 5 at (2, 1) -> t1 <- s2; then 4 at (1, 0) -> t0 <- s1; then column 2: s3 and s4 tie at 2 -> s3
    omega = jr.output.greedy_assignment(d)
    np.testing.assert_array_equal(jr.output.map_indices(omega), [1, 2, 3])
    np.testing.assert_array_equal(omega.sum(0), [1, 1, 1])
    np.testing.assert_array_equal(omega.sum(1), [0, 1, 1, 1, 0])


def test_greedy_many_to_one_hand_computed():
    d = jnp.array([[1, 5], [0, 4], [6, 3], [2, 0], [1, 1]], jnp.float32)
    # 6 -> t0 <- s2; 5 -> t1 <- s0; 4 -> t1 <- s1 (t1 full); column 0 left: s3 (2) beats s4 (1)
    index = jr.output.map_indices(jr.output.greedy_assignment(d, per_target=2), per_target=2)
    np.testing.assert_array_equal(np.sort(index, axis=1), [[2, 3], [0, 1]])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2]))
def test_greedy_matches_loop_reference_including_ties(seed, per_target):
    d = np.random.default_rng(seed).integers(0, 4, size=(8, 3))  # many ties
    got = jax.jit(jr.output.greedy_assignment, static_argnums=1)(jnp.asarray(d, jnp.float32), per_target)
    np.testing.assert_array_equal(got, greedy_reference(d, per_target))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2]))
def test_greedy_is_a_valid_map_on_scores_with_minus_inf(seed, per_target):
    # log-counts: -inf wherever a count is 0, which used to tie with the closed entries and hand a
    # closed (s, t) out again, leaving columns empty
    counts = np.random.default_rng(seed).integers(0, 3, size=(8, 3))
    d = np.where(counts > 0, np.log(np.maximum(counts, 1)), -np.inf).astype(np.float32)
    got = np.asarray(jr.output.greedy_assignment(jnp.asarray(d), per_target))
    np.testing.assert_array_equal(got.sum(0), [per_target] * 3)
    assert got.sum(1).max() <= 1
    np.testing.assert_array_equal(got, greedy_reference(d, per_target))


@settings(max_examples=20, deadline=None)
@given(st.permutations(range(8)), st.integers(0, 2**31 - 1))
def test_permuting_source_classes_permutes_the_map(perm, seed):
    d = np.random.default_rng(seed).permutation(24).reshape(8, 3).astype(np.float32)  # distinct: no ties
    perm = np.asarray(perm)
    greedy = jax.jit(jr.output.greedy_assignment)
    np.testing.assert_array_equal(greedy(jnp.asarray(d[perm])), np.asarray(greedy(jnp.asarray(d)))[perm])


def test_frequency_matrix_counts_top1_over_all_sources():
    logits = rows([2, 2, 0, 1, 2], 4)
    d = jr.output.frequency_matrix(logits, jnp.array([0, 1, 0, 1, 1]), num_target=2)
    np.testing.assert_array_equal(d, [[1, 0], [0, 1], [1, 2], [0, 0]])


# ------------------------------------------------------------------ hand-computed maps


def test_flm_and_ilm_refit_to_the_greedy_map():
    # top-1 sources per sample and their labels give d = the 5x3 matrix of the greedy test
    d = np.array([[3, 0, 1], [4, 2, 0], [0, 5, 1], [1, 1, 2], [0, 3, 2]])
    top1, labels = zip(*[(s, t) for s in range(5) for t in range(3) for _ in range(d[s, t])])
    logits, labels = rows(top1, 5), jnp.array(labels)
    for align in (jr.output.flm(5, 3), jr.output.ilm(5, 3)):
        state = align.refit(align.init(jax.random.key(0)), logits, labels)
        np.testing.assert_array_equal(targets(state), [1, 2, 3])
        chex.assert_trees_all_equal(align.apply(state, logits), logits[:, jnp.array([1, 2, 3])])
    assert jr.output.flm(5, 3).schedule == jr.Refit.ONCE
    assert jr.output.ilm(5, 3).schedule == jr.Refit.EVERY_EPOCH


def test_blm_omega_by_hand():
    # d = [[2, 0], [1, 1], [0, 3]]: ω_raw = d / (row sum + 1), then columns normalised
    logits = rows([0, 0, 1, 1, 2, 2, 2], 3)
    labels = jnp.array([0, 0, 0, 1, 1, 1, 1])
    align = jr.output.blm(3, 2)
    state = align.refit(align.init(jax.random.key(0)), logits, labels)
    want = np.array([[2 / 3, 0], [1 / 3, 4 / 13], [0, 9 / 13]])
    np.testing.assert_allclose(state["omega"], want, rtol=1e-6)
    x = jnp.array([[1.0, -2.0, 0.5]])
    np.testing.assert_allclose(align.apply(state, x), x @ want, rtol=1e-6)


def test_blm_plus_omega_by_hand():
    p = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25]])
    logits, labels = jnp.log(jnp.asarray(p, jnp.float32)), jnp.array([0, 1, 1])
    # top-2 per sample (tie in row 3: lowest sources 0, 1), summed per label
    d = np.array([[0.5, 0.25], [0.3, 0.2 + 0.25], [0, 0.6], [0, 0]])
    raw = d / (d.sum(1, keepdims=True) + 1.0)
    want = raw / raw.sum(0, keepdims=True)
    align = jr.output.blm_plus(4, 2, k=2)
    state = align.refit(align.init(jax.random.key(0)), logits, labels)
    np.testing.assert_allclose(state["omega"], want, rtol=1e-5)


def test_blm_plus_default_k_is_15_percent_of_target_classes():
    logits, labels = toy_batch()

    def counts(align):
        return align.stats_update(align.stats_init(), logits, labels)["counts"]

    # 20 target classes: k = floor(0.15 * 20) = 3 (the 9 x 20 map is fine: BLM is many-to-many)
    chex.assert_trees_all_equal(counts(jr.output.blm_plus(S, 20)), counts(jr.output.blm_plus(S, 20, k=3)))
    assert not np.allclose(counts(jr.output.blm_plus(S, 20)), counts(jr.output.blm_plus(S, 20, k=2)))
    # 3 classes: floor(0.45) = 0, so k = 1: each sample adds its top-1 probability only
    np.testing.assert_allclose(counts(jr.output.blm_plus(S, C)), counts(jr.output.blm_plus(S, C, k=1)))
    assert np.count_nonzero(counts(jr.output.blm_plus(S, C))) <= len(labels)
    # 100 classes from 9 sources: floor(15) is capped at num_source (it used to raise on a default)
    np.testing.assert_allclose(counts(jr.output.blm_plus(S, 100)), counts(jr.output.blm_plus(S, 100, k=S)))


def test_blm_empty_target_column_is_uniform():
    omega = jr.output.bayesian_weights(jnp.array([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(omega[:, 1], [1 / 3] * 3)
    np.testing.assert_allclose(omega[:, 0], [4 / 7, 3 / 7, 0], rtol=1e-6)  # (2/3, 1/2, 0) / (7/6)


def test_freqmap_hand_computed_and_mean_of_mapped_logits():
    d = np.array([[1, 5], [0, 4], [6, 3], [2, 0], [1, 1]])
    top1, labels = zip(*[(s, t) for s in range(5) for t in range(2) for _ in range(d[s, t])])
    align = jr.output.freqmap(5, 2, per_target=2)
    state = align.refit(align.init(jax.random.key(0)), rows(top1, 5), jnp.array(labels))
    x = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0]])
    np.testing.assert_allclose(align.apply(state, x), [[3.5, 1.5]])  # t0 <- {s2, s3}, t1 <- {s0, s1}


def test_rlm_draws_distinct_sources_and_never_refits():
    align = jr.output.rlm(S, C)
    state = align.init(jax.random.key(3))
    index = targets(state)
    assert len(set(index.tolist())) == C
    np.testing.assert_array_equal(state["omega"].sum(0), 1)
    draws = {tuple(targets(align.init(jax.random.key(i)))) for i in range(8)}
    assert len(draws) > 1
    chex.assert_trees_all_equal(align.refit(state, *toy_batch()), state)
    assert align.schedule == jr.Refit.NEVER and not align.trainable


def test_identity():
    align = jr.output.identity(S)
    x = toy_batch()[0]
    chex.assert_trees_all_equal(align.apply(align.init(jax.random.key(0)), x), x)
    assert align.tags.alignment == OutputAlignment.IDENTITY


@pytest.mark.parametrize(
    ("reduce", "want"), [("mean", [2.5, 2.0, 6.0]), ("sum", [5.0, 2.0, 18.0]), ("max", [4.0, 2.0, 7.0])]
)
def test_verbalizer_reductions(reduce, want):
    align = jr.output.verbalizer([[1, 4], [2], [5, 7, 6]], num_source=9, reduce=reduce)
    x = jnp.arange(9.0)[None]
    np.testing.assert_allclose(align.apply((), x), [want])


def test_verbalizer_logsumexp_and_tags():
    align = jr.output.verbalizer([[1, 4], [2]], num_source=5, reduce="logsumexp")
    x = jnp.array([[0.0, 1.0, -1.0, 0.5, 2.0]])
    np.testing.assert_allclose(align.apply((), x), [[np.log(np.e + np.e**2), -1.0]], rtol=1e-6)
    assert align.tags == jr.Tags(alignment=OutputAlignment.RULE_BASED)


def test_linear_is_a_trainable_dense_layer():
    align = jr.output.linear(S, C)
    state = align.init(jax.random.key(0))
    x = toy_batch()[0]
    np.testing.assert_allclose(align.apply(state, x), x @ state["kernel"] + state["bias"], rtol=1e-5)
    assert align.trainable and align.schedule == jr.Refit.NEVER
    assert align.tags == jr.Tags(alignment=OutputAlignment.LINEAR)

    def loss(state):
        return -jnp.mean(jax.nn.log_softmax(align.apply(state, x))[:, 0])

    for leaf in jax.tree.leaves(jax.grad(loss)(state)):
        assert jnp.all(jnp.isfinite(leaf)) and jnp.any(leaf != 0)
    no_bias = jr.output.linear(S, C, use_bias=False)
    with pytest.raises(
        ValueError, match=rf"linear.apply: use_bias=True needs state\['bias'\] of shape \({C},\)"
    ):
        align.apply(no_bias.init(jax.random.key(0)), x)  # was a bare KeyError: 'bias'
    with pytest.raises(ValueError, match=r"linear.apply: state has a 'bias' but use_bias=False"):
        no_bias.apply(state, x)


# ------------------------------------------------------------------ ILM: reference vs guarded


def collapse_batch():
    """Unmapped source 2 is everyone's top-1, but the old map (t0 <- s0, t1 <- s1) ranks right."""
    class0 = jnp.array([[1.0, 0.0, 5.0, -9.0]] * 3)  # among mapped {s0, s1}: s0 wins -> t0, correct
    class1 = jnp.array([[0.0, 1.0, 5.0, -9.0]] * 2)  # s1 wins -> t1, correct
    return jnp.concatenate([class0, class1]), jnp.array([0, 0, 0, 1, 1])


def test_reference_ilm_collapses_on_an_unmapped_top1():
    align = jr.output.ilm(4, 2)
    logits, labels = collapse_batch()
    old = align.init(jax.random.key(0))
    new = align.refit(old, logits, labels)  # d = s2 everywhere: t0 <- s2, then t1 <- s0 (tie, lowest)
    np.testing.assert_array_equal(targets(new), [2, 0])
    correct = lambda state: int(jnp.sum(jnp.argmax(align.apply(state, logits), -1) == labels))  # noqa: E731
    assert correct(old) == 5 and correct(new) == 3  # class 1 now predicted as class 0


def test_guarded_ilm_keeps_the_better_map():
    align = jr.output.ilm(4, 2, guarded=True)
    logits, labels = collapse_batch()
    old = align.init(jax.random.key(0))
    chex.assert_trees_all_equal(align.refit(old, logits, labels), old)
    # when the greedy map scores at least as well, it is taken
    good = rows([3, 3, 2, 2], 4)
    new = align.refit(old, good, jnp.array([0, 0, 1, 1]))
    np.testing.assert_array_equal(targets(new), [3, 2])


def test_guarded_ilm_scores_only_the_first_guard_samples():
    align = jr.output.ilm(4, 2, guarded=True, guard_samples=3)
    logits, labels = collapse_batch()
    stats = align.stats_update(align.stats_init(), logits[:2], labels[:2])
    stats = align.stats_update(stats, logits[2:], labels[2:])
    assert int(stats["seen"]) == 5
    np.testing.assert_array_equal(stats["logits"], logits[:3])
    np.testing.assert_array_equal(stats["counts"][2], [3, 2])  # counts see every sample


# ------------------------------------------------------------------ streaming statistics


@pytest.mark.parametrize("name", STATISTICAL)
def test_streaming_equals_one_batch_and_refit_is_idempotent(name):
    align = FACTORIES[name]()
    logits, labels = toy_batch()
    state = align.init(jax.random.key(0))
    stats = align.stats_init()
    for i in range(0, 24, 10):  # batches of 10, 10, 4
        stats = align.stats_update(stats, logits[i : i + 10], labels[i : i + 10])
    once = align.refit(state, logits, labels)
    streamed = align.refit_from_stats(state, stats)
    chex.assert_trees_all_close(streamed, once, rtol=1e-6)
    chex.assert_trees_all_close(align.refit_from_stats(streamed, stats), streamed, rtol=1e-6)


@pytest.mark.parametrize("name", STATISTICAL)
def test_out_of_range_labels_are_dropped_under_jit(name):
    # the documented contract: no concrete values to check, so labels outside [0, C) add nothing
    # (a negative label used to wrap around to the last class through ``.at[]``)
    align = FACTORIES[name]()
    logits, labels = toy_batch()
    bad = labels.at[:4].set(jnp.array([-1, C, -C, -2]))
    counts = jax.jit(align.stats_update)(align.stats_init(), logits, bad)["counts"]
    kept = align.stats_update(align.stats_init(), logits[4:], labels[4:])["counts"]
    chex.assert_trees_all_close(counts, kept, rtol=1e-6)


@pytest.mark.parametrize("name", ["flm", "ilm", "freqmap"])
def test_toy_maps_find_the_planted_sources(name):
    align = FACTORIES[name]()
    state = align.refit(align.init(jax.random.key(0)), *toy_batch())
    if name == "freqmap":  # the planted source and a spare per target, all distinct
        index = np.asarray(jr.output.map_indices(state["omega"], 2))
        assert all(planted in row for planted, row in zip([1, 3, 5], index.tolist()))
        assert len(set(index.ravel().tolist())) == 6
    else:
        np.testing.assert_array_equal(targets(state), [1, 3, 5])


def test_permuting_source_classes_permutes_blm_and_ilm():
    logits, labels = toy_batch()
    perm = np.random.default_rng(0).permutation(S)
    for align in (jr.output.blm(S, C), jr.output.ilm(S, C), jr.output.blm_plus(S, C, k=2)):
        state = align.refit(align.init(jax.random.key(0)), logits, labels)
        permuted = align.refit(align.init(jax.random.key(0)), logits[:, perm], labels)
        chex.assert_trees_all_close(permuted["omega"], state["omega"][perm], rtol=1e-6)
        chex.assert_trees_all_close(
            align.apply(permuted, logits[:, perm]), align.apply(state, logits), rtol=1e-5
        )


# ------------------------------------------------------------------ jit / vmap / grad


def fitted(name, seed=0):
    align = FACTORIES[name]()
    state = align.init(jax.random.key(seed))
    if name in STATISTICAL:
        state = align.refit(state, *toy_batch(seed=seed))
    return align, state


class TransformsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*STATISTICAL)
    def test_refit_jit_equals_nojit(self, name):
        align, state = fitted(name)
        logits, labels = toy_batch(seed=1)
        refitted = self.variant(align.refit)(state, logits, labels)
        chex.assert_trees_all_close(refitted, align.refit(state, logits, labels), rtol=1e-6)

    @parameterized.parameters(*STATISTICAL)
    def test_vmap_refit_over_candidates_equals_a_loop(self, name):
        align = FACTORIES[name]()
        batches = [toy_batch(seed=seed) for seed in range(3)]
        logits = jnp.stack([b[0] for b in batches])  # K candidates' logits, K label maps
        states = jax.vmap(align.init)(jax.random.split(jax.random.key(0), 3))
        got = jax.vmap(align.refit, in_axes=(0, 0, 0))(states, logits, jnp.stack([b[1] for b in batches]))
        for k, (x, y) in enumerate(batches):
            want = align.refit(jr.candidates.select(states, k), x, y)
            chex.assert_trees_all_close(jr.candidates.select(got, k), want, rtol=1e-6)

    @parameterized.parameters(*FACTORIES)
    def test_grad_flows_to_the_source_logits(self, name):
        """To the logits (what trains the prompt before the alignment), and for a trainable
        alignment to every leaf of its state; refitted states are not differentiated."""
        align, state = fitted(name)
        logits, labels = toy_batch(seed=2)

        def loss(state, x):
            out = align.apply(state, x)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), labels[:, None], 1))

        g_state, g = jax.jit(jax.grad(loss, argnums=(0, 1)))(state, logits)
        assert jnp.all(jnp.isfinite(g)) and jnp.any(g != 0)
        if align.trainable:
            for leaf in jax.tree.leaves(g_state):
                assert jnp.all(jnp.isfinite(leaf)) and jnp.any(leaf != 0), name

    def test_state_leaves_are_floating_point(self):
        for name in FACTORIES:
            for leaf in jax.tree.leaves(fitted(name)[1]):
                assert jnp.issubdtype(leaf.dtype, jnp.floating), name


def test_in_a_reprogrammed_program_output_candidates_share_one_forward_pass():
    # a linear "frozen model" keeps the compile small; tests/test_core.py covers real linen models
    spec = jr.ImageSpec(size=8, num_classes=7)
    model = jr.FrozenModel(lambda p, x, hook=None: x.reshape(len(x), -1) @ p, jnp.ones((192, 7)), spec)
    program = jr.reprogram(model, input=additive(), output=jr.output.ilm(7, 3))
    theta = program.init(jax.random.key(0))
    x, y = jax.random.uniform(jax.random.key(1), (6, 8, 8, 3)), jnp.array([0, 1, 2, 0, 1, 2])
    logits = program.source_logits(theta, model.params, x)  # one forward pass
    refitted = program.refit(theta, logits, y)
    chex.assert_trees_all_equal(refitted["output"], jr.output.ilm(7, 3).refit(theta["output"], logits, y))
    other = {**theta, "output": jr.output.rlm(7, 3).init(jax.random.key(5))}
    thetas = jr.candidates.stack([refitted, other])
    out = jax.jit(jax.vmap(program.align, in_axes=(0, None)))(thetas, logits)  # K maps, no extra pass
    chex.assert_shape(out, (2, 6, 3))
    chex.assert_trees_all_close(out[0], program.apply(refitted, model.params, x), rtol=1e-6)
    chex.assert_trees_all_close(out[1], program.apply(other, model.params, x), rtol=1e-6)


# ------------------------------------------------------------------ errors


def test_class_count_errors():
    for factory in (jr.output.rlm, jr.output.flm, jr.output.ilm):
        with pytest.raises(ValueError, match="num_target <= num_source"):
            factory(num_source=3, num_target=5)
    with pytest.raises(ValueError, match=r"3 \* num_target <= num_source"):
        jr.output.freqmap(10, 4, per_target=3)
    with pytest.raises(ValueError, match="num_target must equal num_source"):
        jr.output.identity(10, 3)
    with pytest.raises(ValueError, match="blm: num_source must be an int >= 1, got 0"):
        jr.output.blm(0, 3)
    with pytest.raises(ValueError, match=r"blm_plus: k .* must be an int in \[1, 9\], got 10"):
        jr.output.blm_plus(9, 3, k=10)


@pytest.mark.parametrize("name", [*STATISTICAL, "rlm", "linear"])
def test_batch_errors(name):
    align, state = fitted(name)
    logits, labels = toy_batch()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_target=3\), got values in \[0, 3\]"):
        align.refit(state, logits, labels.at[0].set(3))
    with pytest.raises(ValueError, match="num_source=9 on the last axis, got shape"):
        align.refit(state, logits[:, :8], labels)
    with pytest.raises(ValueError, match="num_source=9 on the last axis"):
        align.apply(state, logits[:, :8])
    with pytest.raises(ValueError, match="empty batch"):
        align.refit(state, logits[:0], labels[:0])
    with pytest.raises(ValueError, match="NaN/inf values in 1 of 24 rows"):
        align.refit(state, logits.at[3, 2].set(jnp.nan), labels)
    with pytest.raises(TypeError, match="labels must be integers"):
        align.refit(state, logits, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"labels must have shape \(24,\)"):
        align.refit(state, logits, labels[:5])


def test_nan_passes_unchecked_under_jit():
    """Value checks need concrete values: under jit a NaN row raises nothing (eagerly it does, above),
    ILM's refit still returns a one-to-one map, and apply puts the NaN in that row only."""
    align, state = fitted("ilm")
    logits, labels = toy_batch()
    bad = logits.at[0].set(jnp.nan)
    omega = np.asarray(jax.jit(align.refit)(state, bad, labels)["omega"])
    np.testing.assert_array_equal(omega.sum(0), np.ones(C))
    assert set(np.unique(omega)) <= {0.0, 1.0} and omega.sum(1).max() == 1
    out = np.asarray(jax.jit(align.apply)({"omega": omega}, bad))
    assert np.isnan(out[0]).all() and np.isfinite(out[1:]).all()


def test_state_and_verbalizer_errors():
    align = jr.output.ilm(S, C)
    with pytest.raises(
        ValueError, match=r"state\['omega'\] must have shape \(num_source, num_target\)=\(9, 3\)"
    ):
        align.apply({"omega": jnp.zeros((4, 9, 3))}, toy_batch()[0])
    with pytest.raises(ValueError, match=r"label_words\[1\] has ids outside \[0, num_source=5\)"):
        jr.output.verbalizer([[1], [7]], num_source=5)
    with pytest.raises(ValueError, match=r"label_words\[0\] must be a non-empty sequence of ints"):
        jr.output.verbalizer([[], [1]], num_source=5)
    with pytest.raises(ValueError, match="reduce must be"):
        jr.output.verbalizer([[1]], num_source=5, reduce="median")
    with pytest.raises(TypeError, match=r"verbalizer: num_source must be an int >= 1, got None \(NoneType\)"):
        jr.output.verbalizer([[1]], num_source=None)


def test_freqmap_with_one_source_per_target_is_flm_shaped():
    """AutoVP's loader default m = 1: (N, C) logits, each target reading its one source."""
    align = jr.output.freqmap(10, 3, per_target=1)
    logits = jax.random.normal(jax.random.key(0), (4, 10))
    state = align.refit(align.init(None), logits, jnp.asarray([0, 1, 2, 0]))
    out = align.apply(state, logits)
    chex.assert_shape(out, (4, 3))
    chex.assert_trees_all_close(out, logits[:, jr.output.map_indices(state["omega"])])
