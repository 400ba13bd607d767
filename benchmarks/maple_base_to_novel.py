"""Base-to-novel generalisation of CLIP prompt learning: zero-shot CLIP, CoOp, IVLP and MaPLe.

The protocol of CoCoOp and MaPLe (:func:`jaxreprog.train.base_to_novel`): train on the first half of the
classes (``shots`` examples each), evaluate on base and novel classes, report the harmonic mean, the
``--seeds`` seeds trained as one vmapped run. The recipe follows the MaPLe reference configs: prompts
"a photo of a {class}.", 2 prompt tokens per tower (initialised from "a photo"), depth 9 for MaPLe and
IVLP, CoOp with the 4 context vectors of "a photo of a"; SGD (momentum 0.9, weight decay 5e-4), lr 0.0035,
one warm-up epoch at 1e-5 then a cosine decay, batch 4, 5 epochs, 16 shots. Not reproduced: the
reference's random-resized-crop and flip augmentation, and its per-seed few-shot draws (the seeds here
share one draw and differ in their initialisation).

No CLIP checkpoint ships offline, so a real run needs ``--weights`` (a Hugging Face CLIP directory with
``config.json``, ``model.safetensors`` and ``tokenizer.json``, e.g. openai/clip-vit-base-patch16) and a
dataset ``jr.data`` can read (``--dataset eurosat/rgb``, a TFDS name: network on first use)::

    python benchmarks/maple_base_to_novel.py --weights ~/clip-vit-base-patch16 --dataset eurosat/rgb
    python benchmarks/maple_base_to_novel.py --quick    # tiny random CLIP, synthetic data: plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np
import optax

import jaxreprog as jr
from jaxreprog.models import clip

TEMPLATE = "a photo of a {}."


def optimizer(lr: float, steps_per_epoch: int, epochs: int) -> optax.GradientTransformation:
    """The reference's SGD: one constant warm-up epoch at 1e-5, then a cosine decay of ``lr``."""
    warmup = max(1, steps_per_epoch)
    schedule = optax.join_schedules(
        [
            optax.constant_schedule(1e-5),
            optax.cosine_decay_schedule(lr, max(1, (epochs - 1) * steps_per_epoch)),
        ],
        [warmup],
    )
    return optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(schedule, momentum=0.9))


def real_setup(args):
    """(classifier over class indices, train, test, init embeddings of the template's words)."""
    import tokenizers

    module, params = clip.from_hf(args.weights)
    tokenizer = tokenizers.Tokenizer.from_file(os.path.join(args.weights, "tokenizer.json"))
    size = module.config.vision.image_size
    names = jr.data.load(args.dataset, "train", batch_size=1).class_names
    ids, eot = clip.tokenize(tokenizer, [TEMPLATE.format(n.replace("_", " ")) for n in names])
    spec = clip.classifier(module, params, ids, eot).spec
    splits = {}
    for split in (args.train_split, args.test_split):
        x, y = jr.data.arrays(args.dataset, split, rgb=True, image_size=size)
        splits[split] = (np.asarray(spec.normalize(np.asarray(x, np.float32))), np.asarray(y))

    def classifier(classes):
        return clip.classifier(module, params, ids[classes], eot[classes])

    return (
        classifier,
        splits[args.train_split],
        splits[args.test_split],
        clip.token_embeddings(params, ids[0, 1:5]),
    )


