"""Hostile and mistaken inputs: a catalogue of what an attacker or a tired user passes, and how each ends.

Issue #21's probe found families of bad input that ended in cryptic errors or silently wrong
results; the family tests live beside the code they test (tokens: ``test_checking.py``; labels and
``fit`` arguments: ``test_train.py``; resume: ``test_train_checkpoint.py``; untrusted files:
``test_checkpoint.py``; recipes and the CLI: ``test_recipes.py``, ``test_cli.py``). This module is
the record of a second pass across the public API, classified by running it against the code
before the fixes (2026-12-02): of its 52 cases, 39 ended in a clear one-line error; 7 in a cryptic or
misleading one (NaN images and a NaN initial theta: "lower the learning rate"; ``fit(key=0)`` and
``evaluate(key=0)``: JAX's "invalid PRNG key data"; a JSON config nested 10^5 deep: a bare
``RecursionError``; ``ZerothOrder(queries=0)`` / ``smoothing=nan``: raised while tracing, naming
``zo_gradient`` rather than ``fit``'s argument); 6 silently (a NaN prompt saved, and loaded; ``fit`` and
``evaluate`` with a frozen model of another spec; ``fit(log_every=0)``; ``make_step(candidates="yes")``);
a 53rd, found 2026-12-03, silently too (``from_arrays`` wrapped integer labels beyond int32, 2**40 -> 0).
Every case now ends in one line naming the argument, file or field; ``test_catalogue_count`` keeps the
numbers in step with the table.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import jaxreprog as jr

CAUGHT_FIRST, CRYPTIC_FIRST, SILENT_FIRST = 39, 7, 7


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(7)(nn.Conv(4, (3, 3))(x).mean(axis=(1, 2)))


def _model(size: int) -> jr.FrozenModel:
    module = _CNN()
    spec = jr.ImageSpec(size=size, mean=0.5, std=0.25, num_classes=7)
    return jr.from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))), spec)


MODEL = _model(8)
PROGRAM = jr.reprogram(
    MODEL, input=jr.input.pad(target_size=4), output=jr.output.rlm(num_source=7, num_target=3)
)
THETA = PROGRAM.init(jax.random.key(0))
X = np.random.default_rng(0).random((12, 4, 4, 3), np.float32)
Y = np.arange(12) % 3


def _data(x=X, y=Y):
    return jr.data.from_arrays(x, y, batch_size=4)


def _fit(data=None, model=MODEL, **kwargs):
    kwargs = {
        "epochs": 1,
        "key": jax.random.key(0),
        "optimizer": optax.adam(1e-2),
        "progress": False,
        **kwargs,
    }
    return jr.train.fit(PROGRAM, model, _data() if data is None else data, **kwargs)


def _artifact(tmp, edit=None, text=None):
    folder = jr.save(tmp / "saved", PROGRAM, THETA, frozen_model=MODEL)
    if edit is not None or text is not None:
        target = tmp / "edited"
        shutil.copytree(folder, target)
        config = json.loads((target / "config.json").read_text())
        if edit is not None:
            edit(config)
        (target / "config.json").write_text(text if text is not None else json.dumps(config))
        folder = target
    return folder


def _run(program, x):
    return program.apply(program.init(jax.random.key(0)), MODEL.params, x)


def _set(path, value):
    def edit(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


NAN_THETA = jax.tree.map(lambda a: a * np.nan, THETA)

# (case, call(tmp_path), exception type, the message must match)
CASES = [
    # configuration of parts
    (
        "pad larger than the canvas",
        lambda t: jr.reprogram(MODEL, input=jr.input.pad(target_size=40)).init(jax.random.key(0)),
        ValueError,
        "target_size=.*canvas",
    ),
    ("pad size 0", lambda t: jr.input.pad(target_size=0), ValueError, "target_size must be positive"),
    ("pad size True", lambda t: jr.input.pad(target_size=True), TypeError, "target_size must be an int"),
    ("pad size '4'", lambda t: jr.input.pad(target_size="4"), TypeError, "target_size must be an int"),
    ("pad size 4.5", lambda t: jr.input.pad(target_size=4.5), TypeError, "target_size must be an int"),
    (
        "rlm num_target 0",
        lambda t: jr.output.rlm(num_source=7, num_target=0),
        ValueError,
        "rlm: num_target must be an int >= 1, got 0",
    ),
    (
        "rlm more targets than sources",
        lambda t: jr.output.rlm(num_source=7, num_target=9),
        ValueError,
        "num_target <= num_source",
    ),
    ("per_candidate of nothing", lambda t: jr.output.per_candidate([]), ValueError, "non-empty sequence"),
    (
        "chain of a transform and an alignment",
        lambda t: jr.chain(jr.input.pad(target_size=4), jr.output.rlm(num_source=7, num_target=3)),
        TypeError,
        "all arguments must be",
    ),
    ("select ''", lambda t: jr.select(""), ValueError, "non-empty"),
    ("select 123", lambda t: jr.select(123), TypeError, "sites must be a glob"),
    ("ImageSpec size 0", lambda t: jr.ImageSpec(size=0), ValueError, "size and channels must be positive"),
    ("ImageSpec std 0", lambda t: jr.ImageSpec(size=8, std=0.0), ValueError, "std must be positive"),
    (
        "ImageSpec 2 means for 3 channels",
        lambda t: jr.ImageSpec(size=8, mean=(0.5, 0.5)).normalize(jnp.zeros((1, 8, 8, 3))),
        ValueError,
        "mean has 2 values",
    ),
    (
        "reprogram a flax module",
        lambda t: jr.reprogram(_CNN(), input=jr.input.pad(target_size=4)),
        TypeError,
        "frozen_model must be a jr.FrozenModel",
    ),
    (
        "reprogram input=alignment",
        lambda t: jr.reprogram(MODEL, input=jr.output.rlm(num_source=7, num_target=3)),
        TypeError,
        "input= must be a jr.InputTransform",
    ),
    # calling a program
    (
        "uint8 images",
        lambda t: PROGRAM.apply(THETA, MODEL.params, (X * 255).astype(np.uint8)),
        TypeError,
        "floating point NHWC images",
    ),
    (
        "images of another size",
        lambda t: PROGRAM.apply(THETA, MODEL.params, X[:, :3, :3]),
        ValueError,
        "expected target_size",
    ),
    (
        "one image without a batch axis",
        lambda t: PROGRAM.apply(THETA, MODEL.params, X[0]),
        ValueError,
        r"batch of images \(N, H, W, C\)",
    ),
    (
        "theta of another program",
        lambda t: PROGRAM.apply({"x": 1}, MODEL.params, X),
        ValueError,
        "theta must be a dict with keys",
    ),
    (
        "a mapping for 1000 classes on a 7-class model",
        lambda t: _run(
            jr.reprogram(MODEL, output=jr.output.rlm(num_source=1000, num_target=3)),
            np.zeros((2, 8, 8, 3), np.float32),
        ),
        ValueError,
        "num_source=1000",
    ),
    # data
    (
        "x and y of different lengths",
        lambda t: jr.data.from_arrays(X, Y[:5], batch_size=4),
        ValueError,
        "x has .* examples but y has 5",
    ),
    (
        "labels beyond int32 (once wrapped silently)",
        lambda t: jr.data.from_arrays(X, np.where(np.arange(len(Y)) == 1, 2**40, Y), batch_size=4),
        ValueError,
        r"labels y must fit int32 \(class indices\), got values in \[0, 1099511627776\]",
    ),
    (
        "batch_size 0",
        lambda t: jr.data.from_arrays(X, Y, batch_size=0),
        ValueError,
        "batch_size must be a positive int",
    ),
    ("empty data", lambda t: _fit(_data(X[:0], Y[:0])), ValueError, "train_data is empty"),
    (
        "NaN images",
        lambda t: _fit(_data(np.full_like(X, np.nan))),
        FloatingPointError,
        "batch 1 of train_data has NaN or inf in x",
    ),
    (
        "float labels under cross-entropy",
        lambda t: _fit(_data(y=np.where(Y == 0, np.nan, Y))),
        ValueError,
        "labels must be a 1-D integer array",
    ),
    (
        "validation labels outside the classes",
        lambda t: _fit(eval_data=_data(y=Y + 5)),
        ValueError,
        r"labels must lie in \[0, 3\)",
    ),
    (
        "training images of another size",
        lambda t: _fit(_data(np.zeros((12, 6, 6, 3), np.float32))),
        ValueError,
        "expected target_size",
    ),
    # fit and make_step arguments
    ("fit(key=0)", lambda t: _fit(key=0), TypeError, "key must be a PRNG key"),
    (
        "fit with a frozen model of another spec",
        lambda t: _fit(model=_model(16)),
        ValueError,
        "not the model the program was built around",
    ),
    ("fit(theta=NaN)", lambda t: _fit(theta=NAN_THETA), ValueError, "initial theta.*NaN or inf"),
    ("fit(log_every=0)", lambda t: _fit(log_every=0), ValueError, "log_every must be an int >= 1"),
    (
        "fit(steps_per_call=0)",
        lambda t: _fit(steps_per_call=0),
        ValueError,
        "steps_per_call must be an int >= 1",
    ),
    ("fit(precision='fp8')", lambda t: _fit(precision="fp8"), ValueError, "precision must be"),
    ("fit(refit_pass='sometimes')", lambda t: _fit(refit_pass="sometimes"), ValueError, "refit_pass must be"),
    ("fit(loss='ce')", lambda t: _fit(loss="ce"), TypeError, "loss must be a function"),
    (
        "fit(gradient=ZerothOrder(queries=0))",
        lambda t: _fit(gradient=jr.train.ZerothOrder(queries=0)),
        ValueError,
        "queries must be an int >= 1",
    ),
    (
        "fit(gradient=ZerothOrder(smoothing=nan))",
        lambda t: _fit(gradient=jr.train.ZerothOrder(smoothing=float("nan"))),
        ValueError,
        "smoothing must be a finite number",
    ),
    (
        "make_step(candidates='yes')",
        lambda t: jr.train.make_step(PROGRAM, optax.adam(1e-2), candidates="yes"),
        TypeError,
        "candidates must be True or False",
    ),
    (
        "evaluate(key=0)",
        lambda t: jr.train.evaluate(PROGRAM, MODEL, THETA, _data(), key=0),
        TypeError,
        "key must be a PRNG key",
    ),
    (
        "evaluate on another model's spec",
        lambda t: jr.train.evaluate(PROGRAM, _model(16), THETA, _data()),
        ValueError,
        "not the model the program was built around",
    ),
    # models
    (
        "an unknown model name",
        lambda t: jr.models.load("nonexistent"),
        ValueError,
        "unknown model 'nonexistent'; known models",
    ),
    (
        "weights that are not there",
        lambda t: jr.models.load("efficientnet_lite0", weights=t / "none"),
        FileNotFoundError,
        "no checkpoint at",
    ),
    # artifacts
    (
        "save a NaN prompt",
        lambda t: jr.save(t / "nan", PROGRAM, NAN_THETA, frozen_model=MODEL),
        jr.artifact.ArtifactError,
        "NaN or inf",
    ),
    (
        "load a NaN prompt",
        lambda t: jr.load(_nan_artifact(t), MODEL),
        jr.artifact.ArtifactError,
        "NaN or inf",
    ),
    (
        "load candidate=True of one prompt",
        lambda t: jr.load(_artifact(t), MODEL, candidate=True),
        jr.artifact.ArtifactError,
        "holds one prompt",
    ),
    (
        "a config nested 10^5 deep",
        lambda t: jr.load(_artifact(t, text="[" * 100_000 + "]" * 100_000), MODEL),
        jr.artifact.ArtifactError,
        "not a JSON config",
    ),
    (
        "a config naming os.system",
        lambda t: jr.load(_artifact(t, _set(["parts", "input", "factory"], "os.system")), MODEL),
        jr.artifact.ArtifactError,
        "unknown method 'os.system'",
    ),
    (
        "a config with target_size 10^12",
        lambda t: jr.load(_artifact(t, _set(["parts", "input", "arguments", "target_size"], 10**12)), MODEL),
        ValueError,
        "target_size=.*canvas",
    ),
    (
        "a config naming a missing tensor",
        lambda t: jr.load(
            _artifact(t, _set(["parts", "input", "arguments", "target_size"], {"__array__": "theta/x"})),
            MODEL,
        ),
        jr.artifact.ArtifactError,
        "which is missing",
    ),
    (
        "a config with a transform as output",
        lambda t: jr.load(
            _artifact(t, lambda c: c["parts"].__setitem__("output", c["parts"]["input"])), MODEL
        ),
        jr.artifact.ArtifactError,
        "output= must be a jr.Alignment",
    ),
    (
        "a config emptied",
        lambda t: jr.load(_artifact(t, lambda c: c.clear()), MODEL),
        jr.artifact.ArtifactError,
        "field 'format'",
    ),
]


def _nan_artifact(tmp):
    from safetensors.numpy import load_file, save_file

    folder = _artifact(tmp)
    tensors = load_file(str(folder / "prompt.safetensors"))
    save_file(
        {k: v * np.nan if k.startswith("theta/") else v for k, v in tensors.items()},
        str(folder / "prompt.safetensors"),
    )
    return folder


@pytest.mark.parametrize(("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_case_is_one_clear_line(call, error, match, tmp_path):
    with pytest.raises(error, match=match) as caught:
        call(tmp_path)
    message = str(caught.value)
    assert "\n" not in message.strip() and len(message) <= 500, message


def test_catalogue_count():
    """The module docstring's record adds up to the catalogue."""
    assert len(CASES) == CAUGHT_FIRST + CRYPTIC_FIRST + SILENT_FIRST
