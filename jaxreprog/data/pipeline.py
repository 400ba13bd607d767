"""``load``: seeded, re-iterable numpy batches ``(x, y)`` of a packaged or TFDS dataset.

Both kinds go through one path: a TFDS builder in ``data_dir``, prepared on first
use (``array_record``), read with random access (``builder.as_data_source``, what
``tfds.data_source`` calls), batched and preprocessed in numpy.

* images: ``x`` float32 NHWC in [0, 1] (uint8 / 255), channels as stored unless
  ``rgb=True``; ``image_size`` resizes (:func:`~jaxreprog.data.resize`).
* text: ``x`` a list of str, or with a ``tokenizer`` a dict of int32
  ``input_ids``/``attention_mask`` ``(B, max_length)``.
* series (:mod:`jaxreprog.data.ucr`): ``x`` float32 ``(B, T, C)`` as stored.
* ``y``: int32 class indices; forecasting windows (:mod:`jaxreprog.data.forecasting`):
  ``x`` float32 ``(B, context)``, ``y`` float32 ``(B, horizon)``, standardised.

Epoch ``e`` visits the split in the order ``np.random.default_rng([shuffle_seed, e])
.permutation(n)`` (source order when ``shuffle_seed`` is None), so any epoch can be
replayed on its own: :meth:`Dataset.epoch`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from jaxreprog.data.preprocess import ResizeMode, resize, to_float, to_rgb
from jaxreprog.data.text import PaddingSide, Tokenize

__all__ = [
    "Dataset",
    "Info",
    "arrays",
    "builder",
    "default_data_dir",
    "from_arrays",
    "load",
    "names",
    "offline",
]

FORECASTING = ("sm_co2", "sm_elnino", "sm_sunspots")
"""The forecasting series (:mod:`jaxreprog.data.forecasting`); ``"<name>/c<context>_h<horizon>"``
picks a window."""
PACKAGED = (
    "bbc_news",
    "digits",
    "mnist5k",
    *FORECASTING,
    "ucr_arrow_head",
    "ucr_gun_point",
    "ucr_italy_power",
    "ucr_osu_leaf",
)

Batch = tuple[Any, np.ndarray]


def default_data_dir() -> str:
    """``$JAXREPROG_DATA_DIR``, else ``~/.cache/jaxreprog/tensorflow_datasets``."""
    return os.environ.get("JAXREPROG_DATA_DIR") or str(
        pathlib.Path.home() / ".cache" / "jaxreprog" / "tensorflow_datasets"
    )


def names() -> tuple[str, ...]:
    """The packaged datasets (they build offline); :func:`load` also takes any TFDS name."""
    return PACKAGED


def _forecasting(name: str) -> bool:
    """``name`` is a forecasting series, with or without a window config (``"sm_co2/c104_h26"``)."""
    return name.partition("/")[0] in FORECASTING


def _packaged(name: str) -> bool:
    return name in PACKAGED or _forecasting(name)


def offline(name: str, *, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether :func:`load` gives ``name`` without network access: a packaged dataset (any window of a
    forecasting set, ``"sm_co2/c104_h26"``) builds offline; any other TFDS dataset must be prepared in
    ``data_dir`` already. Unknown names raise as :func:`load` does."""
    if _packaged(name):
        return True
    absl = logging.getLogger("absl")  # TFDS warns about an empty folder: noise beside the caller's message
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        return builder(name, data_dir=data_dir, prepare=False).is_prepared()
    finally:
        absl.setLevel(level)


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("datasets need tensorflow-datasets: pip install tensorflow-datasets") from e
    return tfds


def _unknown(name: str) -> ValueError:
    tfds = _tfds()
    known = (*PACKAGED, *tfds.list_builders(with_community_datasets=False))
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"unknown dataset {name!r}.{hint} Packaged (offline): {', '.join(PACKAGED)}; "
        "or a TFDS name: tfds.list_builders(with_community_datasets=False)"
    )


