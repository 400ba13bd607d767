"""Soft-prompt tuning (Lester et al. 2021) of the frozen all-MiniLM-L6-v2 on BBC News.

The model and the head stay frozen; only ``P`` prompt vectors learn. The head is
the zero-shot classifier of a sentence-embedding model: cosine similarity of the
document embedding to the embeddings of the class descriptions ("business news",
...), divided by a temperature. So the zero-shot baseline and the tuned model
differ by the prompt alone.

    python benchmarks/bbc_soft_prompt.py                 # defaults below, ~1 min CPU
    python benchmarks/bbc_soft_prompt.py --per-class 365 --epochs 5 --max-length 128

Prints a JSON record (accuracies on the test split, command, seed, wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np
import optax

import jaxreprog as jr
from jaxreprog.models.text import word_embeddings
from jaxreprog.taxonomy import Format, OutputAlignment, Tags


def cosine_head(prototypes: jax.Array, temperature: float) -> jr.Alignment:
    """Fixed alignment: ``logits = z · prototypesᵀ / T`` (unit vectors: cosine similarity)."""
    return jr.Alignment(
        init=lambda key: {"prototypes": prototypes},
        apply=lambda state, z: z @ state["prototypes"].T / temperature,
        trainable=False,
        tags=Tags(format=Format.FIXED, alignment=OutputAlignment.RULE_BASED),
    )


def subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)])
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-length", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=64, help="training documents per class")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--init", default="labels", choices=["labels", "vocab", "uniform"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    start = time.time()

    model = jr.models.load("all_minilm_l6_v2")
    tok = jr.data.load_tokenizer("all_minilm_l6_v2")
    load = lambda split: jr.data.arrays("bbc_news", split, tokenizer=tok, max_length=args.max_length)  # noqa: E731
    (x_train, y_train), (x_test, y_test) = load("train"), load("test")
    classes = jr.data.builder("bbc_news").info.features["label"].names
    descriptions = [f"{'sport' if c == 'sports' else c} news" for c in classes]
    embed = jax.jit(model.apply)
    prototypes = embed(model.params, jr.data.tokenize(descriptions, tok, max_length=16))

    keep = subset(y_train, args.per_class, args.seed)
    x_train = {k: v[keep] for k, v in x_train.items()}
    y_train = y_train[keep]

    label_ids = [tok.encode(c, add_special_tokens=False).ids for c in descriptions]
    prompt = jr.embedding.soft_prompt(
        args.prompt_length,
        init=args.init,
        table=None if args.init == "uniform" else word_embeddings(model.params),
        label_ids=label_ids,
        where="after_first",
    )
    program = jr.reprogram(model, embedding=prompt, output=cosine_head(prototypes, args.temperature))
    init, step = jr.train.make_step(program, optax.adam(args.lr))  # frozen params: an argument of step
    step = jax.jit(step)
    state = init(program.init(jax.random.key(args.seed)))
    step_key = jax.random.key(args.seed)  # the program is deterministic: the key is unused

    predict = jax.jit(lambda theta, params, x: program.apply(theta, params, x).argmax(-1))
    zero_shot = jax.jit(lambda params, x: (embed(params, x) @ prototypes.T).argmax(-1))

    def accuracy(fn, x, y, batch=50):
        hits = 0
        for i in range(0, len(y), batch):
            hits += int(
                (np.asarray(fn({k: v[i : i + batch] for k, v in x.items()})) == y[i : i + batch]).sum()
            )
        return hits / len(y)

    acc_zero_shot = accuracy(lambda x: zero_shot(model.params, x), x_test, y_test)
    print(f"zero-shot test accuracy {acc_zero_shot:.4f}", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    n = len(y_train)
    for epoch in range(args.epochs):
        order = rng.permutation(n)
        losses = []
        for i in range(0, n - args.batch_size + 1, args.batch_size):
            idx = order[i : i + args.batch_size]
            batch = {k: v[idx] for k, v in x_train.items()}
            state, metrics = step(state, model.params, (batch, y_train[idx]), step_key)
            losses.append(metrics["loss"])  # read once per epoch: no host sync per step
        print(f"epoch {epoch + 1}: train loss {np.mean(jax.device_get(losses)):.4f}", file=sys.stderr)
    acc_prompt = accuracy(lambda x: predict(state.theta, model.params, x), x_test, y_test)
    record = {
        "command": "python benchmarks/bbc_soft_prompt.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args),
        "train_documents": int(n),
        "test_documents": len(y_test),
        "zero_shot_test_accuracy": acc_zero_shot,
        "soft_prompt_test_accuracy": acc_prompt,
        "descriptions": descriptions,
        "wall_seconds": round(time.time() - start, 1),
        "backend": jax.default_backend(),
    }
    print(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
