"""Reproduce the offline visual-reprogramming results on MNIST-5k (EfficientNet-Lite0, CPU).

Runs packaged recipes and prints one markdown block per run for ``benchmarks/RESULTS.md``:
test accuracy after the last epoch and at the epoch with the best *validation* accuracy
(the test set selects nothing), wall and CPU seconds, the machine, the exact command.

    python benchmarks/reproduce_mnist.py                       # all three, in order
    python benchmarks/reproduce_mnist.py mnist5k_lite0_pad_ilm --set epochs=4
    python benchmarks/reproduce_mnist.py mnist5k_lite0_mappings --seeds 0 1 2 3 4   # + a seeds table
    python benchmarks/reproduce_mnist.py --summarize runs/ordering_*    # the tables of finished runs

Over several seeds of the five mappings it also checks the papers' ordering
``rlm < flm <= ilm <= blm_plus`` link by link, paired by seed (``--chain`` for another).

Recipes (``jaxreprog run --list``):

* ``mnist5k_lite0_pad_ilm``  — padding VR + ILM (target: >= 90% test accuracy)
* ``mnist5k_lite0_mappings`` — RLM, FLM, ILM, BLM, BLM+ on the same prompt budget
  (five prompts, five vmapped candidates)
* ``mnist5k_lite0_smm_ilm``  — SMM + ILM, 8 epochs; its padding counterpart at the same budget is
  ``mnist5k_lite0_pad_ilm --set epochs=8``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from scipy import stats

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


# The label-mapping ordering the papers report (ILM-VP, Chen et al. 2023; BLM+, Cai et al. 2024).
PAPERS_CHAIN = "rlm < flm <= ilm <= blm_plus"


def _labels(runs: Sequence[Mapping[str, Any]], who: str) -> tuple[str, ...]:
    labels = [tuple(run["labels"]) for run in runs]
    if not runs or any(lab != labels[0] for lab in labels):
        raise ValueError(f"{who}: needs runs with the same candidates, got {labels}")
    return labels[0]


def seeds_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One markdown row per candidate over several seeds of one recipe (``results.json`` dicts):
    test accuracy after the last epoch per seed, their mean ± sample s.d., and the mean of the
    validation-selected epochs' test accuracy."""
    labels = _labels(runs, "seeds_table")
    seeds = " / ".join(str(run["recipe"]["seed"]) for run in runs)
    last = 100 * np.array([run["test_last"] for run in runs])  # (seeds, K)
    selected = [run["test_selected"] for run in runs]
    lines = [
        f"| candidate | test, last epoch (seeds {seeds}) | mean ± sd | test, val-selected, mean |",
        "|---|---|---:|---:|",
    ]
    for k, label in enumerate(labels):
        sd = np.std(last[:, k], ddof=1) if len(runs) > 1 else float("nan")
        chosen = "—" if None in selected else f"{100 * np.mean([s[k] for s in selected]):.1f}"
        per_seed = " / ".join(f"{a:.1f}" for a in last[:, k])
        lines.append(f"| {label} | {per_seed} | **{np.mean(last[:, k]):.1f} ± {sd:.1f}** | {chosen} |")
    return "\n".join(lines)


def parse_chain(chain: str) -> tuple[list[str], list[str]]:
    """``"a < b <= c"`` → ``(["a", "b", "c"], ["<", "<="])``."""
    tokens = chain.split()
    names, ops = tokens[::2], tokens[1::2]
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(op not in ("<", "<=") for op in ops):
        raise ValueError(f"chain_table: a chain is 'a < b <= c ...' (operators < and <=), got {chain!r}")
    return names, ops


