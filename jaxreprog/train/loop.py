"""The training loop: ``fit`` a reprogrammed model, one prompt or K candidates at once.

One jit-compiled step (frozen parameters are an argument, never captured):

    src    = f(I_θ(x))                        # source logits, computed once
    loss   = CE(O_ω(src), y) + penalty(θ)     # fp32
    θ      ← optimiser(∇_θ loss)              # or a zeroth-order estimate (BAR, SPSA-GC)
    stats  ← alignment.collect(stats, ω, src, y)   # stats_update on src (or stats_logits(ω, src))

Statistical alignments refit from ``stats`` — the training pass's own source
logits, no extra pass over the data:

* ``Refit.EVERY_EPOCH`` (ILM, BLM, BLM+): at the end of every epoch. The reference
  (ILM-VP) remaps at the *start* of each epoch from the current prompt; refitting
  from the epoch just trained is the no-extra-pass equivalent (its counts come from
  the prompts θ_t seen during the epoch, not only its final θ). ``refit_pass="fresh"``
  does what the reference does instead: one forward-only pass with the epoch's final
  prompt. Epoch 1 still needs a map, so, as the reference does, one forward-only
  pass over the training data with the initial prompt computes it before training.
* ``Refit.ONCE`` (FLM, frequency maps): that same forward-only pass before training,
  and never again.

With ``candidates``, the whole step is ``jax.vmap``-ed over a leading axis K of the
training state (theta, optimiser state, statistics) while the frozen parameters and
the batch are shared: K prompts train in one step, each exactly as it would alone.

History is a list with one dict per epoch: ``epoch``; ``loss`` (the training
objective, penalties included) and ``train_acc``, averaged over the epoch's examples
(a ragged last batch weighs by its size); ``eval_loss`` and ``eval_acc`` on
``eval_data`` after the epoch's refit (``None`` without it); ``lr`` (the last step's
learning rate when the optimiser injects it); ``seconds`` (wall time, training and
evaluation); ``queries`` (black-box queries so far); ``stopped`` (why training ended
early, only when it did, on the last epoch that trained: a query budget spent exactly
at an epoch's end adds no empty epoch). With candidates each metric is a ``(K,)``
array; :func:`best_candidate` picks by validation accuracy; :func:`metric` stacks one
metric over epochs.

Example::

    >>> program = jr.reprogram(model, input=jr.input.pad(target_size=32),
    ...                        output=jr.output.ilm(num_source=1000, num_target=10))
    >>> theta, history = jr.train.fit(program, model, train, epochs=200,
    ...                               key=jax.random.key(0), eval_data=val)
    >>> thetas, history = jr.train.fit(program, model, train, epochs=200, key=key,
    ...                                candidates=[{"learning_rate": lr} for lr in (1e-1, 1e-2, 1e-3)],
    ...                                eval_data=val)
    >>> best = jr.candidates.select(thetas, jr.train.best_candidate(history))
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxreprog import candidates as cand
from jaxreprog import checking
from jaxreprog.core import FrozenModel, Refit, Reprogrammed, reprogram
from jaxreprog.data.pipeline import Dataset
from jaxreprog.train import checkpoint as ckpt
from jaxreprog.train import schedules, sharding
from jaxreprog.train.zeroth_order import (
    ZerothOrder,
    check_zeroth_order,
    look_ahead_momentum,
    spsa_gain,
    spsa_gradient,
    zo_gradient,
)

__all__ = [
    "TrainState",
    "best_candidate",
    "cross_entropy",
    "evaluate",
    "evaluate_alignments",
    "fit",
    "make_step",
    "metric",
    "mse",
]

PyTree = Any
Batch = tuple[Any, Any]


# ---------------------------------------------------------------------------- data


class _Held(NamedTuple):
    """One batch as this process holds it: ``batch``, ``(x, y)``, its rows of the global batch
    (all of them in a run of one process, or from a plain iterable), and ``size``, the global
    batch's examples (what counts, weighs and places it)."""

    batch: Batch
    size: int


def _read(data: Iterable[Batch], epoch: int, mesh: Mesh) -> Iterator[_Held]:
    """``data``'s batches of ``epoch`` as this process reads them: the one place the loop reads data.

    In a run of several processes a :class:`~jaxreprog.data.Dataset` reads and preprocesses
    only this process's rows of each batch (:func:`sharding.local_rows`), out of the same
    seeded order in every process; :func:`sharding.shard_batch` assembles the global batch.
    Any other iterable yields whole batches, and each process transfers its devices' rows.
    """
    if jax.process_count() == 1 or not isinstance(data, Dataset):
        for x, y in data.epoch(epoch) if hasattr(data, "epoch") else iter(data):
            yield _Held((x, y), len(y) if np.ndim(y) else 0)  # a scalar y: _batches says why
        return
    parts = sharding.data_processes(mesh)
    if data.batch_size % parts:
        raise ValueError(
            f"batch_size={data.batch_size} does not divide over the {parts} processes that share "
            f"each batch (the mesh's 'data' axis): each reads batch_size / {parts} of its rows; "
            f"use a multiple of {parts}"
        )
    sizes: list[int] = []

    def rows(n: int) -> slice:
        sizes.append(n)
        return sharding.local_rows(n, mesh)

    for x, y in data.epoch(epoch, rows=rows):
        yield _Held((x, y), sizes[-1])


def _label_range(y: np.ndarray) -> tuple[int, int]:
    """The smallest and largest of the batch's labels, over every process's rows.

    Processes each read their own rows of a batch (:func:`_read`), so one of them alone
    could find a bad label and raise while the others wait in the step's collectives; the
    range is gathered so that every process raises the same error, or none does.
    """
    top = np.iinfo(np.int32).max  # gathered as int32 (and negated): labels clipped to ±top
    clipped = np.clip(y, -top, top)
    lo, hi = (int(clipped.min()), int(clipped.max())) if len(y) else (top, -top)
    if jax.process_count() > 1:
        both = multihost_utils.process_allgather(np.asarray([lo, -hi], np.int32))
        lo, hi = int(both[:, 0].min()), -int(both[:, 1].min())
    return lo, hi


def _batches(
    data: Iterable[Batch], epoch: int, mesh: Mesh, num_classes: int | None = None
) -> Iterator[_Held]:
    """:func:`_read`'s batches, labels checked on the host (cheap, before any step):
    integer labels must be 1-D and, given ``num_classes``, lie in ``[0, num_classes)``."""
    for i, ((x, y), size) in enumerate(_read(data, epoch, mesh)):
        y = np.asarray(y)
        if np.issubdtype(y.dtype, np.integer) and y.ndim == 1:
            if num_classes is not None:
                lo, hi = _label_range(y)
                if lo < 0 or hi >= num_classes:
                    raise ValueError(
                        f"labels must lie in [0, {num_classes}) (the program's {num_classes} target "
                        f"classes), got labels in [{lo}, {hi}] in batch {i + 1} of epoch {epoch + 1}"
                    )
            y = y.astype(np.int32)
        elif not np.issubdtype(y.dtype, np.floating) or y.ndim == 0:
            raise ValueError(
                f"labels y must be a 1-D integer array (classes) or float targets (N, ...) for a "
                f"regression loss, got shape {y.shape} dtype {y.dtype}"
            )
        yield _Held((x, y), size)


