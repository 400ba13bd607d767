"""The base-to-novel protocol of CLIP prompt learning (Zhou et al., CoCoOp, CVPR 2022; MaPLe, CVPR 2023).

A dataset's ``C`` classes, sorted by label, split into the first ``⌈C/2⌉`` (*base*) and the rest (*novel*).
Prompts are trained on base-class examples only (optionally ``shots`` per class, 16 in the papers), with a
classifier over the base classes' prompts; they are then evaluated on the base classes' test examples
against the base prompts, and on the novel classes' test examples against the novel prompts (classes never
seen in training). The score is the harmonic mean ``HM = 2·base·novel / (base + novel)``.

Seeds are a candidate axis (:func:`jaxreprog.train.fit` with ``candidates=K``): the ``K`` seeds' prompts
train in one vmapped step and evaluate in one vmapped pass, so the papers' 3-seed average is one run. As
in the papers' tables, :meth:`BaseToNovel.summary` averages base and novel over the seeds and takes the
harmonic mean of the averages. One difference: the papers draw each seed's few-shot subset and batch
order afresh; here the ``K`` seeds share one subset and one batch order (what a shared batch means) and
differ in their prompts' initialisation.

Example::

    >>> def classifier(classes):                 # class indices -> zero-shot CLIP over their prompts
    ...     return clip.classifier(module, params, ids[classes], eot[classes])
    >>> result = jr.train.base_to_novel(jr.hidden.maple(init=init), classifier, (x, y), (x_test, y_test),
    ...                                 epochs=5, shots=16, key=jax.random.key(0))
    >>> result.summary()                         # {"base": ..., "novel": ..., "harmonic": ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxreprog import checking, data
from jaxreprog.core import FrozenModel, SiteHook, reprogram
from jaxreprog.taxonomy import Location
from jaxreprog.train.loop import evaluate, fit

__all__ = ["BaseToNovel", "base_to_novel", "harmonic_mean", "split_classes"]

PyTree = Any


class BaseToNovel(NamedTuple):
    """Per-seed results of :func:`base_to_novel` (each a ``(K,)`` array) and what produced them."""

    base: np.ndarray  # accuracy on base-class test examples, among the base classes
    novel: np.ndarray  # accuracy on novel-class test examples, among the novel classes
    harmonic: np.ndarray  # per-seed harmonic mean of the two
    theta: PyTree  # the K trained thetas, stacked
    history: list[dict[str, Any]]  # fit's history (metrics are (K,) arrays)
    base_classes: np.ndarray
    novel_classes: np.ndarray

    def summary(self) -> dict[str, float]:
        """The papers' numbers: base and novel averaged over seeds, and the harmonic mean of the averages."""
        base, novel = float(np.mean(self.base)), float(np.mean(self.novel))
        return {"base": base, "novel": novel, "harmonic": float(harmonic_mean(base, novel))}


def harmonic_mean(base: Any, novel: Any) -> np.ndarray:
    """``2·b·n / (b + n)``, elementwise, 0 where both are 0."""
    b, n = np.asarray(base, np.float64), np.asarray(novel, np.float64)
    total = b + n
    return np.where(total > 0, 2 * b * n / np.where(total > 0, total, 1), 0.0)


