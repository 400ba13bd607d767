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
  :class:`CheckpointError`, never a partial load.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["CheckpointError", "fingerprint", "latest_step", "restore", "save"]

PyTree = Any
FORMAT = "jaxreprog.train.checkpoint/1"


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


def _orbax():
    import orbax.checkpoint as ocp  # imported on first use: it adds ~1 s to `import jaxreprog`

    return ocp


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
    meta = {**metadata, "format": FORMAT, "step": int(step), "state_sha256": fingerprint(state)}
    json.dumps(meta)  # fail before writing anything if metadata is not JSON
    with _manager(directory, max_to_keep=max_to_keep) as manager:
        manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(meta)),
            force=True,
        )
        manager.wait_until_finished()


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete checkpoint's step in ``directory`` (``None`` when there is none)."""
    if not os.path.isdir(directory):
        return None
    with _manager(directory, create=False) as manager:
        return manager.latest_step()


def restore(
    directory: str | os.PathLike,
    like: PyTree,
    *,
    step: int | None = None,
    params_sha256: str | None = None,
) -> tuple[PyTree, dict[str, Any]]:
    """Read checkpoint ``step`` (default: the latest) into the structure of ``like``.

    Args:
      directory: the checkpoint directory given to :func:`save`.
      like: a pytree with the state's structure, shapes and dtypes (e.g. a fresh state).
      step: which checkpoint; default the latest complete one.
      params_sha256: when given, the :func:`fingerprint` of the base model's parameters;
        a checkpoint written for other parameters is refused.

    Returns:
      ``(state, metadata)``.
    """
    ocp = _orbax()
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {os.fspath(directory)!r}")
    where = f"checkpoint {step} in {os.fspath(directory)!r}"
    with _manager(directory, create=False) as manager:
        if step not in manager.all_steps():
            raise CheckpointError(f"{where} does not exist; saved steps: {list(manager.all_steps())}")
        try:
            metadata = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))[
                "metadata"
            ]
        except Exception as e:
            raise CheckpointError(f"{where}: its metadata is missing or unreadable ({e})") from e
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise CheckpointError(f"{where} is not a jaxreprog training checkpoint (format {FORMAT})")
        if params_sha256 is not None and metadata.get("params_sha256") != params_sha256:
            raise ValueError(
                f"{where} was written for base model {metadata.get('model_name')!r} with parameters "
                f"sha256 {str(metadata.get('params_sha256'))[:12]}…; the model given has parameters "
                f"sha256 {params_sha256[:12]}…. Resume with the same frozen model, or start a new directory."
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))[
                "state"
            ]
        except Exception as e:
            raise CheckpointError(
                f"{where} is truncated or corrupted, or was saved from another program or optimiser "
                f"(its state does not fit the one expected): {type(e).__name__}: {e}"
            ) from e
    if fingerprint(state) != metadata.get("state_sha256"):
        raise CheckpointError(f"{where} is corrupted: its state does not match the checksum saved with it")
    return state, metadata
