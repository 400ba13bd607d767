"""The ``jaxreprog`` command: run recipes, and use the prompts they save.

``taxonomy``  the table of registered methods.
``demo``      reprogram ImageNet EfficientNet-Lite0 into an MNIST classifier, offline.
``run``       train a recipe; its folder (``--out``, else a fresh ``runs/<recipe>-<time>``) gets
              ``results.json``, the prompt PNGs and ``prompt/``, the prompts as an artifact.
``predict``   an artifact's predictions for images (a folder of .png/.jpg, a .npy array), a
              TFDS split (``tfds:NAME:SPLIT``) or texts (a .txt file, one per line).
              ``--task T`` (also for ``evaluate``): the task id of every input, which a prompt
              per task (``soft_prompt(tasks=K)``, ``multitask_prompt``) reads as ``x["task"]``.
``evaluate``  an artifact's accuracy on a dataset split (``--dataset NAME[:SPLIT]``).
``show``      what an artifact holds; ``--png`` renders a visual prompt.

``run --coordinator HOST:PORT --num-processes N --process-id I`` (or JAX's environment
variables) makes the run one of N processes (:mod:`jaxreprog.train.distributed`).

Exit codes: 0 success; 2 a usage or input error (a bad argument, recipe, artifact, input
file, weights file or dataset), printed as one line naming what to fix; 1 a failure while
running (e.g. the loss became NaN), also one line. ``--debug`` shows the traceback instead.

Compiled programs are kept on disk for the next run (JAX's persistent compilation cache,
:func:`compilation_cache_dir`); ``--no-compilation-cache`` (or the environment variable
``JAXREPROG_NO_COMPILATION_CACHE=1``) opts out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np


def _taxonomy(args: argparse.Namespace) -> int:
    import jaxreprog as jr

    table = jr.taxonomy.table()
    print(table.markdown() if args.markdown else table)
    print(f"\n{len(table)} methods registered.")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from jaxreprog import demo

    return demo.main(quick=args.quick, out=args.out, seed=args.seed)


# ------------------------------------------------------------------------------- run


def _run(args: argparse.Namespace) -> int:
    from jaxreprog import recipes
    from jaxreprog.recipes import assembly

    if args.list or args.recipe is None:
        for name in recipes.names():
            r = recipes.load(name)
            print(f"{name:34s} {'offline' if r.offline else 'network'}  {r.description}")
        return 0
    recipe = recipes.load(args.recipe, overrides=args.set)
    if not recipe.offline:
        print(f"note: {recipe.note}", file=sys.stderr)
    assembly.preflight(recipe)  # model, weights and data, before any folder or time is spent
    if args.check:
        print(
            f"{recipe.source}: valid; model {recipe.model['name']!r} and dataset "
            f"{recipe.dataset['name']!r} are available here"
        )
        return 0
    from jaxreprog.train import distributed

    joining = any(a is not None for a in (args.coordinator, args.num_processes, args.process_id))
    if args.out is None and (joining or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        raise _InputError("a run of several processes needs --out (the same folder for every process)")
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    out = args.out
    if out is None:
        out = _fresh_folder(recipe.name or pathlib.Path(args.recipe).stem)
        print(f"jaxreprog run: writing to {out}", file=sys.stderr)
    made = not os.path.exists(out)
    try:
        result = recipes.run(recipe, out=out, progress=args.progress)
    except RuntimeError as e:  # a TFDS dataset that cannot be prepared here (offline), with its fix
        raise _InputError(str(e)) from e
    finally:
        if made and os.path.isdir(out) and not os.listdir(out):  # failed before writing anything
            _remove_empty(out)
    print(result.table())
    print(f"train {result.train_seconds:.0f} s; never selected on the test set; wrote {out}")
    print(f"prompt artifact: {os.path.join(out, 'prompt')} (jaxreprog show / predict / evaluate)")
    return 0


def _fresh_folder(name: str) -> str:
    """``runs/<name>-YYYYmmdd-HHMMSS`` that does not exist yet (``-2``, ``-3``... within a second)."""
    stem = os.path.join("runs", f"{_slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = stem, 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}"
    return path


def _remove_empty(folder: str) -> None:
    """Remove ``folder`` and then ``runs/`` above it, each only if empty."""
    for path in (folder, os.path.dirname(folder)):
        try:
            os.rmdir(path)
        except OSError:
            return


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "recipe"


# -------------------------------------------------------------------------- artifacts


class _Artifact:
    """An artifact folder's ``config.json``, read without loading its model."""

    def __init__(self, path: str):
        from jaxreprog import artifact

        self.path = pathlib.Path(path)
        if not self.path.exists():
            raise _InputError(f"{path}: no such artifact folder")
        if not self.path.is_dir():
            raise _InputError(f"{path}: is a file; an artifact is a folder (jaxreprog run writes OUT/prompt)")
        self.config_path = self.path / artifact.CONFIG
        if not self.config_path.is_file():
            raise _InputError(
                f"{path}: not an artifact: {artifact.CONFIG} is missing "
                "(jaxreprog run writes one to OUT/prompt)"
            )
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _InputError(f"{self.config_path}: not a JSON config ({_one_line(e)})") from None
        if not isinstance(config, dict) or config.get("format") != artifact.FORMAT:
            raise _InputError(f"{self.config_path}: field 'format' must be {artifact.FORMAT!r}")
        self.config = config
        self.metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
        self.base = config.get("base_model") if isinstance(config.get("base_model"), dict) else None
        self.candidates = config.get("candidates")
        self.parts = config.get("parts") if isinstance(config.get("parts"), dict) else {}

    def candidate(self, given: int | None) -> int | None:
        """``--candidate``, else the one selected on validation; None for a single prompt."""
        k = self.candidates
        if k is None:
            if given not in (None, 0):
                raise _InputError(f"{self.path} holds one prompt, not candidates; drop --candidate")
            return None
        i = self.metadata.get("selected", 0) if given is None else given
        if not isinstance(i, int) or not 0 <= i < k:
            raise _InputError(
                f"--candidate {i} is out of range: {self.path} holds {k} candidates (0..{k - 1})"
            )
        return i

    def label(self, i: int | None) -> str:
        names = self.metadata.get("candidates")
        if i is None:
            return "the prompt"
        named = f" ({names[i]})" if isinstance(names, list) and i < len(names) else ""
        return f"candidate {i}{named}"

    def spec(self) -> Any:
        """The base model's input spec as saved (no weights read), or None."""
        import jaxreprog as jr

        saved = dict((self.base or {}).get("spec") or {})
        kind = getattr(jr, str(saved.pop("type", "")), None)
        if kind not in (jr.ImageSpec, jr.TokenSpec, jr.SequenceSpec):
            return None
        try:
            return kind(**saved)
        except (TypeError, ValueError) as e:
            raise _InputError(f"{self.config_path}: field base_model.spec: {_one_line(e)}") from None

    def load(self, args: argparse.Namespace) -> tuple[Any, Any, Any, int | None]:
        """The base model (by name, as the run loaded it) and ``(program, theta)`` of one candidate."""
        import jaxreprog as jr

        i = self.candidate(args.candidate)
        model = self._model(getattr(args, "weights", None))
        program, theta = jr.load(self.path, model, candidate=i)
        return model, program, theta, i

    def _model(self, weights: str | None) -> Any:
        import jaxreprog as jr

        run = self.metadata.get("model") if isinstance(self.metadata.get("model"), dict) else {}
        name = run.get("name") or (self.base or {}).get("name")
        if not name:
            raise _InputError(
                f"{self.config_path}: field 'base_model' names no model (saved without frozen_model=); "
                "load it in Python: jr.load(path, frozen_model)"
            )
        if name not in jr.models.names():
            raise _InputError(
                f"{self.config_path}: base model {name!r} is not in the model zoo "
                f"({', '.join(jr.models.names())}); load it in Python: jr.load(path, frozen_model)"
            )
        weights = weights or run.get("weights")
        kwargs: dict[str, Any] = {}
        if "size" in run:
            kwargs["size"] = run["size"]
        elif (self.base or {}).get("spec", {}).get("type") == "ImageSpec":
            h, w = self.base["spec"]["size"]
            kwargs["size"] = h if h == w else (h, w)
        try:
            try:
                return jr.models.load(name, weights=weights, **kwargs)
            except TypeError:  # a loader without size=: its own size (jr.load compares the spec)
                if not kwargs:
                    raise
                return jr.models.load(name, weights=weights)
        except (ValueError, TypeError, OSError, ImportError) as e:
            raise _InputError(
                f"cannot load the base model {name!r} of {self.path}: {_one_line(e)}; fix: --weights PATH"
            ) from None

    def image_shape(self, spec: Any) -> tuple[int, int, int]:
        """The ``(H, W, C)`` images the prompt takes: as the run saw them, else its input's
        ``target_size``, else the model's size."""
        shape = self.metadata.get("input_shape")
        if isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape):
            return tuple(shape)
        target = ((self.parts.get("input") or {}).get("arguments") or {}).get("target_size")
        if isinstance(target, dict):
            target = target.get("__tuple__")
        if isinstance(target, int):
            target = (target, target)
        if not (isinstance(target, list | tuple) and len(target) == 2):
            target = spec.size
        return (int(target[0]), int(target[1]), int(spec.channels))

    def class_names(self, model: Any) -> list[str] | None:
        names = self.metadata.get("class_names")
        if isinstance(names, list):
            return [str(n) for n in names]
        if "output" not in self.parts and getattr(model.spec, "class_names", None):
            return list(model.spec.class_names)  # no alignment: the model's own classes
        return None


