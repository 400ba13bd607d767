"""Training: jit steps, candidate axis, alignment refits, black-box optimisation.

* :func:`make_step` — the training step: ``(init, step)``, pure and jit-able, frozen
  parameters an argument, K candidates vmapped, statistics accumulated in the step.
* :func:`fit` — the loop around it (``loop.py``): epochs, statistical refits from the
  training pass, evaluation, checkpoints, progress.
* :func:`vr_adam`, :func:`vr_multistep` — the visual-reprogramming schedule.
* :func:`zo_gradient`, :func:`spsa_gradient`, :class:`ZerothOrder` — black-box gradient
  estimates: BAR, and BlackVIP's SPSA-GC (:func:`spsa_gain`, its gain sequence).
* :func:`save`, :func:`restore` — orbax checkpoints with model fingerprints.
* :func:`base_to_novel` — CLIP prompt learning's base-to-novel protocol, seeds as candidates.
* :func:`mesh`, :func:`data_mesh` — device meshes; :func:`shard_batch` places a batch on one,
  :func:`local_rows` says which of its rows this process reads; :func:`memory_plan` — will a
  step fit?
* :mod:`distributed` — runs of several processes (``distributed.initialize``).
"""

from jaxreprog.train import distributed
from jaxreprog.train.base_to_novel import BaseToNovel, base_to_novel, harmonic_mean, split_classes
from jaxreprog.train.checkpoint import CheckpointError, fingerprint, latest_step, restore, save
from jaxreprog.train.loop import (
    TrainState,
    best_candidate,
    cross_entropy,
    evaluate,
    evaluate_alignments,
    fit,
    make_step,
    metric,
    mse,
)
from jaxreprog.train.memory import MemoryPlan, memory_plan
from jaxreprog.train.schedules import hyperparams, set_hyperparams, vr_adam, vr_multistep
from jaxreprog.train.sharding import data_mesh, local_rows, mesh, replicate, shard_batch
from jaxreprog.train.zeroth_order import ZerothOrder, spsa_gain, spsa_gradient, zo_gradient

__all__ = [
    "BaseToNovel",
    "CheckpointError",
    "MemoryPlan",
    "TrainState",
    "ZerothOrder",
    "base_to_novel",
    "best_candidate",
    "cross_entropy",
    "data_mesh",
    "distributed",
    "evaluate",
    "evaluate_alignments",
    "fingerprint",
    "fit",
    "harmonic_mean",
    "hyperparams",
    "latest_step",
    "local_rows",
    "make_step",
    "memory_plan",
    "mesh",
    "metric",
    "mse",
    "replicate",
    "restore",
    "save",
    "set_hyperparams",
    "shard_batch",
    "split_classes",
    "spsa_gain",
    "spsa_gradient",
    "vr_adam",
    "vr_multistep",
    "zo_gradient",
]