def quick_setup(args):
    """A 2-layer random CLIP and 6 synthetic classes (a bright square at a class-given place)."""
    config = clip.Config(
        text=clip.TextConfig(
            vocab_size=40, width=16, mlp_dim=32, depth=2, num_heads=2, context_length=12, eos_token_id=39
        ),
        vision=clip.VisionConfig(image_size=16, patch_size=4, width=16, mlp_dim=32, depth=2, num_heads=2),
        embed_dim=16,
    )
    module, params = clip.CLIP(config), clip.init_params(config, jax.random.key(0))
    # weights 10x init_params' N(0, 0.02²), so that the classes' text features differ at all (at 0.02 the
    # random towers give every class nearly the same feature); a random CLIP still learns next to nothing
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a if str(path[-1].key) in ("scale", "bias", "logit_scale") else 10 * a, params
    )
    names = [[10 + c] for c in range(6)]
    ids, eot = clip.class_prompts(names, prefix=[4, 5, 6, 4], sos_id=38, eos_id=39, context_length=12)
    rng = np.random.default_rng(0)

    def data(n):
        y = np.repeat(np.arange(6), n)
        x = 0.3 * rng.random((len(y), 16, 16, 3), np.float32)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 3)
            x[i, 6 * r : 6 * r + 6, 5 * col : 5 * col + 6] += 0.7
        return np.asarray(jr.ImageSpec(size=16, mean=clip.OPENAI_MEAN, std=clip.OPENAI_STD).normalize(x)), y

    def classifier(classes):
        return clip.classifier(module, params, ids[classes], eot[classes])

    return classifier, data(args.shots), data(10), clip.token_embeddings(params, ids[0, 1:5])


def zero_shot(classifier, test, base, novel):
    accuracy = []
    for classes in (base, novel):
        model = classifier(classes)
        keep = np.isin(test[1], classes)
        y = np.searchsorted(classes, test[1][keep])
        data = jr.data.from_arrays(test[0][keep], y, batch_size=100)
        program = jr.reprogram(model)
        accuracy.append(float(jr.train.evaluate(program, model, program.init(jax.random.key(0)), data)[1]))
    return accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a Hugging Face CLIP directory (config.json, model.safetensors)")
    parser.add_argument("--dataset", default="eurosat/rgb")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--methods", default="zero_shot,coop,ivlp,maple")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=9)
    parser.add_argument("--lr", type=float, default=0.0035)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny random CLIP, synthetic data")
    args = parser.parse_args()
    if args.quick:
        args.depth, args.lr, args.epochs = min(args.depth, 2), 0.05, min(args.epochs, 3)
        classifier, train, test, context = quick_setup(args)
    elif not args.weights:
        parser.error("no CLIP checkpoint ships offline: pass --weights DIR, or --quick for the plumbing")
    else:
        classifier, train, test, context = real_setup(args)
    num_classes = int(train[1].max()) + 1
    base, novel = jr.train.split_classes(num_classes)
    steps = -(-min(len(train[1]), len(base) * args.shots) // args.batch_size)
    methods = {
        "coop": lambda: jr.embedding.coop(4, init=context),
        "ivlp": lambda: jr.hidden.ivlp(2, args.depth, init=context[:2]),
        "maple": lambda: jr.hidden.maple(2, args.depth, init=context[:2]),
    }
    rows = []
    for name in args.methods.split(","):
        start = time.perf_counter()
        if name == "zero_shot":
            b, n = zero_shot(classifier, test, base, novel)
            rows.append(
                {"method": name, "base": b, "novel": n, "harmonic": float(jr.train.harmonic_mean(b, n))}
            )
        else:
            result = jr.train.base_to_novel(
                methods[name](),
                classifier,
                train,
                test,
                epochs=args.epochs,
                key=jax.random.key(0),
                seeds=args.seeds,
                shots=args.shots,
                batch_size=args.batch_size,
                optimizer=optimizer(args.lr, steps, args.epochs),
            )
            rows.append({"method": name, **result.summary(), "per_seed_harmonic": result.harmonic.tolist()})
        rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
        r = rows[-1]
        print(
            f"{name:10s} base {r['base']:.1%}  novel {r['novel']:.1%}  "
            f"HM {r['harmonic']:.1%}  ({r['seconds']} s)"
        )
    print(json.dumps({"args": vars(args), "results": rows}))


if __name__ == "__main__":
    main()
