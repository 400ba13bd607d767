"""Time-LLM (Jin et al. ICLR 2024) and the packaged forecasting series it is benchmarked on."""

from __future__ import annotations

import functools
import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import benchmark
from jax.experimental import checkify

import jaxreprog as jr
from jaxreprog.models import gpt2, llama

pytest.importorskip(
    "statsmodels", reason="the forecasting series ship in statsmodels: pip install statsmodels"
)

from jaxreprog.data import forecasting

tl = importlib.import_module(
    "jaxreprog.embedding.time_llm"
)  # the module (jr.embedding.time_llm is the method)

# ---------------------------------------------------------------------- data: packaged series


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_forecasting"))


@pytest.mark.parametrize("name", sorted(forecasting.BUILDERS))
def test_series_read_from_the_wheel(name):
    values = forecasting.series(name)
    chex.assert_shape(values, (forecasting._SOURCES[name].length,))
    assert np.all(np.isfinite(values))


def test_windows_split_in_time_order_without_leakage(tfds_dir):
    name, c, h = "sm_sunspots", 12, 5
    values = forecasting.series(name).astype(np.float32)
    seg = forecasting.segments(len(values))
    mean, std = forecasting.scale(name)
    seen = set()
    for split in ("train", "validation", "test"):
        x, y = jr.data.arrays(f"{name}/c{c}_h{h}", split, data_dir=tfds_dir)
        chex.assert_shape((x, y), ((len(x), c), (len(x), h)))
        assert x.dtype == y.dtype == np.float32
        lo, hi = seg[split]
        starts = np.arange(max(lo, c), hi - h + 1)
        assert len(x) == len(starts)
        for t, xi, yi in zip(starts, x, y):  # each window is the series itself, in time order
            np.testing.assert_allclose(xi * std + mean, values[t - c : t], rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(yi * std + mean, values[t : t + h], rtol=1e-5, atol=1e-3)
        targets = {int(t) + k for t in starts for k in range(h)}
        assert targets <= set(range(lo, hi)) and not targets & seen  # no target in two splits
        seen |= targets


def test_standardized_with_the_train_segment_only():
    scale = forecasting.scale("sm_sunspots")
    train = forecasting.series("sm_sunspots")[: forecasting.segments(309)["train"][1]]
    assert scale.mean == pytest.approx(train.mean()) and scale.std == pytest.approx(train.std())
    assert forecasting.scale("sm_sunspots/c12_h5") == scale  # one scale per series, whatever the window


def test_packaged_like_the_other_datasets(tfds_dir):
    """``jr.data.names()`` lists the series; ``jr.data.load`` batches the table's window of each."""
    assert {"sm_co2", "sm_elnino", "sm_sunspots"} <= set(jr.data.names())
    ds = jr.data.load("sm_sunspots", "test", batch_size=32, data_dir=tfds_dir)
    info = ds.info
    assert (info.modality, info.shape, info.num_examples, info.num_classes) == ("series", (40,), 55, 0)
    batches = list(ds)
    chex.assert_shape([b[1] for b in batches], [(32, 8), (23, 8)])
    x, y = jr.data.arrays("sm_sunspots", "test", data_dir=tfds_dir)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    # the last test target is the series' last value, standardised
    mean, std = forecasting.scale("sm_sunspots")
    assert y[-1, -1] == pytest.approx((forecasting.series("sm_sunspots")[-1] - mean) / std, rel=1e-5)


def test_benchmark_smoke(tfds_dir):
    """benchmarks/time_llm.py --quick: every row of sm_sunspots, finite; the baselines are the same numbers
    as in RESULTS.md (they do not depend on the model: naive 5.635, linear 1.573 test MSE)."""
    (rows,) = benchmark("time_llm").main(["--quick", "--data-dir", tfds_dir]).values()
    assert len(rows) == 4 and all(np.isfinite(v).all() for v in rows.values())
    assert rows["naive (last value)"] == pytest.approx((5.635, 1.992), abs=1e-3)
    assert rows["linear (least squares)"] == pytest.approx((1.573, 0.946), abs=1e-3)


def test_data_bad_arguments(tfds_dir):
    with pytest.raises(ValueError, match="unknown forecasting dataset"):
        forecasting.series("nope")
    with pytest.raises(ValueError, match="unknown dataset 'sm_sunspot'. Did you mean 'sm_sunspots'"):
        jr.data.load("sm_sunspot", "train", batch_size=8, data_dir=tfds_dir)
    with pytest.raises(ValueError, match="horizon must be a positive int, got 0"):
        jr.data.load("sm_sunspots/c40_h0", "train", batch_size=8, data_dir=tfds_dir)
    with pytest.raises(ValueError, match="window config must be 'c<context>_h<horizon>'"):
        jr.data.load("sm_sunspots/40_8", "train", batch_size=8, data_dir=tfds_dir)
    with pytest.raises(ValueError, match="leave no validation window"):
        jr.data.builder("sm_sunspots/c40_h40", data_dir=tfds_dir, prepare=False)
    with pytest.raises(ValueError, match="has no split 'dev'"):
        jr.data.load("sm_sunspots", "dev", batch_size=8, data_dir=tfds_dir)
    with pytest.raises(ValueError, match="rgb / image_size apply to images"):
        jr.data.load("sm_sunspots", "train", batch_size=8, data_dir=tfds_dir, rgb=True)


# ---------------------------------------------------------------------- Time-LLM

T, H = 12, 3
PROMPT = tl.StatsPrompt(
    digits=tuple(range(10)),
    plus=10,
    minus=11,
    point=12,
    up=13,
    down=14,
    description=(20, 21),
    labels=((15,), (16,), (17,), (18,), (19,)),
    top_lags=2,
)


def _hook(**kw):
    args = dict(patch_len=4, stride=4, d_model=8, heads=2, num_prototypes=10, d_ff=8)
    return tl.time_llm(T, H, **{**args, **kw})


@functools.cache
def _lm(family: str) -> jr.FrozenModel:
    if family == "gpt2":
        config = gpt2.GPT2Config(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, max_positions=64)
        return gpt2.from_config(config, jax.random.key(0))
    config = llama.DecoderConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        head_dim=4,
        max_positions=64,
    )
    return llama.from_config(config, jax.random.key(0))


