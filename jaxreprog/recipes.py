"""Recipes: one reprogramming experiment as data (TOML or YAML), run by ``jaxreprog run RECIPE``.

A recipe names every choice of a run — frozen model, dataset, input manipulation,
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

Every key is checked (an unknown one is an error naming the known ones), the
method arguments against the factory's signature. :func:`run` trains with
:func:`jaxreprog.train.fit`, keeps the prompt of the epoch with the best
*validation* accuracy, and reports test accuracy for both the last epoch and
that validation-selected epoch — never selecting on the test set (the reference
repositories of ILM-VP, BLM and SMM keep the best *test* epoch; we do not).

Packaged recipes: :func:`names`; ``offline = false`` marks those that need
network access (TFDS downloads, weights from a model hub).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.resources
import inspect
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreprog.core import FrozenModel, Reprogrammed, reprogram
from jaxreprog.output import per_candidate
from jaxreprog.train import checkpoint as ckpt

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

PyTree = Any

# ------------------------------------------------------------------------ schema

_TOP = {
    "name": str,
    "description": str,
    "offline": bool,
    "note": str,
    "seed": int,
    "epochs": int,
    "candidates": int,
    "precision": str,
    "steps_per_call": int,
    "refit_pass": str,
}
_SECTIONS: dict[str, dict[str, Any]] = {
    "model": {"name": str, "size": int, "weights": str},
    "dataset": {
        "name": str,
        "train": str,
        "validation": str,
        "test": str,
        "batch_size": int,
        "eval_batch_size": int,
        "rgb": bool,
        "image_size": int,
        "train_examples": int,
        "data_dir": str,
    },
    "input": {"method": str},  # plus the factory's keyword arguments
    "output": {"method": (str, list)},  # plus the factory's keyword arguments
    "optimizer": {"name": str, "learning_rate": float, "momentum": float, "weight_decay": float},
    "schedule": {"name": str, "milestones": list, "factor": float},
}
_REQUIRED = {"model": ("name",), "dataset": ("name",), "input": ("method",), "output": ("method",)}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "dataset": {
        "train": "train",
        "validation": "validation",
        "test": "test",
        "batch_size": 32,
        "eval_batch_size": 250,
        "rgb": False,
    },
    "optimizer": {"name": "adam", "learning_rate": 0.01},
    "schedule": {"name": "multistep", "milestones": [0.5, 0.72], "factor": 0.1},
}
_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("multistep", "constant", "cosine")
_AUTO_OUTPUT_ARGS = ("num_source", "num_target")


class RecipeError(ValueError):
    """A recipe that cannot run as written; the message is one line that names the fix."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe. Sections are plain dicts with defaults filled in."""

    name: str
    description: str
    offline: bool
    note: str
    seed: int
    epochs: int
    candidates: int
    precision: str
    steps_per_call: int
    refit_pass: str
    model: Mapping[str, Any]
    dataset: Mapping[str, Any]
    input: Mapping[str, Any]
    output: Mapping[str, Any]
    optimizer: Mapping[str, Any]
    schedule: Mapping[str, Any]
    source: str = "<recipe>"

    @property
    def output_methods(self) -> tuple[str, ...]:
        """The output alignment(s): one candidate per method when ``output.method`` is a list."""
        m = self.output["method"]
        return (m,) if isinstance(m, str) else tuple(m)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as data (what :func:`parse` reads back)."""
        d = dataclasses.asdict(self)
        d.pop("source")
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}

    def override(self, overrides: Mapping[str, Any] | Sequence[str]) -> Recipe:
        """A copy with dotted keys replaced: ``{"epochs": 1, "model.size": 32}`` or
        ``["epochs=1", "model.size=32"]`` (values parsed as TOML, else kept as strings)."""
        if not isinstance(overrides, Mapping):
            overrides = dict(_parse_assignment(s, self.source) for s in overrides)
        d = self.to_dict()
        for dotted, value in overrides.items():
            *path, leaf = dotted.split(".")
            if len(path) > 1:
                raise RecipeError(f"{self.source}: override {dotted!r} is nested too deep; use section.key")
            target = d
            if path:
                if path[0] not in _SECTIONS:
                    raise RecipeError(
                        f"{self.source}: unknown section {path[0]!r} in override {dotted!r}; "
                        f"known sections: {', '.join(_SECTIONS)}"
                    )
                target = d[path[0]]
            target[leaf] = value
        return parse(d, source=f"{self.source} (with overrides)")


def _parse_assignment(text: str, source: str) -> tuple[str, Any]:
    if "=" not in text:
        raise RecipeError(f"{source}: override {text!r} must look like key=value (e.g. epochs=2)")
    key, value = (s.strip() for s in text.split("=", 1))
    try:
        return key, _toml_loads(f"v = {value}")["v"]
    except Exception:
        return key, value


# ----------------------------------------------------------------------- loading


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            import toml

            return toml.loads(text)
    return tomllib.loads(text)


def _packaged() -> dict[str, Any]:
    root = importlib.resources.files("jaxreprog") / "recipes"
    return {p.name[: -len(".toml")]: p for p in root.iterdir() if p.name.endswith(".toml")}


def names() -> tuple[str, ...]:
    """The packaged recipes (``jaxreprog/recipes/*.toml``)."""
    return tuple(sorted(_packaged()))


def load(name_or_path: str | os.PathLike, overrides: Mapping[str, Any] | Sequence[str] = ()) -> Recipe:
    """A packaged recipe by name (:func:`names`) or a ``.toml`` / ``.yaml`` file, validated.

    Args:
      name_or_path: e.g. ``"mnist5k_lite0_pad_ilm"`` or ``"my_recipe.toml"``.
      overrides: dotted keys to replace, as :meth:`Recipe.override`.
    """
    text_name = os.fspath(name_or_path)
    packaged = _packaged()
    if text_name in packaged:
        source, text, suffix = f"recipe {text_name!r}", packaged[text_name].read_text(), ".toml"
    else:
        path = pathlib.Path(text_name).expanduser()
        if not path.is_file():
            raise RecipeError(
                f"no recipe {text_name!r}: not a file, and not a packaged recipe"
                f"{_did_you_mean(text_name, names())}; fix: a .toml / .yaml path, or a name that "
                f"`jaxreprog run --list` shows"
            )
        source, text, suffix = str(path), path.read_text(), path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise RecipeError(
                f"{source}: YAML recipes need PyYAML (pip install pyyaml), or use TOML"
            ) from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RecipeError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    else:
        try:
            config = _toml_loads(text)
        except Exception as e:
            raise RecipeError(f"{source}: not valid TOML: {e}") from None
    recipe = parse(config, source=source)
    return recipe.override(overrides) if overrides else recipe


def _type_ok(value: Any, expected: Any) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    if bool not in types and isinstance(value, bool):
        return False
    return isinstance(value, types)


def _type_name(expected: Any) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join({str: "a string", int: "an integer", float: "a number", bool: "true/false",
                        list: "a list"}[t] for t in types)  # fmt: skip


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(given: Mapping[str, Any], known: Sequence[str], where: str, source: str) -> None:
    for key in given:
        if key not in known:
            raise RecipeError(
                f"{source}: unknown key {key!r} in {where}{_did_you_mean(key, known)}; "
                f"known keys: {', '.join(sorted(known))}"
            )


def _factory(section: str, method: str, source: str):
    import jaxreprog as jr

    module = jr.input if section == "input" else jr.output
    if method not in module.__all__ or not _is_factory(getattr(module, method), section):
        choices = [n for n in module.__all__ if _is_factory(getattr(module, n), section)]
        raise RecipeError(
            f"{source}: unknown {section}.method {method!r}{_did_you_mean(method, choices)}; "
            f"known: {', '.join(sorted(choices))}"
        )
    return getattr(module, method)


def _is_factory(fn: Any, section: str) -> bool:
    """Whether ``fn`` builds an InputTransform (input) or an Alignment (output), by its annotation."""
    if not callable(fn):
        return False
    ret = inspect.signature(fn).return_annotation
    want = "InputTransform" if section == "input" else "Alignment"
    return getattr(ret, "__name__", ret) == want


def _method_kwargs(section: str, config: Mapping[str, Any], source: str) -> None:
    methods = config["method"]
    methods = [methods] if isinstance(methods, str) else methods
    if section == "input" and not isinstance(config["method"], str):
        raise RecipeError(f"{source}: input.method must be one method name, got {config['method']!r}")
    if not methods or not all(isinstance(m, str) for m in methods):
        raise RecipeError(f"{source}: {section}.method must be a name or a list of names, got {methods!r}")
    if len(set(methods)) != len(methods):
        raise RecipeError(f"{source}: {section}.method lists a method twice: {methods!r}")
    kwargs = {k: v for k, v in config.items() if k != "method"}
    for method in methods:
        params = inspect.signature(_factory(section, method, source)).parameters
        accepted = [p for p in params if section == "input" or p not in _AUTO_OUTPUT_ARGS]
        for key in kwargs:
            if section == "output" and key in _AUTO_OUTPUT_ARGS:
                raise RecipeError(
                    f"{source}: output.{key} is set from the model and the dataset; remove it from the recipe"
                )
            if key not in accepted:
                raise RecipeError(
                    f"{source}: unknown key {key!r} for {section}.method {method!r}"
                    f"{_did_you_mean(key, accepted)}; known keys: "
                    f"{', '.join(['method', *sorted(accepted)])}"
                )
            expected = _annotated_types(params[key].annotation)
            if expected is not None and not _type_ok(kwargs[key], expected):
                none = " (or left out)" if params[key].default is None else ""
                raise RecipeError(
                    f"{source}: {section}.{key} must be {_type_name(expected)}{none} for {section}.method "
                    f"{method!r}, got {kwargs[key]!r}"
                )
    if section == "input":  # its values too, where the recipe gives every required one (cheap)
        factory = _factory(section, methods[0], source)
        required = [n for n, p in inspect.signature(factory).parameters.items() if p.default is p.empty]
        if all(n in kwargs for n in required):
            _construct(factory, kwargs, f"input.method {methods[0]!r}", source)


_ANNOTATED = {"int": int, "float": float, "bool": bool, "str": str}


def _annotated_types(annotation: Any) -> tuple[type, ...] | None:
    """The plain types a factory argument is annotated with (``"float"``, ``"int | None"``), or
    None when the annotation is anything else (then its factory checks the value)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    if not all(p in _ANNOTATED or p == "None" for p in parts):
        return None
    types = tuple(_ANNOTATED[p] for p in parts if p != "None")
    return types or None


def _construct(factory, kwargs: Mapping[str, Any], what: str, source: str):
    """``factory(**kwargs)``, a bad value (the factory's TypeError / ValueError) as a RecipeError."""
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{source}: {what}: {' '.join(str(e).split())}") from None


def parse(config: Mapping[str, Any], *, source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as data (a dict as TOML/YAML reads it) and fill in defaults."""
    if not isinstance(config, Mapping):
        raise RecipeError(f"{source}: a recipe must be a table of keys, got {type(config).__name__}")
    _check_keys(config, [*_TOP, *_SECTIONS], "the recipe's top level", source)
    top: dict[str, Any] = {
        "name": "",
        "description": "",
        "offline": True,
        "note": "",
        "seed": 0,
        "epochs": 1,
        "candidates": 1,
        "precision": "fp32",
        "steps_per_call": 1,
        "refit_pass": "training",
    }
    for key, value in config.items():
        if key in _TOP:
            if not _type_ok(value, _TOP[key]):
                raise RecipeError(f"{source}: {key} must be {_type_name(_TOP[key])}, got {value!r}")
            top[key] = value
    sections: dict[str, dict[str, Any]] = {}
    for section, schema in _SECTIONS.items():
        given = config.get(section, {})
        if not isinstance(given, Mapping):
            raise RecipeError(f"{source}: [{section}] must be a table of keys, got {given!r}")
        for key in _REQUIRED.get(section, ()):
            if key not in given:
                raise RecipeError(f"{source}: [{section}] needs a {key!r} key")
        if section in ("input", "output"):
            _method_kwargs(section, given, source)
        else:
            _check_keys(given, list(schema), f"[{section}]", source)
        for key, value in given.items():
            if key in schema and not _type_ok(value, schema[key]):
                raise RecipeError(
                    f"{source}: {section}.{key} must be {_type_name(schema[key])}, got {value!r}"
                )
        sections[section] = {**_DEFAULTS.get(section, {}), **given}
    for key in ("epochs", "candidates", "steps_per_call"):
        if top[key] < 1:
            raise RecipeError(f"{source}: {key} must be >= 1, got {top[key]}")
    if top["precision"] not in ("fp32", "bf16"):
        raise RecipeError(f"{source}: precision must be 'fp32' or 'bf16', got {top['precision']!r}")
    if top["refit_pass"] not in ("training", "fresh"):
        raise RecipeError(f"{source}: refit_pass must be 'training' or 'fresh', got {top['refit_pass']!r}")
    methods = sections["output"]["method"]
    if not isinstance(methods, str) and top["candidates"] != 1:
        raise RecipeError(
            f"{source}: output.method lists {len(methods)} methods (one candidate each); "
            f"set candidates = 1 (got {top['candidates']})"
        )
    for key, value in sections["dataset"].items():
        if key in ("batch_size", "eval_batch_size", "image_size", "train_examples") and value < 1:
            raise RecipeError(f"{source}: dataset.{key} must be >= 1, got {value}")
    opt = sections["optimizer"]["name"]
    if opt not in _OPTIMIZERS:
        raise RecipeError(f"{source}: unknown optimizer.name {opt!r}; known: {', '.join(_OPTIMIZERS)}")
    schedule = sections["schedule"]
    if schedule["name"] not in _SCHEDULES:
        raise RecipeError(
            f"{source}: unknown schedule.name {schedule['name']!r}; known: {', '.join(_SCHEDULES)}"
        )
    if not all(isinstance(m, int | float) and 0 < m < 1 for m in schedule["milestones"]):
        raise RecipeError(
            f"{source}: schedule.milestones must be fractions of training in (0, 1), "
            f"got {schedule['milestones']}"
        )
    return Recipe(**top, **sections, source=source)


# ----------------------------------------------------------- one alignment per candidate


# ------------------------------------------------------------------------- build


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
    return jr.train.ArrayData(x[idx], y[idx], batch_size, shuffle=shuffle, seed=recipe.seed)


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
    if d["name"] in jr.data.names():
        return
    absl = logging.getLogger("absl")  # TFDS warns about the empty folder: noise above the one line
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        b = jr.data.builder(d["name"], data_dir=d.get("data_dir"), prepare=False)
        prepared = b.is_prepared()
    finally:
        absl.setLevel(level)
    if not prepared:
        raise RecipeError(
            f"{recipe.source}: dataset {d['name']!r} is not prepared in {b.data_dir} and is not available "
            f"offline; fix: prepare it once with network access (jr.data.builder({d['name']!r}), needs "
            f"TensorFlow), or point dataset.data_dir / $JAXREPROG_DATA_DIR at a prepared copy"
        )


def build(recipe: Recipe) -> Built:
    """Load the model and data of ``recipe`` and compose its program (no training).

    Raises:
      RecipeError: the dataset is neither packaged nor prepared (a run never downloads).
    """
    import jaxreprog as jr

    _check_available(recipe)
    m = recipe.model
    kwargs = {"size": m["size"]} if "size" in m else {}
    weights = os.path.expanduser(m["weights"]) if "weights" in m else None
    if weights is not None and not os.path.exists(weights):
        where = "" if recipe.offline else " (the recipe note says from where)"
        raise RecipeError(
            f"{recipe.source}: model.weights {weights} does not exist; fix: download the {m['name']!r} "
            f"checkpoint there{where}, or --set model.weights=PATH"
        )
    model = jr.models.load(m["name"], weights=weights, **kwargs)
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
    factory = _factory("input", method, recipe.source)
    if "target_size" in inspect.signature(factory).parameters and "target_size" not in inp:
        shape = getattr(getattr(train, "info", None), "shape", None) or np.shape(train.x)[1:]
        inp["target_size"] = tuple(shape[:2])
    manipulation = _construct(factory, inp, f"input.method {method!r}", recipe.source)

    out = {k: v for k, v in recipe.output.items() if k != "method"}
    aligns = [
        _construct(
            functools.partial(_factory("output", name, recipe.source), num_source, num_classes),
            out,
            f"output.method {name!r}",
            recipe.source,
        )
        for name in recipe.output_methods
    ]
    theta0 = None
    if len(aligns) == 1:
        program = reprogram(model, input=manipulation, output=aligns[0])
        labels = (recipe.output_methods[0],) if recipe.candidates == 1 else tuple(
            f"seed {i}" for i in range(recipe.candidates)
        )  # fmt: skip
    else:
        program = reprogram(model, input=manipulation, output=per_candidate(aligns))
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


# --------------------------------------------------------------------------- run


@dataclasses.dataclass
class Result:
    """A finished run. Accuracies are ``(K,)`` arrays, one per candidate (``labels``).

    ``test_last``: test accuracy after the last epoch. ``test_selected``: test
    accuracy of the epoch with the best validation accuracy (``selected_epoch``,
    1-based, earliest on ties). The test set never chooses anything.
    """

    recipe: Recipe
    labels: tuple[str, ...]
    history: list[dict[str, Any]]
    theta: PyTree
    theta_selected: PyTree
    test_last: np.ndarray
    test_selected: np.ndarray | None
    val_selected: np.ndarray | None
    selected_epoch: np.ndarray | None
    train_seconds: float
    program: Reprogrammed
    model: FrozenModel
    out: str | None = None

    def table(self) -> str:
        """A markdown table of the results, one row per candidate."""
        lines = [
            "| candidate | test acc, last epoch | test acc, val-selected epoch (epoch, val acc) |",
            "|---|---|---|",
        ]
        for i, label in enumerate(self.labels):
            selected = "—"
            if self.test_selected is not None:
                selected = (
                    f"{100 * self.test_selected[i]:.1f}% (epoch {int(self.selected_epoch[i])}, "
                    f"val {100 * self.val_selected[i]:.1f}%)"
                )
            lines.append(f"| {label} | {100 * self.test_last[i]:.1f}% | {selected} |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def conv(v):
            return np.asarray(v).tolist() if isinstance(v, np.ndarray | np.generic | jax.Array) else v

        return {
            "recipe": self.recipe.to_dict(),
            "labels": list(self.labels),
            "test_last": conv(self.test_last),
            "test_selected": conv(self.test_selected),
            "val_selected": conv(self.val_selected),
            "selected_epoch": conv(self.selected_epoch),
            "train_seconds": self.train_seconds,
            "history": [{k: conv(v) for k, v in h.items()} for h in self.history],
        }


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
) -> Result:
    """Train ``recipe`` and evaluate it on the test split; write results to ``out`` when given.

    ``out`` receives ``results.json``, one ``prompt_<candidate>.png`` per candidate
    (the validation-selected prompt; the last one without ``per_epoch``) and the
    trainer's orbax checkpoint in ``out/checkpoint`` (a rerun resumes from it) beside
    the selection so far in ``out/selected``.

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
    )
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(result.to_json(), f, indent=1)
        shown = last if best_theta is None else best_theta
        for i, label in enumerate(b.labels):
            one = jax.tree.map(lambda a, i=i: a[i], shown)
            path = os.path.join(out, f"prompt_{_slug(label)}.png")
            save_prompt_png(b.program.parts["input"], one["input"], b.model.spec, path)
    return result


def writable_folder(out: str | os.PathLike) -> str:
    """Create the output folder ``out`` if needed and check that it can be written, before a run
    spends any time; a RecipeError (one line, the fix) otherwise. Returns ``out`` as a string."""
    path = os.fspath(out)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        why = "it is a file" if os.path.isfile(path) else (e.strerror or str(e)).lower()
        raise RecipeError(
            f"cannot write the output folder {path!r}: {why}; fix: pass --out a folder you can write"
        ) from None
    return path


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def save_prompt_png(
    manipulation: Any, theta: PyTree, spec: Any, path: str | os.PathLike, scale: int = 4
) -> str:
    """Write ``manipulation.visualize(theta, spec)`` (an image in [0, 1]) as a PNG, upscaled ``scale``×."""
    from PIL import Image

    if manipulation.visualize is None:
        raise ValueError("this input manipulation has no visualize(); nothing to save as a PNG")
    img = np.asarray(manipulation.visualize(theta, spec), dtype=np.float32)
    img = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    if img.shape[-1] == 1:
        img = img[..., 0]
    pil = Image.fromarray(img)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    pil.save(path)
    return os.fspath(path)