def chain_table(runs: Sequence[Mapping[str, Any]], chain: str = PAPERS_CHAIN) -> str:
    """Each link ``a < b`` or ``a <= b`` of an ordering over seeds, paired by seed.

    For the last-epoch test accuracies, ``d_s = acc_s(b) − acc_s(a)`` per seed ``s``; a row
    gives mean(d) ± sample s.d., the seeds where ``b`` is above ``a`` (and ties), the paired
    t statistic ``mean(d) / (sd(d) / √n)``, the 95% confidence interval of the mean difference
    ``mean(d) ± t_{0.975, n−1} · sd(d) / √n`` (Student's t; an interval containing 0 means the
    seeds cannot tell the two apart), and whether the link holds on the means (``<``:
    mean(d) > 0; ``<=``: mean(d) ≥ 0). Differences are rounded to 0.01 points first, so equal
    accuracies tie.
    """
    names, ops = parse_chain(chain)
    labels = _labels(runs, "chain_table")
    missing = sorted(set(names) - set(labels))
    if missing:
        raise ValueError(f"chain_table: the runs have no candidates {missing} (they have {list(labels)})")
    last = 100 * np.array([run["test_last"] for run in runs])  # (seeds, K)
    n = len(runs)
    lines = [
        f"| link | b − a, mean ± sd ({n} seeds) | seeds b > a (ties) | paired t | 95% CI | on the means |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for a, op, b in zip(names, ops, names[1:]):
        d = np.round(last[:, labels.index(b)] - last[:, labels.index(a)], 2)
        mean = d.mean()
        sd = d.std(ddof=1) if n > 1 else float("nan")
        se = sd / np.sqrt(n)
        t = mean / se if sd > 0 else float("nan")
        ci = "—"
        if n > 1:
            half = stats.t.ppf(0.975, n - 1) * se
            ci = f"[{mean - half:+.1f}, {mean + half:+.1f}]"
        holds = mean > 0 if op == "<" else mean >= 0
        lines.append(
            f"| {a} {op.replace('<=', '≤')} {b} | {mean:+.1f} ± {sd:.1f} | {int((d > 0).sum())}/{n} "
            f"({int((d == 0).sum())}) | {t:+.2f} | {ci} | {'holds' if holds else 'does not hold'} |"
        )
    return "\n".join(lines)


def _tables(runs: Sequence[Mapping[str, Any]], chain: str | None) -> str:
    """The seeds table and the links of ``chain``; without one, of the papers' chain when the
    runs have all its candidates (a single-mapping recipe has no ordering to check)."""
    tables = [seeds_table(runs)]
    if chain is None and set(parse_chain(PAPERS_CHAIN)[0]) <= set(runs[0]["labels"]):
        chain = PAPERS_CHAIN
    if chain is not None:
        tables.append(chain_table(runs, chain))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=list(DEFAULT))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", nargs="+", type=int, help="each recipe once per seed, then a seeds table")
    parser.add_argument("--summarize", nargs="+", metavar="DIR", help="the seeds table of finished runs")
    parser.add_argument("--out", default="reproduce-mnist", help="folder for each run's results and prompts")
    parser.add_argument(
        "--chain", help=f"the ordering checked over seeds (default {PAPERS_CHAIN!r} when the runs have it)"
    )
    args = parser.parse_args(argv)
    if args.chain is not None:
        try:  # before any training: a typo must not surface after hours of runs
            parse_chain(args.chain)
        except ValueError as e:
            parser.error(str(e))
    if args.summarize:
        runs = []
        for folder in args.summarize:
            try:
                with open(os.path.join(folder, "results.json")) as f:
                    runs.append(json.load(f))
            except (OSError, ValueError) as e:
                parser.error(f"--summarize {folder}: no finished run there ({e}); give a run's --out folder")
        print(_tables(runs, args.chain))
        return 0
    # Every recipe and override is checked before the first run: a typo in the last recipe
    # must not surface after hours of the first.
    plans = []
    try:
        recipes.writable_folder(args.out)
        for name in args.recipes:
            plan = []
            for seed in args.seeds or [None]:
                overrides = args.set if seed is None else [*args.set, f"seed={seed}"]
                out = os.path.join(args.out, name if seed is None else f"{name}_seed{seed}")
                plan.append((overrides, recipes.load(name, overrides=overrides), out))
            plans.append((name, plan))
    except recipes.RecipeError as e:
        parser.error(str(e))
    for name, plan in plans:
        runs = []
        for overrides, recipe, out in plan:
            t0, c0 = time.perf_counter(), time.process_time()
            result = recipes.run(recipe, out=out)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(report(name, overrides, result, wall, cpu), flush=True)
            runs.append(result.to_json())
        if args.seeds:
            print(_tables(runs, args.chain), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