# --------------------------------------------------------------------------- step


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy ``(N,)`` of integer ``labels``, in float32."""
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer) or jnp.ndim(labels) != 1:
        raise ValueError(
            f"cross_entropy: labels must be a 1-D integer array of classes, got shape {jnp.shape(labels)} "
            f"dtype {jnp.result_type(labels)} (for float targets pass loss=jr.train.mse or your own)"
        )
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example mean squared error ``(N,)`` (regression, forecasting), in float32."""
    err = predictions.astype(jnp.float32) - jnp.asarray(targets, jnp.float32).reshape(predictions.shape)
    return jnp.mean(jnp.square(err).reshape(err.shape[0], -1), axis=-1)


Loss = Callable[[jax.Array, jax.Array], jax.Array]


class TrainState(NamedTuple):
    """What :func:`make_step`'s step carries (a leading axis K on every leaf with candidates).

    ``step`` counts steps from 0; ``stats`` accumulates the alignment's statistics
    (``accumulate=True``); ``bad_step`` is the first step whose loss was not finite
    (-1: none), after which theta and the optimiser state stop changing, and
    ``last_finite_loss`` the loss of the last step before it.
    """

    theta: PyTree
    opt_state: PyTree
    stats: PyTree
    step: jax.Array
    last_finite_loss: jax.Array
    bad_step: jax.Array


def _per_example(loss: Loss, logits: jax.Array, labels: jax.Array) -> jax.Array:
    values = loss(logits, labels)
    if jnp.shape(values) != (logits.shape[0],):
        raise ValueError(
            f"loss must return one value per example, shape ({logits.shape[0]},); got {jnp.shape(values)} "
            "(return the per-example losses, not their mean)"
        )
    return values.astype(jnp.float32)


def _is_classification(logits: jax.Array, labels: jax.Array) -> bool:
    return jnp.issubdtype(labels.dtype, jnp.integer) and logits.ndim == labels.ndim + 1


def make_step(
    program: Reprogrammed,
    optimizer: optax.GradientTransformation,
    *,
    loss: Loss = cross_entropy,
    gradient: str | ZerothOrder = "backprop",
    accumulate: bool | None = None,
    candidates: bool = False,
) -> tuple[Callable[[PyTree], TrainState], Callable[..., tuple[TrainState, dict[str, jax.Array]]]]:
    """The training step of ``program``: ``(init, step)``, two pure, jit-able functions.

    ``init(theta) -> state``; ``step(state, frozen_params, (x, y), key) -> (state, metrics)``
    computes, with the frozen parameters an argument (never captured)::

        src   = f(I_θ(x))                        # source logits, once
        loss  = mean(loss(O_ω(src), y)) + penalty(θ)
        θ     ← project(optimizer(∇_θ loss))     # learnable leaves only; or a black-box estimate
        stats ← alignment.collect(stats, ω, src, y)      # with accumulate (stats_update)

    The step folds its counter into ``key`` (pass the same key every step). A step
    whose loss is not finite changes nothing and is recorded in ``state.bad_step``.
    ``metrics`` holds ``"loss"`` and, for integer labels, ``"accuracy"`` (batch means).
    Refit a statistical alignment between epochs with
    ``program.alignment.refit_from_stats(theta["output"], state.stats)``.

    Args:
      program: a :func:`jaxreprog.reprogram` program.
      optimizer: any optax transformation; fixed leaves (``jr.fixed``, statistical
        alignment state) are never updated (``optax.multi_transform`` + ``set_to_zero``).
      loss: ``loss(logits, labels) -> (N,)`` per-example losses; default
        :func:`cross_entropy`; :func:`mse` for regression, or any of your own.
      gradient: ``"backprop"`` or a :class:`ZerothOrder` config (black-box training). With
        ``estimator="spsa_gc"`` the optimiser's update ``u`` feeds SPSA-GC's momentum
        (``m ← β m + u``, ``θ ← θ + m``, :func:`~jaxreprog.train.zeroth_order.look_ahead_momentum`,
        kept in ``state.opt_state.momentum``) and the estimate is taken at ``θ + β m``;
        ``optax.sgd(spsa_gain(a))`` is the paper's update.
      accumulate: accumulate the alignment's statistics in ``state.stats``
        (default: when its schedule is ``Refit.EVERY_EPOCH``).
      candidates: ``init`` and ``step`` are vmapped over a leading axis K of theta and
        the state, with the frozen parameters, the batch and the key shared.

    Example (flax's ``examples/mnist`` shape)::

        >>> init, step = jr.train.make_step(program, optax.adam(1e-2))
        >>> step = jax.jit(step)
        >>> state = init(program.init(key))
        >>> for batch in batches:
        ...     state, metrics = step(state, model.params, batch, key)

    With a model split over a mesh (:func:`jaxreprog.shard`), keep the state whole, as ``fit``
    does: ``jax.jit(step, out_shardings=NamedSharding(mesh, PartitionSpec()))``. Otherwise XLA
    may return theta split like the activations, and the next call compiles the step again.
    """
    if not isinstance(program, Reprogrammed):
        raise TypeError(
            f"make_step: program must be a jr.Reprogrammed (jr.reprogram), got {type(program).__name__}"
        )
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"make_step: optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {type(optimizer).__name__}"
        )
    if not callable(loss):
        raise TypeError(f"make_step: loss must be a function loss(logits, labels) -> (N,), got {loss!r}")
    if not (gradient == "backprop" or isinstance(gradient, ZerothOrder)):
        raise ValueError(
            f"make_step: gradient must be 'backprop' or a jr.train.ZerothOrder, got {gradient!r}"
        )
    if isinstance(gradient, ZerothOrder):
        check_zeroth_order(gradient, "make_step")
        gradient = gradient.resolved()
    for name, flag in (("candidates", candidates), ("accumulate", accumulate)):
        if not (isinstance(flag, bool | np.bool_) or (name == "accumulate" and flag is None)):
            raise TypeError(f"make_step: {name} must be True or False, got {flag!r:.40}")
    alignment = program.alignment
    if accumulate is None:
        accumulate = alignment.schedule == Refit.EVERY_EPOCH

    def labels_of(theta):
        return jax.tree.map(lambda learn: "learn" if learn else "fixed", program.trainable(theta))

    tx = optax.multi_transform({"learn": optimizer, "fixed": optax.set_to_zero()}, labels_of)
    spsa_gc = isinstance(gradient, ZerothOrder) and gradient.estimator == "spsa_gc"
    if spsa_gc:  # fixed leaves get zero updates, so their momentum stays 0
        tx = look_ahead_momentum(tx, gradient.momentum)

    def init(theta: PyTree) -> TrainState:
        return TrainState(
            theta=theta,
            opt_state=tx.init(theta),
            stats=alignment.stats_init(),
            step=jnp.zeros((), jnp.int32),
            last_finite_loss=jnp.full((), jnp.nan, jnp.float32),
            bad_step=jnp.full((), -1, jnp.int32),
        )

    def step(state: TrainState, frozen_params: PyTree, batch: Batch, key: jax.Array):
        x, y = batch
        key = jax.random.fold_in(key, state.step)
        manip_key, zo_key = jax.random.split(key)

        def objective(theta):
            src = program.source_logits(theta, frozen_params, x, manip_key).astype(jnp.float32)
            logits = program.align(theta, src)
            return _per_example(loss, logits, y).mean() + program.penalty(theta), (src, logits)

        if spsa_gc:
            beta, decay = gradient.momentum, gradient.smoothing_decay
            (value, (src, logits)), grads = spsa_gradient(
                objective,
                state.theta,
                zo_key,
                queries=gradient.queries,
                smoothing=gradient.smoothing / (state.step + 1.0) ** decay,
                directions=gradient.directions,
                mask=program.trainable(state.theta),
                shift=jax.tree.map(lambda m: beta * m, state.opt_state.momentum),
            )
        elif isinstance(gradient, ZerothOrder):
            (value, (src, logits)), grads = zo_gradient(
                objective,
                state.theta,
                zo_key,
                queries=gradient.queries,
                smoothing=gradient.smoothing,
                directions=gradient.directions,
                mask=program.trainable(state.theta),
            )
        else:
            (value, (src, logits)), grads = jax.value_and_grad(objective, has_aux=True)(state.theta)
        updates, opt_state = tx.update(grads, state.opt_state, state.theta)
        theta = program.project(optax.apply_updates(state.theta, updates))
        ok = jnp.isfinite(value) & (state.bad_step < 0)
        theta, opt_state = jax.tree.map(
            lambda new, old: jnp.where(ok, new, old), (theta, opt_state), (state.theta, state.opt_state)
        )
        stats = state.stats
        if accumulate:
            stats = alignment.collect(stats, *jax.lax.stop_gradient((state.theta["output"], src)), y)
        state = TrainState(
            theta=theta,
            opt_state=opt_state,
            stats=stats,
            step=state.step + 1,
            last_finite_loss=jnp.where(ok, value, state.last_finite_loss),
            bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step),
        )
        metrics = {"loss": value}
        if _is_classification(logits, y):
            metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == y)
        return state, metrics

    if candidates:
        return jax.vmap(init), jax.vmap(step, in_axes=(0, None, None, None))
    return init, step


