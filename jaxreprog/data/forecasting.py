"""Real forecasting series that ship inside a PyPI wheel, as windowed TFDS builders without TensorFlow.

The series are read straight from the CSV files inside an installed ``statsmodels`` wheel
(``statsmodels/datasets/<name>/<name>.csv``; statsmodels is BSD-3, each series is public domain
as its ``data.py`` says), without importing statsmodels:

=============  ===========================================  ======  ======  =======  ======
name           series                                       length  period  context  horizon
=============  ===========================================  ======  ======  =======  ======
``sm_co2``     Mauna Loa CO2, weekly 1958-2001 (ppm)          2284      52      104      26
``sm_elnino``  Nino 1+2 sea-surface temperature, monthly       732      12       48      12
               1950-2010 (°C)
``sm_sunspots``  yearly mean sunspot number 1700-2008          309      11       40       8
=============  ===========================================  ======  ======  =======  ======

co2 has 59 missing weeks; they are filled by linear interpolation in time (the only
preprocessing). ``period`` is the seasonal period the seasonal-naive baseline uses.

**Splits, in time order, without leakage.** The series is cut at 70% and 80% of its length
(the 7:1:2 of Informer / Time-LLM's custom datasets): the train, validation and test
*segments*. An example is a window ``(context, target)`` of ``context`` consecutive values and
the ``horizon`` values after them; it belongs to the split whose segment holds all of its
target values (windows whose target straddles a cut are dropped), and its context may reach
back into the earlier segments (the past, as in Informer's data loaders). So no target value
is in two splits, and no window sees a value later than its own target. Windows step by one.

``index`` is the position of the window's first target value in the series.

**Loading.** The series are packaged datasets of :mod:`jaxreprog.data` (:func:`~jaxreprog.data.names`):
``jr.data.load(name, split, batch_size=...)`` yields ``x`` ``(B, context)`` and ``y`` ``(B, horizon)``
float32, standardised with the *train segment's* mean and standard deviation (:func:`scale`; what
the Time-LLM / Informer benchmarks report MSE/MAE in; nothing else is fitted), and
``jr.data.arrays(name, split)`` gives a whole split in time order. Another window is the TFDS config
``"<name>/c<context>_h<horizon>"`` (``jr.data.load("sm_sunspots/c12_h5", "train", ...)``).

This module imports ``tensorflow_datasets``; :mod:`jaxreprog.data` imports it on first use only.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import re
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxreprog.data.text import package_dir

__all__ = [
    "BUILDERS",
    "SPLIT_FRACTIONS",
    "Forecasting",
    "Scale",
    "WindowConfig",
    "period",
    "scale",
    "segments",
    "series",
    "window",
]

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
"""Train, validation and test shares of the series, in time order."""

_INSTALL = "pip install statsmodels"


def _csv(folder: str, file: str) -> list[list[str]]:
    path = package_dir("statsmodels", _INSTALL) / "datasets" / folder / file
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:]  # the header


def _co2() -> np.ndarray:
    values = np.asarray([float(v) if v else np.nan for _, v in _csv("co2", "co2.csv")], np.float64)
    missing = np.isnan(values)
    t = np.arange(len(values))
    values[missing] = np.interp(t[missing], t[~missing], values[~missing])
    return values


def _elnino() -> np.ndarray:
    return np.asarray([[float(v) for v in row[1:13]] for row in _csv("elnino", "elnino.csv")]).reshape(-1)


def _sunspots() -> np.ndarray:
    return np.asarray([float(v) for _, v in _csv("sunspots", "sunspots.csv")], np.float64)


class _Source(NamedTuple):
    read: Any
    length: int
    period: int
    context: int
    horizon: int
    description: str
    homepage: str


_SOURCES: dict[str, _Source] = {
    "sm_co2": _Source(
        _co2,
        2284,
        52,
        104,
        26,
        "Mauna Loa weekly atmospheric CO2 (ppm), 1958-03-29 to 2001-12-29, 2,284 weeks; the 59 missing "
        "weeks linearly interpolated. Shipped in statsmodels (public domain; Scripps / CDIAC).",
        "https://www.statsmodels.org/stable/datasets/generated/co2.html",
    ),
    "sm_elnino": _Source(
        _elnino,
        732,
        12,
        48,
        12,
        "El Nino: monthly Nino 1+2 sea-surface temperature (deg C), 1950-2010, 732 months. Shipped in "
        "statsmodels (public domain; NOAA ERSST.V3B).",
        "https://www.statsmodels.org/stable/datasets/generated/elnino.html",
    ),
    "sm_sunspots": _Source(
        _sunspots,
        309,
        11,
        40,
        8,
        "Yearly mean sunspot number, 1700-2008, 309 years. Shipped in statsmodels (public domain; "
        "NOAA NGDC).",
        "https://www.statsmodels.org/stable/datasets/generated/sunspots.html",
    ),
}


def series(name: str) -> np.ndarray:
    """The whole series ``name`` (``(length,)`` float64, in time order), read from the installed wheel."""
    source = _source(name)
    values = source.read()
    if values.shape != (source.length,) or not np.all(np.isfinite(values)):
        raise RuntimeError(f"{name}: expected {source.length} finite values, read shape {values.shape}")
    return values


def _source(name: str) -> _Source:
    if name not in _SOURCES:
        raise ValueError(f"unknown forecasting dataset {name!r}; known: {', '.join(sorted(_SOURCES))}")
    return _SOURCES[name]


def period(name: str) -> int:
    """The seasonal period of ``name`` (52 weeks, 12 months, the 11-year solar cycle)."""
    return _source(name).period


def segments(length: int) -> dict[str, tuple[int, int]]:
    """The ``[start, stop)`` of the train / validation / test segments of a series of ``length``."""
    a = round(length * SPLIT_FRACTIONS[0])
    b = round(length * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))
    return {"train": (0, a), "validation": (a, b), "test": (b, length)}


def _window_starts(length: int, context: int, horizon: int, split: str) -> np.ndarray:
    """First target position of every window whose whole target lies in ``split``'s segment."""
    lo, hi = segments(length)[split]
    return np.arange(max(lo, context), hi - horizon + 1)


