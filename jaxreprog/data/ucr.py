"""UCR time-series classification sets that ship inside the ``sktime`` wheel, as TF-free TFDS builders.

The UCR archive (Dau et al. 2019, *The UCR time series archive*, IEEE/CAA J.
Autom. Sinica 6(6)) publishes each problem with a fixed train/test split; the
builders keep it (no validation split: carve one from train if you need it).
``sktime`` ships the archive's ``.ts`` files under ``sktime/datasets/data/``;
they are read as text, without importing ``sktime`` (:func:`read_ts`). Each
series is stored as float32 ``(T, 1)`` in source order with its source position
as ``index``; the values are the archive's (per-series z-normalised for these
four problems).

===================  =========  ===  =======  =====  ====
name                 problem    T    classes  train  test
===================  =========  ===  =======  =====  ====
ucr_gun_point        GunPoint   150  2          50   150
ucr_italy_power      ItalyPow.  24   2          67  1029
ucr_arrow_head       ArrowHead  251  3          36   175
ucr_osu_leaf         OSULeaf    427  6         200   242
===================  =========  ===  =======  =====  ====

Class names are the archive's labels in its ``@classLabel`` order (``"1", "2"``
for GunPoint, ``"0", "1", "2"`` for ArrowHead, ...); label ``i`` is the i-th.
The data are the archive's, free for research with a citation of the archive;
``sktime`` is BSD-3-Clause.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxreprog.data.text import package_dir

__all__ = ["BUILDERS", "SIZES", "ArrowHead", "GunPoint", "ItalyPowerDemand", "OsuLeaf", "read_ts"]

INSTALL = "pip install sktime (or: pip install -e '.[test]')"


def read_ts(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read an equal-length ``.ts`` file (sktime/aeon format): ``(x, labels, class_names)``.

    ``x`` is float32 ``(N, T, C)`` (dimensions of a multivariate series are separated
    by ``:``, the label follows the last one), ``labels`` int64 indices into
    ``class_names``, the ``@classLabel`` header's order.

    Raises:
      ValueError: naming the file and line, for a missing value (``?`` or NaN), an
        infinite one, a series whose length or dimension count differs from the
        header's (or the first series'), a label not in ``@classLabel``, a row
        without a label, or a file without ``@classLabel true``/``@data``.
    """
    path = pathlib.Path(path)
    header: dict[str, list[str]] = {}
    series, labels = [], []
    in_data = False
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise ValueError(
                        f"{path}:{number}: expected a @header line before @data, got {line[:40]!r}"
                    )
                key, *values = line[1:].split()
                header[key.lower()] = values
                in_data = key.lower() == "data"
                if in_data and header.get("classlabel", [])[:1] != ["true"]:
                    raise ValueError(f"{path}: not a classification .ts file (no '@classLabel true ...')")
                continue
            where = f"{path}:{number}"
            *dims, label = line.split(":")
            if not dims:
                raise ValueError(f"{where}: expected comma-separated values, then ':' and the class label")
            try:
                rows = [[float(v) for v in d.split(",")] for d in dims]
            except ValueError:
                raise ValueError(f"{where}: a value is not a number (a missing value '?'?)") from None
            if len({len(r) for r in rows}) != 1:
                raise ValueError(
                    f"{where}: the series' dimensions differ in length; only equal lengths are read"
                )
            values = np.asarray(rows, np.float64).T  # (T, C)
            if np.isnan(values).any():
                raise ValueError(f"{where}: the series contains NaN (a missing value); fill or drop it first")
            if not np.isfinite(values).all():
                raise ValueError(f"{where}: the series contains an infinite value")
            if series and values.shape != series[0].shape:
                raise ValueError(
                    f"{where}: series of shape (length, dims) {values.shape}, but the first one has "
                    f"{series[0].shape}; only equal-length files are read"
                )
            series.append(values)
            labels.append(label.strip())
    if not in_data:
        raise ValueError(f"{path}: no @data line")
    names = tuple(header["classlabel"][1:])
    length = header.get("serieslength")
    if length and series and int(length[0]) != series[0].shape[0]:
        raise ValueError(f"{path}: @seriesLength {length[0]} but the series have length {series[0].shape[0]}")
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"{path}: labels {unknown} are not in @classLabel {names}")
    index = {name: i for i, name in enumerate(names)}
    x = np.stack(series).astype(np.float32) if series else np.zeros((0, 0, 1), np.float32)
    return x, np.asarray([index[y] for y in labels], np.int64), names