# ----------------------------------------------------------------------------- inputs

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _dataset_spec(text: str) -> tuple[str, str]:
    """``NAME[:SPLIT]`` (``tfds:`` optional) -> (name, split); the split defaults to test."""
    text = text.removeprefix("tfds:")
    name, _, split = text.partition(":")
    if not name:
        raise _InputError(f"dataset {text!r}: expected NAME or NAME:SPLIT, e.g. mnist5k:test")
    return name, split or "test"


def _check_prepared(name: str, data_dir: str | None) -> None:
    """A packaged dataset builds offline; a TFDS one must be prepared already (never a download)."""
    import jaxreprog as jr

    if not jr.data.offline(name, data_dir=data_dir):
        raise _InputError(
            f"dataset {name!r} is not prepared in {data_dir or jr.data.default_data_dir()}; fix: prepare it "
            f"once with network access (jr.data.builder({name!r})), or pass --data-dir / set "
            "$JAXREPROG_DATA_DIR to a prepared copy"
        )


class _Inputs:
    """What a prompt reads, from the command line: examples in batches, their ids and labels."""

    def __init__(self, art: _Artifact, model: Any, args: argparse.Namespace):
        import jaxreprog as jr

        self.art, self.spec, self.args = art, model.spec, args
        self.text = isinstance(model.spec, jr.TokenSpec)
        self.image = isinstance(model.spec, jr.ImageSpec)
        data = art.metadata.get("data") if isinstance(art.metadata.get("data"), dict) else {}
        self.data_dir = args.data_dir or data.get("data_dir")

    def _tokenizer(self) -> Any:
        import jaxreprog as jr

        given = self.args.tokenizer or self.art.metadata.get("tokenizer")
        name = given or self.spec.name
        try:
            return jr.data.load_tokenizer(name)
        except (OSError, ImportError) as e:
            if given:
                raise _InputError(f"--tokenizer {given}: {_one_line(e)}") from None
            raise _InputError(
                f"{self.art.path}: no tokenizer known for base model {name!r}; "
                "fix: --tokenizer PATH (a tokenizer.json, or a checkpoint folder holding one)"
            ) from None

    def _text_options(self) -> dict[str, Any]:
        length = self.args.max_length or self.art.metadata.get("max_length") or min(128, self.spec.max_length)
        side = "left" if self.spec.causal else "right"
        return {"tokenizer": self._tokenizer(), "max_length": int(length), "padding_side": side}

    def dataset(self, name: str, split: str) -> tuple[Any, list[str] | None]:
        """A dataset split as batches ``(x, y)``, preprocessed to what the prompt takes."""
        import jaxreprog as jr

        _check_prepared(name, self.data_dir)
        options: dict[str, Any] = {"data_dir": self.data_dir}
        if self.text:
            options.update(self._text_options())
        elif self.image:
            h, w, c = self.art.image_shape(self.spec)
            options.update(rgb=c == 3, image_size=(h, w))
        ds = jr.data.load(name, split, batch_size=self.args.batch_size, **options)
        return ds, list(ds.info.class_names) if ds.info.class_names else None

    def read(self, source: str) -> tuple[list[str], Any, np.ndarray | None]:
        """``(ids, batches, labels)`` for ``predict INPUTS``."""
        if source.startswith("tfds:"):
            ds, _ = self.dataset(*_dataset_spec(source))
            return [str(i) for i in range(ds.num_examples)], ds, None
        path = pathlib.Path(source)
        if path.is_dir():
            if not self.image:
                raise _InputError(
                    f"{source}: a folder of images, but this prompt's model takes {self._kind()}"
                )
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            if not files:
                raise _InputError(f"{source}: holds no {'/'.join(_IMAGE_SUFFIXES)} images")
            return [p.name for p in files], self._batches(np.stack([self._image(p) for p in files])), None
        if not path.is_file():
            raise _InputError(
                f"INPUTS {source!r}: no such file or folder; give a folder of images, a .npy file, "
                "a .txt file (texts, one per line) or tfds:NAME:SPLIT"
            )
        suffix = path.suffix.lower()
        if suffix == ".npy":
            x = self._array(path)
            return [str(i) for i in range(len(x))], self._batches(x), None
        if suffix == ".txt":
            if not self.text:
                raise _InputError(f"{source}: texts, but this prompt's model takes {self._kind()}")
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise _InputError(f"{source}: not UTF-8 text (byte {e.start})") from None
            texts = [t for t in lines if t.strip()]
            if not texts:
                raise _InputError(f"{source}: holds no text (one text per line)")
            tokens = self._text_tokenize(texts)
            return [str(i) for i in range(len(texts))], self._batches(tokens), None
        raise _InputError(
            f"INPUTS {source!r}: unknown kind {suffix!r}; give a folder of images, a .npy file, "
            "a .txt file (texts, one per line) or tfds:NAME:SPLIT"
        )

    def _kind(self) -> str:
        return (
            "texts (a .txt file)"
            if self.text
            else "images (a folder, a .npy file)"
            if self.image
            else "arrays"
        )

    def _text_tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        import jaxreprog as jr

        options = self._text_options()
        return jr.data.tokenize(texts, options.pop("tokenizer"), **options)

    def _image(self, path: pathlib.Path) -> np.ndarray:
        """One image file as float32 ``(H, W, C)`` in [0, 1], resized to the prompt's size."""
        from PIL import Image

        import jaxreprog as jr

        h, w, c = self.art.image_shape(self.spec)
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB" if c == 3 else "L"), dtype=np.float32) / 255.0
        except Exception as e:  # not an image, truncated, a decompression bomb: the file's name
            raise _InputError(f"{path}: not a readable image ({_one_line(e)})") from None
        pixels = pixels.reshape(*pixels.shape[:2], c)
        if pixels.shape[:2] != (h, w):
            pixels = jr.data.resize(pixels[None], (h, w))[0]
        return pixels

    def _array(self, path: pathlib.Path) -> np.ndarray:
        """A ``.npy`` array of examples, checked against what the prompt takes."""
        import jaxreprog as jr

        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:
            raise _InputError(f"{path}: not a .npy array ({_one_line(e)})") from None
        if self.text:
            raise _InputError(f"{path}: an array, but this prompt's model takes texts (a .txt file)")
        if not self.image:
            return np.asarray(x, dtype=np.float32)
        h, w, c = self.art.image_shape(self.spec)
        if x.ndim == 3:  # (N, H, W): grayscale
            x = x[..., None]
        if not (x.ndim == 4 and x.shape[1:3] == (h, w) and x.shape[3] in (1, c)):
            raise _InputError(
                f"{path}: shape {x.shape}; this prompt takes images (N, {h}, {w}, {c}) "
                "(resize them, or give a folder of image files, which are resized)"
            )
        if np.issubdtype(x.dtype, np.integer):
            if x.size and (x.min() < 0 or x.max() > 255):
                raise _InputError(f"{path}: integer pixels must be in 0..255, got {x.min()}..{x.max()}")
            x = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
            if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
                raise _InputError(
                    f"{path}: float pixels must be in [0, 1], got {x.min()}..{x.max()} "
                    "(uint8 0..255 works too)"
                )
        else:
            raise _InputError(f"{path}: dtype {x.dtype}; images are uint8 0..255 or floats in [0, 1]")
        return jr.data.to_rgb(x) if x.shape[3] != c else x

    def _batches(self, x: Any) -> list[tuple[Any, None]]:
        n = len(x["input_ids"]) if isinstance(x, dict) else len(x)
        b = self.args.batch_size
        take = (lambda s: {k: v[s] for k, v in x.items()}) if isinstance(x, dict) else (lambda s: x[s])
        return [(take(slice(i, i + b)), None) for i in range(0, n, b)]