def split_classes(num_classes: int, num_base: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(base, novel)`` class indices: the first ``num_base`` (default ``⌈C/2⌉``, as CoCoOp) and the rest."""
    num_classes = checking.integer(num_classes, "num_classes", who="base_to_novel", minimum=2)
    m = math.ceil(num_classes / 2) if num_base is None else num_base
    m = checking.integer(m, "num_base", who="base_to_novel", maximum=num_classes - 1)
    return np.arange(m), np.arange(m, num_classes)


def _labels(y: Any, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"base_to_novel: {name} labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"base_to_novel: {name} labels must lie in [0, num_classes={num_classes}), "
            f"got {y.min()}..{y.max()}"
        )
    return y


def _subset(x: Any, y: np.ndarray, classes: np.ndarray, shots: int | None, seed: int) -> tuple[Any, Any]:
    """The examples of ``classes`` (up to ``shots`` per class, drawn with ``seed``), relabelled ``0..``."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        (rows,) = np.nonzero(y == c)
        if shots is not None and len(rows) > shots:
            rows = np.sort(rng.choice(rows, shots, replace=False))
        keep.append(rows)
    index = np.concatenate(keep)
    relabel = np.full(int(classes.max()) + 1, -1, np.int32)
    relabel[classes] = np.arange(len(classes), dtype=np.int32)
    xs = jax.tree.map(lambda a: np.asarray(a)[index], x)
    return xs, relabel[y[index]]


def _classifier(classifier: Callable, classes: np.ndarray, which: str) -> FrozenModel:
    model = classifier(classes)
    if not isinstance(model, FrozenModel):
        raise TypeError(
            f"base_to_novel: classifier({which} classes) must return a jr.FrozenModel, "
            f"got {type(model).__name__}"
        )
    n = getattr(model.spec, "num_classes", None)
    if n not in (None, len(classes)):
        raise ValueError(
            f"base_to_novel: classifier({which} classes) gave a model over {n} classes; "
            f"expected the {len(classes)} {which} classes"
        )
    return model


def base_to_novel(
    method: SiteHook,
    classifier: Callable[[np.ndarray], FrozenModel],
    train: tuple[Any, Any],
    test: tuple[Any, Any],
    *,
    epochs: int,
    key: jax.Array,
    seeds: int = 3,
    num_classes: int | None = None,
    num_base: int | None = None,
    shots: int | None = None,
    batch_size: int = 4,
    eval_batch_size: int = 100,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-2,
    shuffle_seed: int = 0,
) -> BaseToNovel:
    """Train ``method`` on the base classes and evaluate it on base and novel classes, ``seeds`` at once.

    Args:
      method: a prompt method acting inside the classifier (:func:`jaxreprog.hidden.maple`,
        :func:`jaxreprog.hidden.ivlp`, :func:`jaxreprog.embedding.coop`, ...); its theta must not depend on
        the number of classes (a class-specific context cannot transfer to novel classes).
      classifier: ``classes -> FrozenModel``, the zero-shot model over those classes' prompts (sorted
        class indices into the dataset's labels), e.g. ``clip.classifier(module, params, ids[c], eot[c])``.
      train, test: ``(x, y)`` arrays over all classes, labels in ``[0, num_classes)``; ``x`` the model's
        input (normalised images for CLIP), an array or a dict of arrays.
      epochs, key, optimizer, learning_rate: as for :func:`jaxreprog.train.fit` (the papers: SGD, lr
        0.0035, cosine schedule, batch 4, 5 epochs for MaPLe).
      seeds: ``K``, prompts trained at once from ``K`` initialisations (:func:`fit`'s ``candidates=K``).
      num_classes: ``C``; default ``max(label) + 1`` over both splits.
      num_base: the number of base classes; default ``⌈C/2⌉``.
      shots: training examples per base class (16 in the papers), drawn once; default all.
      batch_size, eval_batch_size: training and evaluation batch sizes.
      shuffle_seed: seed of the few-shot draw and of the batch order.
    """
    if not isinstance(method, SiteHook):
        raise TypeError(
            f"base_to_novel: method must be a jr.SiteHook (a prompt method), got {type(method).__name__}"
        )
    seeds = checking.integer(seeds, "seeds", who="base_to_novel")
    if shots is not None:
        shots = checking.integer(shots, "shots", who="base_to_novel")
    (x_train, y_train), (x_test, y_test) = train, test
    if num_classes is None:
        num_classes = int(max(np.max(y_train), np.max(y_test))) + 1
    y_train = _labels(y_train, num_classes, "train")
    y_test = _labels(y_test, num_classes, "test")
    base, novel = split_classes(num_classes, num_base)
    base_model = _classifier(classifier, base, "base")
    novel_model = _classifier(classifier, novel, "novel")
    location = method.tags.location if method.tags is not None else None
    slot = "hidden" if location is not None and Location.HIDDEN in location else "embedding"
    program = reprogram(base_model, **{slot: method})
    novel_program = reprogram(novel_model, **{slot: method})

    x, y = _subset(x_train, y_train, base, shots, shuffle_seed)
    if not len(y):
        raise ValueError("base_to_novel: the training split has no example of a base class")
    train_data = data.from_arrays(x, y, batch_size=batch_size, shuffle_seed=shuffle_seed)
    theta, history = fit(
        program,
        base_model,
        train_data,
        epochs=epochs,
        key=key,
        optimizer=optimizer,
        learning_rate=learning_rate,
        candidates=int(seeds),
        progress=False,
    )

    def accuracy(prog, model, classes, which):
        xs, ys = _subset(x_test, y_test, classes, None, 0)
        if not len(ys):
            raise ValueError(f"base_to_novel: the test split has no example of a {which} class")
        batches = data.from_arrays(xs, ys, batch_size=eval_batch_size)
        return np.asarray(evaluate(prog, model, theta, batches, candidates=True)[1])

    acc_base = accuracy(program, base_model, base, "base")
    acc_novel = accuracy(novel_program, novel_model, novel, "novel")
    return BaseToNovel(acc_base, acc_novel, harmonic_mean(acc_base, acc_novel), theta, history, base, novel)
