"""Trained prompts as artifacts: :func:`save` a program and its theta, :func:`load` them back.

An artifact is a folder a user can hand to someone else::

    prompt.safetensors   theta, one tensor per leaf, named by its path ("input['delta']");
                         array arguments of the parts' factories under "arguments/...", except
                         those the part's theta holds again (a cartridge's init cache): the config
                         names the theta instead, and load rebuilds the argument from it
    config.json          every part's factory and arguments (so load rebuilds the program with
                         no code from the user), the taxonomy tags, the library version, the
                         base model's name, spec and parameter fingerprint, the candidate
                         count, optional metadata

Only registered factories (and :func:`jaxreprog.chain`, :func:`jaxreprog.output.per_candidate`,
:func:`jaxreprog.fixed` around them) are rebuilt: a config names a factory as ``jr.<package>.<name>``
and :func:`load` calls nothing else. A part of your own saves with a clear error; register its
factory with :func:`jaxreprog.taxonomy.register` to make it saveable.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxreprog import taxonomy
from jaxreprog.core import (
    IDENTITY,
    Alignment,
    FrozenModel,
    InputTransform,
    Refit,
    Reprogrammed,
    SiteHook,
    fixed,
    reprogram,
    trainable_mask,
)
from jaxreprog.hooks import Selector

__all__ = ["ArtifactError", "load", "save"]

FORMAT = "jaxreprog.artifact/1"
CONFIG, TENSORS = "config.json", "prompt.safetensors"
MAX_CONFIG_BYTES = 16 << 20  # a config is a few KB; refuse to parse a huge (hostile) one
_PART_TYPES = (InputTransform, SiteHook, Alignment)
# Factories of parts made of parts (not registered methods; unlike a registered combinator such as
# jr.candidates.ensemble, which combines whole programs): rebuilt by name too.
_COMPOSITES = ("jr.chain", "jr.output.per_candidate")


class ArtifactError(ValueError):
    """An artifact that cannot be written or rebuilt faithfully; the message names the file and field."""


# ----------------------------------------------------------------------------- save


def save(
    path: str | os.PathLike,
    program: Reprogrammed,
    theta: Any,
    *,
    frozen_model: FrozenModel | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``program`` and ``theta`` (one prompt, or K stacked candidates) as an artifact folder.

    Args:
      path: the folder (created; files in it are replaced).
      program: a :func:`jaxreprog.reprogram` program whose parts come from registered factories.
      theta: its theta, or K thetas stacked on a leading axis (``jr.train.fit(candidates=K)``).
      frozen_model: the base model, recorded by name, spec and parameter fingerprint so that
        :func:`load` refuses another one.
      metadata: JSON-serialisable notes (training history, dataset, ...).

    Returns:
      The folder's path.

    Example::

        >>> jr.save("out/prompt", program, theta, frozen_model=model)
        >>> program, theta = jr.load("out/prompt", model)
    """
    from safetensors.numpy import save_file

    if not isinstance(program, Reprogrammed):
        raise TypeError(
            f"save: program must be a jr.Reprogrammed (jr.reprogram), got {type(program).__name__}"
        )
    folder = pathlib.Path(path)
    arrays: dict[str, np.ndarray] = {}
    given = {slot: part for slot, part in program.parts.items() if part is not IDENTITY}  # no output=: none
    parts = {slot: _describe(part, f"arguments/{slot}", arrays) for slot, part in given.items()}
    one = jax.eval_shape(program.init, jax.random.key(0))
    if jax.tree.structure(one) != jax.tree.structure(theta):
        raise ArtifactError(f"save: theta does not have the program's structure {jax.tree.structure(one)}")
    leading = {
        np.shape(t)[: len(np.shape(t)) - len(o.shape)]
        for t, o in zip(jax.tree.leaves(theta), jax.tree.leaves(one))
    }
    if len(leading) > 1 or any(len(lead) > 1 for lead in leading):
        raise ArtifactError(
            f"save: theta's leaves must all be one prompt or K stacked ones, got leading axes {leading}"
        )
    lead = next(iter(leading), ())  # () for a theta without leaves (a fixed context)
    tensors = {f"theta/{name}": np.asarray(leaf) for name, leaf in _named_leaves(theta).items()}
    for slot, part in given.items():
        rebuilt = _rebuild(parts[slot], f"parts.{slot}", {**arrays, **tensors}, folder)
        _check_trainable(slot, part, rebuilt, one[slot])
    for name, leaf in tensors.items():
        if np.issubdtype(leaf.dtype, np.floating) and not np.isfinite(leaf).all():
            raise ArtifactError(f"save: {name} has NaN or inf values; a prompt to share must be finite")
    config = {
        "format": FORMAT,
        "library_version": _version(),
        "parts": parts,
        "tags": {slot: str(part.tags) if part.tags else "" for slot, part in given.items()},
        "candidates": lead[0] if lead else None,
        "base_model": None if frozen_model is None else _model_record(frozen_model),
        "metadata": dict(metadata or {}),
    }
    try:
        text = json.dumps(config, indent=1, sort_keys=True)
    except TypeError as err:
        raise ArtifactError(f"save: metadata must be JSON-serialisable ({err})") from None
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save: {folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    save_file({**tensors, **arrays}, str(folder / TENSORS))
    (folder / CONFIG).write_text(text + "\n")
    return folder


def _describe(part: Any, where: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """A part as JSON: its factory, arguments (arrays into ``arrays``) and fixedness."""
    if not isinstance(part, _PART_TYPES):
        raise ArtifactError(f"save: {where}: expected a part, got {type(part).__name__}")
    origin = part.origin
    if origin is None:
        raise ArtifactError(
            f"save: the {type(part).__name__} at {where.split('/', 1)[1]} was not built by a registered "
            "factory, so it cannot be rebuilt from a file; register its factory with "
            "jr.taxonomy.register, or save theta alone (jr.train.save)"
        )
    method = _methods().get(origin.factory)
    held, path = _held_argument(method), _theta_path(where)
    args = {
        k: {"__theta__": path}
        if k == held and path is not None and isinstance(v, np.ndarray | jax.Array)
        else _value(v, f"{where}/{k}", arrays)
        for k, v in origin.arguments.items()
    }
    out = {"factory": origin.factory, "arguments": args}
    if method is not None and method.layout != 1:
        out["layout"] = method.layout
    if part.trainable is False:
        out["fixed"] = True
    return out


def _held_argument(method: taxonomy.Method | None) -> str | None:
    """The array argument this method's theta holds again (``register(held=...)``), if any."""
    return None if method is None or method.held is None else method.held[0]


def _theta_path(where: str) -> str | None:
    """The theta path of the part described at ``where`` (``arguments/hidden`` -> ``['hidden']``,
    ``arguments/hidden/transforms/1`` -> ``['hidden'][1]``, a jr.chain's part); None inside
    another part's arguments."""
    _, slot, *rest = where.split("/")
    keys, indices = rest[::2], rest[1::2]
    if len(keys) != len(indices) or any(k != "transforms" or not i.isdigit() for k, i in zip(keys, indices)):
        return None
    return f"['{slot}']" + "".join(f"[{i}]" for i in indices)


def _check_trainable(slot: str, part: Any, rebuilt: Any, theta: Any) -> None:
    """Refuse a part whose trainable flags its rebuilt self would not give (a user's own
    ``trainable`` function): the file holds factories and arguments, never functions."""

    def flags(p):
        return [bool(f) for f in jax.tree.leaves(trainable_mask(p, theta))]

    if flags(part) != flags(rebuilt):
        raise ArtifactError(
            f"save: the {slot} part's trainable flags are not its factory's ({part.origin.factory}); a "
            "trainable= function cannot be saved: use jr.fixed for a held part, or save theta alone "
            "(jr.train.save)"
        )


def _value(v: Any, where: str, arrays: dict[str, np.ndarray]) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray | jax.Array):
        arrays[where] = np.asarray(v)
        return {"__array__": where}
    if isinstance(v, _PART_TYPES):
        return {"__part__": _describe(v, where, arrays)}
    if isinstance(v, Selector):
        if v.predicate is not None:
            raise ArtifactError(f"save: {where} is a predicate selector, which a file cannot hold; use globs")
        return {"__select__": list(v.patterns)}
    if isinstance(v, enum.Enum):
        return {"__enum__": f"{type(v).__name__}.{v.name}"}
    if isinstance(v, list | tuple):
        items = [_value(e, f"{where}/{i}", arrays) for i, e in enumerate(v)]
        return {"__tuple__": items} if isinstance(v, tuple) else items
    if isinstance(v, Mapping) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _value(e, f"{where}/{k}", arrays) for k, e in v.items()}}
    raise ArtifactError(f"save: {where} is a {type(v).__name__}, which a file cannot hold")