def _task(program: Any, given: int | None, where: Any) -> int | None:
    """``--task``, checked against the program: needed by a prompt per task (a part whose ``bind``
    reads each input's ``x["task"]``: ``soft_prompt(tasks=K)``, ``multitask_prompt``), refused by
    any other program."""
    from jaxreprog.embedding._tasks import task_count

    per_task = [p for p in program.parts.values() if getattr(p, "bind", None) is not None]
    if not per_task:
        if given is not None:
            raise _InputError(f"--task {given}: {where} has one prompt for every input; drop --task")
        return None
    part = per_task[0]
    k = task_count(part)
    ids = f"[0, {k})" if k is not None else "[0, K)"
    name = part.origin.factory if part.origin is not None else "a part"
    if given is None:
        raise _InputError(
            f"{where}: a prompt per task ({name}, {k if k is not None else 'K'} tasks) reads each input's "
            f"task id; fix: --task T, the task of every input, T in {ids}"
        )
    if given < 0 or (k is not None and given >= k):
        raise _InputError(f"--task {given} is out of range: {where} holds prompts of tasks {ids}")
    return given


def _predictions(
    program: Any, model: Any, theta: Any, batches: Any, batch_size: int, where: str, task: int | None = None
) -> Iterator:
    """``(predicted classes, labels or None)`` per batch; every batch padded to the first one's
    size (one compile), the first checked against the program's shapes (one line naming ``where``).
    ``task``: every example's ``x["task"]`` (token batches; a prompt per task reads it)."""
    import jax

    apply = jax.jit(program.apply)
    checked = False
    for x, y in batches:
        n = len(x["input_ids"]) if isinstance(x, dict) else len(x)
        if task is not None:
            if not isinstance(x, Mapping):
                raise _InputError(f"{where}: --task needs token batches (texts), got arrays")
            x = {**x, "task": np.full(n, task, np.int32)}
        batch_size = min(batch_size, n) if not checked else batch_size  # the first batch's size
        padded = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], batch_size - n, 0)]), x)
        if not checked:
            try:
                jax.eval_shape(apply, theta, model.params, padded)
            except Exception as e:  # a shape or dtype the program's parts refuse
                shapes = jax.tree.map(lambda a: tuple(a.shape[1:]), x)
                raise _InputError(
                    f"{where}: this prompt cannot take examples of shape {shapes}: {_one_line(e)}"
                ) from None
            checked = True
        logits = np.asarray(apply(theta, model.params, padded))[:n]
        yield logits.argmax(-1), None if y is None else np.asarray(y)


