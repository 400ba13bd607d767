"""What a recipe may say: one small dataclass per section, and :class:`Recipe` for the top level.

The dataclasses *are* the schema. A field's type hint is what its value must be
(:mod:`.checks`); a field without a default is required; a default of None means the key
is optional and left out of the validated section when the recipe leaves it out (the
consumer supplies its own default); any other default is filled in. ``metadata={"min": 1}``
bounds a number from below. ``[input]`` and ``[output]`` are the method factories'
signatures instead (:mod:`.methods`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from jaxreprog.recipes import methods
from jaxreprog.recipes.checks import RecipeError, check_keys, check_value


def _at_least_1(default: Any) -> Any:
    return dataclasses.field(default=default, metadata={"min": 1})


@dataclasses.dataclass(frozen=True)
class Model:
    """``[model]``: ``jr.models.load(name, weights=..., size=...)``."""

    name: str
    size: int | None = None
    weights: str | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """``[dataset]``: ``jr.data.load(name, split, ...)``; validation picks the epoch, test is reported."""

    name: str
    train: str = "train"
    validation: str = "validation"
    test: str = "test"
    batch_size: int = _at_least_1(32)
    eval_batch_size: int = _at_least_1(250)
    rgb: bool = False
    image_size: int | None = _at_least_1(None)
    train_examples: int | None = _at_least_1(None)  # a seeded random subset of the training split
    data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """``[optimizer]``: Adam (the visual-reprogramming standard), AdamW or SGD with momentum."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = 0.01
    momentum: float | None = None  # sgd; 0.9 when left out
    weight_decay: float | None = None  # adamw; 1e-4 when left out


@dataclasses.dataclass(frozen=True)
class Schedule:
    """``[schedule]``: the learning rate over training (milestones are fractions of all steps)."""

    name: Literal["multistep", "constant", "cosine"] = "multistep"
    milestones: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.72])
    factor: float = 0.1


def _section(schema: type | None) -> Any:
    """A section of :class:`Recipe`: a mapping, validated by ``schema`` (None: a method's signature)."""
    return dataclasses.field(metadata={"section": schema})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """A validated recipe: the top-level keys as fields, each section a plain dict with defaults filled in."""

    name: str = ""
    description: str = ""
    offline: bool = True  # false: needs network access (TFDS downloads, weights from a model hub)
    note: str = ""
    seed: int = dataclasses.field(default=0, metadata={"min": 0})  # numpy and JAX seeds: >= 0
    epochs: int = _at_least_1(1)
    candidates: int = _at_least_1(1)
    precision: Literal["fp32", "bf16"] = "fp32"
    steps_per_call: int = _at_least_1(1)  # optimiser steps per compiled call (jr.train.fit)
    refit_pass: Literal["training", "fresh"] = "training"
    model: Mapping[str, Any] = _section(Model)
    dataset: Mapping[str, Any] = _section(Dataset)
    input: Mapping[str, Any] = _section(None)
    output: Mapping[str, Any] = _section(None)
    optimizer: Mapping[str, Any] = _section(Optimizer)
    schedule: Mapping[str, Any] = _section(Schedule)
    source: str = "<recipe>"

    @property
    def output_methods(self) -> tuple[str, ...]:
        """The output alignment(s): one candidate per method when ``output.method`` is a list."""
        m = self.output["method"]
        return (m,) if isinstance(m, str) else tuple(m)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as data (what :func:`jaxreprog.recipes.parse` reads back)."""
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
                if path[0] not in sections():
                    raise RecipeError(
                        f"{self.source}: unknown section {path[0]!r} in override {dotted!r}; "
                        f"known sections: {', '.join(sections())}"
                    )
                target = d[path[0]]
            target[leaf] = value
        return validate(d, source=f"{self.source} (with overrides)")


def _parse_assignment(text: str, source: str) -> tuple[str, Any]:
    from jaxreprog.recipes.loading import toml_loads

    if "=" not in text:
        raise RecipeError(f"{source}: override {text!r} must look like key=value (e.g. epochs=2)")
    key, value = (s.strip() for s in text.split("=", 1))
    try:
        return key, toml_loads(f"v = {value}")["v"]
    except Exception:
        return key, value


@functools.cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls))


def top_level() -> dict[str, tuple[dataclasses.Field, Any]]:
    """The recipe's top-level keys: name -> (field, type hint)."""
    return {f.name: (f, h) for f, h in _fields(Recipe) if "section" not in f.metadata and f.name != "source"}


def sections() -> dict[str, type | None]:
    """The recipe's sections: name -> schema dataclass (None: the method factory's signature)."""
    return {f.name: f.metadata["section"] for f, _ in _fields(Recipe) if "section" in f.metadata}


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _check_field(value: Any, f: dataclasses.Field, hint: Any, where: str, source: str) -> None:
    check_value(value, hint, where, source)
    if "min" in f.metadata and value < f.metadata["min"]:
        raise RecipeError(f"{source}: {where} must be >= {f.metadata['min']}, got {value}")


def _validate_section(name: str, schema: type | None, given: Any, source: str) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise RecipeError(f"{source}: [{name}] must be a table of keys, got {given!r}")
    if schema is None:  # [input] / [output]: a method and its factory's keyword arguments
        if "method" not in given:
            raise RecipeError(f"{source}: [{name}] needs a 'method' key")
        methods.check(name, given, source)
        return dict(given)
    fields = _fields(schema)
    for f, _ in fields:
        if _default(f) is dataclasses.MISSING and f.name not in given:
            raise RecipeError(f"{source}: [{name}] needs a {f.name!r} key")
    check_keys(given, [f.name for f, _ in fields], f"[{name}]", source)
    for f, hint in fields:
        if f.name in given:
            _check_field(given[f.name], f, hint, f"{name}.{f.name}", source)
    filled = {f.name: _default(f) for f, _ in fields if _default(f) not in (None, dataclasses.MISSING)}
    return {**filled, **given}


def validate(config: Mapping[str, Any], *, source: str = "<recipe>") -> Recipe:
    """A :class:`Recipe` from data (a dict as TOML/YAML reads it, ``base`` already merged in)."""
    if not isinstance(config, Mapping):
        raise RecipeError(f"{source}: a recipe must be a table of keys, got {type(config).__name__}")
    top, secs = top_level(), sections()
    check_keys(config, [*top, *secs], "the recipe's top level", source)
    values: dict[str, Any] = {}
    for key, (f, hint) in top.items():
        if key in config:
            _check_field(config[key], f, hint, key, source)
            values[key] = config[key]
    for name, schema in secs.items():
        values[name] = _validate_section(name, schema, config.get(name, {}), source)
    outputs = values["output"]["method"]
    candidates = values.get("candidates", 1)
    if not isinstance(outputs, str) and candidates != 1:
        raise RecipeError(
            f"{source}: output.method lists {len(outputs)} methods (one candidate each); "
            f"set candidates = 1 (got {candidates})"
        )
    milestones = values["schedule"]["milestones"]
    if not all(0 < m < 1 for m in milestones):
        raise RecipeError(
            f"{source}: schedule.milestones must be fractions of training in (0, 1), got {milestones}"
        )
    return Recipe(**values, source=source)