def _named_leaves(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _model_record(model: FrozenModel) -> dict[str, Any]:
    from jaxreprog.train.checkpoint import fingerprint

    spec = model.spec
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "class_names"}
    return {
        "name": getattr(spec, "name", ""),
        "spec": {"type": type(spec).__name__, **json.loads(json.dumps(fields, default=list))},
        "params_sha256": fingerprint(model.params),
    }


def _version() -> str:
    from jaxreprog import __version__

    return __version__


# ----------------------------------------------------------------------------- load


def load(
    path: str | os.PathLike,
    frozen_model: FrozenModel,
    *,
    candidate: int | None = None,
    allow_other_model: bool = False,
) -> tuple[Reprogrammed, Any]:
    """Rebuild the program and theta saved by :func:`save` around ``frozen_model``.

    Args:
      path: the artifact folder.
      frozen_model: the base model; one other than the saved one (name or parameters) is
        refused unless ``allow_other_model=True`` (transfer a prompt on purpose).
      candidate: with K saved candidates, pick candidate ``i`` (default: all, stacked).

    Returns:
      ``(program, theta)``.

    Raises:
      ArtifactError: a missing, truncated or edited file, an unknown factory, a theta of
        the wrong shape; the message names the file and the field.
    """
    from safetensors.numpy import load_file

    folder = pathlib.Path(path)
    config_path, tensors_path = folder / CONFIG, folder / TENSORS
    for f in (config_path, tensors_path):
        if not f.is_file():
            raise FileNotFoundError(f"load: {folder} is not an artifact: {f.name} is missing")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ArtifactError(f"{config_path}: {config_path.stat().st_size} bytes; a config is at most 16 MiB")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ArtifactError(f"{config_path}: not a JSON config ({str(err)[:200]})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ArtifactError(f"{config_path}: field 'format' must be {FORMAT!r}")
    try:
        tensors = load_file(str(tensors_path))
    except Exception as err:
        raise ArtifactError(f"{tensors_path}: unreadable ({type(err).__name__}: {err})") from None
    _check_model(config.get("base_model"), frozen_model, config_path, allow_other_model)
    parts = config.get("parts")
    if not isinstance(parts, dict):
        raise ArtifactError(f"{config_path}: field 'parts' must map slots to parts")
    unknown = set(parts) - {"input", "embedding", "hidden", "output"}
    if unknown:
        raise ArtifactError(f"{config_path}: field 'parts' has unknown slots {sorted(unknown)}")
    built = {slot: _rebuild(p, f"parts.{slot}", tensors, config_path) for slot, p in parts.items()}
    try:
        program = reprogram(frozen_model, **built)
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{config_path}: field 'parts' does not make a program: {err}") from None
    theta = _theta(program, config.get("candidates"), tensors, tensors_path)
    if candidate is not None:
        k = config.get("candidates")
        if k is None:
            raise ArtifactError(f"load: {folder} holds one prompt, not candidates; drop candidate=")
        if not 0 <= candidate < k:
            raise IndexError(f"load: candidate {candidate} is out of range for the {k} saved")
        theta = jax.tree.map(lambda a: a[candidate], theta)
    return program, theta


def _check_model(saved: Any, model: FrozenModel, where: pathlib.Path, allow: bool) -> None:
    if saved is None or allow:
        return
    now = _model_record(model)
    if isinstance(saved.get("spec"), dict):  # a spec field added since the artifact was saved is not a change
        now["spec"] = {k: v for k, v in now["spec"].items() if k in saved["spec"]}
    for field in ("name", "params_sha256", "spec"):
        if saved.get(field) != now[field]:
            raise ArtifactError(
                f"{where}: saved for base model {saved.get('name')!r} "
                f"({field} {str(saved.get(field))[:60]}), "
                f"given {now['name']!r} ({field} {str(now[field])[:60]}); load with the same model, or pass "
                "allow_other_model=True to transfer the prompt on purpose"
            )


def _methods() -> dict[str, taxonomy.Method]:
    """The registered part factories by public name (a combinator builds no part: never rebuilt)."""
    return {m.factory: m for m in taxonomy.registry.values() if m.kind == "part"}


def _factory(name: Any, where: str, config_path: pathlib.Path) -> Any:
    import jaxreprog as jr

    if name not in _methods() and name not in _COMPOSITES:
        raise ArtifactError(f"{config_path}: field {where}.factory names an unknown method {name!r:.80}")
    target: Any = jr
    for attr in name.split(".")[1:]:
        target = getattr(target, attr)
    return target


def _rebuild(desc: Any, where: str, tensors: Mapping[str, np.ndarray], config_path: pathlib.Path) -> Any:
    if not isinstance(desc, dict) or not isinstance(desc.get("arguments"), dict):
        raise ArtifactError(f"{config_path}: field {where} must hold 'factory' and 'arguments'")
    factory = _factory(desc.get("factory"), where, config_path)
    method = _methods().get(desc["factory"])
    saved = desc.get("layout", 1)  # written only when not 1
    if method is not None and saved != method.layout:
        raise ArtifactError(
            f"{config_path}: field {where}.layout: the theta was saved in {desc['factory']}'s layout "
            f"{saved!r:.20}, this library (jaxreprog {_version()}) reads layout {method.layout}; load it "
            "with the version that saved it, or retrain"
        )
    args = {
        k: _held(desc["factory"], k, v["__theta__"], f"{where}.arguments.{k}", tensors, config_path)
        if isinstance(v, dict) and "__theta__" in v
        else _decode(v, f"{where}.arguments.{k}", tensors, config_path)
        for k, v in desc["arguments"].items()
    }
    if desc.get("factory") == "jr.chain":
        part = factory(*args["transforms"])
    elif desc.get("factory") == "jr.output.per_candidate":
        part = factory(args["alignments"])
    else:
        try:
            part = factory(**args)
        except (TypeError, ValueError) as err:
            raise ArtifactError(
                f"{config_path}: field {where}: {desc['factory']} refused its arguments: {err}"
            ) from None
    return fixed(part) if desc.get("fixed") else part


def _held(
    factory: str,
    arg: str,
    path: Any,
    where: str,
    tensors: Mapping[str, np.ndarray],
    config_path: pathlib.Path,
) -> np.ndarray:
    """An argument written as the theta that holds it (``{"__theta__": path}``), rebuilt from that theta."""
    method = _methods().get(factory)
    if method is None or method.held is None or method.held[0] != arg:
        raise ArtifactError(
            f"{config_path}: field {where}: {factory} does not rebuild {arg!r} from its theta"
        )
    prefix = f"theta/{path}"
    leaves = {
        key[1]: array
        for name, array in tensors.items()
        if name.startswith(prefix) and (key := re.fullmatch(r"\['(\w+)'\]", name[len(prefix) :]))
    }
    if not isinstance(path, str) or not leaves:
        raise ArtifactError(f"{config_path}: field {where} names the theta {path!r:.60}, which is missing")
    try:
        return method.held[1](leaves)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(
            f"{config_path}: field {where}: the theta at {path!r:.60} does not rebuild it ({err})"
        ) from None


def _decode(v: Any, where: str, tensors: Mapping[str, np.ndarray], config_path: pathlib.Path) -> Any:
    if isinstance(v, list):
        return [_decode(e, f"{where}.{i}", tensors, config_path) for i, e in enumerate(v)]
    if not isinstance(v, dict):
        return v
    if "__tuple__" in v:
        return tuple(_decode(e, f"{where}.{i}", tensors, config_path) for i, e in enumerate(v["__tuple__"]))
    if "__array__" in v:
        if v["__array__"] not in tensors:
            raise ArtifactError(
                f"{config_path}: field {where} names the tensor {v['__array__']!r}, which is missing"
            )
        return tensors[v["__array__"]]
    if "__part__" in v:
        return _rebuild(v["__part__"], where, tensors, config_path)
    if "__select__" in v:
        from jaxreprog.hooks import select

        return select(v["__select__"])
    if "__enum__" in v:
        kind, _, name = str(v["__enum__"]).partition(".")
        if kind != "Refit" or name not in Refit.__members__:
            raise ArtifactError(f"{config_path}: field {where} names an unknown value {v['__enum__']!r:.60}")
        return Refit[name]
    if "__dict__" in v:
        return {k: _decode(e, f"{where}.{k}", tensors, config_path) for k, e in v["__dict__"].items()}
    raise ArtifactError(f"{config_path}: field {where} is not a value this library writes")


def _theta(program: Reprogrammed, k: Any, tensors: Mapping[str, np.ndarray], where: pathlib.Path) -> Any:
    template = jax.eval_shape(program.init, jax.random.key(0))
    names = _named_leaves(template)
    saved = {n[len("theta/") :] for n in tensors if n.startswith("theta/")}
    if saved != set(names):
        missing, extra = sorted(set(names) - saved), sorted(saved - set(names))
        raise ArtifactError(
            f"{where}: theta does not fit the program (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    lead = () if k is None else (int(k),)
    leaves = []
    for name, shape in names.items():
        leaf = tensors[f"theta/{name}"]
        if leaf.shape != (*lead, *shape.shape) or leaf.dtype != shape.dtype:
            raise ArtifactError(
                f"{where}: theta{name} has shape {leaf.shape} {leaf.dtype}; the program expects "
                f"{(*lead, *shape.shape)} {shape.dtype}"
            )
        if np.issubdtype(leaf.dtype, np.floating) and not np.isfinite(leaf).all():
            raise ArtifactError(f"{where}: theta{name} has NaN or inf values")
        leaves.append(leaf)
    # One transfer (jnp.asarray of a numpy array compiles a program per shape)
    return jax.device_put(jax.tree.unflatten(jax.tree.structure(template), leaves), may_alias=False)
