"""ImageNet-1k class names, read offline from an installed package.

The 1000 human-readable names (``"tench, Tinca tinca"``, ..., ``"Egyptian cat"``
at 285, ``"espresso"`` at 967) ship inside ``tensorflow-datasets``
(``datasets/siscore/labels.py``, ``IMAGENET_LABELS_LIST``). The file is parsed, not
imported, so neither TensorFlow nor the ``tensorflow_datasets`` package is
imported; without the package :func:`class_names` returns ``None`` and models
simply carry no names.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os

__all__ = ["class_names"]

_SOURCE = ("datasets", "siscore", "labels.py")


@functools.cache
def class_names() -> tuple[str, ...] | None:
    """The 1000 ImageNet-1k class names in label order, or ``None`` if unavailable."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), *_SOURCE)
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except OSError:
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "IMAGENET_LABELS_LIST" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
            if isinstance(names, list) and len(names) == 1000 and all(isinstance(n, str) for n in names):
                return tuple(names)
    return None
