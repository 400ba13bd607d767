"""Reproduce the offline visual-reprogramming results on MNIST-5k (EfficientNet-Lite0, CPU).

Runs packaged recipes and prints one markdown block per run for ``benchmarks/RESULTS.md``:
test accuracy after the last epoch and at the epoch with the best *validation* accuracy
(the test set selects nothing), wall and CPU seconds, the machine, the exact command.

    python benchmarks/reproduce_mnist.py                       # all three, in order
    python benchmarks/reproduce_mnist.py mnist5k_lite0_pad_ilm --set epochs=4

Recipes (``jaxreprog run --list``):

* ``mnist5k_lite0_pad_ilm``  — padding VR + ILM (target: >= 90% test accuracy)
* ``mnist5k_lite0_mappings`` — RLM, FLM, ILM, BLM, BLM+ on the same prompt budget
  (five prompts, five vmapped candidates)
* ``mnist5k_lite0_smm_ilm``  — SMM + ILM, 8 epochs; its padding counterpart at the same budget is
  ``mnist5k_lite0_pad_ilm --set epochs=8``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax

from jaxreprog import recipes

DEFAULT = ("mnist5k_lite0_pad_ilm", "mnist5k_lite0_mappings", "mnist5k_lite0_smm_ilm")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, jax {jax.__version__} ({jax.default_backend()})"
    )


def report(name: str, overrides: list[str], result: recipes.Result, wall: float, cpu: float) -> str:
    sets = "".join(f" --set {s}" for s in overrides)
    return "\n".join(
        [
            f"#### `{name}` — {result.recipe.description}",
            "",
            f"Command: `jaxreprog run {name}{sets}` (seed {result.recipe.seed}); "
            f"or `python benchmarks/reproduce_mnist.py {name}{sets}`.",
            f"Machine: {machine()}.",
            f"Time: {wall:.0f} s wall, {cpu:.0f} s CPU; training {result.train_seconds:.0f} s wall; "
            f"load average at the end {os.getloadavg()[0]:.1f}.",
            "",
            result.table(),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=list(DEFAULT))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="reproduce-mnist", help="folder for each run's results and prompts")
    args = parser.parse_args(argv)
    for name in args.recipes:
        recipe = recipes.load(name, overrides=args.set)
        t0, c0 = time.perf_counter(), time.process_time()
        result = recipes.run(recipe, out=os.path.join(args.out, name))
        print(report(name, args.set, result, time.perf_counter() - t0, time.process_time() - c0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
