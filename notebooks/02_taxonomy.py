# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The taxonomy, executable
#
# Every method in jaxreprog is one part of the survey's equation `y = O_ω ∘ f ∘ I_{λ,τ,ℓ}(x, c)`: a frozen
# model `f`, an input-side manipulation `I` with a **format** λ (fixed | learnable, or both: a hand-written
# template with learnable slots), a **location** ℓ (input | embedding | hidden | output: the logits, before
# the alignment) and an **operator** τ (additive | concatenative | parametric | replacement), and an
# **output alignment** `O_ω` (identity | rule-based | statistical | linear).
#
# This notebook shows:
#
# 1. the taxonomy table, generated from the registry of the methods that exist in the code
#    (`jr.taxonomy.table()`), so it cannot drift from the library;
# 2. composing parts at different locations around one frozen model (EfficientNet-Lite0): padding
#    (learnable · input · additive) + a hidden-state shift (learnable · hidden · additive) + ILM
#    (statistical alignment), and the program's tags as the union of its parts';
# 3. that one program is a pure function of `theta`: it runs under `jax.jit`, `jax.grad` and `jax.vmap` over a
#    leading candidate axis;
# 4. a hidden-location manipulation at any module path of the model (`jr.hidden.affine`, FiLM-style);
# 5. black-box training, without gradients, on a query budget (BAR, and BlackVIP's input-dependent prompt
#    with SPSA-GC; `jr.train.ZerothOrder`);
# 6. a gallery of every input-location manipulation (`manipulation.visualize`), untrained.
#
# Cells of the taxonomy covered: every row of the table (section 1); input and hidden location, additive
# operator, learnable format, statistical alignment in practice (sections 2-3); every input-location method,
# fixed and learnable, additive and parametric (section 6).

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

# %% [markdown]
# ## 1. The table
#
# `jr.taxonomy.table()` renders every registered method with its four tags, its paper and its API. It displays
# as markdown in a notebook; `str(table)` is plain text and `table.rows()` a list of dicts.

# %%
table = jr.taxonomy.table()
table

# %% [markdown]
# Filters select one column of the survey's table, e.g. everything that acts inside the model's hidden layers:

# %%
print(jr.taxonomy.table(location=jr.Location.HIDDEN))

# %% [markdown]
# How the manipulations fill the location × operator grid (a method with a combined operator, such as
# SMM's *additive + parametric*, counts in both columns):

# %%
locations, operators = list(jr.Location), list(jr.Operator)
grid = np.zeros((len(locations), len(operators)), int)
for method in table:
    t = method.tags
    if t.location is None:  # alignments have no location (logit_prompt's is "output")
        continue
    for i, loc in enumerate(locations):
        for j, op in enumerate(operators):
            grid[i, j] += bool(loc in t.location and op in t.operator)

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.imshow(grid, cmap="Blues")
ax.set_xticks(range(len(operators)), [str(o) for o in operators])
ax.set_yticks(range(len(locations)), [str(loc) for loc in locations])
for (i, j), n in np.ndenumerate(grid):
    ax.text(j, i, n, ha="center", va="center")
ax.set_title("registered manipulations")
plt.show()

# %% [markdown]
# ## 2. Composing parts
#
# A factory returns a plain tuple of pure functions, one type per calling convention: an `InputTransform(init,
# apply)` acts on the input (`apply(theta, x, spec, key=None)`), a `SiteHook(init, apply)` at the frozen
# model's named sites (`apply(theta, site, value, spec)`), an `Alignment(init, apply)` on the logits (plus a
# statistics protocol for the frequency-based maps). Tags are metadata for the taxonomy table; every theta
# learns unless the part is wrapped in `jr.fixed`.

# %%
pad = jr.input.pad(target_size=28)
shift = jr.hidden.additive("features", shape=1280)  # EfficientNet's pooled features
ilm = jr.output.ilm(num_source=1000, num_target=10)
for part in (pad, shift, ilm):
    print(f"{type(part).__name__:12s} {part.tags}")

# %% [markdown]
# `jr.reprogram` composes them around a frozen model. EfficientNet-Lite0 is fully convolutional, so a
# 32-pixel canvas keeps this notebook fast (ImageNet's native size is 224; see `benchmarks/` for real runs).
# The program's tags are the union of its parts': `Tags` fields are `enum.Flag`s.

