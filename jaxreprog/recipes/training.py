"""Running a recipe: one :func:`jaxreprog.train.fit` call, the epoch chosen on validation, a resumable run.

:func:`run` keeps, per candidate, the prompt of the epoch with the best *validation*
accuracy (the earliest on ties) and reports test accuracy for both the last epoch and that
one — never selecting on the test set (the reference repositories of ILM-VP, BLM and SMM
keep the best *test* epoch; we do not). With an ``out`` folder the trainer checkpoints
there and the selection so far is saved beside it, so a rerun resumes and selects exactly
as an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog.recipes.assembly import Built, build, optimizer
from jaxreprog.recipes.results import Result, writable_folder, write
from jaxreprog.recipes.schema import Recipe
from jaxreprog.train import checkpoint as ckpt

PyTree = Any


def _selection(stacked: PyTree, record: Mapping[str, Any]) -> dict[str, Any]:
    """One epoch as a selection: its prompts, validation accuracies and epoch, per candidate."""
    val = np.atleast_1d(np.asarray(record["eval_acc"], dtype=float))
    return {"theta": stacked, "val": val, "epoch": np.full(val.shape, record["epoch"])}


def _restore_selected(sel_dir: str, step: int, like: PyTree) -> dict[str, Any]:
    """The selection an interrupted run kept up to epoch ``step``, shaped like ``like``."""
    try:
        saved, _ = ckpt.restore(sel_dir, like, step=step)
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(
            f"the run resumes after epoch {step} but its selection up to that epoch cannot be read "
            f"({e}); rerun into a new --out folder"
        ) from e
    return {k: v if k == "theta" else np.asarray(v) for k, v in saved.items()}


_TEST_STREAM = 0x7E57  # the test pass's key: fold_in(key(seed), _TEST_STREAM), apart from fit's keys


def _stacked(theta: PyTree, k: int | None) -> PyTree:
    return theta if k else jax.tree.map(lambda a: a[None], theta)


def run(
    recipe: Recipe,
    *,
    out: str | os.PathLike | None = None,
    progress: bool | None = None,
    built: Built | None = None,
    per_epoch: bool = True,
    validate: bool = True,
    report: bool = True,
) -> Result:
    """Train ``recipe`` and evaluate it on the test split; write results to ``out`` when given.

    ``out`` receives ``results.json``, one ``prompt_<candidate>.png`` per candidate
    (the validation-selected prompt; the last one without ``per_epoch``), those prompts
    as an artifact in ``out/prompt`` (:func:`jaxreprog.save`), and the trainer's orbax
    checkpoint in ``out/checkpoint`` (a rerun resumes from it) beside the selection so far
    in ``out/selected``; with ``report`` (default) also :func:`jaxreprog.report.write`'s
    figures and ``report.html``.

    Training is one :func:`jaxreprog.train.fit` call. With ``per_epoch`` (default) its
    epoch callback sees every epoch's prompt and keeps, per candidate, the one with the
    best *validation* accuracy (the earliest on ties); ``per_epoch=False`` reports the
    last epoch only (``test_selected`` is ``None``), and ``validate=False`` (only then)
    skips the per-epoch validation pass as well. A run resumed from ``out/checkpoint``
    restores the selection of the epochs before it from ``out/selected``, so it selects
    exactly as an uninterrupted run.
    """
    import jaxreprog as jr

    if per_epoch and not validate:
        raise ValueError("run: per_epoch selects the epoch on validation; it needs validate=True")
    if out is not None:
        writable_folder(out)
    b = build(recipe) if built is None else built
    k = len(b.labels) if (b.theta0 is not None or recipe.candidates > 1) else None
    best: dict[str, Any] = {}
    # The selection so far, saved each epoch before fit's checkpoint; fit has already refused
    # a checkpoint of another model before the first callback.
    sel_dir = None if out is None or not per_epoch else os.path.join(os.fspath(out), "selected")

    def keep_best(record, theta):
        new = _selection(_stacked(theta, k), record)
        val, epoch = new["val"], record["epoch"]
        if not best and sel_dir is not None and epoch > 1:  # resumed: restore epochs 1..epoch-1
            best.update(_restore_selected(sel_dir, epoch - 1, new))
        if not best:
            best.update(new)
            if sel_dir is not None:  # a fresh run: a selection left by an earlier one is stale
                shutil.rmtree(sel_dir, ignore_errors=True)
                ckpt.save(sel_dir, epoch, best, {})
            return
        better = val > best["val"]  # the earliest epoch wins ties
        best["theta"] = jax.tree.map(
            lambda cur, kept: jnp.where(better.reshape((-1,) + (1,) * (cur.ndim - 1)), cur, kept),
            new["theta"],
            best["theta"],
        )
        best["val"] = np.where(better, val, best["val"])
        best["epoch"] = np.where(better, epoch, best["epoch"])
        if sel_dir is not None:
            ckpt.save(sel_dir, epoch, best, {})

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ckdir = os.path.join(os.fspath(out), "checkpoint") if out is not None else os.path.join(tmp, "ck")
        theta, history = jr.train.fit(
            b.program,
            b.model,
            b.train,
            epochs=recipe.epochs,
            key=jax.random.key(recipe.seed),
            optimizer=optimizer(recipe, recipe.epochs * len(b.train)),
            eval_data=b.validation if validate else None,
            candidates=b.theta0 if b.theta0 is not None else (recipe.candidates if k else None),
            precision=recipe.precision,
            steps_per_call=recipe.steps_per_call,
            refit_pass=recipe.refit_pass,
            checkpoint_dir=ckdir,
            progress=progress,
            callback=keep_best if per_epoch else None,
            candidate_names=list(b.labels) if k else None,
        )
    seconds = time.perf_counter() - t0
    last = _stacked(theta, k)
    if sel_dir is not None and not best and history:  # a rerun of a finished run trains nothing
        best.update(_restore_selected(sel_dir, len(history), _selection(last, history[-1])))
    best_theta, best_val, best_epoch = best.get("theta"), best.get("val"), best.get("epoch")
    test_key = jax.random.fold_in(jax.random.key(recipe.seed), _TEST_STREAM)

    def test_acc(stacked):  # compiled once (evaluate caches per program), for both prompts
        return jr.train.evaluate(b.program, b.model, stacked, b.test, candidates=True, key=test_key)[1]

    test_last = test_acc(last)
    test_sel = None if best_theta is None else test_acc(best_theta)
    result = Result(
        recipe=recipe,
        labels=b.labels,
        history=history,
        theta=theta,
        theta_selected=best_theta,
        test_last=np.asarray(test_last),
        test_selected=test_sel,
        val_selected=best_val,
        selected_epoch=best_epoch,
        train_seconds=seconds,
        program=b.program,
        model=b.model,
        out=None if out is None else os.fspath(out),
        class_names=getattr(b.test.info, "class_names", None),
        input_shape=getattr(b.test.info, "shape", None),
    )
    if out is not None and jax.process_index() == 0:  # one writer in a run of several processes
        write(result, last if best_theta is None else best_theta)
        if report:
            from jaxreprog import report as reporting  # it imports this module

            reporting.write(result, b, out)
    return result
