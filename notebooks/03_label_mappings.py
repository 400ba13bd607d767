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
# # Label mappings side by side
#
# A frozen ImageNet classifier emits 1000 logits; an MNIST task needs 10. The output alignment `O_ω` bridges
# them. This notebook feeds **the same source logits** (EfficientNet-Lite0 on MNIST digits framed by an
# untrained, grey padding prompt) to five alignments and compares them:
#
# | mapping | alignment | how ω is built |
# |---|---|---|
# | RLM (Elsayed et al. 2019) | rule-based | 10 random distinct source classes |
# | FLM (Tsai et al. 2020) | statistical | greedy one-to-one on the frequency matrix, once |
# | ILM (Chen et al. 2023) | statistical | the same greedy map, refitted every epoch |
# | BLM (Cai et al. 2024) | statistical | ω[s,t] = d[s,t] / (Σ_t' d[s,t'] + 1), columns normalised |
# | BLM+ (Cai et al. 2024) | statistical | BLM on each sample's top-k softmax probabilities |
#
# It shows heat maps of the frequency matrix `d[s, t]` (how often digit `t` is predicted as ImageNet class
# `s`) and of each mapping ω. Taxonomy cells covered: output alignment, rule-based and statistical (identity
# and linear are in `jr.taxonomy.table()`; training a prompt with a mapping is notebook 01).
#
# The prompt is untrained and the canvas tiny (32 px), so the accuracies only rank the mappings' starting
# points; `jaxreprog demo` and `benchmarks/RESULTS.md` report trained results.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

# %% [markdown]
# ## Source logits, computed once
#
# The padding prompt at initialisation is a grey border (sigmoid(0) = 0.5). 2000 training digits estimate the
# mappings, the 500 test digits score them.

# %%
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

# %% [markdown]
# ## The frequency matrix
#
# `d[s, t]` counts the training samples of digit `t` whose top-1 ImageNet prediction is `s`. Only a few source
# classes ever win the top-1, so the plot keeps the rows with any count.

# %%
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

# %% [markdown]
# ## Five mappings on the same logits
#
# Each alignment is `init` → `refit` (a no-op for the rule-based RLM) → `apply`. FLM and ILM compute the same
# greedy map from the same statistics; they differ in *when* a trainer refits them (`align.schedule`: once vs
# every epoch). `ilm(..., guarded=True)` keeps a new map only if it scores at least as well as the old one
# (beyond the papers; see its docstring for why the reference can collapse).

# %%
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

# %% [markdown]
# Every mapping here is a matrix ω (1000 × 10): a 0/1 one-to-one map for RLM/FLM/ILM, soft weights for BLM
# and BLM+. The heat maps show the rows any mapping uses.

# %%
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

# %% [markdown]
# All alignments share one calling convention, so a trainer treats them alike, and K states of one alignment
# stack on a candidate axis: `jax.vmap(align.apply, in_axes=(0, None))` scores K label mappings on one forward
# pass of the frozen model (`jr.train.evaluate_alignments` does that over a dataset). Here: 8 random maps.

# %%
rlm = alignments["RLM"]
rlm_states = jax.vmap(rlm.init)(jax.random.split(jax.random.key(1), 8))
logits = jax.vmap(rlm.apply, in_axes=(0, None))(rlm_states, src_test)
rlm_acc = np.mean(np.argmax(logits, -1) == y_test, axis=1)
print("8 random maps, test accuracy:", np.round(rlm_acc, 3))

# %% [markdown]
# The same, over a dataset and through a whole program: `jr.train.evaluate_alignments(program, model, theta,
# states, data)` runs `f ∘ I` once per batch and vmaps only `O` over the K stacked states: K label mappings of
# one prompt cost one forward pass (the frozen model is the expensive part).

# %%
program = jr.reprogram(model, input=pad, output=rlm)
theta = {**program.init(jax.random.key(0)), "input": delta}  # the grey prompt of the logits above
test = jr.data.from_arrays(x_test, y_test, batch_size=250)
acc = jr.train.evaluate_alignments(program, model, theta, rlm_states, test)
print("evaluate_alignments:", np.round(acc, 3))
np.testing.assert_allclose(acc, rlm_acc, atol=1 / len(y_test))

# %% [markdown]
# ## A linear head: the one alignment trained by gradient
#
# `jr.output.linear` (AutoVP's FullyMap, Tsao et al. 2024; *linear* output alignment) is a dense layer
# `y = f(x) W + b` on the source logits. Unlike the maps above it has `trainable=True`: `reprogram` lets the
# gradient reach its 10,010 parameters, while ILM's ω is a refitted statistic (`trainable=False`, its gradient
# stopped). One gradient step on the same training logits:

# %%
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
print(
    f"cross-entropy {loss:.3f} -> {xent(w_next, src_train, y_train):.3f} after one step;",
    jax.tree.map(jnp.shape, grads),
)
assert xent(w_next, src_train, y_train) < loss

# %% [markdown]
# ## Trained mappings: a packaged recipe
#
# A recipe is a whole experiment as data (model, dataset, manipulation, alignment, optimiser, schedule,
# epochs, seed): `jaxreprog run RECIPE` on the command line, `jaxreprog.recipes` in Python. Every key is
# checked when it loads (what `jaxreprog run --check` reports), and `run` keeps the prompt of the epoch with
# the best *validation* accuracy. Here the packaged ILM-VP reproduction (Chen et al. 2023), shrunk by
# overrides to one epoch on 64 digits so it runs in seconds; the full recipe's numbers are in
# `benchmarks/RESULTS.md`.

# %%
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
