"""Voice2Series on real UCR data: reprogram a frozen 1-D source model vs train it from scratch.

Voice2Series (Yang et al. ICML 2021) reprograms a frozen acoustic model for time-series
classification: the target series is zero-padded to the source's input length L, a
learned program is added outside its span, and the frozen model's source logits are
read through a many-to-one label map::

    x' = pad(x) + M ⊙ θ          (jr.input.sequence_pad)
    y  = mean_{s ∈ S_t} f(x')_s   (jr.output.freqmap: m source classes per target class)

No pretrained acoustic model installs offline, so this script first *pretrains* its own
small source model (a flax linen module wrapped by ``jr.from_linen``) on the UCR set
with the most classes here (OSULeaf, 6 classes, L = 427), freezes it, and then, for each
target (GunPoint, ItalyPowerDemand, ArrowHead; all shorter than 427), compares on the UCR
test split (the archive's own split; last epoch, no selection on test):

* ``reprogram``: only θ (L numbers) learns, through ``jr.train.fit`` (Adam, the VR
  schedule); the frequency map is fitted once from the initial program (``Refit.ONCE``);
* ``reprogram_untrained``: the same, on a frozen *random-init* copy of the source
  model (does pretraining matter?);
* ``scratch``: the same architecture with a C-way head, every weight trained on the
  target at its own length, for as many steps as ``reprogram``.

The source model is a small transformer (``--model transformer``, default): a strided conv
stem, learned positions, two encoder blocks, mean pooling. ``--model fcn`` is the
convolutional baseline of Wang et al. 2017 (conv blocks, global average pooling), and it
shows why the source model needs global mixing: the program sits outside the target's
span, so with local convolutions and an average pool its features reach the pooled vector
as an input-independent constant (only the receptive field at the span's two edges mixes
them), and a constant before the linear head is only a bias on the logits; the program
cannot change which inputs the model separates. Attention lets the program's tokens
act on the target's.

Each row is the mean (and spread) over ``--seeds`` seeds. UCR train sets are tiny
(36-67 series), so the numbers are noisy; read them as a mechanism check.

    python benchmarks/voice2series_ucr.py           # a few CPU minutes
    python benchmarks/voice2series_ucr.py --quick   # smoke run (the test suite's)

Prints a JSON record.
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreprog as jr

SOURCE = "ucr_osu_leaf"
TARGETS = ("ucr_gun_point", "ucr_italy_power", "ucr_arrow_head")
VALUE_RANGE = (-6.0, 6.0)  # the sets are z-normalised per series; all values lie within ±3.7


class FCN(nn.Module):
    """Fully convolutional network for series (Wang et al. 2017), narrowed: conv blocks
    (kernels 8, 5, 3) of ``width``·(1, 2, 1) channels, each LayerNorm + ReLU, then global
    average pooling over time and a dense head. Any input length works."""

    num_classes: int
    width: int = 32
    kernels: tuple[int, ...] = (8, 5, 3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (N, T, C) -> (N, num_classes)
        for i, kernel in enumerate(self.kernels):
            x = nn.Conv(self.width * (2 if i == 1 else 1), (kernel,), padding="SAME")(x)
            x = nn.relu(nn.LayerNorm()(x))
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=1))


class Transformer(nn.Module):
    """A small series transformer: a strided conv stem (kernel 8, stride 4) makes ⌈T/4⌉ tokens
    of ``width`` channels, plus learned positions; ``layers`` pre-LN encoder blocks (``heads``
    heads, MLP ×2); LayerNorm, mean over tokens, a dense head. Its position table is
    sized by the input length it is initialised with."""

    num_classes: int
    width: int = 32
    layers: int = 2
    heads: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (N, T, C) -> (N, num_classes)
        x = nn.Conv(self.width, (8,), strides=(4,), padding="SAME", name="stem")(x)
        x = x + self.param("pos", nn.initializers.normal(0.02), x.shape[1:])
        for _ in range(self.layers):
            x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x))
            h = nn.gelu(nn.Dense(2 * self.width)(nn.LayerNorm()(x)))
            x = x + nn.Dense(self.width)(h)
        return nn.Dense(self.num_classes)(jnp.mean(nn.LayerNorm()(x), axis=1))


Model = FCN | Transformer


def init_variables(module: Model, length: int, seed: int) -> dict:
    """LeCun-normal kernels (variance 1/fan-in), zero biases, unit LayerNorm scales, drawn in numpy.

    Flax's own initialisers give the same distributions; drawing on the host skips
    compiling them (seconds per module on XLA:CPU, more than the training step).
    """
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, length, 1), jnp.float32))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [getattr(p, "key", "") for p in path]
        if names[-1] == "kernel":  # attention's query/key/value kernels are (in, heads, head_dim)
            fan_in = leaf.shape[0] if names[-2] in ("query", "key", "value") else np.prod(leaf.shape[:-1])
            return rng.normal(0.0, float(fan_in) ** -0.5, leaf.shape).astype(np.float32)
        if names[-1] == "pos":
            return rng.normal(0.0, 0.02, leaf.shape).astype(np.float32)
        return (np.ones if names[-1] == "scale" else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def train_classifier(
    module: Model, x: np.ndarray, y: np.ndarray, *, steps: int, batch: int, lr: float, seeds: Sequence[int]
) -> tuple[dict, np.ndarray]:
    """Every weight of ``module`` trained on ``(x, y)`` (Adam, cosine decay), one run per seed in
    one vmapped step (seed: initialisation and batch order); ``(stacked variables, losses (steps, S))``."""
    variables = [init_variables(module, x.shape[1], seed) for seed in seeds]
    variables = jax.tree.map(lambda *v: jnp.stack(v), *variables)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def step(variables, state, xb, yb):
        def loss_fn(v):
            logits = module.apply(v, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = jax.value_and_grad(loss_fn)(variables)
        updates, state = opt.update(grads, state, variables)
        return optax.apply_updates(variables, updates), state, loss

    step = jax.jit(jax.vmap(step))
    rngs = [np.random.default_rng(seed) for seed in seeds]
    state, losses = jax.vmap(opt.init)(variables), []
    size = min(batch, len(x))
    for _ in range(steps):
        index = np.stack([rng.choice(len(x), size=size, replace=False) for rng in rngs])
        variables, state, loss = step(variables, state, x[index], y[index])
        losses.append(np.asarray(loss))
    return variables, np.stack(losses)


def accuracy(module: Model, variables: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Test accuracy of each of the stacked ``variables``: ``(S,)``."""
    logits = jax.jit(jax.vmap(module.apply, in_axes=(0, None)))(variables, x)
    return np.mean(np.asarray(jnp.argmax(logits, -1)) == y, axis=-1)


