"""Reading recipes: TOML / YAML files, the packaged recipes, and ``base`` inheritance.

``base = "other"`` makes a recipe a set of changes to another one: the base is read first
(its own ``base`` too), then the recipe's keys are merged over it, tables key by key at every
depth (a table in both is merged; anything else, lists included, is replaced). The base's
``name`` is not inherited: a recipe's name is its own. ``"other"`` is looked up beside the
recipe (``other``, ``other.toml``, ``.yaml``, ``.yml``; a relative path works too), then among
the packaged recipes. Packaged bases whose names start with ``_`` hold what a family of
recipes shares and are not recipes themselves: :func:`names` leaves them out.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from jaxreprog.recipes.checks import RecipeError, did_you_mean
from jaxreprog.recipes.schema import Recipe, validate

_SUFFIXES = (".toml", ".yaml", ".yml")


def toml_loads(text: str) -> dict[str, Any]:
    """``tomllib.loads`` (``tomli`` / ``toml`` before Python 3.11)."""
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
    """Every packaged ``.toml`` file, bases included: name -> resource."""
    root = importlib.resources.files("jaxreprog") / "recipes"
    return {p.name[: -len(".toml")]: p for p in root.iterdir() if p.name.endswith(".toml")}


def names() -> tuple[str, ...]:
    """The packaged recipes (``jaxreprog/recipes/*.toml``, less the ``_`` bases they share)."""
    return tuple(sorted(n for n in _packaged() if not n.startswith("_")))


MAX_BYTES = 1 << 20  # a recipe is a page of settings; a larger file is refused unread


def read_text(path: Any, source: str) -> str:
    """A recipe file's text: UTF-8, at most :data:`MAX_BYTES`; else an error naming the file."""
    data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise RecipeError(f"{source}: {len(data)} bytes; a recipe is at most {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(
            f"{source}: not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})"
        ) from None


def _read(text: str, suffix: str, source: str) -> Any:
    """The data of a TOML or (by ``suffix``) YAML text. YAML aliases (``*name``) are refused:
    a few lines of nested aliases expand to gigabytes (the "billion laughs")."""
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise RecipeError(
                f"{source}: YAML recipes need PyYAML (pip install pyyaml), or use TOML"
            ) from None
        try:
            for event in yaml.parse(text, Loader=yaml.SafeLoader):
                if isinstance(event, yaml.AliasEvent):
                    raise RecipeError(
                        f"{source}: YAML aliases (*{str(event.anchor)[:40]}) are not allowed in recipes; "
                        "write the value out"
                    )
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RecipeError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    try:
        return toml_loads(text)
    except Exception as e:
        raise RecipeError(f"{source}: not valid TOML: {e}") from None


def merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: tables merged key by key at every depth, anything else replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# A recipe's identity while resolving bases: ("packaged", name) or ("file", absolute path).
_Where = tuple[str, str]


def _find_base(base: str, folder: pathlib.Path | None, source: str) -> tuple[_Where, str, str, str]:
    """Where ``base`` is: (identity, source name, text, suffix); beside the recipe first, then packaged."""
    if folder is not None:
        for candidate in (base, *(base + s for s in _SUFFIXES)):
            path = (folder / pathlib.Path(candidate).expanduser()).resolve()
            if path.is_file():
                return ("file", str(path)), str(path), read_text(path, str(path)), path.suffix.lower()
    packaged = _packaged()
    if base in packaged:
        return ("packaged", base), f"recipe {base!r}", packaged[base].read_text(), ".toml"
    beside = " beside it" if folder is not None else ""
    raise RecipeError(
        f"{source}: unknown base {base!r}: no such recipe file{beside}, and not a packaged recipe"
        f"{did_you_mean(base, list(packaged))}; fix: a packaged name or a path relative to {source}"
    )


def resolve(
    config: Any, *, folder: pathlib.Path | None, source: str, chain: Sequence[tuple[_Where, str]] = ()
) -> Any:
    """``config`` with its ``base`` (and theirs) merged in and the ``base`` key gone.

    ``folder`` is where relative bases are looked up (None: packaged names only); ``chain``
    holds the recipes already being resolved (identity, source), to name a cycle.
    """
    if not isinstance(config, Mapping) or "base" not in config:
        return config
    base = config["base"]
    if not isinstance(base, str) or not base:
        raise RecipeError(f"{source}: base must be the name or path of another recipe, got {base!r}")
    where, base_source, text, suffix = _find_base(base, folder, source)
    seen = [w for w, _ in chain]
    if where in seen:
        loop = " -> ".join([*(s for _, s in chain[seen.index(where) :]), base_source])
        raise RecipeError(f"{source}: base {base!r} makes a cycle ({loop}); fix: remove one of these bases")
    parent = _read(text, suffix, base_source)
    if not isinstance(parent, Mapping):
        raise RecipeError(f"{base_source}: a recipe must be a table of keys, got {type(parent).__name__}")
    base_folder = pathlib.Path(where[1]).parent if where[0] == "file" else None
    parent = resolve(parent, folder=base_folder, source=base_source, chain=[*chain, (where, base_source)])
    child = {k: v for k, v in config.items() if k != "base"}
    merged = merge({k: v for k, v in parent.items() if k != "name"}, child)
    return merged


def parse(config: Mapping[str, Any], *, source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as data (a dict as TOML/YAML reads it) and fill in defaults.

    A ``base`` key names a packaged recipe to start from (see the module docstring).
    """
    return validate(resolve(config, folder=None, source=source), source=source)


def load(name_or_path: str | os.PathLike, overrides: Mapping[str, Any] | Sequence[str] = ()) -> Recipe:
    """A packaged recipe by name (:func:`names`) or a ``.toml`` / ``.yaml`` file, validated.

    Args:
      name_or_path: e.g. ``"mnist5k_lite0_pad_ilm"`` or ``"my_recipe.toml"``.
      overrides: dotted keys to replace, as :meth:`Recipe.override`.
    """
    text_name = os.fspath(name_or_path)
    folder: pathlib.Path | None = None
    if text_name in names():
        where: _Where = ("packaged", text_name)
        source, text, suffix = f"recipe {text_name!r}", _packaged()[text_name].read_text(), ".toml"
    else:
        path = pathlib.Path(text_name).expanduser()
        if not path.is_file():
            raise RecipeError(
                f"no recipe {text_name!r}: not a file, and not a packaged recipe"
                f"{did_you_mean(text_name, names())}; fix: a .toml / .yaml path, or a name that "
                f"`jaxreprog run --list` shows"
            )
        where = ("file", str(path.resolve()))
        source, suffix, folder = str(path), path.suffix.lower(), path.resolve().parent
        text = read_text(path, source)
    config = resolve(_read(text, suffix, source), folder=folder, source=source, chain=[(where, source)])
    recipe = validate(config, source=source)
    return recipe.override(overrides) if overrides else recipe