def _predict(args: argparse.Namespace) -> int:
    art = _Artifact(args.artifact)
    model, program, theta, _ = art.load(args)
    task = _task(program, args.task, art.path)
    inputs = _Inputs(art, model, args)
    ids, batches, _ = inputs.read(args.inputs)
    names = art.class_names(model)
    rows, labels = [], []
    for predicted, y in _predictions(program, model, theta, batches, args.batch_size, args.inputs, task):
        rows.extend(int(p) for p in predicted)
        labels.extend([] if y is None else (int(v) for v in y))
    header = ["input", "prediction"] + (["class"] if names else []) + (["label"] if labels else [])
    table = []
    for j, (name, p) in enumerate(zip(ids, rows)):
        row = [name, p] + ([names[p] if p < len(names) else ""] if names else [])
        table.append(row + ([labels[j]] if labels else []))
    if args.output:
        try:
            with open(args.output, "w", newline="") as f:
                csv.writer(f).writerows([header, *table])
        except OSError as e:
            raise _InputError(f"--output {args.output}: cannot write ({e.strerror or e})") from None
        summary = f"wrote {len(table)} predictions to {args.output}"
        if labels:
            summary += f"; accuracy {np.mean(np.asarray(rows) == np.asarray(labels)):.1%}"
        print(summary)
    else:
        csv.writer(sys.stdout, lineterminator="\n").writerows([header, *table])
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    art = _Artifact(args.artifact)
    name, split = _dataset_spec(args.dataset)
    model, program, theta, i = art.load(args)
    task = _task(program, args.task, art.path)
    ds, data_names = _Inputs(art, model, args).dataset(name, split)
    names = art.class_names(model) or data_names
    where = f"{name}:{split}"
    predicted, labels = [], []
    for p, y in _predictions(program, model, theta, ds, args.batch_size, where, task):
        predicted.append(p)
        labels.append(y)
    p, y = np.concatenate(predicted), np.concatenate(labels)
    correct = int((p == y).sum())
    print(f"{art.path} {art.label(i)} on {where}: accuracy {correct / len(y):.1%} ({correct}/{len(y)})")
    if args.per_class:
        print("| class | name | examples | correct | accuracy |\n|---|---|---|---|---|")
        for c in range(int(max(y.max(), p.max())) + 1):
            n, k = int((y == c).sum()), int(((y == c) & (p == c)).sum())
            name_c = names[c] if names and c < len(names) else ""
            print(f"| {c} | {name_c} | {n} | {k} | {f'{k / n:.1%}' if n else '—'} |")
    return 0