def builder(name: str, *, data_dir: str | os.PathLike | None = None, prepare: bool = True) -> Any:
    """The TFDS builder of ``name`` in ``data_dir``, prepared (``array_record``) unless ``prepare=False``.

    Packaged datasets build offline in a few seconds; any other TFDS name downloads
    on first use, which needs network access and, for most datasets, TensorFlow.
    """
    data_dir = str(data_dir or default_data_dir())
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise NotADirectoryError(f"data_dir {data_dir!r} is a file; give a folder for the prepared datasets")
    tfds = _tfds()
    if _forecasting(name):
        from jaxreprog.data import forecasting

        base, context, horizon = forecasting.window(name)
        b = forecasting.BUILDERS[base](
            context=context, horizon=horizon, data_dir=data_dir, file_format="array_record"
        )
    elif name in PACKAGED:
        from jaxreprog.data import packaged, ucr

        b = {**packaged.BUILDERS, **ucr.BUILDERS}[name](data_dir=data_dir, file_format="array_record")
    else:
        try:
            b = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            raise _unknown(name) from None
    if prepare and not b.is_prepared():
        if _packaged(name):
            b.download_and_prepare()  # Missing packages raise ImportError naming the pip install.
        else:
            try:
                b.download_and_prepare()
            except Exception as e:
                fix = (
                    f"pip install {e.name}"
                    if isinstance(e, ModuleNotFoundError) and e.name
                    else "preparing downloads the data (network access) and, for most datasets, needs "
                    "TensorFlow (pip install tensorflow)"
                )
                first_line = next(iter(str(e).splitlines()), "")
                raise RuntimeError(
                    f"cannot prepare TFDS dataset {name!r} in {data_dir} ({type(e).__name__}: {first_line}); "
                    f"fix: {fix}, or point data_dir / $JAXREPROG_DATA_DIR at a copy prepared with "
                    "file_format='array_record'"
                ) from e
    return b


def _check_split(name: str, split: str, available: Sequence[str]) -> None:
    """``split`` may use TFDS slicing (``"train[:90%]"``, ``"train+validation"``)."""
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty str, got {split!r}")
    if not available:  # Unknown until prepared (e.g. under tfds.testing.mock_data): TFDS decides.
        return
    for part in split.split("+"):
        base = part.split("[")[0].strip()
        if base not in available:
            raise ValueError(f"dataset {name!r} has no split {base!r}; its splits: {', '.join(available)}")


@dataclasses.dataclass(frozen=True)
class Info:
    """What one split of a dataset holds, after preprocessing.

    Attributes:
      shape: one example's ``x`` shape (``None`` entries where sizes vary); ``None``
        for text (a str), ``(max_length,)`` for tokenized text, ``(T, C)`` for series.
      tfds_info: the underlying ``tfds.core.DatasetInfo``.
    """

    name: str
    split: str
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...]
    modality: Literal["image", "text", "series", "array"]
    shape: tuple[int | None, ...] | None
    tfds_info: Any = dataclasses.field(default=None, repr=False, compare=False)


# ------------------------------------------------------------------ raw records


class _Memory:
    """Examples in memory: ``take`` is fancy indexing. ``xs`` is an array, a dict of
    arrays (tokenized text) or a list (raw records)."""

    def __init__(self, xs: np.ndarray | dict[str, np.ndarray] | list, ys: np.ndarray):
        self.xs, self.ys = xs, ys

    def __len__(self) -> int:
        return len(self.ys)

    def take(self, index: np.ndarray) -> tuple[Any, np.ndarray]:
        if isinstance(self.xs, np.ndarray):
            return self.xs[index], self.ys[index]
        if isinstance(self.xs, dict):
            return {k: v[index] for k, v in self.xs.items()}, self.ys[index]
        return [self.xs[i] for i in index], self.ys[index]


class _Lazy:
    """A TFDS data source read per batch (large datasets, variable image sizes)."""

    def __init__(self, source: Any, x_key: str, y_key: str):
        self.source, self.x_key, self.y_key = source, x_key, y_key

    def __len__(self) -> int:
        return len(self.source)

    def take(self, index: np.ndarray) -> tuple[list, np.ndarray]:
        records = [self.source[int(i)] for i in index]
        ys = np.asarray([r[self.y_key] for r in records], dtype=np.int32)
        return [r[self.x_key] for r in records], ys


_MEMORY: dict[tuple[str, str, str, str], _Memory] = {}