def source_model(net: Model, variables: dict, length: int) -> jr.FrozenModel:
    """``net`` with ``variables`` as a frozen model of series of ``length`` (z-normalised values)."""
    spec = jr.SequenceSpec(length=length, value_range=VALUE_RANGE, num_classes=net.num_classes, name="fcn")
    return jr.from_linen(net, variables, spec=spec)


def reprogram(
    model: jr.FrozenModel,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    steps: int,
    batch: int,
    lr: float,
    seeds: int,
) -> tuple[np.ndarray, int]:
    """Voice2Series on ``model``, ``seeds`` programs in one vmapped ``fit`` (θ ~ N(0, 0.01²) each,
    batch order shared), for the whole epochs closest to ``steps`` steps: ``(last-epoch test
    accuracy (seeds,), optimiser steps)``."""
    (x, y), (xt, yt) = train, test
    num_target, num_source = int(y.max()) + 1, model.spec.num_classes
    program = jr.reprogram(
        model,
        input=jr.input.sequence_pad(x.shape[1], init="normal"),
        output=jr.output.freqmap(num_source, num_target, per_target=num_source // num_target),
    )
    epochs = max(1, round(steps / (len(y) // batch)))  # whole epochs, about ``steps`` steps
    data = jr.data.from_arrays(x, y, batch_size=batch, shuffle_seed=0, epochs=epochs, drop_remainder=True)
    thetas, _ = jr.train.fit(
        program, model, data, epochs=epochs, key=jax.random.key(0), learning_rate=lr, candidates=seeds
    )
    test_data = jr.data.from_arrays(xt, yt, batch_size=len(yt))
    _, acc = jr.train.evaluate(program, model, thetas, test_data, candidates=True)
    return np.asarray(acc), epochs * len(data)


def summary(values: Sequence[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": [float(v) for v in values]}


def main(argv: list[str] | None = None, quick: bool = False) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source-steps", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=200, help="target steps (reprogramming and scratch)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", choices=("transformer", "fcn"), default="transformer")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks")
    ap.add_argument("--heads", type=int, default=4, help="transformer heads")
    ap.add_argument(
        "--kernels", type=int, nargs="+", default=[8, 5, 3], help="fcn: one conv block per kernel"
    )
    ap.add_argument("--source-lr", type=float, default=3e-3)
    ap.add_argument("--scratch-lr", type=float, default=3e-3)
    ap.add_argument("--program-lr", type=float, default=3e-2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: a few steps, one seed")
    args = ap.parse_args(argv)
    quick = quick or args.quick
    if quick:
        args.source_steps, args.steps, args.seeds, args.width, args.layers, args.heads = 3, 2, 1, 8, 1, 2
        args.kernels = [3]
    args.kernels = tuple(args.kernels)

    def make(num_classes: int) -> Model:
        if args.model == "fcn":
            return FCN(num_classes, args.width, args.kernels)
        return Transformer(num_classes, args.width, args.layers, args.heads)

    start_wall, start_cpu = time.time(), time.process_time()

    def arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        return jr.data.arrays(name, split, data_dir=args.data_dir)

    (xs, ys), (xs_test, ys_test) = arrays(SOURCE, "train"), arrays(SOURCE, "test")
    num_source, length = int(ys.max()) + 1, xs.shape[1]
    net = make(num_source)
    pretrained, losses = train_classifier(
        net, xs, ys, steps=args.source_steps, batch=args.batch_size, lr=args.source_lr, seeds=[0]
    )
    source_accuracy = float(accuracy(net, pretrained, xs_test, ys_test)[0])
    pretrained, losses = jax.tree.map(lambda v: v[0], pretrained), losses[:, 0]
    frozen = source_model(net, pretrained, length)
    untrained = source_model(net, init_variables(net, length, seed=0), length)

    rows = {}
    for name in args.targets:
        train, test = arrays(name, "train"), arrays(name, "test")
        num_target = int(train[1].max()) + 1
        kw = {"steps": args.steps, "batch": args.batch_size, "lr": args.program_lr, "seeds": args.seeds}
        acc, steps = reprogram(frozen, train, test, **kw)
        runs = {"reprogram": acc, "reprogram_untrained": reprogram(untrained, train, test, **kw)[0]}
        head = make(num_target)
        variables, _ = train_classifier(
            head, *train, steps=steps, batch=args.batch_size, lr=args.scratch_lr, seeds=range(args.seeds)
        )
        runs["scratch"] = accuracy(head, variables, *test)
        rows[name] = {
            "length": int(train[0].shape[1]),
            "classes": num_target,
            "train": len(train[1]),
            "test": len(test[1]),
            "steps": steps,
            "per_target": num_source // num_target,
            **{k: summary(v) for k, v in runs.items()},
        }

    window = max(1, min(100, args.source_steps // 4))
    return {
        "benchmark": "voice2series_ucr",
        "command": " ".join(["python", "benchmarks/voice2series_ucr.py", *(argv or [])])
        + (" --quick" if quick and "--quick" not in (argv or []) else ""),
        "source": {
            "dataset": SOURCE,
            "classes": num_source,
            "length": length,
            "steps": args.source_steps,
            "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:])),
            "test_accuracy": source_accuracy,
            "params": int(sum(v.size for v in jax.tree.leaves(pretrained))),
            "model": args.model,
            "width": args.width,
            **(
                {"kernels": list(args.kernels)}
                if args.model == "fcn"
                else {"layers": args.layers, "heads": args.heads}
            ),
        },
        "program_params": length,
        "targets": rows,
        "seeds": args.seeds,
        "target_steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rates": {"source": args.source_lr, "program": args.program_lr, "scratch": args.scratch_lr},
        "wall_s": round(time.time() - start_wall, 1),
        "cpu_s": round(time.process_time() - start_cpu, 1),
        "machine": f"{jax.devices()[0].platform}, {jax.device_count()} device(s)",
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