# ---------------------------------------------------------------------- evaluation


def _run_eval(sums_fn, theta, params, data, mesh, key=None, num_classes=None) -> tuple[np.ndarray, Any]:
    loss, correct, n = 0.0, 0.0, 0
    for i, (batch, size) in enumerate(_batches(data, 0, mesh, num_classes)):
        batch_key = None if key is None else jax.random.fold_in(key, i)
        batch = sharding.shard_batch(batch, mesh, size=size)
        batch_loss, batch_correct = sums_fn(theta, params, batch, batch_key)
        loss, correct, n = loss + batch_loss, correct + batch_correct, n + size
    if n == 0:
        raise ValueError("evaluation data yielded no batches")
    return np.asarray(loss) / n, _mean_or_none(correct, n)


def _num_classes(
    program: Reprogrammed, theta: PyTree, params: PyTree, data: Iterable[Batch], mesh: Mesh
) -> int | None:
    """The program's number of target classes (its logits' last axis), from shapes alone
    (``jax.eval_shape`` on the first batch: nothing runs); ``None`` without a batch."""
    first = next(_read(data, 0, mesh), None)
    if first is None:
        return None
    out = jax.eval_shape(program.apply, theta, params, first.batch[0], jax.random.key(0))
    return int(out.shape[-1]) if out.ndim >= 2 else None


def _mean_or_none(total, n):
    """``total / n``; ``None`` where there is no accuracy (a regression loss: NaN sums)."""
    mean = np.asarray(total) / np.asarray(n)
    return None if np.isnan(mean).all() else mean