def _show(args: argparse.Namespace) -> int:
    art = _Artifact(args.artifact)
    config = art.config
    shapes = _tensor_shapes(art)
    print(f"artifact    {art.path}  ({config.get('format')}, jaxreprog {config.get('library_version')})")
    if art.base:
        spec = dict(art.base.get("spec") or {})
        kind = spec.pop("type", "?")
        size = spec.pop("size", None)
        fields = ", ".join(f"{k}={v}" for k, v in spec.items() if v not in (None, "", 0) and k != "name")
        size_text = f"{size[0]}x{size[1]}, " if isinstance(size, list) and len(size) == 2 else ""
        print(f"base model  {art.base.get('name') or '?'}  ({kind}: {size_text}{fields})")
        print(f"            parameters sha256 {str(art.base.get('params_sha256'))[:16]}…")
    else:
        print("base model  not recorded (saved without frozen_model=)")
    k = art.candidates
    if k is None:
        print("candidates  one prompt")
    else:
        labels = art.metadata.get("candidates")
        named = f": {', '.join(map(str, labels))}" if isinstance(labels, list) else ""
        print(f"candidates  {k}{named}; selected {art.metadata.get('selected', 0)}")
    print("parts")
    tags = config.get("tags") if isinstance(config.get("tags"), dict) else {}
    for slot, part in art.parts.items():
        print(f"  {slot:9s} {_describe(part, shapes)}")
        if tags.get(slot):
            print(f"  {'':9s} tags: {tags[slot]}")
    print("theta")
    for name, (shape, dtype) in shapes.items():
        if name.startswith("theta/"):
            print(f"  {name[len('theta/') :]:40s} {tuple(shape)} {_DTYPES.get(dtype, dtype.lower())}")
    if art.metadata:
        print("metadata")
        for key, value in art.metadata.items():
            shown = "(every key of it: see config.json)" if key == "recipe" else _short(value)
            print(f"  {key}: {shown}")
    if args.png:
        print(f"wrote {_prompt_png(art, args)}")
    return 0


