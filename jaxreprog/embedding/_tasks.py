"""Mixed-task batches: each example's task id travels in the batch as ``x["task"]``.

A text batch is ``{"input_ids", "attention_mask"}``; a mixed-task batch adds ``"task"``, an
int ``(B,)`` array of task ids in ``[0, K)``. The frozen model does not read it; the prompt
reads it in its :attr:`~jaxreprog.SiteHook.bind`, which :func:`jaxreprog.reprogram` calls with
each call's batch: ``bind`` gathers each example's prompt from theta's stacked ``(K, P, D)``
prompts into a :class:`PerExample` ``(B, P, D)``, which ``apply`` inserts
(:func:`~jaxreprog.hooks.insert` takes one prompt per example). So one compiled program serves
every task, under ``jit``, ``grad`` and the candidate axis (``vmap`` over theta), and a
gradient reaches only the rows of the tasks present in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking
from jaxreprog.checking import check

TASK_KEY = "task"


class PerExample(NamedTuple):
    """A task prompt's theta bound to one batch: each example's prompt, ``(B, P, D)``."""

    prompts: jax.Array


def check_tasks(tasks: Any, who: str) -> int:
    return checking.integer(tasks, "tasks (the number of tasks K)", who=who)


def task_count(part: Any) -> int | None:
    """K of a part with a prompt per task (its factory's ``tasks``; a :func:`jaxreprog.chain`'s
    first such part), ``None`` where its origin does not say (a part of the user's own)."""
    args = part.origin.arguments if getattr(part, "origin", None) is not None else {}
    if isinstance(args.get("tasks"), int):
        return args["tasks"]
    inner = [t for t in args.get("transforms", ()) if getattr(t, "bind", None) is not None]
    return task_count(inner[0]) if inner else None


def task_ids(x: Any, tasks: int, who: str) -> jax.Array:
    """``x["task"]`` as int32 ``(B,)``, checked: structure, dtype and shape always (they are static);
    values in ``[0, tasks)`` on eager calls (under ``jit`` only inside :func:`jaxreprog.checked`)."""
    if not isinstance(x, Mapping) or TASK_KEY not in x:
        got = sorted(map(str, x)) if isinstance(x, Mapping) else type(x).__name__
        raise ValueError(
            f"{who}: a prompt of {tasks} tasks needs each example's task id: give the batch an entry "
            f"x['task'], an int (B,) array of ids in [0, {tasks}), beside 'input_ids' and "
            f"'attention_mask' (got {got})"
        )
    try:
        task = jnp.asarray(x[TASK_KEY])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{who}: x['task'] must be an int (B,) array of task ids: {err}") from None
    if not jnp.issubdtype(task.dtype, jnp.integer):
        raise TypeError(f"{who}: x['task'] must hold integer task ids, got dtype {task.dtype}")
    rows = np.shape(x["input_ids"])[:1] if "input_ids" in x else task.shape[:1]
    if task.ndim != 1 or task.shape != tuple(rows):
        raise ValueError(
            f"{who}: x['task'] must be one task id per example, shape {tuple(rows)}, got {task.shape}"
        )
    bad = (task < 0) | (task >= tasks)
    check(
        ~bad,
        f"{who}: x['task'] must hold task ids in [0, {tasks}): got {{n}} outside, e.g. {{first}}",
        n=jnp.sum(bad),
        first=task[jnp.argmax(bad)] if task.size else 0,
    )
    return task.astype(jnp.int32)


def gather(stacked: jax.Array, task: jax.Array) -> jax.Array:
    """``stacked[task]`` for ``stacked`` ``(K, ...)``: NaN rows where a task id lies outside ``[0, K)``.

    jnp indexing would clamp an id past ``K`` to the last task and wrap ``-1`` to it, training
    the wrong prompt without a sign; NaN makes that example's logits and the loss NaN instead
    (a step of :func:`jaxreprog.train.make_step` with a non-finite loss changes nothing, and
    :func:`jaxreprog.train.fit` stops with a ``FloatingPointError`` naming the step).
    """
    k = stacked.shape[0]
    index = jnp.where(task < 0, k, task)  # negative ids would wrap: send them out of range too
    return jnp.take(stacked, index, axis=0, mode="fill", fill_value=jnp.nan)


def bound(theta: Any, who: str) -> jax.Array:
    """The ``(B, P, D)`` prompts of a bound theta, or a clear error for an unbound one."""
    if not isinstance(theta, PerExample):
        raise ValueError(
            f"{who}: a prompt per task acts through jr.reprogram, which gathers each example's "
            "prompt by the batch's x['task'] (SiteHook.bind) before the model runs; its apply got "
            "an unbound theta (a direct call of the hook: bind it first, part.bind(theta, x)); one "
            "task's prompt alone is jr.to_peft(..., task=k) or jr.embedding.soft_prompt(length, "
            "init=its (length, D) prompt)"
        )
    return theta.prompts