def _correct(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Correct predictions in the batch; NaN when ``y`` are not class labels."""
    if not _is_classification(logits, y):
        return jnp.full((), jnp.nan, jnp.float32)
    return jnp.sum(jnp.argmax(logits, -1) == y).astype(jnp.float32)


@functools.lru_cache(maxsize=8)  # each entry holds its compiled programs: keep a few programs
def _compiled_eval(apply: Callable, candidates: bool, loss: Loss) -> Callable:
    """jit-ed evaluation sums, cached per program so repeated evaluations do not recompile."""

    def sums(theta, params, batch, key):
        x, y = batch
        logits = apply(theta, params, x, key)
        return jnp.sum(_per_example(loss, logits, y)), _correct(logits, y)

    return jax.jit(jax.vmap(sums, in_axes=(0, None, None, None)) if candidates else sums)


def evaluate(
    program: Reprogrammed,
    frozen_model: FrozenModel,
    theta: PyTree,
    data: Iterable[Batch],
    *,
    candidates: bool = False,
    key: jax.Array | None = None,
    loss: Loss = cross_entropy,
) -> tuple[Any, Any]:
    """Mean ``loss`` (default cross-entropy) and accuracy of ``theta`` on ``data``
    (accuracy ``None`` when the labels are not classes).

    With ``candidates=True``, ``theta`` is stacked and both results are ``(K,)`` arrays.
    ``key`` is for stochastic programs (a random-location patch): batch ``i`` gets
    ``fold_in(key, i)``, shared by all candidates; without it the program runs keyless.
    """
    _check_model(program, frozen_model, "evaluate")
    if key is not None:
        _check_key(key, "evaluate")
    mesh = _placement(frozen_model, None, "evaluate")
    sums = _compiled_eval(program.apply, candidates, loss)
    one = cand.select(theta, 0) if candidates else theta
    num_classes = _num_classes(program, one, frozen_model.params, data, mesh)
    # theta too, as fit's is: jit compiles once per placement of its arguments, so a fresh
    # theta (one device) and a trained one (the mesh) would compile the forward pass twice
    theta, params = sharding.replicate(theta, mesh), _placed(frozen_model.params, mesh)
    return _run_eval(sums, theta, params, data, mesh, key, num_classes)


@functools.lru_cache(maxsize=8)  # each entry holds its compiled programs: keep a few programs
def _compiled_alignments(source_logits: Callable, align: Callable) -> Callable:
    def correct(theta, states, params, batch, key):
        x, y = batch
        src = source_logits(theta, params, x, key)  # the frozen model runs once...
        logits = jax.vmap(lambda s: align({**theta, "output": s}, src))(states)  # ...O runs K times
        return jnp.sum(jnp.argmax(logits, -1) == y, axis=-1)

    return jax.jit(correct)


def evaluate_alignments(
    program: Reprogrammed,
    frozen_model: FrozenModel,
    theta: PyTree,
    alignment_states: PyTree,
    data: Iterable[Batch],
    *,
    key: jax.Array | None = None,
) -> np.ndarray:
    """Accuracy of K output alignments on one prompt, sharing one forward pass.

    ``alignment_states`` stacks K states of ``program.alignment`` (e.g. K label
    mappings); per batch the frozen model runs once and only ``O`` is vmapped.
    ``key`` is for stochastic programs, as in :func:`evaluate`.

    Returns:
      ``(K,)`` accuracies on ``data``.
    """
    k = cand.count(alignment_states)
    correct = _compiled_alignments(program.source_logits, program.align)
    mesh = _placement(frozen_model, None, "evaluate_alignments")  # as evaluate: one compile for any theta
    theta, states = sharding.replicate((theta, alignment_states), mesh)
    params = _placed(frozen_model.params, mesh)
    total, n = jnp.zeros((k,), jnp.int32), 0
    num_classes = _num_classes(
        program, {**theta, "output": cand.select(alignment_states, 0)}, params, data, mesh
    )
    for i, (batch, size) in enumerate(_batches(data, 0, mesh, num_classes)):
        batch_key = None if key is None else jax.random.fold_in(key, i)
        total = total + correct(
            theta, states, params, sharding.shard_batch(batch, mesh, size=size), batch_key
        )
        n += size
    if n == 0:
        raise ValueError("evaluate_alignments: data yielded no batches")
    return np.asarray(total) / n


# ------------------------------------------------------------------------- history


def metric(history: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    """One metric over epochs: ``(E,)``, or ``(E, K)`` with candidates."""
    return np.stack([np.asarray(h[name], dtype=float) for h in history])


def best_candidate(history: Sequence[Mapping[str, Any]], name: str = "eval_acc") -> int:
    """The candidate with the best final *validation* metric (never select on test data)."""
    if not history or history[-1].get(name) is None:
        raise ValueError(f"best_candidate: the history has no {name!r}; pass eval_data= (a validation split)")
    return int(np.argmax(np.asarray(history[-1][name])))


# ---------------------------------------------------------------------- mixed precision


def _cast_floats(tree: PyTree, dtype) -> PyTree:
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def _bf16_program(program: Reprogrammed, frozen_model: FrozenModel) -> Reprogrammed:
    """The same program around a bf16 forward pass: inputs and weights bf16, logits fp32."""

    model_apply = frozen_model.apply  # capture the function only, never the parameters

    def apply(params, x, hook=None):
        return model_apply(params, _cast_floats(x, jnp.bfloat16), hook=hook).astype(jnp.float32)

    model = FrozenModel(apply, frozen_model.params, frozen_model.spec)
    parts = {s: p for s, p in program.parts.items() if s != "output"}
    return reprogram(model, output=program.alignment, **parts)


# ----------------------------------------------------------------------------- fit


def _candidate_setup(program, candidates, theta, init_key):
    """(K or None, initial theta, per-candidate hyperparameters or None)."""
    hparams = None
    if candidates is None:
        return None, (program.init(init_key) if theta is None else theta), None
    if isinstance(candidates, int) and not isinstance(candidates, bool):
        if candidates < 1:
            raise ValueError(f"fit: candidates must be >= 1, got {candidates}")
        k = candidates
    elif isinstance(candidates, Mapping):
        if theta is not None:
            raise ValueError("fit: candidates= is a stacked theta already; do not pass theta= as well")
        theta, k = candidates, cand.count(candidates)
    elif isinstance(candidates, Sequence) and candidates and all(isinstance(c, Mapping) for c in candidates):
        names = {tuple(sorted(c)) for c in candidates}
        if len(names) != 1:
            raise ValueError(f"fit: every candidate must set the same hyperparameters, got {sorted(names)}")
        k = len(candidates)
        hparams = {n: np.asarray([c[n] for c in candidates], np.float32) for n in names.pop()}
    else:
        raise TypeError(
            "fit: candidates must be None, an int K, a stacked theta (dict) or a list of hyperparameter "
            f"dicts, got {type(candidates).__name__}"
        )
    if theta is None:
        theta = cand.init(program, jax.random.split(init_key, k))
    elif cand.count(theta) != k:
        raise ValueError(f"fit: theta has {cand.count(theta)} candidates but candidates= asks for {k}")
    return k, theta, hparams


def fit(
    program: Reprogrammed,
    frozen_model: FrozenModel,
    train_data: Iterable[Batch],
    *,
    epochs: int,
    key: jax.Array,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-2,
    loss: Loss = cross_entropy,
    eval_data: Iterable[Batch] | None = None,
    candidates: int | PyTree | Sequence[Mapping[str, float]] | None = None,
    theta: PyTree | None = None,
    gradient: str | ZerothOrder = "backprop",
    precision: str = "fp32",
    devices: Sequence[jax.Device] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    candidate_names: Sequence[str] | None = None,
    log_every: int = 50,
    steps_per_call: int = 1,
    refit_pass: str = "training",
    callback: Callable[[dict[str, Any], PyTree], None] | None = None,
) -> tuple[PyTree, list[dict[str, Any]]]:
    """Train ``program``'s learnable parts on ``train_data``; returns ``(theta, history)``.

    Args:
      program: a :func:`jaxreprog.reprogram` program around ``frozen_model``.
      frozen_model: supplies the frozen parameters (an argument of the compiled step).
      train_data: a :class:`jaxreprog.data.Dataset` (``jr.data.load``, ``jr.data.from_arrays``) or
        any re-iterable of ``(x, y)`` numpy batches; ``train_data.epoch(e)`` is
        used when it exists (deterministic shuffles, needed for bit-exact resumes).
      epochs: number of passes over ``train_data``.
      key: PRNG key: initialisation, then one key per step (``fold_in(key, step)``).
      optimizer: any optax transformation. Default: :func:`~jaxreprog.train.vr_adam`,
        the VR standard (Adam, ``learning_rate``, ×0.1 at 50% and 72% of the steps).
        Non-learnable leaves (statistical alignment state, fixed prompts) are never
        updated, whatever the optimiser (``optax.multi_transform`` + ``set_to_zero``).
      learning_rate: the default optimiser's base learning rate.
      loss: ``loss(logits, labels) -> (N,)`` per-example losses (:func:`make_step`);
        default :func:`cross_entropy`. With float targets (e.g. :func:`mse`) the
        history's accuracies are ``None``.
      eval_data: held-out batches evaluated after every epoch (a validation split).
      candidates: train K prompts in one vmapped step with shared parameters and batch:
        an int K (K initialisations from ``key``), a stacked theta, or a list of K
        dicts of injected optimiser hyperparameters (``[{"learning_rate": 1e-2}, ...]``;
        the optimiser must inject them, as ``vr_adam`` does for ``learning_rate``).
      theta: initial theta (stacked with candidates) instead of ``program.init``.
      gradient: ``"backprop"`` or a :class:`ZerothOrder` config (black-box training: BAR, or
        SPSA-GC with ``estimator="spsa_gc"``, whose default optimiser is ``optax.sgd`` on
        :func:`~jaxreprog.train.spsa_gain` with ``a = learning_rate``, BlackVIP's update).
        Queries are counted against its ``budget``; one that cannot pay for the first
        step is a ``ValueError``.
      precision: ``"fp32"`` or ``"bf16"`` (frozen forward in bfloat16; prompt, alignment
        and loss in float32).
      devices: data-parallel devices (default all local devices): batches are split
        over them, parameters and state replicated.
      checkpoint_dir: save state after every epoch and resume from the latest
        checkpoint found there (refused when written for another base model).
      progress: show a tqdm bar (default: when stderr is a terminal): the phase
        (``map``, ``train``, ``refit``, ``eval``) and epoch as its description, each
        candidate's running loss as its postfix (``RLM 2.35 FLM 3.12``), and one
        summary line on stderr at the end (epochs, steps, seconds, final loss).
      candidate_names: the candidates' names in the progress bar, one per candidate
        (default: their index, ``#0 #1 …``).
      log_every: steps between progress updates and non-finite-loss checks.
      steps_per_call: optimiser steps per compiled call: that many consecutive batches
        of equal shapes are stacked and run by one ``lax.scan`` of the step (a shorter
        group, e.g. an epoch's last steps or a ragged last batch, runs step by step).
        The same updates, in the same order; the per-call costs are paid once per
        group: Python dispatch, and on XLA:CPU the workspace that every call allocates
        afresh and page-faults in (padding VR on EfficientNet-Lite0, 128 px, batch 32:
        0.25 → 0.19 s per step at 8, ``benchmarks/README.md``). Not every model gains: in a
        loop body XLA:CPU runs some convolution gradients slower (ResNet-18 at 224 px, batch
        16: 1.23 s per step alone, 1.34 s at 4 per call), so measure first. Progress, query-budget
        and finiteness checks then happen between groups. The forward-only passes that
        map a statistical alignment (the initial map, ``refit_pass="fresh"``) are
        grouped the same way.
      refit_pass: where an ``EVERY_EPOCH`` alignment's statistics come from:
        ``"training"`` accumulates them in the epoch's own training steps (no extra
        pass); ``"fresh"`` runs one forward-only pass over ``train_data`` with the
        epoch's final prompt, as the reference implementations (ILM-VP, BLM) do before
        the next epoch (one more forward pass per epoch).
      callback: ``callback(record, theta)`` after every epoch (after its refit and its
        evaluation, before its checkpoint), with that epoch's history record and a copy
        of its theta (stacked with candidates) that outlives the training loop: keep the
        validation-best prompt, log, or plot, without a second compilation per epoch.
        A resumed run calls it for the epochs it trains, not for the restored ones.

    Returns:
      ``(theta, history)``: the final theta (stacked with candidates) and one dict of
      metrics per epoch (see the module docstring).

    Compilation: every call compiles its training step (and, with ``steps_per_call > 1``,
    the scanned group of steps), and for a statistical alignment the statistics pass and
    the refit: they close over this call's optimiser and settings. The evaluation forward
    pass is cached per program (the last 8 programs), so another ``fit`` or
    :func:`evaluate` of the same program reuses it; a program rebuilt by
    ``jr.reprogram`` is a new program and compiles again.

    Raises:
      FloatingPointError: the loss became NaN or inf; names the step and the last
        finite loss.
    """
    _check_model(program, frozen_model, "fit")
    _check_key(key, "fit")
    epochs = checking.integer(epochs, "epochs", who="fit")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "fit: optimizer must be an optax.GradientTransformation (e.g. optax.adam(1e-2)) or None, "
            f"got {type(optimizer).__name__} {optimizer!r:.40}"
        )
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, int | float | np.number)
        or not np.isfinite(learning_rate)
        or learning_rate <= 0
    ):
        raise ValueError(f"fit: learning_rate must be a finite number > 0, got {learning_rate!r:.40}")
    if not callable(loss):
        raise TypeError(f"fit: loss must be a function loss(logits, labels) -> (N,), got {loss!r:.40}")
    if hasattr(train_data, "__len__") and len(train_data) == 0:
        raise ValueError("fit: train_data is empty (it yields no batches)")
    if checkpoint_dir is not None and os.path.exists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise NotADirectoryError(f"fit: checkpoint_dir {os.fspath(checkpoint_dir)!r} is a file, not a folder")
    log_every = checking.integer(log_every, "log_every", who="fit")
    steps_per_call = checking.integer(steps_per_call, "steps_per_call", who="fit")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"fit: precision must be 'fp32' or 'bf16', got {precision!r}")
    if refit_pass not in ("training", "fresh"):
        raise ValueError(f"fit: refit_pass must be 'training' or 'fresh', got {refit_pass!r}")
    if not (gradient == "backprop" or isinstance(gradient, ZerothOrder)):
        raise ValueError(f"fit: gradient must be 'backprop' or a jr.train.ZerothOrder, got {gradient!r}")
    if isinstance(gradient, ZerothOrder):
        check_zeroth_order(gradient, "fit")
    t_fit = time.perf_counter()
    # One split, four independent streams: initialisation, training steps, the mapping passes
    # (stochastic programs) and evaluation (mixing split and fold_in made eval's equal training's).
    init_key, train_key, map_key, eval_key = jax.random.split(key, 4)
    k, theta, hparams = _candidate_setup(program, candidates, theta, init_key)
    names = _candidate_names(candidate_names, k)
    alignment = program.alignment
    params = frozen_model.params
    if precision == "bf16":
        program, params = _bf16_program(program, frozen_model), _cast_floats(params, jnp.bfloat16)

    # ---- optimiser (learnable leaves only; the default follows the VR schedule) and step
    every_epoch = alignment.schedule == Refit.EVERY_EPOCH
    accumulate = every_epoch and refit_pass == "training"
    steps_per_epoch = len(train_data) if hasattr(train_data, "__len__") else None
    if optimizer is None:
        total = None if steps_per_epoch is None else epochs * steps_per_epoch
        if total is None:
            warnings.warn(
                "fit: train_data has no len(); the default optimiser runs without its schedule", stacklevel=2
            )
        if isinstance(gradient, ZerothOrder) and gradient.estimator == "spsa_gc":
            optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=spsa_gain(learning_rate))
        else:
            optimizer = schedules.vr_adam(learning_rate, total)
    init_fn, step_fn = make_step(
        program, optimizer, loss=loss, gradient=gradient, accumulate=accumulate, candidates=bool(k)
    )
    _check_theta_finite(theta)
    # The step donates its state: never the caller's arrays (a copy, no program). One compiled init:
    # run eagerly, each of the optimiser's and the alignment's zeros would compile a program of its own.
    state = jax.jit(init_fn)(jax.device_put(theta, may_alias=False))
    if hparams is not None:
        state = state._replace(opt_state=schedules.set_hyperparams(state.opt_state, hparams))

    def train_step(carry, params, batch, key):
        """The public step, plus the epoch's metric sums (a ragged batch weighs by its size)."""
        state, sums = carry
        state, metrics = step_fn(state, params, batch, key)
        n = jnp.asarray(jax.tree.leaves(batch[1])[0].shape[0], jnp.float32)
        value = metrics["loss"]
        sums = {
            "loss": sums["loss"] + jnp.where(jnp.isfinite(value), value * n, 0.0),
            "correct": sums["correct"] + metrics.get("accuracy", jnp.nan) * n,
            "count": sums["count"] + n,
        }
        return state, sums

    def zero_sums():
        shape = (k,) if k else ()  # three arrays: the step donates each of them
        return sharding.replicate(
            {n: jnp.zeros(shape, jnp.float32) for n in ("loss", "correct", "count")}, mesh
        )

    # ---- compiled functions: vmapped over candidates, params and batch shared
    def stats_fn(theta, stats, params, batch, key):
        src = program.source_logits(theta, params, batch[0], key).astype(jnp.float32)
        return alignment.collect(stats, theta["output"], src, batch[1])

    def refit_fn(theta, stats):
        return {**theta, "output": alignment.refit_from_stats(theta["output"], stats)}

    def reset_stats(state):
        return state._replace(stats=alignment.stats_init())

    if k:
        stats_fn = jax.vmap(stats_fn, in_axes=(0, 0, None, None, None))
        refit_fn, reset_stats = jax.vmap(refit_fn), jax.vmap(reset_stats)
    mesh = _placement(frozen_model, devices, "fit")
    # theta, the optimiser state and the statistics stay whole on every device: left to itself, XLA
    # returns them split like the sharded activations they came from (jr.shard's model axis), and
    # the next call would compile the step again for that layout.
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    multi_step_fn = jax.jit(_scanned(train_step), donate_argnums=0, out_shardings=whole)
    multi_stats_fn = jax.jit(_scanned_stats(stats_fn), out_shardings=whole)
    train_step, stats_fn, refit_fn = (
        jax.jit(train_step, donate_argnums=0, out_shardings=whole),
        jax.jit(stats_fn, out_shardings=whole),
        jax.jit(refit_fn, out_shardings=whole),
    )
    reset_stats, eval_fn = jax.jit(reset_stats), _compiled_eval(program.apply, bool(k), loss)

    one_theta = jax.jit(cand.select, static_argnums=1)(theta, 0) if k else theta  # one program
    num_classes = _num_classes(program, one_theta, params, train_data, mesh)  # labels checked per batch
    params = _placed(params, mesh)
    state = sharding.replicate(state, mesh)

    # ---- resume
    history: list[dict[str, Any]] = []
    start_epoch, queries = 0, 0
    meta = None
    if checkpoint_dir is not None:
        meta = {
            "model_name": getattr(frozen_model.spec, "name", ""),
            "params_sha256": ckpt.fingerprint(frozen_model.params),
            "config": {
                "epochs": epochs,
                "learning_rate": learning_rate,
                "precision": precision,
                "candidates": k,
                "hyperparameters": None if hparams is None else {n: v.tolist() for n, v in hparams.items()},
                "gradient": repr(gradient),
                "refit_pass": refit_pass,
                "loss": f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', repr(loss))}",
                "optimizer": _optimizer_fingerprint(optimizer, one_theta),
                **_program_fingerprint(program, one_theta),
            },
            "seed": np.asarray(jax.random.key_data(key)).tolist(),
        }
        if ckpt.latest_step(checkpoint_dir) is not None:
            # compared before the state is read into this run's shape
            info = ckpt.metadata(checkpoint_dir, params_sha256=meta["params_sha256"])
            was, now = ({**m.get("config", {}), "seed": m.get("seed")} for m in (info, meta))
            changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            if changed:  # e.g. another `epochs` would resume on another learning-rate schedule
                raise ValueError(
                    f"fit: {checkpoint_dir} holds a run with other settings "
                    f"({'; '.join(f'{k}: saved {was.get(k)!r}, now {now.get(k)!r}' for k in changed)}); "
                    "resume with the same ones, or train into a new checkpoint_dir (theta= can start "
                    "from the finished run's prompt)"
                )
            saved, info = ckpt.restore(
                checkpoint_dir, _checkpointed(state), params_sha256=meta["params_sha256"]
            )
            state = sharding.replicate(state._replace(**saved), mesh)
            start_epoch, history, queries = info["step"], _history_from_json(info["history"]), info["queries"]

    def remap(state, key):
        """Refit the alignment from a forward-only pass over the training data with ``state.theta``
        (batch ``i`` gets ``fold_in(key, i)``; grouped by ``steps_per_call`` as training is).
        Returns the state and the pass's black-box queries (one per example; 0 with backprop)."""
        stats, i, seen = reset_stats(state).stats, 0, 0
        for group in _groups(_batches(train_data, 0, mesh, num_classes), steps_per_call):
            seen += sum(held.size for held in group)
            if len(group) == steps_per_call > 1:
                stacked = sharding.shard_batch(_stack(group), mesh, axis=1, size=group[0].size)
                stats = multi_stats_fn(state.theta, stats, params, stacked, key, i)
            else:
                for j, (batch, size) in enumerate(group):
                    batch = sharding.shard_batch(batch, mesh, size=size)
                    stats = stats_fn(state.theta, stats, params, batch, jax.random.fold_in(key, i + j))
            i += len(group)
        cost = seen if isinstance(gradient, ZerothOrder) else 0
        return state._replace(theta=refit_fn(state.theta, stats)), cost

    bar = _Progress(progress, None if steps_per_epoch is None else epochs * steps_per_epoch, names, epochs)
    bar.update(start_epoch * (steps_per_epoch or 0))
    # ---- initial map (Refit.ONCE / EVERY_EPOCH): one forward-only pass, before epoch 1
    if start_epoch == 0 and alignment.schedule != Refit.NEVER:
        bar.phase("map")
        state, cost = remap(state, map_key)
        queries += cost

    check_every = max(1, log_every)
    stopped = None
    steps_run = 0
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        bar.phase("train", epoch)
        state, sums = (reset_stats(state) if accumulate else state), zero_sums()
        done = 0  # steps of this epoch
        for group in _groups(_batches(train_data, epoch, mesh, num_classes), steps_per_call):
            if isinstance(gradient, ZerothOrder):
                for i, (_, size) in enumerate(group):
                    cost = gradient.evaluations * size
                    if gradient.budget is not None and queries + cost > gradient.budget:
                        if start_epoch == epoch == done + i == 0:
                            spent = f"; the mapping pass spent {queries}" if queries else ""
                            raise ValueError(
                                f"fit: ZerothOrder.budget={gradient.budget} is below one training step: "
                                f"a step on a batch of {size} costs {cost} queries "
                                f"({gradient.evaluations} per example){spent}"
                            )
                        stopped = f"query budget {gradient.budget} reached after {queries} queries"
                        group = group[:i]
                        break
                    queries += cost
            if len(group) == steps_per_call > 1:
                stacked = sharding.shard_batch(_stack(group), mesh, axis=1, size=group[0].size)
                state, sums = multi_step_fn((state, sums), params, stacked, train_key)
            else:
                for batch, size in group:
                    state, sums = train_step(
                        (state, sums), params, sharding.shard_batch(batch, mesh, size=size), train_key
                    )
            bar.update(len(group))
            if (done + len(group)) // check_every > done // check_every:
                _check_finite(state, epoch, train_data, mesh)
                bar.losses(sums["loss"] / sums["count"])
            done += len(group)
            if stopped:
                break
        if done == 0:  # no step: nothing to refit from, no metrics to average, nothing to save
            if not stopped:
                raise ValueError(f"fit: train_data yielded no batches in epoch {epoch + 1}")
            if history:  # the budget ran out exactly at the previous epoch's end (or before a resume)
                history[-1]["stopped"] = stopped
            break
        _check_finite(state, epoch, train_data, mesh)
        steps_run += done
        if every_epoch:
            bar.phase("refit", epoch)
        if accumulate:
            state = state._replace(theta=refit_fn(state.theta, state.stats))
        elif every_epoch:  # refit_pass == "fresh"
            state, cost = remap(state, jax.random.fold_in(map_key, epoch + 1))
            queries += cost
        record = {
            "epoch": epoch + 1,
            "loss": np.asarray(sums["loss"] / sums["count"]),
            "train_acc": _mean_or_none(sums["correct"], sums["count"]),
            "eval_loss": None,
            "eval_acc": None,
            "lr": _lr(state),
            "queries": queries,
        }
        bar.losses(record["loss"])
        if eval_data is not None:
            bar.phase("eval", epoch)
            record["eval_loss"], record["eval_acc"] = _run_eval(
                eval_fn, state.theta, params, eval_data, mesh, jax.random.fold_in(eval_key, epoch),
                num_classes,
            )  # fmt: skip
        record["seconds"] = time.perf_counter() - t0
        if stopped:
            record["stopped"] = stopped
        history.append(record)
        if callback is not None:  # a copy: the next step donates the state's buffers
            callback(record, jax.tree.map(jnp.copy, state.theta))
        if checkpoint_dir is not None:  # after the callback: what it saved is never behind
            meta_now = {**meta, "history": _history_to_json(history), "queries": queries}
            ckpt.save(checkpoint_dir, epoch + 1, _checkpointed(state), meta_now)
        if stopped:
            break
    bar.close(history[start_epoch:], steps_run, time.perf_counter() - t_fit)
    return state.theta, history


def _program_fingerprint(program: Reprogrammed, theta: PyTree) -> dict[str, str]:
    """What identifies a program across processes: each part's type, function and tags,
    theta's structure, and a checksum of ``program.init(key(0))`` (its configuration)."""
    parts = {
        slot: f"{type(p).__name__} {p.apply.__module__}.{p.apply.__qualname__} [{p.tags or ''}]"
        for slot, p in program.parts.items()
    }
    shapes = jax.tree.map(lambda a: f"{jnp.result_type(a)}{list(jnp.shape(a))}", theta)
    return {
        "program": json.dumps(parts, sort_keys=True),
        "theta": str(shapes),
        "theta_init_sha256": ckpt.fingerprint(jax.jit(program.init)(jax.random.key(0)))[:16],
    }


def _optimizer_fingerprint(optimizer: optax.GradientTransformation, theta: PyTree) -> str:
    """The optimiser's first update of all-ones gradients, per leaf (4 significant digits):
    another optimiser or learning rate gives another update."""

    @jax.jit  # one program (eagerly, each of the update's operations compiles one)
    def first_update(theta):
        grads = jax.tree.map(jnp.ones_like, theta)
        updates, _ = optimizer.update(grads, optimizer.init(theta), theta)
        return [jnp.mean(u) for u in jax.tree.leaves(updates)]

    return " ".join(f"{float(u):.4g}" for u in first_update(theta))


def _scanned(step: Callable) -> Callable:
    """``step`` over a stack of batches (leading axis: steps) in one ``lax.scan``."""

    def steps(state, params, batches, key):  # state: fit's (TrainState, sums) carry
        return jax.lax.scan(lambda s, batch: (step(s, params, batch, key), None), state, batches)[0]

    return steps


def _scanned_stats(stats: Callable) -> Callable:
    """``stats`` over a stack of batches in one ``lax.scan``; stacked batch ``j`` gets the
    key ``fold_in(key, first + j)``, as batch ``first + j`` of an ungrouped pass does."""

    def passes(theta, state, params, batches, key, first):
        def body(state, xs):
            i, batch = xs
            return stats(theta, state, params, batch, jax.random.fold_in(key, i)), None

        n = jax.tree.leaves(batches)[0].shape[0]
        return jax.lax.scan(body, state, (first + jnp.arange(n), batches))[0]

    return passes


def _stack(group: Sequence[_Held]) -> Batch:
    return jax.tree.map(lambda *leaves: np.stack(leaves), *(held.batch for held in group))


def _groups(batches: Iterable[_Held], size: int) -> Iterator[list[_Held]]:
    """Consecutive batches in groups of ``size`` whose leaves have equal shapes (and global
    sizes: a process's part of two sizes can match); a group is cut short where they change
    (a ragged last batch) and at the end."""

    def shapes(held):
        return [held.size, *(np.shape(leaf) for leaf in jax.tree.leaves(held.batch))]

    group: list[_Held] = []
    for batch in batches:
        if group and shapes(batch) != shapes(group[0]):
            yield group
            group = []
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _checkpointed(state: TrainState) -> dict[str, PyTree]:
    return {"theta": state.theta, "opt_state": state.opt_state, "step": state.step}


def _check_finite(state: TrainState, epoch: int, data: Iterable[Batch], mesh: Mesh) -> None:
    """Raise if a step's loss was not finite, naming non-finite data as its cause where the
    host can see it, before blaming the learning rate."""
    bad = np.atleast_1d(np.asarray(state.bad_step))
    if (bad < 0).all():
        return
    which = np.flatnonzero(bad >= 0)
    last = np.atleast_1d(np.asarray(state.last_finite_loss))
    c = int(which[0])
    who = f" in candidates {which.tolist()} of {len(bad)} (first: {c})" if np.ndim(state.bad_step) else ""
    cause = _nonfinite_data(data, epoch, mesh) or "lower the learning rate, or check the loss and the prompt"
    raise FloatingPointError(
        f"fit: the training loss became NaN or inf at step {int(bad[c])} (epoch {epoch + 1}){who}; "
        f"the last finite loss was {float(last[c]):.6g}: {cause}"
    )


def _nonfinite_data(data: Iterable[Batch], epoch: int, mesh: Mesh) -> str:
    """The first batch of ``data``'s epoch with a non-finite float, described; ``""`` if none.
    Only run once training has failed (a pass over the data on the host: this process's rows)."""
    try:
        for i, (batch, _) in enumerate(_read(data, epoch, mesh)):
            for name, part in zip(("x", "y"), batch):
                for leaf in jax.tree.leaves(part):
                    leaf = np.asarray(leaf)
                    if np.issubdtype(leaf.dtype, np.floating) and not np.isfinite(leaf).all():
                        return f"batch {i + 1} of train_data has NaN or inf in {name}; clean the data"
    except Exception:  # a one-shot iterator or a failing reader: no diagnosis, the plain message
        return ""
    return ""


def _placement(frozen_model: FrozenModel, devices: Sequence[jax.Device] | None, who: str):
    """The mesh a run uses: the one ``jr.shard`` split the model over, else data parallel."""
    placed = sharding.mesh_of(frozen_model.params)
    if placed is None:
        return sharding.data_mesh(devices)
    if devices is not None:
        raise ValueError(f"{who}: the model is sharded over a mesh (jr.shard); devices= cannot be given too")
    return placed


def _placed(params: PyTree, mesh) -> PyTree:
    """``params`` as the run places them: as ``jr.shard`` left them, else replicated."""
    return params if sharding.mesh_of(params) is not None else sharding.replicate(params, mesh)


def _check_theta_finite(theta: PyTree) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(theta)[0]:
        leaf = np.asarray(leaf)  # on the host: no small programs to compile
        if np.issubdtype(leaf.dtype, np.floating) and not np.isfinite(leaf).all():
            raise ValueError(f"fit: the initial theta{jax.tree_util.keystr(path)} has NaN or inf values")


def _check_model(program: Reprogrammed, frozen_model: FrozenModel, who: str) -> None:
    """``frozen_model`` must be of the kind ``program`` was built around (its spec): another
    model's parameters with the same spec are fine (a transferred prompt), another spec is not."""
    if not isinstance(frozen_model, FrozenModel):
        raise TypeError(f"{who}: frozen_model must be a jr.FrozenModel, got {type(frozen_model).__name__}")
    a, b = program.spec, frozen_model.spec
    try:
        same = type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):  # a spec holding arrays
        same = type(a) is type(b) and repr(a) == repr(b)
    if not same:
        raise ValueError(
            f"{who}: frozen_model is not the model the program was built around: its spec is "
            f"{str(b)[:100]}, the program's {str(a)[:100]} (build it with jr.reprogram(frozen_model, ...))"
        )


def _check_key(key: Any, who: str) -> None:
    ok = isinstance(key, jax.Array | np.ndarray) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == np.uint32 and key.shape[-1:] == (2,))  # a raw jax.random.PRNGKey
    )
    if not ok:
        raise TypeError(f"{who}: key must be a PRNG key such as jax.random.key(0), got {key!r:.40}")