def _read_whole(b: Any, split: str, x_key: str, y_key: str) -> _Memory:
    """One split of a small prepared dataset, read once per process (read-only arrays)."""
    key = (str(b.data_path), split, x_key, y_key)  # A rebuilt or mocked variant has another folder.
    if key not in _MEMORY:
        records = b.as_data_source(split=split)
        records = records.__getitems__(list(range(len(records))))
        classes = isinstance(b.info.features[y_key], _tfds().features.ClassLabel)
        ys = np.asarray([r[y_key] for r in records], dtype=np.int32 if classes else np.float32)
        ys.flags.writeable = False
        if isinstance(b.info.features[x_key], _tfds().features.Text):
            xs = [r[x_key] for r in records]
        else:
            xs = np.stack([r[x_key] for r in records])
            xs.flags.writeable = False
        _MEMORY[key] = _Memory(xs, ys)
    return _MEMORY[key]


# ---------------------------------------------------------------- preprocessing


class _Images:
    def __init__(self, name: str, rgb: bool, image_size: int | tuple[int, int] | None, mode: ResizeMode):
        if mode not in ("stretch", "crop"):
            raise ValueError(f"resize_mode must be 'stretch' or 'crop', got {mode!r}")
        sides = (image_size,) if isinstance(image_size, int) else tuple(image_size or (1, 1))
        if len(sides) not in (1, 2) or not all(isinstance(s, int) and s > 0 for s in sides):
            raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
        self.name, self.rgb, self.image_size, self.mode = name, rgb, image_size, mode

    def shape(self, stored: tuple[int | None, ...]) -> tuple[int | None, ...]:
        h, w, c = stored
        if self.image_size is not None:
            h, w = (self.image_size,) * 2 if isinstance(self.image_size, int) else self.image_size
        return (h, w, 3 if self.rgb else c)

    def __call__(self, raw: np.ndarray | list) -> np.ndarray:
        if not isinstance(raw, np.ndarray):
            sizes = {np.shape(r) for r in raw}
            if len(sizes) > 1 and self.image_size is None:
                raise ValueError(
                    f"images of {self.name!r} differ in size "
                    f"({', '.join(map(str, sorted(sizes)[:3]))}, ...): pass image_size=S to resize them"
                )
            if len(sizes) > 1:
                raw = np.stack([resize(to_float(r), self.image_size, mode=self.mode) for r in raw])
            else:
                raw = np.stack(raw)
        x = to_float(raw)
        if self.image_size is not None and x.shape[1:3] != self.shape(x.shape[1:])[:2]:
            x = resize(x, self.image_size, mode=self.mode)
        return to_rgb(x) if self.rgb else x


class _Series:
    def __call__(self, raw: np.ndarray | list) -> np.ndarray:
        return np.asarray(raw if isinstance(raw, np.ndarray) else np.stack(raw), dtype=np.float32)


class _Texts:
    def __init__(self, tokenize: Tokenize | None):
        self.tokenize = tokenize

    def __call__(self, raw: list) -> list[str] | dict[str, np.ndarray]:
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
        return self.tokenize(texts) if self.tokenize else texts