def _tensor_shapes(art: _Artifact) -> dict[str, tuple[list[int], str]]:
    from safetensors import safe_open

    from jaxreprog import artifact

    path = art.path / artifact.TENSORS
    try:
        with safe_open(str(path), "numpy") as f:
            return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except Exception as e:
        raise _InputError(f"{path}: unreadable ({_one_line(e)})") from None


_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # fmt: skip


def _describe(part: Any, shapes: dict[str, Any]) -> str:
    """A saved part as a call: ``jr.input.pad(target_size=8)``."""
    if not isinstance(part, dict):
        return "?"
    args = part.get("arguments") if isinstance(part.get("arguments"), dict) else {}
    text = f"{part.get('factory')}({', '.join(f'{k}={_argument(v, shapes)}' for k, v in args.items())})"
    return f"jr.fixed({text})" if part.get("fixed") else text


def _argument(v: Any, shapes: dict[str, Any]) -> str:
    if isinstance(v, list):
        return f"[{', '.join(_argument(e, shapes) for e in v)}]"
    if not isinstance(v, dict):
        return repr(v)
    if "__tuple__" in v:
        return f"({', '.join(_argument(e, shapes) for e in v['__tuple__'])})"
    if "__array__" in v:
        shape, dtype = shapes.get(v["__array__"], ("?", "?"))
        return f"<array {tuple(shape) if shape != '?' else shape} {_DTYPES.get(dtype, dtype.lower())}>"
    if "__part__" in v:
        return _describe(v["__part__"], shapes)
    if "__select__" in v:
        return f"jr.select({v['__select__']!r})"
    if "__enum__" in v:
        return str(v["__enum__"])
    if "__dict__" in v:
        return "{" + ", ".join(f"{k!r}: {_argument(e, shapes)}" for k, e in v["__dict__"].items()) + "}"
    return "?"