class _Ucr(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A UCR problem: the archive's train/test split, float32 ``(T, 1)`` series."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    PROBLEM: ClassVar[str]
    LENGTH: ClassVar[int]
    SIZES: ClassVar[dict[str, int]]
    CLASS_NAMES: ClassVar[tuple[str, ...]]
    DESCRIPTION: ClassVar[str]
    code_path = None  # Nothing downloads: no checksums file to look up (see packaged._Packaged).

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "series": tfds.features.Tensor(shape=(self.LENGTH, 1), dtype=np.float32),
                "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
                "index": tfds.features.Tensor(shape=(), dtype=np.int32),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"UCR archive problem {self.PROBLEM}: {self.DESCRIPTION} The archive's own "
            f"train/test split ({self.SIZES['train']} / {self.SIZES['test']}), read from the .ts files "
            "shipped in sktime. 'index' is the series' position in its split's file.",
            features=features,
            supervised_keys=("series", "label"),
            disable_shuffling=True,
            homepage=f"https://www.timeseriesclassification.com/description.php?Dataset={self.PROBLEM}",
            citation="Dau et al., The UCR time series archive, IEEE/CAA J. Autom. Sinica 6(6), 2019.",
        )

    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        root = package_dir("sktime", INSTALL) / "datasets" / "data" / self.PROBLEM
        path = root / f"{self.PROBLEM}_{split.upper()}.ts"
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: {path} is missing from the installed sktime; {INSTALL}")
        x, labels, names = read_ts(path)
        if names != self.CLASS_NAMES or x.shape[1:] != (self.LENGTH, 1) or len(x) != self.SIZES[split]:
            raise RuntimeError(
                f"{self.name}: {path} holds {len(x)} series of shape {x.shape[1:]} with classes {names}; "
                f"expected {self.SIZES[split]} of shape ({self.LENGTH}, 1) with classes {self.CLASS_NAMES}"
            )
        return x, labels

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # Everything is on disk already.
        return {split: self._generate_examples(*self._read(split)) for split in ("train", "test")}

    def _generate_examples(self, x: np.ndarray, labels: np.ndarray) -> Iterator:
        for i in range(len(x)):
            yield i, {"series": x[i], "label": int(labels[i]), "index": np.int32(i)}


class GunPoint(_Ucr):
    """GunPoint (Ratanamahatana & Keogh 2005): hand-centroid x-coordinate, gun draw vs pointing."""

    name = "ucr_gun_point"
    PROBLEM, LENGTH = "GunPoint", 150
    SIZES: ClassVar = {"train": 50, "test": 150}
    CLASS_NAMES: ClassVar = ("1", "2")
    DESCRIPTION = "x-coordinate of an actor's right hand, 150 frames; 1 = gun draw, 2 = point."


class ItalyPowerDemand(_Ucr):
    """ItalyPowerDemand (Keogh et al. 2006): a day's 24 hourly loads in Italy, winter vs summer half-year."""

    name = "ucr_italy_power"
    PROBLEM, LENGTH = "ItalyPowerDemand", 24
    SIZES: ClassVar = {"train": 67, "test": 1029}
    CLASS_NAMES: ClassVar = ("1", "2")
    DESCRIPTION = (
        "24 hourly electrical loads of one day in Italy (1997); 1 = October-March, 2 = April-September."
    )


class ArrowHead(_Ucr):
    """ArrowHead (Ye & Keogh 2009): outlines of projectile points as 1-D angle series, three classes."""

    name = "ucr_arrow_head"
    PROBLEM, LENGTH = "ArrowHead", 251
    SIZES: ClassVar = {"train": 36, "test": 175}
    CLASS_NAMES: ClassVar = ("0", "1", "2")
    DESCRIPTION = "Arrowhead outlines as 251-point series; 0 = Avonlea, 1 = Clovis, 2 = Mix."


class OsuLeaf(_Ucr):
    """OSULeaf (Gandhi 2002): leaf outlines of six Oregon tree species as 1-D series."""

    name = "ucr_osu_leaf"
    PROBLEM, LENGTH = "OSULeaf", 427
    SIZES: ClassVar = {"train": 200, "test": 242}
    CLASS_NAMES: ClassVar = ("1", "2", "3", "4", "5", "6")
    DESCRIPTION = "Leaf outlines of six tree species, 427-point series."


BUILDERS: dict[str, type[_Ucr]] = {b.name: b for b in (GunPoint, ItalyPowerDemand, ArrowHead, OsuLeaf)}
SIZES: dict[str, dict[str, int]] = {name: dict(b.SIZES) for name, b in BUILDERS.items()}
