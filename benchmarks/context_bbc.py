"""Prompt instruction with the frozen all-MiniLM-L6-v2 on BBC News: nothing trained.

Every classifier here is the frozen sentence encoder plus a fixed context and a
fixed rule; the numbers are test accuracies (200 documents, 5 classes):

a. zero-shot by label descriptions: ``argmax_c cos(f(doc), f("<class> news"))``
   (:func:`jaxreprog.context.description_logits`);
b. the same with an instruction inserted after ``[CLS]``
   (:func:`jaxreprog.context.instruction`); the instruction is chosen among a few
   candidates by validation accuracy, all candidates scored in one vmapped call
   per batch (:func:`jaxreprog.context.select_prefix`);
c1. k-NN demonstrations as a classifier: the majority label of the k training
   documents nearest in embedding (:func:`jaxreprog.context.select.knn`,
   :func:`jaxreprog.context.vote`), k chosen on validation;
c2. k-NN demonstrations in the context (KATE, Liu et al. 2022): the query's k
   nearest training documents rendered before it as ``"<class> news: <first
   words>"`` by a :class:`jaxreprog.context.Template`, then (a)'s rule. These
   prompts must fit 128 tokens, so the query is cut to its first 80 word pieces
   too, and (a) on the same cut query is reported beside it.

    python benchmarks/context_bbc.py      # ~3 CPU minutes; document embeddings cached

The embedding cache (``--cache``, default ``~/.cache/jaxreprog``) is keyed by the
bbc_news version and a hash of the split texts (:func:`cache_name`).

Deterministic (no sampling). Prints a JSON record (accuracies, chosen instruction and k, CPU time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxreprog as jr

INSTRUCTIONS = (
    "",
    "News article:",
    "The topic of this BBC news story is",
    "Classify this news article as business, entertainment, politics, sport or technology.",
    "Represent the news article for classifying its topic:",
)


def embedder(model: jr.FrozenModel, batch_size: int):
    """``tokens -> (N, 384)`` in fixed-size batches (the last one padded: one compile)."""
    apply = jax.jit(model.apply)

    def embed(x: dict[str, np.ndarray]) -> np.ndarray:
        n = len(x["input_ids"])
        out = []
        for i in range(0, n, batch_size):
            b = {k: v[i : i + batch_size] for k, v in x.items()}
            short = batch_size - len(b["input_ids"])
            b = {k: np.pad(v, ((0, short), (0, 0))) for k, v in b.items()}
            b["attention_mask"][len(b["attention_mask"]) - short :, 0] = 1  # keep padded rows finite
            out.append(np.asarray(apply(model.params, b))[: batch_size - short])
        return np.concatenate(out)

    return embed


def accuracy(logits: jax.Array | np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y))


def first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def cut(text: str, tok, max_tokens: int) -> str:
    """The longest whole-word beginning of ``text`` within ``max_tokens`` word pieces."""
    words = text.split()
    lo, hi = 0, len(words)
    while lo < hi:  # binary search on the number of words
        mid = (lo + hi + 1) // 2
        if len(tok.encode(" ".join(words[:mid]), add_special_tokens=False).ids) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def cache_name(texts: dict[str, tuple[list[str], np.ndarray]], version, max_length: int) -> str:
    """``bbc_news-<version>_minilm_<max_length>_<sha256 of the split names and texts, 12 hex>.npz``."""
    digest = hashlib.sha256()
    for split in sorted(texts):
        digest.update(f"\0{split}\0{len(texts[split][0])}".encode())
        for text in texts[split][0]:
            digest.update(text.encode() + b"\0")
    return f"bbc_news-{version}_minilm_{max_length}_{digest.hexdigest()[:12]}.npz"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--knn-k", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    ap.add_argument("--demos", type=int, default=2, help="k for demonstrations in the context (c2)")
    ap.add_argument("--demo-words", type=int, default=20)
    ap.add_argument("--query-tokens", type=int, default=80)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "jaxreprog"))
    args = ap.parse_args(argv)
    start_wall, start_cpu = time.time(), time.process_time()

    model = jr.models.load("all_minilm_l6_v2")
    tok = jr.data.load_tokenizer("all_minilm_l6_v2")
    raw = jr.context.template._unpadded(tok)  # word pieces of a text, no [PAD]s, no cut
    embed = embedder(model, args.batch_size)
    texts = {s: jr.data.arrays("bbc_news", s) for s in ("train", "validation", "test")}  # (list[str], y)
    classes = jr.data.builder("bbc_news").info.features["label"].names
    words = [c.removesuffix("s") for c in classes]  # "sports" -> "sport"
    descriptions = embed(jr.data.tokenize([f"{w} news" for w in words], tok, max_length=16))
    head = lambda e: jr.context.description_logits(jnp.asarray(e), descriptions, args.temperature)  # noqa: E731
    tokens = {s: jr.data.tokenize(t[0], tok, max_length=args.max_length) for s, t in texts.items()}
    y = {s: np.asarray(t[1]) for s, t in texts.items()}

    # Document embeddings, cached: every method below reuses them. The file name carries the dataset
    # version and a hash of the split texts, so embeddings of other splits are never reused.
    path = os.path.join(args.cache, cache_name(texts, jr.data.builder("bbc_news").version, args.max_length))
    if os.path.isfile(path):
        emb = dict(np.load(path))
    else:
        emb = {s: embed(x) for s, x in tokens.items()}
        os.makedirs(args.cache, exist_ok=True)
        np.savez(path, **emb)
    t_embed = time.process_time() - start_cpu
    rec: dict = {
        "benchmark": "context_bbc",
        "command": " ".join(["python", "benchmarks/context_bbc.py", *(argv or [])]),
    }

    # (a) zero-shot by label descriptions.
    rec["a_zero_shot"] = {s: accuracy(head(emb[s]), y[s]) for s in ("validation", "test")}
    progress(rec, "a_zero_shot")

    # (c1) k-NN vote over training embeddings; k chosen on validation.
    def knn_vote(split: str, k: int) -> float:
        idx, _ = jr.context.select.knn(jnp.asarray(emb[split]), jnp.asarray(emb["train"]), k)
        return float(
            np.mean(np.asarray(jr.context.vote(jnp.asarray(y["train"])[idx].T, len(classes))) == y[split])
        )

    val_k = {k: knn_vote("validation", k) for k in args.knn_k}
    k_best = max(val_k, key=lambda k: (val_k[k], -k))
    rec["c1_knn_vote"] = {"validation_per_k": val_k, "chosen_k": k_best, "test": knn_vote("test", k_best)}
    progress(rec, "c1_knn_vote")

    # (c2) the k nearest training documents as demonstrations in the context.
    template = jr.context.Template(demo="{answer} news: {input}", query="{input}", separator=" . ")
    idx, _ = jr.context.select.knn(jnp.asarray(emb["test"]), jnp.asarray(emb["train"]), args.demos)
    idx = np.asarray(jr.context.select.order(idx, "nearest_last"))
    room = args.max_length - 2  # [CLS] ... [SEP]
    prompts, kept, queries = [], [], []
    for q, row in zip(texts["test"][0], idx):
        demos = [
            jr.context.Demo(first_words(texts["train"][0][j], args.demo_words), words[y["train"][j]])
            for j in row
        ]
        query = cut(q, raw, args.query_tokens)
        ids_q, n_kept = jr.context.encode(template, query, demos, tokenize=raw, max_length=room)
        prompts.append(ids_q)
        kept.append(n_kept)
        queries.append(query)
    x_demo = pad_rows(
        [[tok.token_to_id("[CLS]"), *p, tok.token_to_id("[SEP]")] for p in prompts], args.max_length
    )
    x_cut = jr.data.tokenize(queries, tok, max_length=args.max_length)
    rec["c2_knn_demos_in_context"] = {
        "k": args.demos,
        "mean_demos_kept": float(np.mean(kept)),
        "test": accuracy(head(embed(x_demo)), y["test"]),
        "test_same_cut_query_no_demos": accuracy(head(embed(x_cut)), y["test"]),
        "query_tokens": args.query_tokens,
        "demo_words": args.demo_words,
    }
    progress(rec, "c2_knn_demos_in_context")
    # (b) instruction prefix, chosen on validation; K candidates in one vmapped call per batch.
    ids, mask = jr.context.stack([raw.encode(t, add_special_tokens=False).ids for t in INSTRUCTIONS])
    val_batches = [
        (
            {k: v[i : i + args.batch_size] for k, v in tokens["validation"].items()},
            y["validation"][i : i + args.batch_size],
        )
        for i in range(0, len(y["validation"]), args.batch_size)
    ]
    align = lambda d, e: jr.context.description_logits(e, d, args.temperature)  # noqa: E731
    choice = jr.context.select_prefix(
        model, model.params, ids, mask, val_batches, align=align, align_state=descriptions
    )
    best = INSTRUCTIONS[choice.index]
    prompt = jr.context.instruction(raw.encode(best, add_special_tokens=False).ids) if best else None
    test_x = prompt.apply((), tokens["test"], model.spec) if prompt else tokens["test"]
    rec["b_instruction"] = {
        "validation_per_candidate": dict(zip(INSTRUCTIONS, np.asarray(choice.accuracy).round(4).tolist())),
        "chosen": best,
        "test": accuracy(head(embed({k: np.asarray(v) for k, v in test_x.items()})), y["test"]),
    }

    rec.update(
        seed="none (deterministic)",
        max_length=args.max_length,
        embedding_cache=os.path.basename(path),
        cpu_s_embedding_cache=round(t_embed, 1),
        cpu_s=round(time.process_time() - start_cpu, 1),
        wall_s=round(time.time() - start_wall, 1),
        machine=f"{jax.devices()[0].platform}, {os.cpu_count()} cores",
    )
    return rec


def progress(rec: dict, key: str) -> None:
    print(json.dumps({key: rec[key]}), file=sys.stderr, flush=True)


def pad_rows(rows: list[list[int]], length: int) -> dict[str, np.ndarray]:
    ids = np.zeros((len(rows), length), np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
