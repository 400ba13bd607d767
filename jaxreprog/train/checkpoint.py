"""Checkpoints with orbax: training state plus the metadata that makes resuming safe.

A checkpoint directory holds one sub-directory per saved step (the epoch count),
each with the ``state`` pytree (theta with its alignment state, optimiser state,
step, ...) and a JSON ``metadata`` record: the base model's name and a SHA-256 of
its parameters, the program's tags, the training config, the seed, and a SHA-256
of the saved state itself.

* Saving is atomic: orbax writes into a temporary directory and renames it when
  complete, so an interrupted save leaves the previous checkpoint the latest one.
* Restoring checks the base model (a checkpoint written for another model is
  refused) and the state's checksum; a missing, truncated or corrupted file is a
  :class:`CheckpointError`, never a partial load. Each file's SHA-256, written beside the
  step once it is committed, is checked before orbax reads any: a failed read leaves
  orbax's reader threads calling back into a closed event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "fingerprint", "latest_step", "metadata", "restore", "save"]

PyTree = Any
FORMAT = "jaxreprog.train.checkpoint/1"
FILES = "jaxreprog_files.json"  # in each step's folder: {path under state/: sha256}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored faithfully (missing, truncated, corrupted, foreign)."""


def fingerprint(tree: PyTree) -> str:
    """SHA-256 over a pytree's paths, dtypes, shapes and bytes (hex)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaf = np.asarray(jax.device_get(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _content_sha256(tree: PyTree) -> str:
    """SHA-256 of a pytree's leaves (dtype, shape, bytes) in flattening order, without
    their paths: the same for a state restored with or without a template (orbax gives
    NamedTuples back as dicts of the same leaves)."""
    digest = hashlib.sha256()
    leaves = [np.asarray(jax.device_get(leaf)) for leaf in jax.tree.leaves(tree)]
    for leaf in sorted(leaves, key=lambda a: (str(a.dtype), a.shape, a.tobytes())):
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _metadata_sha256(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _orbax():
    import orbax.checkpoint as ocp  # imported on first use: it adds ~1 s to `import jaxreprog`

    return ocp


def _file_digests(folder: pathlib.Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by path relative to it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _manager(directory: str | os.PathLike, *, max_to_keep: int | None = 2, create: bool = True):
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=create, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(
    directory: str | os.PathLike,
    step: int,
    state: PyTree,
    metadata: Mapping[str, Any],
    *,
    max_to_keep: int | None = 2,
) -> None:
    """Atomically write ``state`` and JSON-serialisable ``metadata`` as checkpoint ``step``."""
    ocp = _orbax()
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"checkpoint directory {os.fspath(directory)!r} is a file")
    meta = {**metadata, "format": FORMAT, "step": int(step), "state_sha256": _content_sha256(state)}
    meta["metadata_sha256"] = _metadata_sha256(meta)  # fails before writing anything if not JSON
    with _manager(directory, max_to_keep=max_to_keep) as manager:
        manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(meta)),
            force=True,
        )
        manager.wait_until_finished()
    if jax.process_index() == 0:  # committed: record its files (one writer in a run of several processes)
        folder = pathlib.Path(directory, str(int(step)))
        (folder / FILES).write_text(json.dumps(_file_digests(folder / "state"), sort_keys=True))


def _complete(directory: str | os.PathLike, step: int) -> bool:
    """Whether step ``step``'s folder holds a committed save (a stray empty folder does not)."""
    return os.path.isfile(os.path.join(directory, str(step), "_CHECKPOINT_METADATA"))


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete checkpoint's step in ``directory`` (``None`` when there is none);
    folders that hold no committed save (a stray empty ``5/``) are skipped."""
    if not os.path.isdir(directory):
        return None
    with _manager(directory, create=False) as manager:
        steps = [s for s in manager.all_steps() if _complete(directory, s)]
    return max(steps, default=None)


def metadata(
    directory: str | os.PathLike, *, step: int | None = None, params_sha256: str | None = None
) -> dict[str, Any]:
    """The JSON metadata of checkpoint ``step`` (default: the latest), checked against the
    checksum saved with it (edited metadata is refused) and, given ``params_sha256``, against
    the base model's parameters (a checkpoint written for another model is refused)."""
    ocp = _orbax()
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {os.fspath(directory)!r}")
    where = f"checkpoint {step} in {os.fspath(directory)!r}"
    with _manager(directory, create=False) as manager:
        if step not in manager.all_steps():
            raise CheckpointError(f"{where} does not exist; saved steps: {list(manager.all_steps())}")
        try:
            meta = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
        except Exception as e:
            raise CheckpointError(f"{where}: its metadata is missing or unreadable ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a jaxreprog training checkpoint (format {FORMAT})")
    if meta.get("metadata_sha256") != _metadata_sha256(meta):
        raise CheckpointError(
            f"{where}: its metadata was edited (it does not match the checksum saved with it)"
        )
    if params_sha256 is not None and meta.get("params_sha256") != params_sha256:
        raise ValueError(
            f"{where} was written for base model {meta.get('model_name')!r} with parameters "
            f"sha256 {str(meta.get('params_sha256'))[:12]}…; the model given has parameters "
            f"sha256 {params_sha256[:12]}…. Resume with the same frozen model, or start a new directory."
        )
    return meta


def restore(
    directory: str | os.PathLike,
    like: PyTree | None = None,
    *,
    step: int | None = None,
    params_sha256: str | None = None,
) -> tuple[PyTree, dict[str, Any]]:
    """Read checkpoint ``step`` (default: the latest) into the structure of ``like``.

    Args:
      directory: the checkpoint directory given to :func:`save`.
      like: a pytree with the state's structure, shapes and dtypes (e.g. a fresh state);
        ``None`` reads the arrays as saved (nested dicts and lists of arrays).
      step: which checkpoint; default the latest complete one.
      params_sha256: when given, the :func:`fingerprint` of the base model's parameters;
        a checkpoint written for other parameters is refused.

    Returns:
      ``(state, metadata)``.
    """
    ocp = _orbax()
    step = latest_step(directory) if step is None else step
    meta = metadata(directory, step=step, params_sha256=params_sha256)
    step = meta["step"]
    where = f"checkpoint {step} in {os.fspath(directory)!r}"
    args = ocp.args.StandardRestore(
        None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    )
    listed = pathlib.Path(directory, str(step), FILES)
    if listed.is_file() and _file_digests(listed.parent / "state") != json.loads(listed.read_text()):
        raise CheckpointError(f"{where} is truncated or corrupted: its files differ from those saved")
    with _manager(directory, create=False) as manager:
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        except Exception as e:
            raise CheckpointError(
                f"{where} is truncated or corrupted, or was saved from another program or optimiser "
                f"(its state does not fit the one expected): {type(e).__name__}: {e}"
            ) from e
    if _content_sha256(state) != meta.get("state_sha256"):
        raise CheckpointError(f"{where} is corrupted: its state does not match the checksum saved with it")
    return state, meta
