"""What a run leaves behind: the :class:`Result`, and its files in the ``--out`` folder.

``results.json`` (the recipe as run, per-candidate accuracies, the history), one
``prompt_<candidate>.png`` per candidate, and ``prompt/``: the saved prompts as an artifact
(:func:`jaxreprog.save`; all K candidates stacked, the validation-selected candidate's index
and how to rebuild the run's model and inputs in its metadata: :func:`artifact_metadata`),
which ``jaxreprog predict / evaluate / show`` read. :func:`writable_folder` checks the folder
before a run spends any time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import jax
import numpy as np

from jaxreprog.core import FrozenModel, Reprogrammed
from jaxreprog.recipes.checks import RecipeError
from jaxreprog.recipes.schema import Recipe

PyTree = Any


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
    class_names: tuple[str, ...] | None = None  # the dataset's classes (the program's outputs)
    input_shape: tuple[int, ...] | None = None  # one preprocessed example (images: (H, W, C))

    @property
    def selected(self) -> int:
        """The best candidate on validation (its selected epoch; else its last epoch; else 0)."""
        if self.val_selected is not None:
            return int(np.argmax(self.val_selected))
        last = self.history[-1].get("eval_acc") if self.history else None
        return int(np.argmax(np.atleast_1d(last))) if last is not None else 0

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


def write(result: Result, shown: PyTree) -> None:
    """``results.json``, one prompt PNG per candidate (of ``shown``, stacked thetas) and the
    ``prompt/`` artifact of ``shown`` in ``result.out``."""
    import jaxreprog as jr

    out = result.out
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result.to_json(), f, indent=1)
    for i, label in enumerate(result.labels):
        one = jax.tree.map(lambda a, i=i: a[i], shown)
        path = os.path.join(out, f"prompt_{_slug(label)}.png")
        save_prompt_png(result.program.parts["input"], one["input"], result.model.spec, path)
    jr.save(
        os.path.join(out, "prompt"),
        result.program,
        shown,
        frozen_model=result.model,
        metadata=artifact_metadata(result),
    )


def artifact_metadata(result: Result) -> dict[str, Any]:
    """What ``prompt/config.json`` records of a run: the recipe (name and all of it), the
    dataset, the candidates' labels, accuracies and epochs, the ``selected`` candidate, the
    class names, the input shape, and ``model`` / ``data``: how to load the base model and the
    inputs again (``jaxreprog predict`` and ``evaluate`` read them)."""
    r = result.recipe
    chosen = result.test_selected is not None

    def floats(a):
        return None if a is None else [float(v) for v in np.atleast_1d(np.asarray(a))]

    model = {k: r.model[k] for k in ("name", "size") if k in r.model}
    if "weights" in r.model:  # absolute: the artifact is read from other folders
        model["weights"] = os.path.abspath(os.path.expanduser(r.model["weights"]))
    data = {k: r.dataset[k] for k in ("rgb", "image_size", "data_dir") if k in r.dataset}
    return {
        "recipe_name": r.name or r.source,
        "dataset": r.dataset["name"],
        "candidates": list(result.labels),
        "selected": result.selected,
        "selected_by": "validation accuracy" if chosen else "last epoch's validation accuracy",
        "val_acc": floats(result.val_selected),
        "test_acc": floats(result.test_selected if chosen else result.test_last),
        "epoch": [int(e) for e in result.selected_epoch]
        if chosen
        else [len(result.history)] * len(result.labels),
        "class_names": None if result.class_names is None else list(result.class_names),
        "input_shape": None if result.input_shape is None else [int(n) for n in result.input_shape],
        "model": model,
        "data": data,
        "recipe": r.to_dict(),
    }


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


def save_prompt_png(transform: Any, theta: PyTree, spec: Any, path: str | os.PathLike, scale: int = 4) -> str:
    """Write ``transform.visualize(theta, spec)`` (an image in [0, 1]) as a PNG, upscaled ``scale``×."""
    from PIL import Image

    if transform.visualize is None:
        raise ValueError("this input transform has no visualize(); nothing to save as a PNG")
    img = np.asarray(transform.visualize(theta, spec), dtype=np.float32)
    img = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    if img.shape[-1] == 1:
        img = img[..., 0]
    pil = Image.fromarray(img)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    pil.save(path)
    return os.fspath(path)
