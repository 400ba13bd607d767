"""The notebooks: each `notebooks/NN_name.py` (jupytext percent format, the source) is paired with a
committed `.ipynb` that agrees with it and carries its executed outputs, and every notebook runs top to
bottom offline (a broken notebook fails CI; six of the seven only in the slow run, `-m slow`).

After editing a source, `jupytext --sync --execute --run-path /tmp notebooks/NN_name.py` (with the
notebooks extra: `pip install -e ".[notebooks]"`; the kernel inherits the caller's XLA_FLAGS, as here)
rewrites the `.ipynb` with fresh outputs.
"""

import pathlib

import jupytext
import nbformat
import pytest
from conftest import USER_XLA_FLAGS
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(HERE.glob("[0-9]*.py"))
NOTEBOOKS = sorted(HERE.glob("*.ipynb"))
MAX_BYTES = 400_000  # images at dpi 72 keep a notebook well under this


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_every_notebook_is_a_pair():
    assert SOURCES, "no notebook sources in notebooks/"
    assert {p.stem for p in SOURCES} == {p.stem for p in NOTEBOOKS}, "each NN_name.py pairs an .ipynb"
    assert not (HERE / "_build.py").exists()


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_pair_in_sync(source):
    paired = source.with_suffix(".ipynb")
    text = jupytext.read(source)
    nb = jupytext.read(paired)
    for name, n in ((source.name, text), (paired.name, nb)):
        formats = n.metadata.get("jupytext", {}).get("formats")
        assert formats == "ipynb,py:percent", f"{name}: jupytext formats metadata is {formats!r}"
    assert _cells(text) == _cells(nb), f"{source.name} and {paired.name} differ: run jupytext --sync"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.get("execution_count") for c in code]
    unrun = [i for i, n in enumerate(counts) if n is None]
    assert not unrun, f"{path.name}: code cells {unrun} have not run"
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not executed top to bottom in one kernel"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert outputs, f"{path.name}: no outputs committed"
    assert not [o for o in outputs if o.output_type == "error"], f"{path.name}: committed with an error"
    plots = any("plt." in c.source for c in code)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images or not plots, f"{path.name}: plots, but no image is committed"
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size:,} bytes; keep images small"


# Executing a notebook costs 35-85 s of CPU (a kernel, a real model, training): the default run executes
# the shortest one, 07 (a user's own model end to end: from_linen, fit, save/load, make_step), and checks
# that all seven were committed executed top to bottom without errors (test_committed_outputs); -m slow
# executes all seven.
SLOW = {p.stem for p in NOTEBOOKS} - {"07_bring_your_own_model"}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # In the slow run each kernel trains with the caller's flags, as a user's would; the default run's
    # one notebook keeps the suite's -O0, as its compilations outweigh its training (~17% less time).
    if path.stem in SLOW:
        monkeypatch.setenv("XLA_FLAGS", USER_XLA_FLAGS)
    nb = nbformat.read(path, as_version=4)
    assert nb.cells and nb.cells[0].cell_type == "markdown", "a notebook opens with a markdown cell"
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