def _lr(state: TrainState):
    """The learning rate of the epoch's last step: the injected ``learning_rate`` (per
    candidate) times the injected schedule factor ``step_size`` (:func:`vr_adam`);
    ``None`` when the optimiser injects no learning rate."""
    base = schedules.hyperparams(state.opt_state, "learning_rate")
    if base is None:
        return None
    scale = schedules.hyperparams(state.opt_state, "step_size")
    return np.asarray(base) * (1.0 if scale is None else np.asarray(scale))


def _candidate_names(names: Sequence[str] | None, k: int | None) -> tuple[str, ...] | None:
    """``candidate_names`` checked against the candidate count (default: ``#0 #1 …`` with
    candidates, no name for one prompt)."""
    if names is None:
        return None if k is None else tuple(f"#{i}" for i in range(k))
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"fit: candidate_names must be a sequence of str, got {names!r:.80}")
    names = tuple(names)
    if len(names) != (k or 1):
        raise ValueError(
            f"fit: candidate_names has {len(names)} names for {k or 1} candidate(s); pass one per candidate"
        )
    return names


def _named(values: Any, names: Sequence[str] | None, fmt: str, most: int = 8) -> str:
    """``"RLM 2.35 FLM 3.12"`` (one per name; the first ``most``, then ``+N more``), or the
    one value without names."""
    values = np.atleast_1d(np.asarray(values, dtype=float))
    if names is None:
        return format(values[0], fmt)
    text = " ".join(f"{n} {format(v, fmt)}" for n, v in zip(names[:most], values[:most]))
    return text + (f" +{len(names) - most} more" if len(names) > most else "")