@functools.cache
def _setup(family: str = "gpt2"):
    model = tl.time_llm_backbone(_lm(family), prompt=PROMPT)
    program = jr.reprogram(model, embedding=_hook())
    return model, program, jax.jit(program.apply)


def _series(n=6, seed=2):
    t = jnp.arange(T, dtype=jnp.float32)
    noise = jax.random.normal(jax.random.key(seed), (n, T))
    return 7.0 + 3.0 * jnp.sin(t / 2 + jnp.arange(n)[:, None]) + 0.3 * noise


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_forecast_shapes_grad_reaches_theta_not_the_frozen_lm(family):
    model, program, apply = _setup(family)
    theta = program.init(jax.random.key(1))
    x, y = _series(), jnp.zeros((6, H))
    chex.assert_shape(jax.eval_shape(apply, theta, model.params, x), (6, H))

    def loss(theta, params):
        return jr.train.mse(program.apply(theta, params, x), y).mean()

    g_theta, g_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, model.params)
    for path, g in jax.tree_util.tree_leaves_with_path(g_theta["embedding"]):
        assert bool(jnp.any(g != 0)), f"no gradient reaches {jax.tree_util.keystr(path)}"
    for g in jax.tree.leaves(g_params):
        np.testing.assert_array_equal(g, 0)