@dataclasses.dataclass
class WindowConfig(tfds.core.BuilderConfig):
    """``context`` values in, the ``horizon`` values after them out."""

    context: int = 0
    horizon: int = 0


_WINDOWS: dict[str, WindowConfig] = {}  # one config object per (context, horizon), as tfds wants


class Forecasting(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Windows ``(context, target)`` of one packaged series, split in time order (module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First release."}
    code_path = None  # nothing downloads: no checksums file to look up
    SOURCE: ClassVar[str]

    def __init__(self, *, context: int | None = None, horizon: int | None = None, **kwargs: Any):
        source = _source(self.SOURCE)
        context = source.context if context is None else context
        horizon = source.horizon if horizon is None else horizon
        for arg, v in (("context", context), ("horizon", horizon)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"{self.name}: {arg} must be a positive int, got {v!r}")
        seg = segments(source.length)
        for split, (lo, hi) in seg.items():
            if hi - max(lo, context) < horizon:
                raise ValueError(
                    f"{self.name}: context={context}, horizon={horizon} leave no {split} window in a "
                    f"series of {source.length} (the {split} segment is [{lo}, {hi}))"
                )
        name = f"c{context}_h{horizon}"
        window = WindowConfig(name=name, context=int(context), horizon=int(horizon))
        config = _WINDOWS.setdefault(name, window)
        super().__init__(config=config, **kwargs)

    @classmethod
    def get_builder_config(cls, name: str, version: Any = None) -> tfds.core.BuilderConfig | None:
        """A window configuration made before counts as known (tfds warns on every unknown one)."""
        return _WINDOWS.get(name) or super().get_builder_config(name, version)

    def _info(self) -> tfds.core.DatasetInfo:
        c: WindowConfig = self.builder_config  # type: ignore[assignment]
        source = _source(self.SOURCE)
        features = tfds.features.FeaturesDict(
            {
                "context": tfds.features.Tensor(shape=(c.context,), dtype=np.float32),
                "target": tfds.features.Tensor(shape=(c.horizon,), dtype=np.float32),
                "index": tfds.features.Tensor(shape=(), dtype=np.int32),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{source.description} Windows of {c.context} values -> the next {c.horizon}; "
            "train/validation/test = the first 70% / next 10% / last 20% of the series by target "
            "position (a window's context may reach into earlier segments). 'index' is the first "
            "target value's position.",
            features=features,
            supervised_keys=("context", "target"),
            disable_shuffling=True,
            homepage=source.homepage,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        values = series(self.SOURCE).astype(np.float32)
        return {s: self._generate_examples(values, s) for s in ("train", "validation", "test")}

    def _generate_examples(self, values: np.ndarray, split: str) -> Iterator:
        c: WindowConfig = self.builder_config  # type: ignore[assignment]
        for t in _window_starts(len(values), c.context, c.horizon, split):
            yield (
                int(t),
                {
                    "context": values[t - c.context : t],
                    "target": values[t : t + c.horizon],
                    "index": np.int32(t),
                },
            )


def _builder_class(name: str) -> type[Forecasting]:
    return type(f"Forecasting_{name}", (Forecasting,), {"name": name, "SOURCE": name})


BUILDERS: dict[str, type[Forecasting]] = {name: _builder_class(name) for name in _SOURCES}


def window(name: str) -> tuple[str, int | None, int | None]:
    """``(series, context, horizon)`` of a dataset name: ``"sm_sunspots"`` (the table's window:
    ``None, None``) or ``"sm_sunspots/c12_h5"`` (the TFDS config: context 12, horizon 5)."""
    base, slash, config = name.partition("/")
    _source(base)
    if not slash:
        return base, None, None
    match = re.fullmatch(r"c(\d+)_h(\d+)", config)
    if not match:
        raise ValueError(
            f"{name!r}: the window config must be 'c<context>_h<horizon>' (e.g. '{base}/c40_h8'), "
            f"got {config!r}"
        )
    return base, int(match[1]), int(match[2])


class Scale(NamedTuple):
    """``(x - mean) / std``: the train segment's statistics."""

    mean: float
    std: float


@functools.cache
def scale(name: str) -> Scale:
    """The train segment's mean and standard deviation of ``name``'s series: ``jr.data.load`` yields
    ``(value - mean) / std``; ``x * std + mean`` is back in the series' units."""
    values = series(window(name)[0])
    lo, hi = segments(len(values))["train"]
    return Scale(float(values[lo:hi].mean()), float(values[lo:hi].std()))