def _open(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None,
    keys: tuple[str, str] | None,
    rgb: bool,
    image_size: int | tuple[int, int] | None,
    resize_mode: ResizeMode,
    tokenizer: Any,
    max_length: int,
    padding_side: PaddingSide,
    truncation: bool,
    truncation_side: PaddingSide,
) -> tuple[Any, Any, Info]:
    """``(records, transform, info)`` of one split."""
    tfds = _tfds()
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    data_dir = str(data_dir or default_data_dir())
    b = builder(name, data_dir=data_dir)
    info = b.info
    _check_split(name, split, list(info.splits))
    sk = info.supervised_keys
    plain = isinstance(sk, tuple | list) and len(sk) == 2 and all(isinstance(k, str) for k in sk)
    keys = tuple(keys or (sk if plain else ("image", "label")))
    x_key, y_key = keys
    features = info.features
    missing = [k for k in keys if k not in features]
    if missing:
        raise ValueError(
            f"dataset {name!r} has no feature {missing[0]!r}; its features: {', '.join(sorted(features))}; "
            "pass keys=(x_key, label_key)"
        )
    label = features[y_key]
    forecast = _forecasting(name) and keys == tuple(sk)  # float windows (context, target)
    if not (forecast or isinstance(label, tfds.features.ClassLabel)):
        raise ValueError(
            f"the label feature {y_key!r} of {name!r} must be a ClassLabel, got {type(label).__name__}"
        )
    feature = features[x_key]
    is_text = isinstance(feature, tfds.features.Text)
    is_image = isinstance(feature, tfds.features.Image) or (
        isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 3
    )
    is_series = isinstance(feature, tfds.features.Tensor) and (len(feature.shape) == 2 or forecast)
    if not (is_text or is_image or is_series):
        raise ValueError(
            f"feature {x_key!r} of {name!r} is neither an image (H, W, C), a series (T, C) nor text: "
            f"{feature!r}; pass keys=(x_key, label_key)"
        )
    if not is_image and (rgb or image_size is not None):
        raise ValueError(f"rgb / image_size apply to images; {name!r} is {'text' if is_text else 'series'}")
    if not is_text and tokenizer is not None:
        raise ValueError(f"tokenizer applies to text; {name!r} holds {'images' if is_image else 'series'}")

    if _packaged(name):
        records = _read_whole(b, split, x_key, y_key)
    else:
        records = _Lazy(b.as_data_source(split=split), x_key, y_key)
    if forecast:  # in units of the train segment (the module docstring of jaxreprog.data.forecasting)
        from jaxreprog.data.forecasting import scale

        mean, std = scale(name)
        records = _Memory(
            ((records.xs - mean) / std).astype(np.float32), ((records.ys - mean) / std).astype(np.float32)
        )

    if is_image:
        transform = _Images(name, rgb, image_size, resize_mode)
        shape = transform.shape(tuple(feature.shape))
    elif is_series:
        transform, shape = _Series(), tuple(feature.shape)
    else:
        tokenize = None
        if tokenizer is not None:
            tokenize = Tokenize(
                tokenizer,
                max_length=max_length,
                padding_side=padding_side,
                truncation=truncation,
                truncation_side=truncation_side,
            )
        transform = _Texts(tokenize)
        shape = (max_length,) if tokenize else None
    info_ = Info(
        name=name,
        split=split,
        num_examples=len(records),
        num_classes=0 if forecast else label.num_classes,
        class_names=() if forecast else tuple(label.names),
        modality="image" if is_image else "series" if is_series else "text",
        shape=shape,
        tfds_info=info,
    )
    return records, transform, info_


def epoch_order(num_examples: int, seed: int | None, epoch: int) -> np.ndarray:
    """The example indices epoch ``epoch`` visits: the stored order if ``seed`` is
    ``None``, else ``np.random.default_rng([seed, epoch]).permutation(num_examples)``.

    The shuffle rule of :class:`Dataset`: a function of ``(seed, epoch)`` alone, so a
    resumed run sees the same batches.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if seed is None:
        return np.arange(num_examples)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)


class Dataset:
    """A re-iterable, seeded stream of numpy batches ``(x, y)`` over one split: the
    library's one batch source (:func:`load` for a dataset, :func:`from_arrays` for
    arrays in memory; :func:`jaxreprog.train.fit` and ``evaluate`` read it).

    ``iter(ds)`` is a fresh pass over all ``epochs``; ``ds.epoch(e)`` is epoch ``e``
    alone; ``len(ds)`` is the number of batches per epoch.
    """

    def __init__(
        self,
        records: Any,
        transform: Any,
        info: Info,
        *,
        batch_size: int,
        shuffle_seed: int | None,
        epochs: int,
        drop_remainder: bool,
    ):
        n = len(records)
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(epochs, int) or epochs <= 0:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if shuffle_seed is not None and (not isinstance(shuffle_seed, int | np.integer) or shuffle_seed < 0):
            raise ValueError(f"shuffle_seed must be None or a non-negative int, got {shuffle_seed!r}")
        if drop_remainder and batch_size > n:
            raise ValueError(
                f"batch_size={batch_size} > num_examples={n} of {info.name!r}[{info.split}] with "
                "drop_remainder=True leaves no batch"
            )
        self._records, self._transform = records, transform
        self.info = info
        self.batch_size, self.shuffle_seed = batch_size, shuffle_seed
        self.epochs, self.drop_remainder = epochs, drop_remainder

    @property
    def num_examples(self) -> int:
        return self.info.num_examples

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def order(self, epoch: int) -> np.ndarray:
        """The example indices epoch ``epoch`` visits, in order (:func:`epoch_order`)."""
        return epoch_order(self.num_examples, self.shuffle_seed, epoch)

    def epoch(self, epoch: int, rows: Callable[[int], slice] | None = None) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` (any ``epoch >= 0``, also past ``epochs``).

        ``rows(n)``, given, is the part (a ``slice``) of each batch of ``n`` examples to read and
        preprocess, the rest never touched: in a run of several processes each one reads only
        the rows its own devices hold (:func:`jaxreprog.train.local_rows`; ``fit`` and
        ``evaluate`` pass it), out of the same seeded global order.
        """
        order = self.order(epoch)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            if rows is not None:
                part = rows(len(index))
                if not isinstance(part, slice):
                    raise TypeError(f"epoch: rows(n) must return a slice, got {type(part).__name__}")
                index = index[part]
            xs, ys = self._records.take(index)
            yield self._transform(xs), ys

    def __iter__(self) -> Iterator[Batch]:
        for e in range(self.epochs):
            yield from self.epoch(e)

    def __repr__(self) -> str:
        i = self.info
        return (
            f"Dataset({i.name!r}, split={i.split!r}, num_examples={i.num_examples}, "
            f"num_classes={i.num_classes}, batch_size={self.batch_size}, batches={len(self)}, "
            f"epochs={self.epochs}, shuffle_seed={self.shuffle_seed})"
        )


