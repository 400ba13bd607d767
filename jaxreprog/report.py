"""What a run shows: figures of a finished recipe run and one self-contained ``report.html``.

:func:`write` turns a :class:`jaxreprog.recipes.Result` (and the :class:`~jaxreprog.recipes.Built`
it trained) into files in the run's folder:

* ``curves.png`` — training loss and validation accuracy per epoch, one line per candidate;
* ``examples.png`` — what the frozen model sees: the input transform's canvas
  ``I_θ(x)`` for a few test images, one row per candidate, with predicted and true labels;
* ``mapping.png`` — for each target class, the source classes the trained label mapping
  ``O_ω`` uses (its column of ``ω``, the largest weights first), with the source model's
  class names (ImageNet's, for the zoo's classifiers);
* ``report.html`` — the results table, the figures and the prompt images, the PNGs
  embedded as base64 (one file to send or open anywhere).

The figures need matplotlib (``pip install 'jaxreprog[notebooks]'``); without it they are
skipped with one line and ``report.html`` still holds the table and the prompts.

Example::

    >>> from jaxreprog import recipes, report
    >>> built = recipes.build(recipe)
    >>> result = recipes.run(recipe, out="out", built=built)
    >>> report.write(result, built, "out")
    'out/report.html'
"""

from __future__ import annotations

import base64
import html
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxreprog.core import ImageSpec
from jaxreprog.recipes import Built, Result, save_prompt_png

__all__ = ["FIGURES", "curves", "examples", "mapping", "results_table", "write"]

PyTree = Any
FIGURES = ("curves.png", "examples.png", "mapping.png")
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _stacked(result: Result, built: Built) -> tuple[PyTree, str]:
    """The prompts to show, stacked over candidates (``(K, ...)`` leaves), and which epoch they are."""
    if result.theta_selected is not None:
        return result.theta_selected, "the validation-selected epoch"
    k = built.theta0 is not None or result.recipe.candidates > 1
    theta = result.theta if k else jax.tree.map(lambda a: np.asarray(a)[None], result.theta)
    return theta, "the last epoch"


def _select(theta: PyTree, i: int) -> PyTree:
    return jax.tree.map(lambda a: a[i], theta)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, any backend

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _history(result: Result, name: str) -> np.ndarray | None:
    """``(epochs, K)`` of one history metric, or ``None`` where the run did not record it."""
    values = [h.get(name) for h in result.history]
    if not values or any(v is None for v in values):
        return None
    return np.stack([np.atleast_1d(np.asarray(v, dtype=float)) for v in values])


