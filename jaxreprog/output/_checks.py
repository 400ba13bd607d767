"""Argument checks shared by the output alignments.

Shapes and dtypes are static, so those checks run at trace time, under ``jit``
too. Value checks (label range, NaN) need concrete values and are skipped for
tracers: under ``jit`` a NaN logit propagates and an out-of-range label is dropped
from the statistics (JAX's scatter drops out-of-bounds updates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import checking


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_class_counts(where: str, num_source: int, num_target: int, *, per_target: int | None = None):
    """``num_source``/``num_target`` are positive ints; with ``per_target`` (a map using each
    source class at most once), ``per_target * num_target <= num_source``."""
    for name, v in (("num_source", num_source), ("num_target", num_target)):
        checking.integer(v, name, who=where)
    if per_target is not None and per_target * num_target > num_source:
        need = "num_target <= num_source" if per_target == 1 else f"{per_target} * num_target <= num_source"
        raise ValueError(
            f"{where}: a map that uses each source class at most once needs {need}; "
            f"got num_source={num_source}, num_target={num_target}"
        )


def check_logits(where: str, logits, num_source: int, *, batch: bool = False) -> None:
    """Floating point, last axis ``num_source``; with ``batch``: exactly ``(N, num_source)``, N >= 1,
    and (when concrete) finite."""
    shape, dtype = jnp.shape(logits), jnp.result_type(logits)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{where}: source_logits must be floating point, got dtype {dtype}")
    if not shape or shape[-1] != num_source:
        raise ValueError(
            f"{where}: source_logits must have num_source={num_source} on the last axis, got shape {shape}"
        )
    if not batch:
        return
    if len(shape) != 2:
        raise ValueError(f"{where}: source_logits must have shape (N, {num_source}), got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{where}: empty batch (source_logits has shape {shape}); need N >= 1 samples")
    if _concrete(logits):
        finite = np.isfinite(np.asarray(logits, np.float32)).all(axis=-1)  # on the host: no compile
        if not finite.all():
            bad = int((~finite).sum())
            raise ValueError(f"{where}: source_logits has NaN/inf values in {bad} of {shape[0]} rows")


def check_labels(where: str, labels, n: int, num_target: int) -> None:
    """Integer ``(n,)`` labels in ``[0, num_target)`` (the range only when concrete)."""
    shape, dtype = jnp.shape(labels), jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{where}: labels must be integers, got dtype {dtype}")
    if shape != (n,):
        raise ValueError(f"{where}: labels must have shape ({n},) to match source_logits, got {shape}")
    if _concrete(labels):
        host = np.asarray(labels)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= num_target:
            raise ValueError(
                f"{where}: labels must lie in [0, num_target={num_target}), got values in [{lo}, {hi}]"
            )


def check_batch(where: str, logits, labels, num_source: int, num_target: int) -> None:
    """Everything a statistics update needs: ``(N, num_source)`` finite logits, ``(N,)`` labels."""
    check_logits(where, logits, num_source, batch=True)
    check_labels(where, labels, jnp.shape(logits)[0], num_target)