def load(
    name: str,
    split: str,
    *,
    batch_size: int,
    shuffle_seed: int | None = None,
    epochs: int = 1,
    drop_remainder: bool = False,
    data_dir: str | os.PathLike | None = None,
    keys: tuple[str, str] | None = None,
    rgb: bool = False,
    image_size: int | tuple[int, int] | None = None,
    resize_mode: ResizeMode = "stretch",
    tokenizer: Any = None,
    max_length: int = 128,
    padding_side: PaddingSide = "right",
    truncation: bool = True,
    truncation_side: PaddingSide = "right",
) -> Dataset:
    """Batches ``(x, y)`` of ``name``'s ``split``: a re-iterable, seeded :class:`Dataset`.

    Args:
      name: a packaged dataset (:func:`names`: ``mnist5k``, ``digits``, ``bbc_news``,
        the UCR series ``ucr_gun_point``, ..., the forecasting series ``sm_co2``, ...,
        ``"sm_co2/c52_h13"`` for another window; offline) or any TFDS name (``cifar10``,
        ``svhn_cropped``, ``eurosat/rgb``, ...; prepared on first use, which needs
        network access and usually TensorFlow).
      split: ``train``/``validation``/``test`` for packaged datasets (UCR series:
        ``train``/``test``; forecasting series: in time order); TFDS slicing works (``"train[:90%]"``).
      batch_size: examples per batch; the last batch of an epoch is smaller unless
        ``drop_remainder``.
      shuffle_seed: ``None`` keeps the stored order; an int shuffles each epoch ``e``
        with ``np.random.default_rng([shuffle_seed, e])``.
      epochs: how many epochs ``iter(ds)`` runs.
      data_dir: where TFDS data lives; default :func:`default_data_dir`.
      keys: ``(x_key, label_key)``; default the dataset's supervised keys, else
        ``("image", "label")``.
      rgb: repeat grayscale images to 3 channels.
      image_size: resize images to ``S`` or ``(H, W)`` (bilinear, antialiased);
        needed when a dataset's images differ in size.
      resize_mode: ``"stretch"`` or ``"crop"`` (see :func:`~jaxreprog.data.resize`).
      tokenizer: a ``tokenizers.Tokenizer`` for text (:func:`~jaxreprog.data.load_tokenizer`);
        ``x`` becomes ``{"input_ids", "attention_mask"}`` int32 ``(B, max_length)``.
      max_length, padding_side, truncation, truncation_side: see :func:`~jaxreprog.data.tokenize`.

    Example::

      ds = jr.data.load("mnist5k", "train", batch_size=64, shuffle_seed=0, epochs=10)
      for x, y in ds:  # x (64, 28, 28, 1) float32 in [0, 1], y (64,) int32
          ...
    """
    records, transform, info = _open(
        name,
        split,
        data_dir=data_dir,
        keys=keys,
        rgb=rgb,
        image_size=image_size,
        resize_mode=resize_mode,
        tokenizer=tokenizer,
        max_length=max_length,
        padding_side=padding_side,
        truncation=truncation,
        truncation_side=truncation_side,
    )
    return Dataset(
        records,
        transform,
        info,
        batch_size=batch_size,
        shuffle_seed=shuffle_seed,
        epochs=epochs,
        drop_remainder=drop_remainder,
    )