def curves(result: Result, path: str | os.PathLike, names: Sequence[str] | None = None) -> str:
    """``curves.png``: training loss and validation accuracy per epoch, one line per candidate."""
    names = list(names or result.labels)
    fig = _figure(10, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    loss, acc = _history(result, "loss"), _history(result, "eval_acc")
    epochs = np.asarray([h["epoch"] for h in result.history])
    for ax, values, title in ((ax_loss, loss, "training loss"), (ax_acc, acc, "validation accuracy")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if values is None:
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
            continue
        for i in range(values.shape[1]):
            name = names[i] if i < len(names) else f"#{i}"
            ax.plot(epochs, values[:, i], marker="o", color=_COLORS[i % len(_COLORS)], label=name)
        if len(epochs):
            ax.set_xticks(epochs if len(epochs) <= 12 else np.linspace(epochs[0], epochs[-1], 6).round())
    if acc is not None:
        ax_acc.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
    if loss is not None and loss.shape[1] > 1:
        ax_loss.legend(fontsize=8)
    fig.savefig(path)
    return os.fspath(path)


def _batch(data: Any, n: int, classes: int, most: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of ``data``'s first epoch (the same ones every call): the first of each
    class in label order (as many of the ``classes`` as fit in ``n``), then the first of the
    rest; reads until it has them, at most ``most`` examples."""
    xs, ys, seen = [], [], set()
    for x, y in data.epoch(0) if hasattr(data, "epoch") else data:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        seen.update(np.asarray(y).ravel().tolist())
        if len(seen) >= min(n, classes) or sum(map(len, ys)) >= most:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    first = np.unique(y, return_index=True)[1][:n] if y.ndim == 1 else np.zeros(0, int)
    rest = np.setdiff1d(np.arange(len(y)), first)[: n - len(first)]
    pick = np.concatenate([first, rest]).astype(int)
    return x[pick], y[pick]


def _target_names(result: Result, built: Built) -> Sequence[str] | None:
    return getattr(result, "class_names", None) or getattr(built.test, "class_names", None)


def _class_name(names: Sequence[str] | None, i: int) -> str:
    if names is None or not 0 <= i < len(names):
        return str(i)
    return names[i].split(",")[0].strip()  # ImageNet: "tench, Tinca tinca" -> "tench"


def examples(
    result: Result, built: Built, path: str | os.PathLike, names: Sequence[str] | None = None, n: int = 10
) -> str | None:
    """``examples.png``: the canvas the frozen model sees, ``I_θ(x)``, for ``n`` test images (the
    first of each class, then the next ones), one row per candidate, titled ``predicted / true``
    (green when right).

    Returns ``None`` (nothing written) for a program without an image input transform.
    """
    program, model = built.program, built.model
    spec = model.spec
    if "input" not in program.parts or not isinstance(spec, ImageSpec):
        return None
    names = list(names or result.labels)
    theta, _ = _stacked(result, built)
    x, y = _batch(built.test, n, built.num_classes)
    transform = program.parts["input"]

    @jax.jit
    def show(theta, params, x):
        def one(th):
            canvas = spec.denormalize(transform.apply(th["input"], x, spec))
            return canvas, program.apply(th, params, x).argmax(-1)

        return jax.vmap(one)(theta)

    canvases, predicted = show(theta, model.params, x.astype(np.float32))
    canvases, predicted = np.clip(np.asarray(canvases), 0, 1), np.asarray(predicted)
    classes = _target_names(result, built)
    k = canvases.shape[0]
    fig = _figure(1.3 * len(y) + 0.6, 1.45 * k + 0.2)
    axes = np.asarray(fig.subplots(k, len(y), squeeze=False))
    for i in range(k):
        for j in range(len(y)):
            ax = axes[i, j]
            img = canvases[i, j]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            right = predicted[i, j] == y[j]
            label = f"{_class_name(classes, int(predicted[i, j]))} / {_class_name(classes, int(y[j]))}"
            ax.set_title(label, fontsize=8, color="#1a7f37" if right else "#cf222e")
        axes[i, 0].set_ylabel(names[i] if i < len(names) else f"#{i}", fontsize=9)
    fig.suptitle("what the frozen model sees (predicted / true)", fontsize=10)
    fig.savefig(path)
    return os.fspath(path)


def _omega(state: Any) -> np.ndarray | None:
    """A label mapping's ``ω`` ``(num_source, num_target)``: one candidate's state of
    :func:`~jaxreprog.output.per_candidate` is unwrapped; ``None`` for a mapping without one."""
    if isinstance(state, dict) and "which" in state and "states" in state:
        state = state["states"][int(np.argmax(np.asarray(state["which"])))]
    if isinstance(state, dict) and "omega" in state and np.ndim(state["omega"]) == 2:
        return np.asarray(state["omega"], dtype=float)
    return None


def _mapping_cells(result: Result, built: Built, top: int) -> list[list[str]] | None:
    """Per candidate, per target class, the lines ``source name  weight`` of its largest weights."""
    theta, _ = _stacked(result, built)
    if "output" not in theta:
        return None
    source = getattr(built.model.spec, "class_names", None)
    cells = []
    for i in range(len(jax.tree.leaves(theta)[0])):
        omega = _omega(_select(theta["output"], i))
        if omega is None:
            return None
        cells.append(_sources(omega, source, top))
    return cells


def _sources(omega: np.ndarray, source: Sequence[str] | None, top: int) -> list[str]:
    """Per column of ``ω``: the name of a source holding all its weight, else the ``top`` largest
    weights as lines ``name share`` (share of the column's sum), largest first."""
    cells = []
    for t in range(omega.shape[1]):
        w = omega[:, t]
        order = [s for s in np.argsort(-w, kind="stable")[:top] if w[s] > 0]
        total = w.sum()
        one = not order or np.isclose(w[order[0]], total)
        shown = order[:1] if one else order
        cells.append(
            "\n".join(
                _class_name(source, int(s))[:22] + ("" if one else f" {w[s] / total:.0%}") for s in shown
            )
        )
    return cells


def mapping(
    result: Result, built: Built, path: str | os.PathLike, names: Sequence[str] | None = None, top: int = 3
) -> str | None:
    """``mapping.png``: for each target class (rows) and candidate (columns), the source classes
    its trained mapping uses: the one source of a one-to-one map, or the ``top`` largest
    weights of a column of ``ω`` (BLM, BLM+, many-to-one) with their share of the column.

    Returns ``None`` (nothing written) when an alignment has no ``ω`` (e.g. a linear layer).
    """
    cells = _mapping_cells(result, built, top)
    if cells is None:
        return None
    names = list(names or result.labels)
    classes = _target_names(result, built)
    k, c = len(cells), len(cells[0])
    height = max(max(cell.count("\n") + 1 for cell in column) for column in cells)
    row = 0.18 * height + 0.12
    fig = _figure(1.2 + 2.1 * k, 0.5 + row * c)
    ax = fig.subplots()
    ax.set_xlim(0, k + 0.5)
    ax.set_ylim(c + 0.6, 0)
    ax.axis("off")
    for i in range(k):
        ax.text(i + 1, 0.2, names[i] if i < len(names) else f"#{i}", ha="center", weight="bold", fontsize=9)
    for t in range(c):
        ax.axhline(t + 0.5, color="#ddd", lw=0.5)
        ax.text(0.25, t + 1, _class_name(classes, t), ha="center", va="center", weight="bold", fontsize=9)
        for i in range(k):
            ax.text(i + 1, t + 1, cells[i][t], ha="center", va="center", fontsize=7, linespacing=1.1)
    fig.suptitle("source classes each target class uses (target: rows)", fontsize=10)
    fig.savefig(path)
    return os.fspath(path)


def _pct(v: Any) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"


def results_table(
    result: Result,
    zero_shot: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    *,
    markdown: bool = True,
) -> str:
    """The results, one row per candidate: its zero-shot test accuracy (when given: the
    untrained prompt, the mapping fitted once), the test accuracy after the last epoch and
    its change from zero-shot, the validation accuracy after the last epoch and, when the
    run selected an epoch on validation, that epoch's test accuracy. Markdown, or HTML."""
    names = list(names or result.labels)
    last = result.history[-1] if result.history else {}
    val = last.get("eval_acc")
    val = [None] * len(names) if val is None else list(np.atleast_1d(np.asarray(val, dtype=float)))
    header = ["candidate"]
    header += ["zero-shot test acc"] if zero_shot is not None else []
    header += ["trained test acc", *(["vs zero-shot"] if zero_shot is not None else []), "trained val acc"]
    header += ["test acc, val-selected epoch"] if result.test_selected is not None else []
    rows = []
    for i, name in enumerate(names):
        row = [name]
        if zero_shot is not None:
            row.append(_pct(zero_shot[i]))
        row.append(_pct(result.test_last[i]))
        if zero_shot is not None:
            row.append(f"{100 * (result.test_last[i] - zero_shot[i]):+.1f} pt")
        row.append(_pct(val[i]))
        if result.test_selected is not None:
            row.append(f"{_pct(result.test_selected[i])} (epoch {int(result.selected_epoch[i])})")
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px}
td{text-align:right}td:first-child{text-align:left}th{background:#f4f4f4}
.note{background:#fff3cd;border:1px solid #e0c36b;padding:.6em 1em;font-weight:bold}
img{max-width:100%}figure{margin:1.5em 0}.prompts figure{display:inline-block;margin:.5em;text-align:center}
.prompts img{image-rendering:pixelated;width:192px}"""


def write(
    result: Result,
    built: Built,
    out: str | os.PathLike,
    *,
    zero_shot: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    note: str | None = None,
    figures: bool = True,
) -> str:
    """Write the figures (:data:`FIGURES`, when matplotlib is installed) and ``report.html``
    to ``out``; returns the path of ``report.html``.

    Args:
      result: the finished run (:func:`jaxreprog.recipes.run`).
      built: what it trained (:func:`jaxreprog.recipes.build`): the model, program and splits.
      out: the folder (created if needed); ``prompt_<candidate>.png`` already there
        (``recipes.run`` writes them) are embedded, missing ones written first.
      zero_shot: ``(K,)`` test accuracies before training, for the table (e.g.
        :func:`jaxreprog.demo.zero_shot`).
      names: display names of the candidates (default ``result.labels``).
      note: a line shown above the table (e.g. that a run is a smoke test, not a result).
      figures: ``False`` skips the figures.
    """
    from jaxreprog.recipes.results import _slug

    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    names = list(names or result.labels)
    if len(names) != len(result.labels):
        raise ValueError(f"report.write: names has {len(names)} entries for {len(result.labels)} candidates")
    if zero_shot is not None and np.shape(zero_shot) != (len(names),):
        raise ValueError(f"report.write: zero_shot has shape {np.shape(zero_shot)}; expected ({len(names)},)")
    made: dict[str, str | None] = {}
    if figures and not _has_matplotlib():
        print(
            "report: matplotlib is not installed; skipping the figures (pip install 'jaxreprog[notebooks]')"
        )
    elif figures:
        made["curves.png"] = curves(result, os.path.join(out, "curves.png"), names)
        made["examples.png"] = examples(result, built, os.path.join(out, "examples.png"), names)
        made["mapping.png"] = mapping(result, built, os.path.join(out, "mapping.png"), names)

    theta, which = _stacked(result, built)
    prompts = []
    transform = built.program.parts.get("input")
    if transform is not None and getattr(transform, "visualize", None) is not None:
        for i, label in enumerate(result.labels):
            path = os.path.join(out, f"prompt_{_slug(label)}.png")
            if not os.path.exists(path):
                save_prompt_png(transform, _select(theta, i)["input"], built.model.spec, path)
            prompts.append((names[i], path))

    r = result.recipe
    d, m = r.dataset, r.model
    size = f" ({m['size']} px)" if "size" in m else ""
    subset = f" ({d['train_examples']} training examples)" if "train_examples" in d else ""
    settings = (
        f"model {m['name']}{size}; dataset {d['name']}{subset}; {r.epochs} epoch(s), batch "
        f"{d['batch_size']}, {r.optimizer['name']} lr {r.optimizer['learning_rate']}, seed {r.seed}; "
        f"trained in {result.train_seconds:.0f} s"
    )
    captions = {
        "curves.png": "Training loss and validation accuracy per epoch.",
        "examples.png": f"The canvas the frozen model sees, with the prompts of {which}; "
        "title: predicted / true label (green: right).",
        "mapping.png": "The trained label mappings: the source classes each target class uses.",
    }
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(r.name)} — jaxreprog report</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(r.name)}</h1><p>{html.escape(r.description or '')}</p>",
        f"<p>{html.escape(settings)}</p>",
    ]
    if note:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    parts.append("<h2>Results</h2>" + results_table(result, zero_shot, names, markdown=False))
    zero = " Zero-shot: before training (the initial prompt; a statistical mapping fitted once)." * (
        zero_shot is not None
    )
    parts.append(
        f"<p>Trained: after the last epoch; nothing is selected on the test set.{zero} "
        f"Prompts and figures: {html.escape(which)}.</p>"
    )
    for name in FIGURES:
        path = made.get(name)
        if path is not None:
            parts.append(f"<figure>{_img(path, name)}<figcaption>{captions[name]}</figcaption></figure>")
    if figures and not made:
        parts.append(
            "<p>Figures skipped: matplotlib is not installed (pip install 'jaxreprog[notebooks]').</p>"
        )
    if prompts:
        parts.append('<h2>Prompts</h2><div class="prompts">')
        parts += [
            f"<figure>{_img(p, n)}<figcaption>{html.escape(n)}</figcaption></figure>" for n, p in prompts
        ]
        parts.append("</div>")
    parts.append("</body></html>")
    path = os.path.join(out, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    return path
