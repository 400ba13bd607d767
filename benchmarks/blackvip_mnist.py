"""BlackVIP + SPSA-GC vs BAR at equal black-box queries, EfficientNet-Lite0 → MNIST-5k (CPU, offline).

Both methods see the frozen ImageNet EfficientNet-Lite0 only through its outputs and
read them through the same frequency label map (FLM, fitted once from the initial
prompt: one query per training example, counted). Each trains until the same query
budget (``fit``'s ``ZerothOrder.budget``; a step costs ``evaluations · batch`` queries):

* ``bar``: padding VR (``jr.input.pad``, the digit in the canvas centre, a learned
  border) with BAR's one-sided sphere estimate (q + 1 queries per example per step),
  Adam on the VR schedule (Tsai, Chen & Ho, ICML 2020);
* ``pad_spsa_gc``: the same padding prompt trained with SPSA-GC (2q + 1 per step),
  separating the optimiser from the prompt;
* ``blackvip``: BlackVIP's coordinator (``jr.input.blackvip``: a *fixed random* conv
  encoder here, not the paper's MAE ViT-B, and a learned decoder and trigger) with
  SPSA-GC and BlackVIP's gain sequence (Oh et al. CVPR 2023).

Accuracy on held-out test images is recorded after every epoch, with the queries spent
so far, so the runs compare at equal query counts. One seed; a small train subset.

    python benchmarks/blackvip_mnist.py            # a few minutes on 2 cores
    python benchmarks/blackvip_mnist.py --quick    # smoke run: a tiny random CNN, random images

Prints a JSON record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxreprog as jr

METHODS = ("bar", "pad_spsa_gc", "blackvip")


class _Tiny(nn.Module):
    """A small random CNN standing in for EfficientNet-Lite0 in ``--quick`` (plumbing only)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
        return nn.Dense(20)(jnp.mean(x, axis=(1, 2)))


def tiny_model(size: int) -> jr.FrozenModel:
    spec = jr.ImageSpec(size=size, mean=0.5, std=0.25, num_classes=20, name="tiny-random-cnn")
    params = _Tiny().init(jax.random.key(0), jnp.zeros((1, *spec.shape)))
    return jr.from_linen(_Tiny(), params, spec)


def data(n_train: int, n_test: int, seed: int, batch_size: int, quick: bool):
    """MNIST-5k subsets (RGB, 28 px, [0, 1]); random images with ``quick`` (no data needed)."""
    if quick:
        rng = np.random.default_rng(seed)
        x = rng.uniform(size=(n_train + n_test, 28, 28, 3)).astype(np.float32)
        y = (np.arange(n_train + n_test) % 10).astype(np.int32)
        xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    else:
        xtr, ytr = jr.data.arrays("mnist5k", "train", rgb=True)
        xte, yte = jr.data.arrays("mnist5k", "test", rgb=True)
        rng = np.random.default_rng([seed, 1])
        i = np.sort(rng.permutation(len(ytr))[:n_train])
        xtr, ytr, xte, yte = xtr[i], ytr[i], xte[:n_test], yte[:n_test]
    train = jr.data.from_arrays(xtr, ytr, batch_size=batch_size, shuffle_seed=seed)
    test = jr.data.from_arrays(xte, yte, batch_size=100)
    return train, test


def run(method: str, model, train, test, *, budget: int, queries: int, seed: int, lr: dict) -> dict:
    flm = jr.output.flm(num_source=model.spec.num_classes, num_target=10)
    transform = jr.input.blackvip() if method == "blackvip" else jr.input.pad(target_size=28)
    program = jr.reprogram(model, input=transform, output=flm)
    if method == "bar":
        zo = jr.train.ZerothOrder(queries=queries, smoothing=0.01, budget=budget)
        kwargs = {"learning_rate": lr["bar"]}
    else:
        zo = jr.train.ZerothOrder(queries=queries, smoothing=0.01, estimator="spsa_gc", budget=budget)
        kwargs = {"learning_rate": lr[method]}  # a of BlackVIP's gain a / (i + 2)^0.4, SGD + SPSA-GC momentum
    key = jax.random.key(seed)
    theta = program.init(key)
    learnable = sum(
        np.size(v) for v, f in zip(jax.tree.leaves(theta), jax.tree.leaves(program.trainable(theta))) if f
    )
    t0 = time.perf_counter()
    # epochs: more than the budget pays for; the budget stops training
    _, history = jr.train.fit(
        program, model, train, epochs=10_000, key=key, gradient=zo, eval_data=test, **kwargs
    )
    curve = [(int(h["queries"]), float(h["eval_acc"])) for h in history]
    return {
        "method": method,
        "learnable": int(learnable),
        "evaluations_per_example": zo.evaluations,
        "curve": curve,
        "final_acc": curve[-1][1],
        "queries": curve[-1][0],
        "seconds": time.perf_counter() - t0,
    }


def at(curve: Sequence[tuple[int, float]], q: int) -> float:
    """Accuracy of the last evaluation made with at most ``q`` queries spent."""
    seen = [acc for spent, acc in curve if spent <= q]
    return seen[-1] if seen else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run on random weights and data")
    p.add_argument("--budget", type=int, default=400_000, help="black-box queries per method")
    p.add_argument("--queries", type=int, default=5, help="q: directions per step (BlackVIP's SP_AVG)")
    p.add_argument("--train", type=int, default=320)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="the model's canvas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr-bar", type=float, default=0.05, help="BAR: Adam's learning rate (VR schedule)")
    p.add_argument("--lr-spsa", type=float, default=0.01, help="SPSA-GC on the pad prompt: the gain's a")
    p.add_argument(
        "--lr-blackvip", type=float, default=0.001, help="BlackVIP: the gain's a (the paper: 0.01)"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = p.parse_args(argv)
    if args.quick:
        args.budget, args.train, args.test, args.batch_size, args.size = 2 * 11 * 8 + 16, 16, 20, 8, 32
    t0 = time.perf_counter()
    model = tiny_model(args.size) if args.quick else jr.models.load("efficientnet_lite0", size=args.size)
    train, test = data(args.train, args.test, args.seed, args.batch_size, args.quick)
    lr = {"bar": args.lr_bar, "pad_spsa_gc": args.lr_spsa, "blackvip": args.lr_blackvip}
    runs = [
        run(m, model, train, test, budget=args.budget, queries=args.queries, seed=args.seed, lr=lr)
        for m in args.methods
    ]
    common = [int(q) for q in np.linspace(0, args.budget, 5)[1:]]
    record = {
        "command": "python benchmarks/blackvip_mnist.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "budget": args.budget,
        "runs": runs,
        "at_equal_queries": {str(q): {r["method"]: at(r["curve"], q) for r in runs} for q in common},
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
