"""Time-LLM (Jin et al. ICLR 2024) and the packaged forecasting series it is benchmarked on."""

from __future__ import annotations

import chex
import numpy as np
import pytest

pytest.importorskip(
    "statsmodels", reason="the forecasting series ship in statsmodels: pip install statsmodels"
)

from jaxreprog.data import forecasting

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
    seen = set()
    for split in ("train", "validation", "test"):
        x, y, scale = forecasting.load(
            name, split, context=c, horizon=h, standardize=False, data_dir=tfds_dir
        )
        assert scale == forecasting.Scale(0.0, 1.0)
        chex.assert_shape((x, y), ((len(x), c), (len(x), h)))
        lo, hi = seg[split]
        starts = np.arange(max(lo, c), hi - h + 1)
        assert len(x) == len(starts)
        for t, xi, yi in zip(starts, x, y):  # each window is the series itself, in time order
            np.testing.assert_array_equal(xi, values[t - c : t])
            np.testing.assert_array_equal(yi, values[t : t + h])
        targets = {int(t) + k for t in starts for k in range(h)}
        assert targets <= set(range(lo, hi)) and not targets & seen  # no target in two splits
        seen |= targets


def test_standardized_with_the_train_segment_only(tfds_dir):
    x, _, scale = forecasting.load("sm_sunspots", "test", context=12, horizon=5, data_dir=tfds_dir)
    raw, _, _ = forecasting.load(
        "sm_sunspots", "test", context=12, horizon=5, standardize=False, data_dir=tfds_dir
    )
    train = forecasting.series("sm_sunspots")[: forecasting.segments(309)["train"][1]]
    assert scale.mean == pytest.approx(train.mean()) and scale.std == pytest.approx(train.std())
    np.testing.assert_allclose(x, (raw - scale.mean) / scale.std, rtol=1e-5, atol=1e-5)


def test_data_bad_arguments():
    with pytest.raises(ValueError, match="unknown forecasting dataset"):
        forecasting.series("nope")
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        forecasting.builder("sm_sunspots", horizon=0, prepare=False)
    with pytest.raises(ValueError, match="leave no validation window"):
        forecasting.builder("sm_sunspots", context=40, horizon=40, prepare=False)
    with pytest.raises(ValueError, match="split must be"):
        forecasting.load("sm_sunspots", "dev")