# %%
model = jr.models.load("efficientnet_lite0", size=32)
program = jr.reprogram(model, input=pad, hidden=shift, output=ilm)
print(program.tags)
theta = program.init(jax.random.key(0))
print(jax.tree.map(jnp.shape, theta))

# %% [markdown]
# ## 3. One program under `jit`, `grad` and `vmap`
#
# The frozen weights are an explicit argument (`model.params`), never closed over, and `reprogram` stops their
# gradient. `program.apply` is `program.align ∘ program.source_logits`, i.e. `O ∘ (f ∘ I)`; here the two
# halves run separately, the frozen model under `jax.jit`. Data: 64 MNIST digits.

# %%
x, y = jr.data.arrays("mnist5k", "train", rgb=True)
subset = np.random.default_rng(0).permutation(len(y))[:64]  # the split is stored sorted by class
x, y = x[subset], y[subset]

source_logits = jax.jit(program.source_logits)  # f ∘ I: (64, 1000) ImageNet logits
src = source_logits(theta, model.params, x)
print("source logits:", src.shape, " target logits:", program.align(theta, src).shape)

# %% [markdown]
# A statistical alignment is fitted, not trained: `program.refit` computes ILM's one-to-one map from the
# frequency matrix of the source predictions. Then `jax.grad` differentiates the loss with respect to `theta`
# only; the map is not trainable, so its gradient is zero (`program.trainable(theta)` is the mask a trainer
# uses).

# %%
theta = program.refit(theta, src, y)


