"""The candidate axis, measured: K prompts in one vmapped step; K label mappings on one forward pass.

1. Training: per-candidate cost of ``fit(candidates=16)`` against one run
   (``fit(candidates=None)``), per epoch after compilation. Goal <= 1.0x.
2. Output-only candidates: ``evaluate_alignments`` with 64 one-to-one label
   mappings against the same call with one mapping (one forward pass). Goal <= 1.2x.

By default both use a small CNN (random weights: speed does not depend on them);
``--model efficientnet_lite0`` runs them on the real ImageNet backbone, where the
frozen forward pass dominates as it does in practice.

Run: ``python benchmarks/candidates.py [--quick] [--model efficientnet_lite0 --size 64]
[--only align|train]``. Results: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import jaxreprog as jr
from jaxreprog.taxonomy import Format, Location, Operator, OutputAlignment, Tags


class SmallCNN(nn.Module):
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):
        for width in (32, 64, 64):
            x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def additive(size):
    """Learnable full-image additive prompt (a watermark over the whole input)."""
    return jr.InputTransform(
        init=lambda key, spec: {"delta": jnp.zeros((size, size, 3))},
        apply=lambda theta, x, spec, *, key=None: spec.normalize(x + theta["delta"]),
        tags=Tags(Format.LEARNABLE, Location.INPUT, Operator.ADDITIVE),
    )


def label_mapping(num_source, num_target):
    """One-to-one label mapping as a one-hot matrix (the state ILM/FLM refit)."""
    return jr.Alignment(
        init=lambda key: {
            "w": jax.nn.one_hot(jax.random.permutation(key, num_source)[:num_target], num_source).T
        },
        apply=lambda state, logits: logits @ state["w"],
        trainable=False,
        tags=Tags(format=Format.FIXED, alignment=OutputAlignment.RULE_BASED),
    )


def model_and_data(name, size, n, batch, num_classes=1000):
    if name == "small_cnn":
        module = SmallCNN(num_classes)
        spec = jr.ImageSpec(size=size, mean=0.5, std=0.25, num_classes=num_classes)
        model = jr.from_linen(module, module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))), spec)
    else:
        model = jr.models.load(name, size=size)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return model, jr.data.from_arrays(x, y, batch_size=batch, shuffle_seed=0)


def epoch_seconds(program, model, data, candidates, epochs):
    _, history = jr.train.fit(
        program, model, data, epochs=epochs, key=jax.random.key(0), candidates=candidates, progress=False
    )
    return statistics.median(h["seconds"] for h in history[1:])  # epoch 1 includes compilation


def timed(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--model", default="small_cnn", help="small_cnn or a jr.models name")
    parser.add_argument("--size", type=int, help="image size (default 32 with --quick, else 64)")
    parser.add_argument("--only", choices=("align", "train"), help="run one of the two benchmarks")
    args = parser.parse_args()
    size, n, batch, epochs, repeats = (32, 128, 32, 3, 2) if args.quick else (64, 1024, 128, 4, 5)
    size = args.size or size
    print(
        f"backend {jax.default_backend()}, {jax.device_count()} device(s); {args.model}, "
        f"images {size}px, batch {batch}, {n} images"
    )
    model, data = model_and_data(args.model, size, n, batch)
    program = jr.reprogram(model, input=additive(size), output=label_mapping(1000, 10))
    if args.only != "align":
        one = epoch_seconds(program, model, data, None, epochs)
        k = 16
        many = epoch_seconds(program, model, data, k, epochs)
        ratio = many / k / one
        print(f"train  K=1: {one:.3f} s/epoch   K={k}: {many:.3f} s/epoch   per candidate: {ratio:.2f}x")
    if args.only != "train":
        theta = program.init(jax.random.key(0))
        states = jr.candidates.init(program, jax.random.split(jax.random.key(1), 64))["output"]
        single = jax.tree.map(lambda s: s[:1], states)
        t1 = timed(lambda: jr.train.evaluate_alignments(program, model, theta, single, data), repeats)
        t64 = timed(lambda: jr.train.evaluate_alignments(program, model, theta, states, data), repeats)
        print(f"align  K=1: {t1:.3f} s/pass     K=64: {t64:.3f} s/pass     ratio: {t64 / t1:.2f}x")


if __name__ == "__main__":
    main()
