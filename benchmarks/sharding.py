"""A Llama-shaped soft prompt sharded over 8 forced host devices vs 1: correctness and partitioning overhead.

    python benchmarks/sharding.py [--quick] [--reps 10] [--only 'FSDP 2x4,...'] [--record [PATH]]

A scaled-down Llama (random weights, GQA, SwiGLU, RMSNorm, RoPE; ``llama.from_config``) is frozen;
a soft prompt (P = 20) and a verbalizer over 4 classes are trained with Adam through
``jr.train.make_step``. The same step is compiled for five layouts of the 8 forced CPU devices:
one device (unsharded), data parallel 8 x 1, FSDP 1 x 8 (``jr.shard``'s default placement),
tensor parallel 1 x 8 (``llama.TENSOR_PARALLEL``) and 2 x 4 (FSDP). Each layout's loss and
prompt gradient are first checked against one device's. Then per layout: seconds per step
(median of ``--reps`` after one warm-up step), the first call (lower + compile + run), the
parameter bytes each device holds, XLA's per-device accounting (``memory_analysis``) and the
collectives in the optimised HLO.

The script sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` itself (before jax is
imported). The 8 forced devices share the host's cores (2 on the machine recorded), so this
measures the partitioning's overhead and its correctness, NOT a speedup: that needs real devices.
"""

from __future__ import annotations

import os
import re
import sys

if "jax" not in sys.modules:  # the device count must be fixed before jax initialises
    _flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import datetime
import pathlib
import platform
import shlex
import statistics
import time
from typing import Any

import jax
import numpy as np
import optax

import jaxreprog as jr
from jaxreprog.models import llama

README = pathlib.Path(__file__).resolve().parent / "README.md"
MiB = 2**20
CAVEAT = (
    "The 8 forced host devices share the same {cores} CPU cores: this measures the partitioning's "
    "overhead and correctness, not a speedup (that needs real devices)."
)
FULL = dict(
    config=llama.DecoderConfig(
        vocab_size=8192, hidden_size=512, intermediate_size=1408, num_layers=4, num_heads=8,
        num_kv_heads=2, head_dim=64, max_positions=256,
    ),
    batch=16, seq=128,
)  # fmt: skip
QUICK = dict(
    config=llama.DecoderConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4,
        num_kv_heads=2, head_dim=16, max_positions=64,
    ),
    batch=8, seq=16,
)  # fmt: skip
# (name, data, model, rules); data = 0 is one device without a mesh
LAYOUTS = (
    ("1 device", 0, 0, None),
    ("data 8x1", 8, 1, None),
    ("FSDP 1x8", 1, 8, None),
    ("tensor 1x8", 1, 8, llama.TENSOR_PARALLEL),
    ("FSDP 2x4", 2, 4, None),
)
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
# the tolerance every layout's loss and prompt gradient must meet against one device's
RTOL = 1e-4  # |a - b| <= RTOL * max|b| for the gradient, <= RTOL * |b| for the loss


def collectives(hlo: str) -> dict[str, int]:
    """How many of each collective the optimised HLO text holds (an async ``-start`` counts once)."""
    return {c: len(re.findall(rf"\s{c}(?:-start)?\(", hlo)) for c in COLLECTIVES}


def setup(config: llama.DecoderConfig, batch: int, seq: int) -> tuple[Any, ...]:
    """The frozen model, the program and one batch ``(x, y)`` (random tokens, 4 classes)."""
    model = llama.from_config(config, jax.random.key(0))
    words = [[11], [12], [13], [14]]
    program = jr.reprogram(
        model,
        embedding=jr.embedding.soft_prompt(20),
        output=jr.output.verbalizer(words, num_source=config.vocab_size),
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocab_size, (batch, seq)).astype(np.int32)
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return model, program, (x, (np.arange(batch) % 4).astype(np.int32))


def place(model, state, batch, key, data: int, size: int, rules) -> tuple[Any, ...]:
    """The arguments of the step laid out for one layout: ``(state, params, batch, key)``."""
    if data == 0:
        device = jax.devices()[0]
        return jax.device_put((state, model.params, batch, key), device)
    mesh = jr.train.mesh(data=data, model=size)
    params = jr.shard(model, mesh, rules).params
    state, key = jr.train.replicate((state, key), mesh)
    return state, params, jr.train.shard_batch(batch, mesh), key