def loss(theta, params, x, y):
    logp = jax.nn.log_softmax(program.apply(theta, params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


grads = jax.jit(jax.grad(loss))(theta, model.params, x, y)
print("gradient norms:", jax.tree.map(lambda g: round(float(jnp.linalg.norm(g)), 4), grads))
print("trainable:     ", program.trainable(theta))

# %% [markdown]
# That loss and that mask are what `jr.train.make_step` packages: `(init, step)`, two pure functions in the
# shape of flax's MNIST example, with the frozen parameters an argument of `step`. `jr.train.fit` is the loop
# around this same step (epochs, refits, evaluation, checkpoints); write your own loop when you need another.

# %%
import optax

init, step = jr.train.make_step(program, optax.adam(1e-2))
step = jax.jit(step)
state = init(theta)
for i in range(3):
    state, metrics = step(state, model.params, (x, y), jax.random.key(0))
    print(f"step {i + 1}: loss {float(metrics['loss']):.4f} accuracy {float(metrics['accuracy']):.3f}")
np.testing.assert_array_equal(state.theta["output"]["omega"], theta["output"]["omega"])  # the map is fixed
assert not np.allclose(state.theta["input"]["delta"], theta["input"]["delta"])  # the prompt learns

# %% [markdown]
# Finally the candidate axis: K thetas stacked on a leading axis, the frozen weights and the batch shared
# (`in_axes=(0, None, None)`). `jr.candidates.apply` is that `vmap`; training K prompts is one vmapped step
# (notebook 04).

# %%
thetas = jr.candidates.init(program, jax.random.split(jax.random.key(1), 4))
print(jax.tree.map(jnp.shape, thetas["input"]))
many = jax.jit(jax.vmap(program.apply, in_axes=(0, None, None)))(thetas, model.params, x)
print("K candidates:", many.shape)
first = jr.candidates.select(thetas, 0)  # candidate 0 alone gives the same logits
np.testing.assert_allclose(many[0], program.align(first, source_logits(first, model.params, x)), atol=1e-4)

# %% [markdown]
# ## 4. Any module path
#
# Every submodule output of a zoo (or `jr.from_linen`) model passes through the program's hook under its
# module path, so a hook that only records lists the sites (under `jax.eval_shape`: nothing runs).
# `jr.hidden.affine(pattern, shape)` applies `h ⊙ (1 + γ) + β` at every path matching a glob (FiLM, Perez et
# al. 2018; learnable · hidden · parametric); `jr.hidden.additive` above is its `h + δ` sibling. It is the
# identity at initialisation.

# %%
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

# %% [markdown]
# ## 5. Black-box: no gradient at all
#
# When the model is only an API (outputs, no gradients), BAR (Tsai, Chen & Ho, ICML 2020) estimates the
# gradient from `q` random directions: each step sends `(q + 1) · batch` queries.
# `fit(gradient=ZerothOrder(...))` trains the same program that way, and `budget` caps the queries: here
# FreqMap's mapping pass (AutoVP's many-to-one label map, 64 queries) plus 6 steps of `(4 + 1) × 16`, so
# training stops inside epoch 2. Six steps barely move the loss; the point is the accounting (a longer run
# that does lower the loss is in `tests/test_train_zeroth_order.py`).

# %%
black_box = jr.reprogram(model, input=pad, output=jr.output.freqmap(1000, 10, per_target=5))
zo = jr.train.ZerothOrder(queries=4, smoothing=0.01, budget=64 + 6 * (4 + 1) * 16)
theta_bb, history_bb = jr.train.fit(
    black_box,
    model,
    jr.data.from_arrays(x, y, batch_size=16, shuffle_seed=0),
    epochs=3,
    key=jax.random.key(0),
    learning_rate=0.1,
    gradient=zo,
    progress=False,
)
for h in history_bb:
    print(f"epoch {h['epoch']}: {h['queries']} queries so far, loss {h['loss']:.3f}", h.get("stopped", ""))
assert history_bb[-1]["queries"] <= zo.budget and "query budget" in history_bb[-1]["stopped"]

# %% [markdown]
# BlackVIP (Oh et al. CVPR 2023) makes the black-box prompt depend on the input: a small *coordinator* writes
# one prompt per image, `P = g_ψ([f(x); φ])` with a frozen encoder `f` (here a fixed random conv net, not the
# paper's MAE ViT), a learned decoder `g_ψ` and a learned trigger `φ`. It trains with SPSA-GC: two-sided SPSA
# (`2q` queries around `θ`, plus one at `θ` for the step's loss) with look-ahead momentum, i.e.
# `ZerothOrder(estimator="spsa_gc")`, so a step costs `(2q + 1) · batch` queries, counted against the same
# budget: FreqMap's 64 plus 4 steps of `(2 · 4 + 1) × 16`. A budget that cannot pay for one step after the
# mapping pass is an error before any training (`tests/test_blackvip.py`).

# %%
vip = jr.reprogram(model, input=jr.input.blackvip(), output=jr.output.freqmap(1000, 10, per_target=5))
zo_gc = jr.train.ZerothOrder(queries=4, smoothing=0.01, estimator="spsa_gc", budget=64 + 4 * (2 * 4 + 1) * 16)
theta_vip, history_vip = jr.train.fit(
    vip,
    model,
    jr.data.from_arrays(x, y, batch_size=16, shuffle_seed=0),
    epochs=3,
    key=jax.random.key(0),
    learning_rate=0.001,  # a of SPSA-GC's gain a / (k + 2)^0.4
    gradient=zo_gc,
    progress=False,
)
print(f"{zo_gc.evaluations} queries per example per step")
for h in history_vip:
    print(
        f"epoch {h['epoch']}: {h['queries']} / {zo_gc.budget} queries, loss {h['loss']:.3f}",
        h.get("stopped", ""),
    )
assert history_vip[-1]["queries"] == zo_gc.budget and "query budget" in history_vip[-1]["stopped"]

# %% [markdown]
# ## 6. Every input-location manipulation, side by side
#
# Each factory in `jr.input` has a `visualize(theta, spec)`: the method applied to a uniform grey image, in
# pixels. The gallery builds every image manipulation at this notebook's 32-pixel canvas, initialises it and
# adds small noise to its (mostly zero-initialised) parameters, so there is something to see. Nothing is
# trained. What each one learns:
#
# * **pad** (ILM-VP, Chen et al. 2023): `σ(δ)` on the border around the padded image;
# * **elsayed** (Elsayed et al. 2019): the same border as `tanh(W ⊙ M)`, the original adversarial program;
# * **watermark** / **full** (BLM, SMM 2024): `δ ⊙ M` added after normalising, on a border or everywhere;
# * **pad_prompter**, **patch**, **random_patch** (Bahng et al. 2022): four strips, or a patch at a fixed or
#   random location, added to the normalised image;
# * **resize_pad** (AutoVP, Tsao et al. 2024): a learned zoom `s` (here 0.8) of the image, then padding;
# * **smm** (SMM, Cai et al. ICML 2024): `x + δ ⊙ mask(x)`, a pattern gated by a small CNN's patch-wise mask;
# * **fixed**: a hand-designed pattern (a red frame), nothing learned (format *fixed*).
#
# All ten run in one compiled call; XLA:CPU at LLVM `-O0` compiles it in a third of the default time (the
# program runs once; the numbers do not change).

# %%
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
    assert image.shape == canvas.shape and image.min() >= 0 and image.max() <= 1, name
    ax.imshow(image)
    ax.set_title(f"{name}\n{t.format} · {t.location}\n{t.operator}", fontsize=8)
    ax.axis("off")
plt.show()

# %% [markdown]
# Time series have the same idea in 1-D: `jr.input.sequence_pad` (Voice2Series, Yang et al. 2021) pads a
# target series to the frozen model's length and adds a masked program `M ⊙ θ` outside it.

# %%
series = jr.SequenceSpec(length=64)
v2s = jr.input.sequence_pad(target_length=50, init="normal")
padded = v2s.apply(v2s.init(jax.random.key(0), series), jnp.zeros((4, 50)), series)
print(v2s.tags, "| (4, 50) series ->", padded.shape)
assert padded.shape == (4, 64, 1)

# %% [markdown]
# On real series: the UCR archive's GunPoint ships in the `sktime` wheel and builds offline as the TF-free
# TFDS dataset `ucr_gun_point` (also `ucr_italy_power`, `ucr_arrow_head`, `ucr_osu_leaf`). Padded for a
# frozen model of OSULeaf's length 427, as `benchmarks/voice2series_ucr.py` does with a transformer it
# pretrains on OSULeaf and then reprograms with a many-to-one label map (`jr.output.freqmap`).

# %%
x_gun, y_gun = jr.data.arrays("ucr_gun_point", "train")  # z-normalised per series
source = jr.SequenceSpec(length=427, value_range=(-6.0, 6.0))
v2s_gun = jr.input.sequence_pad(target_length=x_gun.shape[1])
canvas_gun = v2s_gun.apply(v2s_gun.init(jax.random.key(0), source), x_gun[:4], source)
print("GunPoint train", x_gun.shape, x_gun.dtype, "classes", np.bincount(y_gun), "->", canvas_gun.shape)
assert canvas_gun.shape == (4, 427, 1)

# %% [markdown]
# Forecasting too (Time-LLM, Jin et al. 2024): `jr.embedding.time_llm_backbone` turns a frozen causal LM into
# a model from series to forecasts (instance normalisation, a fixed prompt of the series' statistics, the LM's
# final hidden states), and `jr.embedding.time_llm` learns the rest: patches reprogrammed onto text prototypes
# of the frozen word-embedding table by cross-attention, and a linear head to the horizon. Here on the yearly
# sunspot numbers that ship in the `statsmodels` wheel (the packaged dataset `sm_sunspots`: windows of 40
# years and the 8 after them, standardised with the train segment's statistics; also `sm_elnino`, `sm_co2`),
# through a small *random-init* GPT-2-shaped LM (no pretrained LM is offline: this shows the mechanism,
# `benchmarks/time_llm.py` has the comparison with baselines).

# %%
import importlib

from jaxreprog.models import gpt2

time_llm = importlib.import_module("jaxreprog.embedding.time_llm")
sunspots = jr.data.load("sm_sunspots", "train", batch_size=32, shuffle_seed=0)  # x (32, 40) -> y (32, 8)
lm = gpt2.from_config(
    gpt2.GPT2Config(vocab_size=256, hidden_size=32, num_layers=1, num_heads=2, max_positions=128),
    jax.random.key(0),
)
prompt = time_llm.StatsPrompt.from_chars("sunspots: forecast 8 years from 40.", time_llm.gpt2_char_id)
backbone = jr.embedding.time_llm_backbone(lm, prompt=prompt)
forecaster = jr.reprogram(
    backbone,
    embedding=jr.embedding.time_llm(40, 8, patch_len=8, stride=4, d_model=16, heads=2, num_prototypes=32),
)
theta_f, history_f = jr.train.fit(
    forecaster, backbone, sunspots, epochs=8,
    optimizer=optax.adam(3e-3), loss=jr.train.mse, key=jax.random.key(1), progress=False,
)  # fmt: skip
loss_f = jr.train.metric(history_f, "loss")
print(f"{jr.embedding.time_llm.method.paper}: train MSE {loss_f[0]:.3f} -> {loss_f[-1]:.3f}")
assert loss_f[-1] < loss_f[0]