def _short(value: Any, limit: int = 200) -> str:
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        text = "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _prompt_png(art: _Artifact, args: argparse.Namespace) -> str:
    """The visual prompt of one candidate as a PNG, rendered from the saved spec (no weights read)."""
    import jaxreprog as jr
    from jaxreprog.recipes.results import save_prompt_png

    spec = art.spec()
    if not isinstance(spec, jr.ImageSpec) or "input" not in art.parts:
        raise _InputError(f"--png: {art.path} holds no visual prompt (an input transform on images)")
    i = art.candidate(args.candidate)
    stand_in = jr.FrozenModel(lambda params, x, hook=None: x, {}, spec)  # only its spec is used
    program, theta = jr.load(art.path, stand_in, candidate=i, allow_other_model=True)
    transform = program.parts["input"]
    if transform.visualize is None:
        raise _InputError(f"--png: {art.parts['input'].get('factory')} has no picture (no visualize())")
    try:
        return save_prompt_png(transform, theta["input"], spec, args.png)
    except OSError as e:
        raise _InputError(f"--png {args.png}: cannot write ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- parser


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, where it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _artifact_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="an artifact folder (jr.save; jaxreprog run writes OUT/prompt)")
    p.add_argument(
        "--candidate",
        type=int,
        default=None,
        help="which candidate (default: the one selected on validation)",
    )
    p.add_argument(
        "--weights", default=None, help="the base model's checkpoint (default: where the run loaded it from)"
    )
    p.add_argument("--batch-size", type=_positive, default=256, help="examples per forward pass")
    p.add_argument(
        "--data-dir",
        default=None,
        help="prepared TFDS datasets (default: the run's, else $JAXREPROG_DATA_DIR)",
    )
    p.add_argument(
        "--tokenizer", default=None, help="texts: a tokenizer.json or its folder (default: the base model's)"
    )
    p.add_argument(
        "--max-length",
        type=_positive,
        default=None,
        help="texts: tokens per text (default: the run's, else 128)",
    )
    p.add_argument(
        "--task",
        type=int,
        default=None,
        metavar="T",
        help="a prompt per task (soft_prompt(tasks=K), multitask_prompt): the task id of every input, "
        "in [0, K) (needed by such a prompt, refused by others)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxreprog",
        description="Reprogram frozen pretrained models in JAX: y = O ∘ f ∘ I(x, c).",
        epilog="exit codes: 0 ok, 2 a usage or input error, 1 a failure while running",
        formatter_class=_Help,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_Help)

    p = command("taxonomy", "print the executable taxonomy of registered methods")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.set_defaults(run=_taxonomy)

    p = command("demo", "reprogram a real ImageNet model into an MNIST classifier, offline")
    p.add_argument("--quick", action="store_true", help="a < 60 s version")
    p.add_argument("--out", default="jaxreprog-demo", help="folder for the prompt PNG and checkpoint")
    p.add_argument("--seed", type=int, default=0, help="the random seed")
    p.set_defaults(run=_demo)

    p = command("run", "run a recipe: a packaged name (see --list) or a .toml/.yaml file")
    p.add_argument("recipe", nargs="?", help="packaged recipe name or path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. epochs=2")
    p.add_argument(
        "--out",
        default=None,
        help="folder for results.json, prompt PNGs, the prompt artifact (OUT/prompt) and checkpoints; "
        "a rerun resumes (default: a fresh runs/<recipe>-<YYYYmmdd-HHMMSS>)",
    )
    p.add_argument("--list", action="store_true", help="list the packaged recipes")
    p.add_argument(
        "--check", action="store_true", help="check the recipe and that its model, weights and data are here"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="a run of several processes: process 0's address (default: $JAX_COORDINATOR_ADDRESS)",
    )
    p.add_argument(
        "--num-processes", type=int, default=None, help="how many processes (default: $JAX_NUM_PROCESSES)"
    )
    p.add_argument(
        "--process-id", type=int, default=None, help="this process, 0 .. N-1 (default: $JAX_PROCESS_ID)"
    )
    p.set_defaults(run=_run)

    p = command("predict", "predict with an artifact: images, a .npy array, a TFDS split or texts")
    _artifact_options(p)
    p.add_argument("inputs", help="a folder of .png/.jpg images, a .npy array (N, H, W, C), "
                   "tfds:NAME:SPLIT, or a .txt file of texts (one per line)")  # fmt: skip
    p.add_argument("--output", default=None, help="write the predictions to this CSV file (default: print)")
    p.set_defaults(run=_predict)

    p = command("evaluate", "an artifact's accuracy on a dataset split")
    _artifact_options(p)
    p.add_argument(
        "--dataset",
        required=True,
        metavar="NAME[:SPLIT]",
        help="a packaged or prepared TFDS dataset, e.g. mnist5k:test (split default: test)",
    )
    p.add_argument("--per-class", action="store_true", help="print examples and accuracy per class")
    p.set_defaults(run=_evaluate)

    p = command("show", "print what an artifact holds; render a visual prompt")
    p.add_argument("artifact", help="an artifact folder (jr.save; jaxreprog run writes OUT/prompt)")
    p.add_argument("--png", default=None, help="render the visual prompt to this PNG file")
    p.add_argument("--candidate", type=int, default=None,
                   help="--png: which candidate (default: the one selected on validation)")  # fmt: skip
    p.set_defaults(run=_show)

    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument(
        "--no-compilation-cache",
        dest="compilation_cache",
        action="store_false",
        help="do not keep compiled programs on disk for the next run (default: keep them in "
        "$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/jaxreprog/jax or ~/.cache/jaxreprog/jax)",
    )
    return parser


