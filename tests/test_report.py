"""``jaxreprog.report``: the figures of a finished run and one self-contained ``report.html``,
on a tiny random model (two label mappings as two candidates, trained for two epochs)."""

import base64
import html.parser
import re

import jax
import numpy as np
import pytest
from conftest import TinyCNN
from PIL import Image

import jaxreprog as jr
from jaxreprog import demo, recipes, report

PNG = b"\x89PNG\r\n\x1a\n"
SOURCE = tuple(f"source {i}, alias {i}" for i in range(7))


@pytest.fixture(scope="module")
def run():
    module = TinyCNN(num_classes=7)
    spec = jr.ImageSpec(size=8, mean=0.5, std=0.25, num_classes=7, class_names=SOURCE)
    model = jr.from_linen(module, module.init(jax.random.key(0), np.zeros((1, *spec.shape))), spec)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, 6, 6, 3)).astype(np.float32)
    y = np.arange(24) % 3
    train = jr.data.from_arrays(x, y, batch_size=8, shuffle_seed=0)
    val = jr.data.from_arrays(x[:8], y[:8], batch_size=8)
    test = jr.data.from_arrays(x[8:], np.sort(y[8:]), batch_size=8)  # sorted by class, as MNIST-5k's
    program = jr.reprogram(
        model,
        input=jr.input.pad(target_size=6),
        output=jr.output.per_candidate([jr.output.rlm(7, 3), jr.output.blm(7, 3)]),
    )
    theta0 = jr.candidates.init(program, jax.random.split(jax.random.key(1), 2))
    theta0["output"]["which"] = np.eye(2, dtype=np.float32)
    theta, history = jr.train.fit(
        program, model, train, epochs=2, key=jax.random.key(2), candidates=theta0, eval_data=val
    )
    test_last = jr.train.evaluate(program, model, theta, test, candidates=True)[1]
    labels = ("rlm", "blm")
    built = recipes.Built(model, program, train, val, test, labels, theta0, 3)
    result = recipes.Result(
        recipe=recipes.load(demo.RECIPE_QUICK),
        labels=labels,
        history=history,
        theta=theta,
        theta_selected=None,
        test_last=np.asarray(test_last),
        test_selected=None,
        val_selected=None,
        selected_epoch=None,
        train_seconds=1.0,
        program=program,
        model=model,
    )
    return result, built


class _Html(html.parser.HTMLParser):
    """The images' data and the open/close balance of the tags that must close."""

    def __init__(self):
        super().__init__()
        self.images, self.open = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("html", "body", "table", "tr", "td", "th", "figure", "p", "div", "h1", "h2"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in ("html", "body", "table", "tr", "td", "th", "figure", "p", "div", "h1", "h2"):
            assert self.open.pop() == tag


def test_write_makes_the_figures_and_one_self_contained_html(run, tmp_path):
    result, built = run
    note = "quick run: too short to train; not a result"
    path = report.write(
        result, built, tmp_path, zero_shot=np.array([0.25, 0.5]), names=["RLM", "BLM"], note=note
    )
    assert path == str(tmp_path / "report.html")
    files = {}
    for name in (*report.FIGURES, "prompt_rlm.png", "prompt_blm.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG), name
        with Image.open(tmp_path / name) as img:
            assert img.width > 10 and img.height > 10
        files[name] = data
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    parser = _Html()
    parser.feed(text)
    assert parser.open == []
    # every figure and prompt embedded, byte for byte; nothing fetched from elsewhere
    embedded = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in parser.images]
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert sorted(embedded) == sorted(files.values())
    assert "http" not in text and "<script" not in text and "<link" not in text
    # the table: each mapping's zero-shot and trained accuracy, and the note above it
    for name, zero, trained in zip(["RLM", "BLM"], [0.25, 0.5], result.test_last):
        row = re.search(rf"<tr><td>{name}</td>(.*?)</tr>", text).group(1)
        cells = re.findall(r"<td>(.*?)</td>", row)
        assert cells[:3] == [
            f"{100 * zero:.1f}%",
            f"{100 * trained:.1f}%",
            f"{100 * (trained - zero):+.1f} pt",
        ]
    assert text.index(note) < text.index("<table")


def test_results_table_marks_what_training_lost(run):
    result, _ = run
    zero = np.asarray(result.test_last) + np.array([0.1, -0.1])
    text = report.results_table(result, zero, ["RLM", "BLM"])
    header, rule, *rows = text.splitlines()
    assert header.split("|")[1:-1] == [
        " candidate ",
        " zero-shot test acc ",
        " trained test acc ",
        " vs zero-shot ",
        " trained val acc ",
    ]
    assert rule.count("|") == header.count("|")
    cells = [[c.strip() for c in r.split("|")[1:-1]] for r in rows]
    assert [c[0] for c in cells] == ["RLM", "BLM"]
    assert [c[3] for c in cells] == ["-10.0 pt", "+10.0 pt"]
    val = np.asarray(result.history[-1]["eval_acc"])
    assert [c[4] for c in cells] == [f"{100 * v:.1f}%" for v in val]
    # no zero-shot: no such columns; names are escaped in HTML
    assert "zero-shot" not in report.results_table(result)
    assert "<td>&lt;b&gt;</td>" in report.results_table(result, names=["<b>", "x"], markdown=False)


def test_mapping_names_the_source_classes_of_each_mapping(run):
    result, built = run
    rlm, blm = report._mapping_cells(result, built, top=3)
    states = result.theta["output"]["states"]
    # one-to-one: the one source class, by its first name; BLM: from its own ω
    assert rlm == [f"source {int(s)}" for s in np.asarray(states[0]["omega"][0]).argmax(0)]
    assert blm == report._sources(np.asarray(states[1]["omega"][1]), SOURCE, 3)
    # a column of ω: its largest weights first, with their share of the column
    omega = np.array([[0.0, 0.5], [3.0, 0.0], [0.0, 0.3], [0.0, 0.2], [0.0, 0.1]])
    assert report._sources(omega, SOURCE, 3) == ["source 1", "source 0 45%\nsource 2 27%\nsource 3 18%"]
    assert report._sources(omega, None, 2)[1] == "0 45%\n2 27%"  # no names: the indices


def test_examples_show_one_of_each_class_first(run):
    _, built = run
    _, y = report._batch(built.test, 5, classes=3)
    assert y.tolist()[:3] == [0, 1, 2] and len(y) == 5
    assert report._omega({"kernel": np.zeros((7, 3))}) is None  # a linear head has no ω: no mapping.png


def test_without_matplotlib_the_report_says_one_line_and_keeps_table_and_prompts(
    run, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(report, "_has_matplotlib", lambda: False)
    result, built = run
    report.write(result, built, tmp_path)
    (line,) = capsys.readouterr().out.splitlines()
    assert "matplotlib is not installed" in line and "pip install 'jaxreprog[notebooks]'" in line
    assert not any((tmp_path / f).exists() for f in report.FIGURES)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Figures skipped" in text and "<table" in text and text.count("<img") == 2  # the prompts


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"names": ["one"]}, "names has 1 entries for 2"), ({"zero_shot": np.zeros(3)}, "zero_shot has shape")],
)
def test_bad_arguments_are_one_clear_error(run, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        report.write(*run, tmp_path, **kwargs)