def test_revin_round_trip_and_equivariance():
    x = _series()
    z, mu, sigma = tl.normalize(x)
    chex.assert_trees_all_close(tl.denormalize(z, mu, sigma), x, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(z.mean(1), jnp.zeros(6), atol=1e-5)
    # The whole forecaster commutes with a x + b (the prompt sees only z): RevIN's point.
    model, program, apply = _setup()
    theta = program.init(jax.random.key(1))
    base = apply(theta, model.params, x)
    chex.assert_trees_all_close(
        apply(theta, model.params, 4.0 * x - 30.0), 4.0 * base - 30.0, rtol=1e-3, atol=1e-3
    )


def test_channels_are_independent_series():
    model, program, apply = _setup()
    theta = program.init(jax.random.key(1))
    x = _series().reshape(2, 3, T).transpose(0, 2, 1)  # (B=2, T, C=3)
    got = apply(theta, model.params, x)
    chex.assert_shape(got, (2, H, 3))
    flat = apply(theta, model.params, x.transpose(0, 2, 1).reshape(6, T))
    chex.assert_trees_all_close(got, flat.reshape(2, 3, H).transpose(0, 2, 1), rtol=1e-5, atol=1e-5)


def test_vmap_over_candidates_equals_a_loop():
    model, program, apply = _setup()
    thetas = [program.init(jax.random.key(k)) for k in (1, 2)]
    x = _series()
    many = jax.jit(jax.vmap(program.apply, in_axes=(0, None, None)))(
        jr.candidates.stack(thetas), model.params, x
    )
    for k, theta in enumerate(thetas):
        chex.assert_trees_all_close(many[k], apply(theta, model.params, x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(many[0], many[1])


def test_stats_prompt_renders_min_max_median_trend_and_lags():
    t = jnp.arange(T, dtype=jnp.float32)
    rising = jnp.stack([t, jnp.sin(2 * jnp.pi * t / 4)])  # a ramp; a period-4 wave
    z = tl.normalize(rising)[0]
    ids = np.asarray(jax.jit(PROMPT.ids)(z))
    chex.assert_shape(ids, (2, PROMPT.length(T)))
    assert ids.max() < 32
    # description (2), "min" label, then -1.59 as sign, digit, point, digit, digit
    lo = float(z[0].min())
    assert list(ids[0, :8]) == [20, 21, 15, 11, 1, 12, int(abs(lo) * 10) % 10, round(abs(lo) * 100) % 10]
    trend = list(ids[:, 2 + 3 * 6 + 1])
    assert trend == [PROMPT.up, PROMPT.down] or trend[0] == PROMPT.up
    lags = ids[1, -4:].reshape(2, 2) @ np.array([10, 1])  # two 2-digit lags
    assert 4 in lags


@pytest.mark.slow
def test_fit_with_mse_lowers_the_loss_on_real_windows(tfds_dir):
    x, y = jr.data.arrays(f"sm_sunspots/c{T}_h{H}", "train", data_dir=tfds_dir)
    model, program, _ = _setup()
    train = jr.data.from_arrays(x[:64], y[:64], batch_size=32, shuffle_seed=0)
    _, history = jr.train.fit(
        program, model, train, epochs=4, loss=jr.train.mse, key=jax.random.key(0), progress=False
    )
    assert history[-1]["loss"] < history[0]["loss"]


def test_bad_input_clear_errors():
    with pytest.raises(ValueError, match="shorter than one patch"):
        tl.time_llm(3, 2, patch_len=4)
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        tl.time_llm(T, 0)
    with pytest.raises(TypeError, match="causal LM"):
        tl.time_llm_backbone("gpt2")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tl.time_llm_backbone(_lm("gpt2"), prompt=PROMPT._replace(description=(99,)))
    model, program, _ = _setup()
    theta = program.init(jax.random.key(1))
    x = np.array(_series())
    x[1, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite value"):
        program.apply(theta, model.params, x)
    with pytest.raises(checkify.JaxRuntimeError, match=r"1 non-finite value\(s\).*in series 1"):
        jr.checked(jax.jit(program.apply))(theta, model.params, x)  # under jit: the checked mode
    with pytest.raises(ValueError, match="context=12"):
        program.apply(theta, model.params, _series()[:, :8])
    with pytest.raises(TypeError, match="floating-point series"):
        program.apply(theta, model.params, np.ones((2, T), np.int32))
    with pytest.raises(ValueError, match="reprogram this model with"):
        model.apply(model.params, _series())
    with pytest.raises(ValueError, match="d_ff=32 exceeds"):
        jr.reprogram(model, embedding=_hook(d_ff=32)).init(jax.random.key(0))