def compilation_cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the command keeps compiled programs: ``$JAX_COMPILATION_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/jaxreprog/jax`` (``~/.cache/jaxreprog/jax``)."""
    environ = os.environ if environ is None else environ
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxreprog", "jax")


def _use_compilation_cache(args: argparse.Namespace) -> None:
    """JAX's persistent compilation cache, on by default for the commands that compile
    (most of a short run is XLA compilation: a rerun of ``demo --quick`` takes 13.8 s instead
    of 23.3 s); ``--no-compilation-cache`` or ``JAXREPROG_NO_COMPILATION_CACHE=1`` turns it
    off. Programs that compile in under 0.1 s are not written."""
    if not args.compilation_cache or os.environ.get("JAXREPROG_NO_COMPILATION_CACHE", "") not in ("", "0"):
        return
    if args.command not in ("demo", "run", "predict", "evaluate"):
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxreprog`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        _use_compilation_cache(args)
        return args.run(args)
    except BrokenPipeError:  # `jaxreprog run --list | head`: the reader left; end quietly
        sys.stderr = None  # type: ignore[assignment]  (Python's exit flush would report it again)
        return 0
    except KeyboardInterrupt:
        print(f"jaxreprog {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        code = 2 if isinstance(e, _INPUT_ERRORS) else 1
        print(f"jaxreprog {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return code


class _InputError(Exception):
    """An input the user can fix (exit code 2)."""


# What a user's input causes (a bad recipe, argument, weights file, dataset or folder): exit 2.
_INPUT_ERRORS = (_InputError, ValueError, TypeError, KeyError, ImportError, OSError)


def _one_line(e: BaseException, limit: int = 500) -> str:
    """The first line of an error message, at most ``limit`` characters (never an unbounded repr)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    if isinstance(e, KeyError | OSError) and not isinstance(e, FileNotFoundError | NotADirectoryError):
        text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _version() -> str:
    from jaxreprog import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