class _Progress:
    """fit's tqdm bar: the phase (``map``, ``train``, ``refit``, ``eval``) and epoch as its
    description, each candidate's running loss as its postfix, a summary line when closed."""

    def __init__(self, progress: bool | None, total: int | None, names, epochs: int):
        from tqdm.auto import tqdm

        disable = not sys.stderr.isatty() if progress is None else not progress
        self.bar = tqdm(total=total, disable=disable, unit="step", dynamic_ncols=True, leave=False)
        self.names, self.epochs = names, epochs

    def update(self, n: int) -> None:
        self.bar.update(n)

    def phase(self, name: str, epoch: int | None = None) -> None:
        """Show ``name`` while a phase runs; the steps' rate (the ETA) leaves out the other phases."""
        if name == "train":
            self.bar.unpause()
        self.bar.set_description(name if epoch is None else f"{name} {epoch + 1}/{self.epochs}")

    def losses(self, loss: Any) -> None:
        if not self.bar.disable:
            self.bar.set_postfix_str(f"loss {_named(loss, self.names, '.3g')}")

    def close(self, history: Sequence[Mapping[str, Any]], steps: int, seconds: float) -> None:
        shown = not self.bar.disable
        self.bar.close()  # (which disables the bar)
        if not shown:
            return
        n = len(history)
        line = f"fit: {n} epoch{'s' * (n != 1)}, {steps} steps, {seconds:.1f} s"
        if history:
            line += f"; final loss {_named(history[-1]['loss'], self.names, '.3g')}"
            if history[-1].get("eval_acc") is not None:
                line += f"; val acc {_named(history[-1]['eval_acc'], self.names, '.1%')}"
            if history[-1].get("stopped"):
                line += f" ({history[-1]['stopped']})"
        print(line, file=sys.stderr, flush=True)


def _history_to_json(history):
    def conv(v):
        return np.asarray(v).tolist() if isinstance(v, np.ndarray | np.generic | jax.Array) else v

    return [{k: conv(v) for k, v in h.items()} for h in history]


def _history_from_json(records):
    def conv(v):
        return np.asarray(v) if isinstance(v, list | float) else v

    return [
        {k: (v if k in ("epoch", "queries", "seconds", "stopped") else conv(v)) for k, v in h.items()}
        for h in records
    ]
