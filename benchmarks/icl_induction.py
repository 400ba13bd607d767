"""In-context learning in a small GPT-2 trained from scratch on CPU: accuracy vs demonstrations.

No pretrained causal LM installs offline, so this script first *pretrains* the
library's GPT-2 module (random init, optax AdamW) on a synthetic in-context task,
then freezes it and measures prompt instruction on it: k demonstrations rendered
by a :class:`jaxreprog.context.Template`, chosen by :mod:`jaxreprog.context.select`,
classified by the verbalizer alignment (the next-token logits of the label words).

The task (in-context classification with a per-sequence label mapping, after
Chan et al. 2022, *Data distributional properties drive emergent in-context
learning*): ``C`` classes of ``M`` item tokens each; every sequence draws a fresh
bijection class -> label token, so the label of a query item is only knowable from
demonstrations in the same sequence::

    <s> i5 l2 i1 l0 i7 l6 i5      ->  l2

With the default ``M = 1`` this is associative recall (the induction-head task,
Olsson et al. 2022); ``--items-per-class 4`` asks for the label of an item of a
demonstrated class that may itself be unseen. A demonstration of the query's class
fixes the answer; otherwise the best possible guess is uniform over the labels no
demonstration used. That Bayes-optimal accuracy is printed beside the model's.

    python benchmarks/icl_induction.py            # ~3 CPU minutes
    python benchmarks/icl_induction.py --quick    # smoke run (the test suite's)

Prints a JSON record (accuracy per k, the loss curve, seed, CPU time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreprog as jr
from jaxreprog.context import select
from jaxreprog.models import gpt2


class Task(NamedTuple):
    classes: int = 8
    items_per_class: int = 1
    max_demos: int = 8

    @property
    def items(self) -> int:
        return self.classes * self.items_per_class

    def vocab(self) -> dict[str, int]:
        words = (
            ["<pad>", "<s>"] + [f"i{j}" for j in range(self.items)] + [f"l{c}" for c in range(self.classes)]
        )
        return {w: i for i, w in enumerate(words)}

    def label_ids(self) -> list[list[int]]:
        """The verbalizer: label word ``l{c}`` for label ``c``."""
        v = self.vocab()
        return [[v[f"l{c}"]] for c in range(self.classes)]

    def class_of(self, item: np.ndarray) -> np.ndarray:
        return item // self.items_per_class


TEMPLATE = jr.context.Template(instruction="<s>", demo="{input} {answer}", query="{input}", separator=" ")


def training_batch(task: Task, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """``<s> x_1 y_1 ... x_n y_n`` with ``n = max_demos + 1``, as token ids ``(B, 2n + 1)``.

    Predicting ``y_i`` at ``x_i`` sees ``i - 1`` demonstrations, so one sequence
    trains every k from 0 to ``max_demos`` at once.
    """
    n = task.max_demos + 1
    items = rng.integers(0, task.items, (batch, n))
    mapping = np.argsort(rng.random((batch, task.classes)), axis=1)  # class -> label, per sequence
    labels = np.take_along_axis(mapping, task.class_of(items), axis=1)
    ids = np.empty((batch, 2 * n + 1), np.int32)
    ids[:, 0] = 1
    ids[:, 1::2] = 2 + items
    ids[:, 2::2] = 2 + task.items + labels
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def loss_fn(model: jr.FrozenModel, params, x: dict) -> jax.Array:
    """Cross-entropy of the label tokens (next token after each item), over the whole vocabulary."""
    logits = gpt2.logits(model, params, x).logits[:, 1::2]  # at each item
    targets = x["input_ids"][:, 2::2]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def pretrain(task: Task, config: gpt2.GPT2Config, steps: int, batch: int, lr: float, seed: int):
    model = gpt2.from_config(config, jax.random.PRNGKey(seed))
    opt = optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps), weight_decay=0.01
    )

    @jax.jit
    def step(params, state, x):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model, p, x))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    params, state, losses = model.params, opt.init(model.params), []
    for _ in range(steps):
        params, state, loss = step(params, state, training_batch(task, rng, batch))
        losses.append(float(loss))
    return model._replace(params=params), losses  # from here on: frozen


def episodes(task: Task, seed: int, n: int, k: int, policy: str):
    """``n`` prompts with ``k`` demonstrations each, selected from the pool of all items by
    ``jr.context.select`` (``random``: k distinct items, or with replacement when k exceeds
    the pool; ``balanced``: k / C per class), in random order; with labels."""
    k_sel, k_order, k_query = jax.random.split(jax.random.PRNGKey(seed), 3)
    keys = jax.random.split(k_sel, n)
    pool_classes = jnp.asarray(task.class_of(np.arange(task.items)))
    if k == 0:
        demo_items = np.zeros((n, 0), np.int64)
    elif policy == "random" and k <= task.items:
        demo_items = jax.vmap(lambda s: select.random(s, task.items, k))(keys)
    elif policy == "random":  # more demonstrations than items: draw with replacement, as in training
        demo_items = jax.random.randint(k_sel, (n, k), 0, task.items)
    elif policy == "balanced":
        per_class = k // task.classes
        demo_items = jax.vmap(lambda s: select.balanced(s, pool_classes, per_class, task.classes))(keys)
    else:
        raise ValueError(f"unknown policy {policy!r}")
    if k:
        demo_items = np.asarray(select.order(demo_items, "random", key=k_order))
    mapping = np.argsort(np.random.default_rng(seed).random((n, task.classes)), axis=1)
    query = np.asarray(jax.random.randint(k_query, (n,), 0, task.items))
    demo_labels = np.take_along_axis(mapping, task.class_of(demo_items), axis=1)
    y = mapping[np.arange(n), task.class_of(query)]
    vocab = task.vocab()
    rows = []
    for e in range(n):
        demos = [jr.context.Demo(f"i{i}", f"l{c}") for i, c in zip(demo_items[e], demo_labels[e])]
        ids, kept = jr.context.encode(
            TEMPLATE, f"i{query[e]}", demos, tokenize=lambda s: [vocab[w] for w in s.split()], max_length=64
        )
        assert kept == k
        rows.append(ids)
    ids = np.asarray(rows, np.int32)
    # Bayes-optimal accuracy: certain if the query's class was demonstrated, else uniform
    # over the labels no demonstration used.
    seen = task.class_of(demo_items) == task.class_of(query)[:, None]
    distinct = np.array([len(set(r)) for r in task.class_of(demo_items).tolist()]) if k else np.zeros(n)
    bayes = np.where(seen.any(1), 1.0, 1.0 / np.maximum(task.classes - distinct, 1)).mean()
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}, y, float(bayes)


def evaluate(model: jr.FrozenModel, task: Task, settings: list[tuple[int, str]], n: int, seed: int):
    """Accuracy and Bayes-optimal accuracy for each ``(k, policy)``: every prompt of every
    setting in one right-padded batch, one forward pass of the frozen model."""
    parts = [episodes(task, seed + i, n, k, policy) for i, (k, policy) in enumerate(settings)]
    length = max(x["input_ids"].shape[1] for x, _, _ in parts)
    pad = lambda a: np.pad(a, ((0, 0), (0, length - a.shape[1])))  # noqa: E731
    x = {key: np.concatenate([pad(p[0][key]) for p in parts]) for key in ("input_ids", "attention_mask")}
    verbalizer = jr.output.verbalizer(task.label_ids(), num_source=model.spec.vocab_size)
    scores = verbalizer.apply((), jax.jit(model.apply)(model.params, x))  # (settings * n, classes)
    correct = np.asarray(jnp.argmax(scores, -1)).reshape(len(settings), n) == np.stack([p[1] for p in parts])
    return [(float(c.mean()), p[2]) for c, p in zip(correct, parts)]


def main(argv: list[str] | None = None, quick: bool = False) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--eval-episodes", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--items-per-class", type=int, default=1, help=">1: the query may be an unseen item")
    ap.add_argument("--max-demos", type=int, default=8, help="demonstrations per training sequence")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: a few steps, tiny evaluation")
    args = ap.parse_args(argv)
    quick = quick or args.quick
    if quick:
        args.steps, args.eval_episodes, args.hidden, args.layers = 30, 32, 32, 1
    start_wall, start_cpu = time.time(), time.process_time()

    task = Task(args.classes, args.items_per_class, args.max_demos)
    config = gpt2.GPT2Config(
        vocab_size=len(task.vocab()),
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        max_positions=2 * task.max_demos + 3,
        bos_id=1,
        eos_id=None,
    )
    model, losses = pretrain(task, config, args.steps, args.batch_size, args.lr, args.seed)
    ks = [k for k in (0, 1, 2, 4, 8, 16, 32) if k <= task.max_demos] if not quick else [0, 4]
    settings = [(k, "random") for k in ks] + [(task.classes, "balanced")]
    results = evaluate(model, task, settings, args.eval_episodes, args.seed + 1)
    accuracy = {k: r[0] for k, r in zip(ks, results)}
    bayes = {k: r[1] for k, r in zip(ks, results)}
    balanced = results[-1]
    window = max(1, min(100, args.steps // 4))
    record = {
        "benchmark": "icl_induction",
        "command": " ".join(["python", "benchmarks/icl_induction.py", *(argv or [])])
        + (" --quick" if quick else ""),
        "task": task._asdict(),
        "model": {
            "hidden": args.hidden,
            "layers": args.layers,
            "heads": args.heads,
            "vocab": config.vocab_size,
        },
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "losses": losses if quick else losses[:: max(1, args.steps // 50)],
        "accuracy_random_demos": accuracy,
        "bayes_random_demos": bayes,
        "accuracy_balanced_one_per_class": balanced[0],
        "bayes_balanced_one_per_class": balanced[1],
        "chance": 1.0 / task.classes,
        "eval_episodes": args.eval_episodes,
        "wall_s": round(time.time() - start_wall, 1),
        "cpu_s": round(time.process_time() - start_cpu, 1),
        "machine": f"{jax.devices()[0].platform}, {jax.device_count()} device(s)",
    }
    return record


if __name__ == "__main__":
    rec = main(sys.argv[1:])
    rec.pop("losses")
    print(json.dumps(rec, indent=1))