def run(scale: dict[str, Any], reps: int, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Check and time every layout (``only``: those named, after 1 device); one row each."""
    model, program, batch = setup(scale["config"], scale["batch"], scale["seq"])
    init, step = jr.train.make_step(program, optax.adam(1e-3))
    theta = program.init(jax.random.key(1))
    state = init(theta)
    key = jax.random.key(2)

    def loss(theta, params, batch):
        x, y = batch
        return jr.train.cross_entropy(program.apply(theta, params, x), y).mean()

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    total = sum(a.nbytes for a in jax.tree.leaves(model.params))
    rows, want = [], None
    for name, data, size, rules in LAYOUTS:
        if only is not None and data and name not in only:
            continue
        s, params, b, k = place(model, state, batch, key, data, size, rules)
        got = jax.device_get(value_and_grad(s.theta, params, b))
        if want is None:
            want = got
        (l0, g0), (l1, g1) = want, got
        loss_err = abs(float(l1) - float(l0)) / abs(float(l0))
        scale_g = max(float(np.abs(a).max()) for a in jax.tree.leaves(g0))
        grad_err = max(float(np.abs(a - c).max()) for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)))
        grad_err /= scale_g
        if loss_err > RTOL or grad_err > RTOL:
            raise SystemExit(
                f"{name}: loss or gradient differs from 1 device ({loss_err:.1e}, {grad_err:.1e})"
            )
        t = time.perf_counter()
        # the state keeps its (replicated) layout: else XLA may hand theta back split, and step 2 recompiles
        keep = jax.tree.map(lambda a: a.sharding, s)
        replicated = jax.tree.leaves(keep)[0]
        compiled = jax.jit(step, out_shardings=(keep, replicated)).lower(s, params, b, k).compile()
        s1, _ = compiled(s, params, b, k)
        jax.block_until_ready(s1)
        first = time.perf_counter() - t
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            s1, _ = compiled(s1, params, b, k)
            jax.block_until_ready(s1)
            times.append(time.perf_counter() - t)
        m = compiled.memory_analysis()
        rows.append(
            dict(
                layout=name,
                step=statistics.median(times[1:] if len(times) > 1 else times),  # the first rep warms up
                spread=(min(times[1:] or times), max(times[1:] or times)),
                first=first,
                params=sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(params)),
                total=total,
                arguments=m.argument_size_in_bytes,
                temporaries=m.temp_size_in_bytes,
                loss_err=loss_err,
                grad_err=grad_err,
                **collectives(compiled.as_text()),
            )
        )
        print(format_row(rows[-1], rows[0]), flush=True)
    return rows


HEADER = (
    "| layout (data x model) | s/step | min-max | vs 1 device | first call (s) | params / device "
    "| XLA args / device | XLA temp / device | all-gather | all-reduce | reduce-scatter | all-to-all "
    "| collective-permute | loss, grad rel. err |\n" + "|---" * 14 + "|"
)


def format_row(r: dict[str, Any], base: dict[str, Any]) -> str:
    return (
        f"| {r['layout']} | {r['step']:.3f} | {r['spread'][0]:.2f}-{r['spread'][1]:.2f} "
        f"| {r['step'] / base['step']:.2f}x | {r['first']:.1f} "
        f"| {r['params'] / MiB:.1f} MiB | {r['arguments'] / MiB:.1f} MiB | {r['temporaries'] / MiB:.1f} MiB "
        f"| {r['all-gather']} | {r['all-reduce']} | {r['reduce-scatter']} | {r['all-to-all']} "
        f"| {r['collective-permute']} | {r['loss_err']:.0e}, {r['grad_err']:.0e} |"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and 2 steps: a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="timed steps per layout (default 10; quick 2)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated layouts, e.g. '1 device,FSDP 2x4' (1 device always runs)",
    )
    parser.add_argument(
        "--record",
        nargs="?",
        const=str(README),
        default=None,
        help="append the table to benchmarks/README.md",
    )
    args = parser.parse_args(argv)
    if jax.device_count() != 8:
        raise SystemExit(f"needs 8 devices, got {jax.device_count()}: run it as a script (it sets XLA_FLAGS)")
    scale = QUICK if args.quick else FULL
    reps = args.reps or (2 if args.quick else 10)
    c = scale["config"]
    cores = os.cpu_count()
    print(CAVEAT.format(cores=cores))
    print(
        f"Llama {c.num_layers} layers, width {c.hidden_size}, MLP {c.intermediate_size}, heads "
        f"{c.num_heads}/{c.num_kv_heads} (GQA), vocab {c.vocab_size}; soft prompt P = 20, verbalizer, "
        f"Adam; batch {scale['batch']} x {scale['seq']} tokens; every layout's loss and prompt gradient "
        f"equal 1 device's to {RTOL:g} (relative)"
    )
    print(HEADER)
    only = None if args.only is None else tuple(n.strip() for n in args.only.split(","))
    if only is not None and not set(only) <= {n for n, *_ in LAYOUTS}:
        raise SystemExit(f"--only: unknown layout in {only}; known: {[n for n, *_ in LAYOUTS]}")
    rows = run(scale, reps, only)
    if args.record:
        table = "\n".join([HEADER, *(format_row(r, rows[0]) for r in rows)])
        command = "python benchmarks/sharding.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        with pathlib.Path(args.record).open("a") as f:
            f.write(
                f"\n### {datetime.date.today()}: `{command.strip()}`\n\n"
                f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
                f"{cores} CPUs, jax {jax.__version__}, 8 forced CPU devices. {CAVEAT.format(cores=cores)} "
                "Model: Llama-shaped, "
                f"random weights, {c.num_layers} layers, width {c.hidden_size}, MLP {c.intermediate_size}, "
                f"{c.num_heads} query / {c.num_kv_heads} KV heads, vocab {c.vocab_size}, "
                f"{rows[0]['total'] / MiB:.0f} MiB float32; soft prompt P = 20, verbalizer over 4 classes, "
                f"Adam, batch {scale['batch']} x {scale['seq']} tokens. s/step: median of {reps - 1} steps "
                "after a warm-up; first call: lower + compile + one step; XLA args / temp: "
                "`compiled.memory_analysis()` per device; collectives counted in `compiled.as_text()`. "
                f"Loss and prompt gradient checked against 1 device (tolerance {RTOL:g} relative).\n\n"
                f"{table}\n"
            )
    return rows


if __name__ == "__main__":
    main()
