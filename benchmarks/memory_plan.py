"""Will prompt tuning an 8B or 70B Llama fit on 8 x 80 GB? jr.train.memory_plan from shapes alone.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory_plan.py [--record]

No weight is materialised: the parameters are ``jax.eval_shape`` of the decoder's initialiser
(float32, as the loader gives them), split FSDP-style over a ``("data", "model")`` mesh of 8
devices (``jr.shard``'s placement), and XLA compiles the soft-prompt training step (P = 20,
Adam) for that layout on the host's 8 forced CPU devices; the table gives its per-device
accounting (``compiled.memory_analysis()``). XLA:CPU's buffer assignment is not a GPU's, so
read the numbers as estimates of the same program's needs.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

import jaxreprog as jr
from jaxreprog.models import causal, llama

README = pathlib.Path(__file__).resolve().parent / "README.md"
GiB = 2**30
SHAPES = {  # Llama 3 shapes (config.json of Meta-Llama-3-8B / -70B)
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32),
    "llama3-70b": dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64),
}


def plan(name, remat, batch, seq, data, model, rules) -> jr.train.MemoryPlan:
    config = llama.DecoderConfig(
        vocab_size=128256, num_kv_heads=8, head_dim=128, max_positions=8192, **SHAPES[name]
    )
    module = llama.Decoder(config, remat)
    x = {"input_ids": jnp.zeros((batch, seq), jnp.int32), "attention_mask": jnp.ones((batch, seq), jnp.int32)}
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    frozen = jr.FrozenModel(causal.CausalLM(module), shapes, llama._spec(config, "llama"))
    program = jr.reprogram(frozen, embedding=jr.embedding.soft_prompt(20))
    mesh = jr.train.mesh(data=data, model=model)
    rules = llama.TENSOR_PARALLEL if rules == "tensor" else None
    return jr.train.memory_plan(program, frozen, x, mesh=mesh, rules=rules, device_bytes=80 * GiB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/README.md")
    args = parser.parse_args()
    if jax.device_count() != 8:
        raise SystemExit("run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    header = ("model", "mesh (data x model)", "split", "batch x tokens", "remat", "params / device")
    rows = [
        "| " + " | ".join((*header, "peak / device", "fits 80 GB", "compile (s)")) + " |",
        "|---" * 9 + "|",
    ]
    for name, rules, remat, batch, seq, data, model in (
        ("llama3-8b", "fsdp", None, 8, 2048, 1, 8),
        ("llama3-8b", "fsdp", "full", 8, 2048, 1, 8),
        ("llama3-8b", "tensor", None, 8, 2048, 1, 8),
        ("llama3-8b", "tensor", "full", 8, 2048, 1, 8),
        ("llama3-8b", "tensor", "full", 32, 2048, 2, 4),
        ("llama3-70b", "fsdp", "full", 8, 2048, 1, 8),
        ("llama3-70b", "tensor", "full", 8, 2048, 1, 8),
    ):
        t = time.perf_counter()
        p = plan(name, remat, batch, seq, data, model, rules)
        rows.append(
            f"| {name} | {data} x {model} | {rules} | {batch} x {seq} | {remat or 'none'} "
            f"| {p.params / GiB:.1f} GiB | {p.peak / GiB:.1f} GiB | {'yes' if p.fits else 'no'} "
            f"| {time.perf_counter() - t:.0f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    if args.record:
        with README.open("a") as f:
            command = "XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/memory_plan.py"
            f.write(
                f"\n### {datetime.date.today()}: `{command} --record`\n\n"
                f"Machine: {platform.platform()}, jax {jax.__version__} (8 forced CPU devices). Soft prompt "
                "P = 20, Adam, float32 frozen parameters split by `jr.shard` FSDP-style (`fsdp`) or by "
                "`llama.TENSOR_PARALLEL` (`tensor`), per-device bytes "
                "from `jr.train.memory_plan` (XLA:CPU's accounting of the compiled step).\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
