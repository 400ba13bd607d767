"""``jaxreprog demo``: reprogram ImageNet EfficientNet-Lite0 into an MNIST classifier, on CPU, offline.

Padding visual reprogramming (Elsayed et al. 2019; ILM-VP, Chen et al. CVPR 2023):
each 28 px MNIST digit is zero-padded into the frozen network's canvas and a
learned border ``sigmoid(δ) ⊙ M`` is added around it; ImageNet's 1000 logits are
mapped to the 10 digits by a label mapping ``O``::

    y = O(f(normalize(pad(x) + sigmoid(δ) ⊙ M)))

Five mappings are compared on the same prompt budget — RLM (random), FLM (frequency,
fitted once), ILM (refitted every epoch), BLM and BLM+ (Bayesian, Cai et al. 2024).
Each gets its *own* prompt, and the five prompts train together as five candidates of
one vmapped step (:func:`jaxreprog.output.per_candidate`): one compile, one pass over
the data per epoch, each prompt exactly as it would train alone.

The table reports, per mapping: the zero-shot test accuracy (the untrained grey border;
the mapping fitted on the training set), the test accuracy after the last epoch and its
change from zero-shot, and the validation accuracy after the last epoch. Nothing is
selected on the test set. ``--quick`` (20 steps) is a smoke test of the pipeline, too
short to train, and its table says so.

The ``--out`` folder receives the figures (:mod:`jaxreprog.report`: ``curves.png``,
``examples.png``, ``mapping.png``; matplotlib needed), one self-contained ``report.html``
with them, the table and the prompts, and what ``jaxreprog run`` writes.

Settings are the packaged recipes ``mnist5k_lite0_mappings`` and (``--quick``)
``mnist5k_lite0_mappings_quick``; ``jaxreprog run`` runs either with other settings.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxreprog import recipes, report

__all__ = ["QUICK_NOTE", "RECIPE", "RECIPE_QUICK", "main", "zero_shot"]

RECIPE = "mnist5k_lite0_mappings"
RECIPE_QUICK = "mnist5k_lite0_mappings_quick"

_NAMES = {"rlm": "RLM", "flm": "FLM", "ilm": "ILM", "blm": "BLM", "blm_plus": "BLM+"}
QUICK_NOTE = "quick run: too short to train; not a result (a smoke test; `jaxreprog demo` trains)"


def _padded_batches(data, batch_size: int):
    """``(x, y, n)`` with every ``x`` exactly ``batch_size`` long (the last one zero-padded;
    ``n`` real rows), so that one compiled forward pass serves every batch of any split."""
    for x, y in data.epoch(0):
        n = len(y)
        if n < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((batch_size - n,), y.dtype)])
        yield x, y, n


def zero_shot(built: recipes.Built, batch_size: int = 32) -> np.ndarray:
    """Test accuracy of each candidate's mapping on the *untrained* prompt, ``(K,)``.

    One forward pass over the training set with candidate 0's initial prompt (all
    candidates start from the same zero-initialised border) collects every mapping's
    statistics; each mapping is refitted once from them and scored on the test set.
    One compiled forward pass serves both splits.
    """
    program, model = built.program, built.model
    align = program.alignment
    theta = jax.tree.map(lambda a: np.asarray(a)[0], built.theta0)  # host copies: no per-leaf program
    source_logits = jax.jit(program.source_logits)

    stats = align.stats_init()
    update = jax.jit(align.stats_update)
    for x, y, n in _padded_batches(built.train, batch_size):
        stats = update(stats, source_logits(theta, model.params, x)[:n], y[:n])
    fitted = jax.jit(align.refit_from_stats)(theta["output"], stats)

    @jax.jit
    def correct(state, which, logits, y):
        per = jax.vmap(lambda w: align.apply({**state, "which": w}, logits))(which)
        return jnp.sum(jnp.argmax(per, -1) == y, axis=-1)

    total, count = 0, 0
    for x, y, n in _padded_batches(built.test, batch_size):
        logits = source_logits(theta, model.params, x)[:n]
        total, count = (
            total + np.asarray(correct(fitted, built.theta0["output"]["which"], logits, y[:n])),
            count + n,
        )
    return total / count


def main(
    quick: bool = False,
    out: str = "jaxreprog-demo",
    seed: int = 0,
    *,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Run the demo; print the results table; write the report, figures, prompts and checkpoint to ``out``.

    ``overrides`` (dotted recipe keys, e.g. ``{"model.size": 32}``) shrink it for tests.
    """
    t_start = time.perf_counter()
    recipe = recipes.load(RECIPE_QUICK if quick else RECIPE, overrides={"seed": seed, **(overrides or {})})
    recipes.writable_folder(out)  # before the model loads and the prompts train, not after
    d, m = recipe.dataset, recipe.model
    k = len(recipe.output_methods)
    names = [_NAMES.get(method, method) for method in recipe.output_methods]
    print(
        f"jaxreprog demo{' --quick' if quick else ''}: frozen ImageNet EfficientNet-Lite0 -> MNIST digits "
        f"(MNIST-5k), padding visual reprogramming, CPU, offline\n"
        f"  28 px digits in a {m['size']} px canvas; {d.get('train_examples', 4000)} training images x "
        f"{recipe.epochs} epoch(s), batch {d['batch_size']}, Adam lr {recipe.optimizer['learning_rate']}, "
        f"seed {recipe.seed}\n"
        f"  {k} label mappings ({', '.join(names)}), each with its own prompt: {k} vmapped candidates",
        flush=True,
    )
    t0 = time.perf_counter()
    built = recipes.build(recipe)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    zero = zero_shot(built)
    t_zero = time.perf_counter() - t0
    checkpoint = os.path.join(out, "checkpoint")
    if os.path.isdir(checkpoint):  # the demo trains from scratch; `jaxreprog run` resumes instead
        shutil.rmtree(checkpoint)
    # --quick skips the validation pass (nothing is selected on it here anyway).
    result = recipes.run(
        recipe, out=out, progress=True, built=built, per_epoch=False, validate=not quick, report=False
    )  # the report below adds the zero-shot column
    note = QUICK_NOTE if quick else None
    print()
    if note:
        print(f"** {note} **")
    print(report.results_table(result, zero, names))
    t0 = time.perf_counter()
    html = report.write(result, built, out, zero_shot=zero, names=names, note=note)
    t_report = time.perf_counter() - t0
    figures = [f for f in report.FIGURES if os.path.exists(os.path.join(out, f))]
    print(
        f"\nthe {k} prompts trained together in {result.train_seconds:.0f} s (one vmapped run); per prompt, "
        f"1/{k} of it.\n"
        f"zero-shot: the untrained grey border, the mapping fitted on the training images ({t_zero:.0f} s).\n"
        f"trained: after the last epoch. test: 500 held-out images; val: 500 others"
        f"{' (skipped: --quick)' * quick}; nothing is selected on test.\n"
        f"model + data {t_load:.0f} s; report {t_report:.0f} s; "
        f"total {time.perf_counter() - t_start:.0f} s.\n"
        f"saved: {html} ({', '.join(figures) or 'no figures'} inside), {out}/prompt_<mapping>.png, "
        f"checkpoint {checkpoint}, {out}/results.json\n"
        f"next: jaxreprog run mnist5k_lite0_pad_ilm  (the reproduction recipe; jaxreprog run --list)"
    )
    return 0
