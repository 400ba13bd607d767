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
# # Prompt instruction: templates, demonstrations, zero-shot against few-shot
#
# Prompt instruction changes nothing that is learned: the context `c` is fixed, hand-written text concatenated
# to the input (format fixed · location input · operator concatenative), and the output is read by a fixed
# rule. With the frozen sentence encoder all-MiniLM-L6-v2 on BBC News (5 classes), this notebook shows
#
# 1. **templates** (`jr.context.Template`): instruction + demonstrations + query as plain data, rendered to
#    text and to token ids within a length budget (demonstrations are dropped, farthest first; the query never
#    is);
# 2. **zero-shot** (class descriptions), **with an instruction**, and **few-shot**: demonstrations in the
#    context (one per class, `jr.context.demonstrations`) and demonstrations as a classifier (the majority
#    label of the k nearest training documents, `jr.context.select.knn` + `jr.context.vote`).
#
# Taxonomy cells covered: fixed · input · concatenative (instruction, in-context demonstrations), rule-based
# output alignment. **Budget**: documents cut to 32 tokens, 80 labelled documents, 100 test documents;
# `benchmarks/context_bbc.py` and `benchmarks/RESULTS.md` have the full comparison.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import jaxreprog as jr

plt.rcParams.update({"figure.dpi": 72, "font.size": 9})

# %%
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

# %% [markdown]
# ## 1. Templates
#
# A `Template` is data: an instruction, the format of one demonstration and of the query. `render` gives the
# text; `encode` gives token ids within `max_length`, dropping whole demonstrations when they do not fit.

# %%
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

# %% [markdown]
# ## 2. Zero-shot, instruction, few-shot
#
# The rule: embed the (contextualised) document and pick the class whose description ("business news", ...)
# is most cosine-similar. A context manipulation inserts its token ids after [CLS] and rebuilds the attention
# mask: it is an ordinary input transform, so `jr.reprogram(model, input=context, output=head)` is an
# ordinary program.

# %%
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

# %% [markdown]
# Which instruction? `jr.context.select_prefix` scores K candidate prefixes (stacked to one padded array by
# `jr.context.stack`) on labelled data in one vmapped call and picks the most accurate, as instruction or
# demonstration-set selection does; select on a validation split (here the 80 labelled documents), never on
# the test split.

# %%
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

# %% [markdown]
# Demonstrations can also *be* the classifier: the majority label among the k labelled documents nearest to
# the query in embedding space (the selection rule of k-NN demonstration retrieval, Liu et al. 2022), with no
# prompt at all.

# %%
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

# %% [markdown]
# On a sentence encoder, text prepended to the document shifts its embedding whatever the document says, so
# in-context demonstrations do not help the way they help a large causal LM (here they cost accuracy). The
# same 80 labelled documents used as neighbours beat the class descriptions by more than ten points; with 100
# test documents a difference of a few points is noise, but not one that large, and `benchmarks/RESULTS.md`
# finds the same with all 1,725 training documents as neighbours. For causal LMs, `jr.context.label_loglik`
# and `jr.output.verbalizer` score label words after the same templates.

# %% [markdown]
# ## 3. Chain-of-thought: a context, then parsing rules
#
# Chain-of-thought prompting (Wei et al. 2022) puts demonstrations *with worked rationales* before the query
# ("... so the answer is sport."); the model is expected to reason the same way, and a rule reads the class
# off its generated text: `jr.context.extract` takes what follows "the answer is", `jr.context.verbalize` maps
# a label word back to its class (-1: no label word, an abstention). `jr.context.chain_of_thought(ids)` is the
# fixed · input · concatenative manipulation that prepends the demonstrations' token ids. No generative LM
# ships offline, so the answer below is written by hand.

# %%
cot_template = jr.context.Template(
    demo="Story: {input}\nReasoning: {rationale} So the answer is {answer}.",
    query="Story: {input}\nReasoning:",
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

# %% [markdown]
# ## 4. Label words on a causal LM: verbalizer and label log-likelihood
#
# With a causal LM the answer is the next token. `jr.output.verbalizer(label_words, num_source=V)` (Schick &
# Schütze 2021; rule-based alignment) takes class `t`'s logit from the next-token logits of its label words;
# `jr.context.label_loglik` scores whole label sequences, `Σ_j log p(w_{t,j} | x, w_{t,<j})`, all classes in
# one `vmap`. No GPT-2 weights ship offline: this is a **tiny random GPT-2** (`jr.models.gpt2.from_config`, 2
# layers, width 32) over MiniLM's WordPiece vocabulary, where every class word is one token, so the two must
# agree on the winner (random, of course).

# %%
from jaxreprog.models import gpt2  # zoo modules import on first use

config = gpt2.GPT2Config(
    vocab_size=tok.get_vocab_size(),
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    max_positions=128,
    bos_id=None,
    eos_id=None,
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
