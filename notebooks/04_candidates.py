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
# # Candidates: 16 prompts in one vmapped step
#
# Reprogramming is sensitive to the learning rate and the prompt's initialisation, and one run is cheap next
# to the frozen model's forward pass. jaxreprog makes the **candidate axis** first-class: K prompts are one
# theta with a leading axis K, and `jax.vmap(step, in_axes=(0, None, None))` trains all of them in one
# compiled step, sharing the frozen weights and the batch.
#
# This notebook trains 16 padding prompts on EfficientNet-Lite0 → MNIST (4 learning rates × 4 random
# initialisations) in one call to `jr.train.fit`, plots their validation accuracies, picks the best one **on
# the validation split** and reports its test accuracy.
#
# Taxonomy cells covered: learnable · input · additive (padding), statistical alignment (ILM), and prompt
# ensembles (a rule-based combination over the candidate axis); the candidate axis applies to every method in
# `jr.taxonomy.table()`.
#
# **Budget.** A 32-pixel canvas, 16-pixel digits, 256 training images and 16 steps, so that it runs in well
# under a minute on CPU: the numbers rank candidates after a few steps, they are not results. For those see
# `jaxreprog demo` and `benchmarks/RESULTS.md`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

# %%
model = jr.models.load("efficientnet_lite0", size=32)
rng = np.random.default_rng(0)


def subset(split, n):  # the splits are stored sorted by class: take a random subset
    x, y = jr.data.arrays("mnist5k", split, rgb=True, image_size=16)
    keep = rng.permutation(len(y))[:n]
    return x[keep], y[keep]


train = jr.data.from_arrays(*subset("train", 256), batch_size=16, shuffle_seed=0)
val = jr.data.from_arrays(*subset("validation", 200), batch_size=200)
test = jr.data.from_arrays(*jr.data.arrays("mnist5k", "test", rgb=True, image_size=16), batch_size=250)

# %% [markdown]
# ## 16 candidates, one step
#
# `candidates=` takes an int K (K initialisations), a stacked theta, or a list of K dicts of optimiser
# hyperparameters: here K = 16 learning rates, one per candidate, and `fit` draws 16 initialisations from
# the key (`init="normal"`: δ ~ N(0, 1), so the seeds differ). Each candidate also carries its own ILM label
# map, refitted every epoch from its own logits.

# %%
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

# %% [markdown]
# ## Pick the best
#
# `jr.train.best_candidate` selects by the last epoch's *validation* accuracy (selecting on the test split, as
# some reference code does, overstates results); `jr.candidates.select` takes that candidate out of the stack.

# %%
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

# %% [markdown]
# The prompts of the four best candidates (`visualize` renders each in pixel space):

# %%
pad = program.parts["input"]
top = np.argsort(-val_acc)[:4]
fig, axes = plt.subplots(1, 4, figsize=(8, 2.4))
for ax, k in zip(axes, top):
    ax.imshow(np.asarray(pad.visualize(jr.candidates.select(thetas, int(k))["input"], model.spec)))
    ax.set_title(f"#{k}: lr {learning_rates[k]:g}, {val_acc[k]:.0%}")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Or keep them all: an ensemble in one pass
#
# `jr.candidates.ensemble` combines the K prompts at inference in one vmapped forward pass: by averaging their
# logits, their probabilities, or by (weighted: `weights=`) majority vote (prompt ensembles, Lester et al.
# 2021). Each candidate runs with its own prompt *and* its own ILM map, and the K outputs are combined over
# the candidate axis, which no part of a program sees: so the ensemble is a *combinator* in the registry (its
# row in `jr.taxonomy.table()`: rule-based, `jr.candidates.ensemble`), not a part, and the K prompts save as
# one stacked artifact (`jr.save(path, program, thetas)`). Here the four best on validation, against the best
# one alone.

# %%
print(jr.taxonomy.table(alignment=jr.taxonomy.OutputAlignment.RULE_BASED))  # the rule-based rows
x_test, y_test = jr.data.arrays("mnist5k", "test", rgb=True, image_size=16)
four = jax.tree.map(lambda a: a[top], thetas)
for how in ("logits", "probs", "vote"):
    combine = jax.jit(lambda t, x, how=how: jr.candidates.ensemble(program, t, model.params, x, how=how))
    scores = combine(four, x_test)
    print(f"ensemble of 4 ({how}): test {float((scores.argmax(-1) == y_test).mean()):.3f}")
print(f"best single prompt:      test {test_acc:.3f}")
