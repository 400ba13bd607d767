"""The survey's taxonomy, made executable.

"Neural Network Reprogrammability" (2025) writes every method as
``y_T = O_ω ∘ f ∘ I_{λ,τ,ℓ}(x_T, c)`` and classifies it on four axes:

* **format** λ — is the manipulation fixed (hand-written), learnable, or both
  (``FIXED | LEARNABLE``: a hand-written template with learnable slots)?
* **location** ℓ — where does it act: input space, embedding space, hidden layers,
  or the output space (the frozen model's logits, before the alignment)?
* **operator** τ — how does it act: additive, concatenative, parametric, or by
  replacement (the model's own pieces swapped for learned ones)?
* **output alignment** O_ω — identity, rule-based, statistical or linear?

The axes are :class:`enum.Flag` s so the tags of a composed program are the union
(``|``) of its parts' tags. Every method joins the :data:`registry` where it is
defined, through :func:`register`; :func:`table` renders the classification from
that registry, so the table can never drift from the code. Most records are *parts*
(a factory of a part that fills a slot of ``jr.reprogram``); a *combinator* combines
whole programs instead (:func:`jaxreprog.candidates.ensemble`: K trained prompts as one
classifier), so it is called, not placed in a slot.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple, TypeVar

__all__ = [
    "Format",
    "Location",
    "Method",
    "Operator",
    "Origin",
    "OutputAlignment",
    "Table",
    "Tags",
    "register",
    "registry",
    "table",
]


class _Axis(enum.Flag):
    """A taxonomy axis; combined values (``A | B``) describe composed programs."""

    def members(self) -> tuple[_Axis, ...]:
        """The single members contained in this (possibly combined) value."""
        return tuple(m for m in type(self) if m in self and m.value)

    def __str__(self) -> str:
        return "+".join(m.name.lower().replace("_", "-") for m in self.members()) or "-"


class Format(_Axis):
    """λ: fixed (hand-designed) or learnable context."""

    FIXED = enum.auto()
    LEARNABLE = enum.auto()


class Location(_Axis):
    """ℓ: where the manipulation enters the frozen model."""

    INPUT = enum.auto()
    EMBEDDING = enum.auto()
    HIDDEN = enum.auto()
    OUTPUT = enum.auto()  # the frozen model's output space (its logits), before O_ω


class Operator(_Axis):
    """τ: how the manipulation combines with what it acts on."""

    ADDITIVE = enum.auto()
    CONCATENATIVE = enum.auto()
    PARAMETRIC = enum.auto()
    REPLACEMENT = enum.auto()  # swaps a piece of the model's input for a learned one (token replacement)


class OutputAlignment(_Axis):
    """O_ω: how source-model outputs become target-task outputs."""

    IDENTITY = enum.auto()
    RULE_BASED = enum.auto()
    STATISTICAL = enum.auto()
    LINEAR = enum.auto()


class Tags(NamedTuple):
    """The four taxonomy tags of a method; ``None`` where an axis does not apply.

    A manipulation has format, location and operator; an alignment has the alignment
    axis, and λ, τ, ℓ too where it learns something of its own in the output space
    (:func:`jaxreprog.output.logit_prompt`: learnable, output, additive). ``a | b``
    merges two tag sets axis by axis.
    """

    format: Format | None = None
    location: Location | None = None
    operator: Operator | None = None
    alignment: OutputAlignment | None = None

    def __or__(self, other: Any) -> Tags:  # type: ignore[override]
        if not isinstance(other, Tags):
            return NotImplemented

        def merge(a, b):
            return b if a is None else a if b is None else a | b

        return Tags(*(merge(a, b) for a, b in zip(self, other)))

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._asdict().items() if v is not None)


class Origin(NamedTuple):
    """How a part was built: its factory's public name (``"jr.input.pad"``) and every
    argument it was called with (defaults filled in). Metadata, as tags are: what
    :func:`jaxreprog.save` writes so that :func:`jaxreprog.load` rebuilds the part."""

    factory: str
    arguments: dict[str, Any]

    # ``arguments`` is a dict (and may hold arrays): an origin hashes and compares by identity,
    # as a part's own functions do, so a part stays hashable (a static argument of jax.jit).
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


Kind = Literal["part", "combinator"]
KINDS: tuple[Kind, ...] = ("part", "combinator")


@dataclasses.dataclass(frozen=True)
class Method:
    """One registry record: a named method, its tags and where it comes from.

    ``kind`` is ``"part"`` for a factory of a part (``jr.InputTransform``, ``jr.SiteHook``,
    ``jr.Alignment``: it fills a slot of ``jr.reprogram``, and ``jr.save`` rebuilds it by name),
    ``"combinator"`` for a function over a whole program and K stacked thetas
    (:func:`jaxreprog.candidates.ensemble`), which returns outputs, not a part.
    """

    name: str  # the factory's name: ``"pad"`` for ``jr.input.pad``
    tags: Tags
    modality: str
    paper: str
    factory: str  # dotted path of the factory that builds it
    layout: int = 1  # theta's layout; bumped when a change makes saved thetas unreadable
    kind: Kind = "part"
    held: tuple[str, Callable[[Any], Any]] | None = None  # an argument its theta holds again

    def row(self) -> dict[str, str]:
        t = self.tags
        return {
            "method": self.name,
            "format": str(t.format) if t.format is not None else "-",
            "location": str(t.location) if t.location is not None else "-",
            "operator": str(t.operator) if t.operator is not None else "-",
            "alignment": str(t.alignment) if t.alignment is not None else "-",
            "modality": self.modality,
            "paper": self.paper,
            "api": self.factory,
        }


registry: dict[str, Method] = {}
"""Every registered method by name (populated as ``jaxreprog``'s modules import)."""

F = TypeVar("F", bound=Callable[..., Any])


def register(
    *,
    paper: str,
    modality: str = "any",
    format: Format | None = None,
    location: Location | None = None,
    operator: Operator | None = None,
    alignment: OutputAlignment | None = None,
    layout: int = 1,
    kind: Kind = "part",
    held: tuple[str, Callable[[Any], Any]] | None = None,
) -> Callable[[F], F]:
    """Decorator: record a method factory in the :data:`registry` under the factory's own name.

    The registry name *is* the API name (``jr.input.pad`` registers ``"pad"``), so the two cannot
    drift. The factory's result (a ``jr.InputTransform``, ``jr.SiteHook`` or ``jr.Alignment``,
    anything with a ``tags`` field) gets these tags as metadata, so tags are written once, where the
    method is defined. An axis given here replaces the result's own tag; an axis left ``None`` keeps
    it, so a wrapper (:func:`jaxreprog.output.logit_prompt`) carries its inner part's alignment.
    ``jr.taxonomy.table()`` is generated from these records.

    ``layout`` numbers the method's theta layout: raise it when a change makes thetas
    saved before unreadable (other shapes or meanings), so :func:`jaxreprog.load` refuses an
    old artifact by name instead of failing on a shape.

    ``kind="combinator"`` records a function that combines whole programs rather than building a
    part (:func:`jaxreprog.candidates.ensemble`): it is recorded and returned as it is (its result
    is outputs, which carry no tags), with the same ``.method`` attribute.

    ``held=(argument, rebuild)`` names an array argument that the part's theta holds again (a
    cartridge's ``init`` cache is its theta before training): :func:`jaxreprog.save` writes the
    theta alone and :func:`jaxreprog.load` rebuilds the argument as ``rebuild(theta)``.
    """
    tags = Tags(format, location, operator, alignment)

    def decorator(factory: F) -> F:
        name = factory.__name__
        if all(t is None for t in tags):
            raise ValueError(f"register({name}): give at least one taxonomy tag")
        for axis, t in tags._asdict().items():
            if t is not None and not t.members():
                raise ValueError(
                    f"register({name}): {axis} is an empty flag; give at least one member, or None"
                )
        if name in registry and registry[name].factory != _dotted(factory):
            raise ValueError(f"method {name!r} is already registered by {registry[name].factory}")
        if isinstance(layout, bool) or not isinstance(layout, int) or layout < 1:
            raise ValueError(f"register({name}): layout must be a positive int, got {layout!r}")
        if kind not in KINDS:
            raise ValueError(f"register({name}): kind must be one of {KINDS}, got {kind!r}")
        registry[name] = Method(name, tags, modality, paper, _dotted(factory), layout, kind, held)
        if kind == "combinator":
            factory.method = registry[name]  # type: ignore[attr-defined]
            return factory

        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def build(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            origin = Origin(registry[name].factory, dict(bound.arguments))
            part = factory(*args, **kwargs)
            own = part.tags or Tags()
            merged = Tags(*(mine if mine is not None else theirs for mine, theirs in zip(tags, own)))
            return part._replace(tags=merged, origin=origin)

        build.method = registry[name]  # type: ignore[attr-defined]
        return build  # type: ignore[return-value]

    return decorator


def _dotted(fn: Callable[..., Any]) -> str:
    """The public, flat name: ``jaxreprog.input.visual.pad`` -> ``jr.input.pad``."""
    parts = fn.__module__.split(".")
    if parts[0] != "jaxreprog":
        return f"{fn.__module__}.{fn.__qualname__}"
    return ".".join(["jr", *parts[1:2], fn.__qualname__])


_COLUMNS = ("method", "format", "location", "operator", "alignment", "modality", "paper", "api")


@dataclasses.dataclass(frozen=True)
class Table:
    """The classification of every registered method (records + renderings)."""

    records: tuple[Method, ...]

    def __iter__(self) -> Iterator[Method]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def rows(self) -> list[dict[str, str]]:
        return [m.row() for m in self.records]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        lines += ["| " + " | ".join(r[c] for c in _COLUMNS) + " |" for r in self.rows()]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:  # rich display in notebooks
        return self.markdown()

    def __str__(self) -> str:
        rows = [dict(zip(_COLUMNS, _COLUMNS))] + self.rows()
        widths = {c: max(len(r[c]) for r in rows) for c in _COLUMNS}
        return "\n".join("  ".join(r[c].ljust(widths[c]) for c in _COLUMNS).rstrip() for r in rows)


def table(
    *,
    location: Location | None = None,
    alignment: OutputAlignment | None = None,
    modality: str | None = None,
) -> Table:
    """The taxonomy table generated from the registry, optionally filtered.

    Example::

        >>> import jaxreprog as jr
        >>> print(jr.taxonomy.table(location=jr.taxonomy.Location.INPUT).markdown())
    """

    def keep(m: Method) -> bool:
        t = m.tags
        return (
            (location is None or (t.location is not None and bool(t.location & location)))
            and (alignment is None or (t.alignment is not None and bool(t.alignment & alignment)))
            and (modality is None or m.modality in (modality, "any"))
        )

    order = {loc: i for i, loc in enumerate(Location)}

    def key(m: Method):
        loc = m.tags.location
        first = order[loc.members()[0]] if loc is not None else len(order)
        return (first, m.name)

    return Table(tuple(sorted(filter(keep, registry.values()), key=key)))
