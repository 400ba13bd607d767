"""UCR time series from the sktime wheel (jaxreprog.data.ucr) and the Voice2Series benchmark on them."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import benchmark

import jaxreprog as jr
from jaxreprog.data import text, ucr

# The archive's published sizes (timeseriesclassification.com): train, test, length, classes.
KNOWN = {
    "ucr_gun_point": (50, 150, 150, 2),
    "ucr_italy_power": (67, 1029, 24, 2),
    "ucr_arrow_head": (36, 175, 251, 3),
    "ucr_osu_leaf": (200, 242, 427, 6),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    for name in KNOWN:
        jr.data.builder(name, data_dir=path)
    return path


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_splits_have_the_archive_sizes_shapes_and_labels(data_dir, name):
    n_train, n_test, length, classes = KNOWN[name]
    assert ucr.SIZES[name] == {"train": n_train, "test": n_test}
    b = jr.data.builder(name, data_dir=data_dir)
    assert {s: b.info.splits[s].num_examples for s in b.info.splits} == {"train": n_train, "test": n_test}
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = jr.data.arrays(name, split, data_dir=data_dir)
        chex.assert_shape(x, (n, length, 1))
        chex.assert_shape(y, (n,))
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert np.isfinite(x).all()
        assert set(np.unique(y)) == set(range(classes))  # every class in every split
        # The archive z-normalises each series (sample standard deviation).
        np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-4)
        np.testing.assert_allclose(x.std(axis=1, ddof=1), 1.0, atol=1e-3)


def test_records_are_the_ts_files_in_source_order(data_dir):
    root = text.package_dir("sktime", "") / "datasets" / "data" / "GunPoint"
    x_file, y_file, names = ucr.read_ts(root / "GunPoint_TEST.ts")
    assert names == ("1", "2")
    x, y = jr.data.arrays("ucr_gun_point", "test", data_dir=data_dir)
    np.testing.assert_array_equal(x, x_file)
    np.testing.assert_array_equal(y, y_file)
    first = (root / "GunPoint_TEST.ts").read_text().split("@data")[1].split()[0]
    values, label = first.rsplit(":", 1)
    np.testing.assert_allclose(x[0, :3, 0], [float(v) for v in values.split(",")[:3]], rtol=1e-6)
    assert names[y[0]] == label


def test_load_batches_series_and_refuses_image_and_text_options(data_dir):
    ds = jr.data.load("ucr_arrow_head", "train", batch_size=16, shuffle_seed=0, data_dir=data_dir)
    assert ds.info.modality == "series" and ds.info.shape == (251, 1) and ds.class_names == ("0", "1", "2")
    x, y = next(iter(ds))
    chex.assert_shape(x, (16, 251, 1))
    assert x.dtype == np.float32 and y.dtype == np.int32
    with pytest.raises(ValueError, match="rgb / image_size apply to images; 'ucr_arrow_head' is series"):
        jr.data.load("ucr_arrow_head", "train", batch_size=4, rgb=True, data_dir=data_dir)
    with pytest.raises(ValueError, match="tokenizer applies to text; 'ucr_arrow_head' holds series"):
        jr.data.load("ucr_arrow_head", "train", batch_size=4, tokenizer=object(), data_dir=data_dir)
    with pytest.raises(ValueError, match="has no split 'validation'"):
        jr.data.load("ucr_arrow_head", "validation", batch_size=4, data_dir=data_dir)


# ------------------------------------------------------------------- bad input


def _ts(tmp_path, rows, header="@problemName T\n@classLabel true a b\n@data\n"):
    path = tmp_path / "T_TRAIN.ts"
    path.write_text(header + "".join(r + "\n" for r in rows))
    return path


def test_read_ts_reads_a_small_file(tmp_path):
    x, y, names = ucr.read_ts(_ts(tmp_path, ["1,2,3:b", "4,5,6:a"]))
    np.testing.assert_array_equal(x[..., 0], [[1, 2, 3], [4, 5, 6]])
    assert x.dtype == np.float32 and y.tolist() == [1, 0] and names == ("a", "b")
    x, _, _ = ucr.read_ts(_ts(tmp_path, ["1,2:3,4:a"]))  # two dimensions
    np.testing.assert_array_equal(x, [[[1, 3], [2, 4]]])


@pytest.mark.parametrize(
    ("rows", "header", "match"),
    [
        (["1,NaN,3:a"], None, r"T_TRAIN.ts:4: the series contains NaN"),
        (["1,?,3:a"], None, r"T_TRAIN.ts:4: a value is not a number \(a missing value"),
        (["1,inf,3:a"], None, "contains an infinite value"),
        (["1,2,3:a", "1,2:b"], None, r"T_TRAIN.ts:5: series of shape \(length, dims\) \(2, 1\).*\(3, 1\)"),
        (["1,2,3:c"], None, r"labels \['c'\] are not in @classLabel \('a', 'b'\)"),
        (["1,2,3:a"], "@classLabel true a\n@seriesLength 4\n@data\n", "@seriesLength 4 but the series have"),
        (["1,2,3"], "@targetLabel true\n@data\n", r"T_TRAIN.ts: not a classification .ts file"),
        (["1,2,3"], None, r"T_TRAIN.ts:4: expected comma-separated values, then ':' and the class label"),
        ([], "@classLabel true a\n", "no @data line"),
        (["1,2,3:a"], "1,2\n", "expected a @header line before @data"),
    ],
)
def test_read_ts_rejects_bad_files_naming_file_and_line(tmp_path, rows, header, match):
    path = _ts(tmp_path, rows) if header is None else _ts(tmp_path, rows, header)
    with pytest.raises(ValueError, match=match):
        ucr.read_ts(path)


def test_voice2series_transform_rejects_short_long_and_nan_series(data_dir):
    x, _ = jr.data.arrays("ucr_italy_power", "train", data_dir=data_dir)  # T = 24
    spec = jr.SequenceSpec(length=32, value_range=(-6.0, 6.0))
    transform = jr.input.sequence_pad(24)
    theta = transform.init(jax.random.key(0), spec)
    chex.assert_shape(transform.apply(theta, x[:4], spec), (4, 32, 1))
    with pytest.raises(ValueError, match="x has series of length 20, expected target_length=24"):
        transform.apply(theta, x[:4, :20], spec)  # shorter than the transform was built for
    with pytest.raises(ValueError, match="target_length=24 must be smaller than spec.length=24"):
        transform.init(jax.random.key(0), jr.SequenceSpec(length=24, value_range=(-6.0, 6.0)))
    with pytest.raises(ValueError, match="sequence_pad: x contains NaN"):
        transform.apply(theta, x[:4].copy() * np.where(np.arange(24) == 5, np.nan, 1.0)[:, None], spec)
    with pytest.raises(ValueError, match=r"sequence_pad: x must lie in \[-1, 1\]"):
        transform.apply(theta, x[:4], jr.SequenceSpec(length=32))  # z-normalised values exceed ±1


# ------------------------------------------------------------------- benchmark


@pytest.fixture(scope="module")
def v2s():
    return benchmark("voice2series_ucr")


def test_source_models_init_as_flax_would_and_classify(v2s):
    fcn = v2s.FCN(num_classes=6, width=4, kernels=(3,))
    transformer = v2s.Transformer(num_classes=6, width=8, layers=1, heads=2)
    for net, lengths in ((fcn, (7, 30)), (transformer, (30,))):  # the transformer's positions fix T
        variables = v2s.init_variables(net, 30, seed=0)
        flax_shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 30, 1)))
        chex.assert_trees_all_equal_shapes(variables, flax_shapes)
        apply = jax.jit(net.apply)
        for length in lengths:
            chex.assert_shape(apply(variables, jnp.zeros((2, length, 1))), (2, 6))
    params = v2s.init_variables(transformer, 30, seed=0)["params"]
    q = params["MultiHeadDotProductAttention_0"]["query"]["kernel"]
    assert q.shape == (8, 2, 4) and 0.2 < q.std() < 0.5  # fan-in 8 (the model width): std 1/√8 ≈ 0.35


def test_quick_run_reports_every_method_for_a_target(v2s, data_dir):
    # The one-conv FCN compiles fastest (the transformer: test_source_models_..., and the slow full run).
    record = v2s.main(["--targets", "ucr_italy_power", "--model", "fcn", "--data-dir", data_dir], quick=True)
    assert record["source"]["dataset"] == "ucr_osu_leaf" and record["source"]["classes"] == 6
    row = record["targets"]["ucr_italy_power"]
    shape = (row["length"], row["classes"], row["train"], row["test"], row["per_target"])
    assert shape == (24, 2, 67, 1029, 3)
    for method in ("reprogram", "reprogram_untrained", "scratch"):
        assert len(row[method]["runs"]) == 1 and 0.0 <= row[method]["mean"] <= 1.0
    assert record["command"].endswith("--quick") and record["source"]["model"] == "fcn"


@pytest.mark.slow
def test_full_run_pretraining_helps_reprogramming_on_every_target(v2s, data_dir):
    # Measured (benchmarks/RESULTS.md): source 40.9 %; reprogram / untrained / scratch 76.7 / 48.7 / 85.3 %
    # (GunPoint), 87.8 / 68.9 / 96.2 % (ItalyPowerDemand), 54.3 / 32.6 / 61.1 % (ArrowHead).
    record = v2s.main(["--data-dir", data_dir])
    assert record["source"]["test_accuracy"] > 0.3  # six classes: chance is about 1/6
    for name, row in record["targets"].items():
        chance = 1.0 / row["classes"]
        assert row["reprogram"]["mean"] > max(chance + 0.05, row["reprogram_untrained"]["mean"]), name
        assert row["scratch"]["mean"] > chance + 0.1, name
