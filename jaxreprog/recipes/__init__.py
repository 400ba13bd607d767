"""Recipes: one reprogramming experiment as data (TOML or YAML), run by ``jaxreprog run RECIPE``.

A recipe names every choice of a run — frozen model, dataset, input transform,
output alignment, optimiser, schedule, epochs, candidates, seed — so the file *is*
the record of the experiment::

    seed = 0
    epochs = 10
    steps_per_call = 8   # optimiser steps per compiled call (jr.train.fit)
    refit_pass = "training"  # or "fresh": refit statistical maps from a pass with the epoch's prompt
    [model]      # jr.models.load(name, weights=..., size=...)
    name = "efficientnet_lite0"
    size = 96
    [dataset]    # jr.data.load(name, split, ...); validation picks the epoch, test is reported
    name = "mnist5k"
    rgb = true
    [input]      # jr.input.<method>(**rest)
    method = "pad"
    target_size = 28
    [output]     # jr.output.<method>(num_source, num_target, **rest); a list: one candidate each
    method = "ilm"
    [optimizer]
    name = "adam"
    learning_rate = 0.01
    [schedule]   # ×0.1 at 50% and 72% of the steps: the visual-reprogramming standard
    name = "multistep"

``base = "other_recipe"`` starts from another recipe and changes only what it says
(tables merged key by key; see :mod:`.loading`). Every key is checked (an unknown one is an
error naming the known ones): the sections against their schema dataclasses
(:mod:`.schema`), the method arguments against the factory's signature (:mod:`.methods`).
:func:`run` trains with :func:`jaxreprog.train.fit` and selects the epoch on validation,
never on test (:mod:`.training`); :mod:`.results` holds what a run leaves behind.

Packaged recipes: :func:`names`; ``offline = false`` marks those that need network access
(TFDS downloads, weights from a model hub).
"""

from jaxreprog.recipes.assembly import Built, build, optimizer
from jaxreprog.recipes.checks import RecipeError
from jaxreprog.recipes.loading import load, names, parse
from jaxreprog.recipes.results import Result, save_prompt_png, writable_folder
from jaxreprog.recipes.schema import Recipe
from jaxreprog.recipes.training import run

__all__ = [
    "Built",
    "Recipe",
    "RecipeError",
    "Result",
    "build",
    "load",
    "names",
    "optimizer",
    "parse",
    "run",
    "save_prompt_png",
    "writable_folder",
]