def from_arrays(
    x: Any,
    y: Any,
    *,
    batch_size: int,
    shuffle_seed: int | None = None,
    epochs: int = 1,
    drop_remainder: bool = False,
    name: str = "arrays",
) -> Dataset:
    """Arrays in memory as a :class:`Dataset`: ``x`` an array ``(N, ...)`` or a dict of
    them (tokenized text), ``y`` ``(N,)`` integer classes or float targets ``(N, ...)``.

    Batches, shuffles (:func:`epoch_order`) and replays epochs exactly as :func:`load`.

    Example::

      train = jr.data.from_arrays(*jr.data.arrays("mnist5k", "train"), batch_size=64, shuffle_seed=0)
    """
    xs = {k: np.asarray(v) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x)
    ys = np.asarray(y)
    if ys.ndim == 0:
        raise ValueError(f"from_arrays: y must have one entry per example, got a scalar {ys!r}")
    if np.issubdtype(ys.dtype, np.integer):
        bound = np.iinfo(np.int32)
        if ys.size and (ys.min() < bound.min or ys.max() > bound.max):
            raise ValueError(
                f"from_arrays: integer labels y must fit int32 (class indices), got values in "
                f"[{ys.min()}, {ys.max()}]"
            )
        ys = ys.astype(np.int32)
    leaves = list(xs.values()) if isinstance(xs, dict) else [xs]
    counts = {len(leaf) if leaf.ndim else -1 for leaf in leaves}
    if counts != {len(ys)}:
        raise ValueError(f"from_arrays: x has {sorted(counts)} examples but y has {len(ys)}")
    first = leaves[0]
    integer = np.issubdtype(ys.dtype, np.integer) and ys.ndim == 1
    num_classes = int(ys.max()) + 1 if integer and len(ys) else 0
    info = Info(
        name=name,
        split="",
        num_examples=len(ys),
        num_classes=num_classes,
        class_names=tuple(str(c) for c in range(num_classes)),
        modality="text" if isinstance(xs, dict) else "array",
        shape=first.shape[1:],
    )
    return Dataset(
        _Memory(xs, ys),
        _identity,
        info,
        batch_size=batch_size,
        shuffle_seed=shuffle_seed,
        epochs=epochs,
        drop_remainder=drop_remainder,
    )


def _identity(x: Any) -> Any:
    return x


def arrays(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    keys: tuple[str, str] | None = None,
    rgb: bool = False,
    image_size: int | tuple[int, int] | None = None,
    resize_mode: ResizeMode = "stretch",
    tokenizer: Any = None,
    max_length: int = 128,
    padding_side: PaddingSide = "right",
    truncation: bool = True,
    truncation_side: PaddingSide = "right",
) -> Batch:
    """A whole split as one batch ``(x, y)`` in stored order (for small data); arguments as :func:`load`.

    Example::

      x, y = jr.data.arrays("mnist5k", "test")  # (500, 28, 28, 1) float32, (500,) int32
    """
    records, transform, _ = _open(
        name,
        split,
        data_dir=data_dir,
        keys=keys,
        rgb=rgb,
        image_size=image_size,
        resize_mode=resize_mode,
        tokenizer=tokenizer,
        max_length=max_length,
        padding_side=padding_side,
        truncation=truncation,
        truncation_side=truncation_side,
    )
    xs, ys = records.take(np.arange(len(records)))
    ys = np.asarray(ys)
    return transform(xs), ys if np.issubdtype(ys.dtype, np.floating) else ys.astype(np.int32)
