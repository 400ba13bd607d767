"""Multitask prompt tuning (MPT): one shared prompt, adapted to each task by a low-rank product.

Wang et al. ICLR 2023, "Multitask Prompt Tuning Enables Parameter-Efficient Transfer
Learning": task ``k``'s prompt is the shared prompt times, elementwise, a rank-``r`` task
matrix,

    ``P_k = P* ∘ (u_k v_kᵀ)``,   ``P* ∈ R^{l×D}``, ``u_k ∈ R^{l×r}``, ``v_k ∈ R^{D×r}``,

(the paper's rank one: ``u_k ∈ R^l``, ``v_k ∈ R^D``), inserted like a soft prompt. The tasks
share ``l·D`` parameters and each adds ``r(l + D)``. Examples of several tasks travel in one
batch with their task ids as ``x["task"]``: one compiled step trains or serves them all
(:mod:`jaxreprog.embedding._tasks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking
from jaxreprog.core import SiteHook
from jaxreprog.embedding import _tasks
from jaxreprog.embedding.soft_prompt import (
    _check_where,
    _insert_at,
    _token_spec,
    soft_prompt,
)
from jaxreprog.hooks import SiteSelection, Where, select
from jaxreprog.taxonomy import Format, Location, Operator, register

__all__ = ["multitask_prompt", "task_prompts"]

TaskInit = Literal["ones", "normal"]
_STD = 0.02  # PEFT's MultitaskPromptEmbedding draws its task factors from N(0, 0.02²)


def task_prompts(theta: Mapping[str, Any]) -> jax.Array:
    """Every task's prompt of a :func:`multitask_prompt` theta: ``P* ∘ (u_k v_kᵀ)``, ``(K, l, D)``.

    E.g. to start a single-task soft prompt from task ``k``'s (SPoT)::

        >>> jr.embedding.soft_prompt(l, init=jr.embedding.task_prompts(theta["embedding"])[k])
    """
    if not isinstance(theta, Mapping) or not {"shared", "u", "v"} <= set(theta):
        got = sorted(map(str, theta)) if isinstance(theta, Mapping) else type(theta).__name__
        raise ValueError(
            f"task_prompts: theta must be a multitask_prompt theta {{'shared', 'u', 'v'}}, got {got}"
        )
    shared, u, v = theta["shared"], theta["u"], theta["v"]
    return shared * jnp.einsum("klr,kdr->kld", u, v)


@register(
    paper="Wang et al. 2023",
    modality="text",
    format=Format.LEARNABLE,
    location=Location.EMBEDDING,
    operator=Operator.CONCATENATIVE | Operator.PARAMETRIC,
)
def multitask_prompt(
    length: int,
    tasks: int,
    *,
    rank: int = 1,
    init: Literal["uniform", "vocab", "labels"] | np.ndarray | jax.Array | Mapping[str, Any] = "uniform",
    task_init: TaskInit = "ones",
    table: jax.Array | np.ndarray | None = None,
    label_ids: Sequence[Sequence[int]] | None = None,
    vocab_ids: Sequence[int] | None = None,
    scale: float = 0.5,
    where: Where = "prefix",
    sites: SiteSelection = "embeddings",
) -> SiteHook:
    """Multitask prompt tuning (Wang et al. ICLR 2023, MPT): ``P_k = P* ∘ (u_k v_kᵀ)``.

    ``tasks`` (K) prompts of ``length`` (l) vectors share ``P* ∈ R^{l×D}``; task ``k``
    scales it elementwise by the rank-``rank`` (r) matrix ``u_k v_kᵀ`` (``u_k ∈ R^{l×r}``,
    ``v_k ∈ R^{D×r}``; the paper's "prompt decomposition", rank one there; PEFT's
    ``MultitaskPromptTuningConfig``, whose ``prefix_task_cols``/``prefix_task_rows`` are ``u``
    and ``vᵀ``). ``theta = {"shared": (l, D), "u": (K, l, r), "v": (K, D, r)}``;
    :func:`task_prompts` gives every ``P_k``.

    The batch carries each example's task: ``x = {"input_ids", "attention_mask", "task"}``
    with ``x["task"]`` int ``(B,)`` in ``[0, K)``, so examples of several tasks share one
    batch and one compiled step (:attr:`~jaxreprog.SiteHook.bind` gathers each example's
    ``P_k``; the gradient reaches ``u``/``v`` of the tasks present only, and ``P*`` through
    all of them). Ids outside ``[0, K)`` raise on an eager call (and inside
    :func:`jaxreprog.checked`); under a plain ``jit`` their prompt is NaN, so are their
    logits and loss (:func:`jaxreprog.train.fit` stops with a ``FloatingPointError``), never
    another task's prompt.

    Args:
      length: prompt tokens ``l``.
      tasks: number of tasks ``K``.
      rank: rank ``r`` of each task matrix.
      init: ``P*``'s initialisation, as :func:`soft_prompt`'s (``"uniform"``, ``"vocab"``,
        ``"labels"`` with ``table``/``label_ids``/``vocab_ids``/``scale``, or a saved
        ``(l, D)`` prompt); or a trained theta — transfer (SPoT, Vu et al. 2022; the
        paper's target adaptation): a soft prompt's ``{"prompt": (l, D)}`` or a
        ``multitask_prompt``'s ``{"shared"}`` seed ``P*`` with fresh task factors; a
        ``multitask_prompt``'s full ``{"shared", "u", "v"}`` of K tasks copies all three
        (pick or average a source's rows first for other tasks: ``u[np.array([0, 0, 2])]``,
        ``u.mean(0, keepdims=True).repeat(K, 0)``, as PEFT's ``EXACT_SOURCE_TASK`` /
        ``AVERAGE_SOURCE_TASKS``).
      task_init: fresh task factors. ``"ones"``: ``u, v ~ r^{-1/2} N(1, 0.02²)`` entrywise,
        so ``u_k v_kᵀ ≈ 1`` and every task starts at ``P*`` (its init survives; the noise
        lets the ``r`` components differ); ``"normal"``: PEFT's ``N(0, 0.02²)``, which starts
        every ``P_k`` near zero.
      where, sites: as for :func:`soft_prompt`.

    The paper trains ``P*`` on source tasks by distillation from single-task teacher
    prompts; that is a loss (:func:`jaxreprog.train.make_step`'s ``loss=``), not part of
    the prompt.

    Example::

        >>> mpt = jr.embedding.multitask_prompt(20, tasks=3, rank=1)
        >>> program = jr.reprogram(model, embedding=mpt, output=...)
        >>> x = {**jr.data.tokenize(texts, tok), "task": np.array([0, 2, 1, 0])}
        >>> logits = program.apply(program.init(key), model.params, x)
    """
    length = checking.integer(length, "length (number of prompt tokens)", who="multitask_prompt")
    _check_where(where)
    selector = select(sites)
    k = _tasks.check_tasks(tasks, "multitask_prompt")
    rank = checking.integer(rank, "rank", who="multitask_prompt")
    if task_init not in ("ones", "normal"):
        raise ValueError(f"multitask_prompt: task_init must be 'ones' or 'normal', got {task_init!r}")
    factors = None
    if isinstance(init, Mapping):
        keys = set(map(str, init))
        if keys in ({"prompt"}, {"shared"}):
            init = init["prompt" if "prompt" in keys else "shared"]
        elif keys == {"shared", "u", "v"}:
            factors = _saved_factors(init, k, length, rank)
            init = init["shared"]
        else:
            raise ValueError(
                "multitask_prompt: init must be a trained theta, a soft prompt's {'prompt'} or a "
                f"multitask_prompt's {{'shared'[, 'u', 'v']}}, got keys {sorted(keys)}"
            )
    # P* is built (and its arguments checked) exactly as a soft prompt of `length` tokens.
    shared = soft_prompt(
        length,
        init=init,
        table=table,
        label_ids=label_ids,
        vocab_ids=vocab_ids,
        scale=scale,
        where=where,
        sites=sites,
    )

    def init_fn(key, spec):
        spec = _token_spec(spec, "multitask_prompt")
        d = spec.hidden_size
        k_shared, k_u, k_v = jax.random.split(key, 3)
        p = shared.init(k_shared, spec)["prompt"]
        if factors is not None:
            u, v = factors
            if v.shape[1] != d:
                raise ValueError(f"init's v has width {v.shape[1]}; the model's hidden size is {d}")
            return {"shared": p, "u": u, "v": v}
        mean, scale_ = (1.0, rank**-0.5) if task_init == "ones" else (0.0, 1.0)
        u = scale_ * (mean + _STD * jax.random.normal(k_u, (k, length, rank), jnp.float32))
        v = scale_ * (mean + _STD * jax.random.normal(k_v, (k, d, rank), jnp.float32))
        return {"shared": p, "u": u, "v": v}

    def bind(theta, x):
        task = _tasks.task_ids(x, k, "multitask_prompt")
        # All K prompts, then each example's row: K·l·D·r work, and gathered rows carry the gradient.
        return _tasks.PerExample(_tasks.gather(task_prompts(theta), task))

    def apply(theta, site, value, spec):
        if not selector.matches(site):
            return value
        return _insert_at(site, value, _tasks.bound(theta, "multitask_prompt"), where, length)

    return SiteHook(init_fn, apply, sites=selector, bind=bind)


def _saved_factors(
    theta: Mapping[str, Any], tasks: int, length: int, rank: int
) -> tuple[jax.Array, jax.Array]:
    u, v = (jnp.asarray(theta[n], jnp.float32) for n in ("u", "v"))
    if u.shape != (tasks, length, rank) or v.ndim != 3 or v.shape[::2] != (tasks, rank):
        raise ValueError(
            f"multitask_prompt: init's task factors must be u ({tasks}, {length}, {rank}) and v "
            f"({tasks}, D, {rank}) for tasks={tasks}, length={length}, rank={rank}; got u {u.shape}, "
            f"v {v.shape} (for other tasks pick or average the source's rows first, "
            "e.g. u[np.array([0, 0, 2])])"
        )
    return u, v
