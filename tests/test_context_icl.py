"""Smoke test of benchmarks/icl_induction.py: a small GPT-2 pretrained on an in-context task."""

import numpy as np
import pytest
from conftest import benchmark

import jaxreprog as jr


@pytest.fixture(scope="module")
def icl():
    return benchmark("icl_induction")


def test_training_sequences_are_the_template_rendered(icl):
    # The pretraining data and the evaluation prompts share one format: the library's template.
    task = icl.Task()
    x = icl.training_batch(task, np.random.default_rng(0), 3)
    vocab = task.vocab()
    words = {i: w for w, i in vocab.items()}
    for row in x["input_ids"]:
        toks = [words[int(i)] for i in row]
        demos = [jr.context.Demo(toks[i], toks[i + 1]) for i in range(1, len(toks) - 2, 2)]
        text = jr.context.render(icl.TEMPLATE, toks[-2], demos) + " " + toks[-1]
        assert text == " ".join(toks)
        # Same class -> same label within a sequence (the per-sequence mapping is a function).
        items, labels = row[1::2] - 2, row[2::2]
        for c in range(task.classes):
            assert len(set(labels[task.class_of(items) == c].tolist())) <= 1


def test_zero_shot_episodes(icl):
    task = icl.Task()
    x, y, bayes = icl.episodes(task, seed=0, n=50, k=0, policy="random")
    assert x["input_ids"].shape == (50, 2) and (x["input_ids"][:, 0] == 1).all()
    assert bayes == pytest.approx(1 / task.classes)
    assert y.shape == (50,) and y.min() >= 0 and y.max() < task.classes


def test_quick_run_learns(icl):
    rec = icl.main([], quick=True)
    assert rec["loss_last"] < rec["loss_first"]
    assert np.isfinite(rec["losses"]).all() and len(rec["losses"]) == rec["steps"]
    assert set(rec["accuracy_random_demos"]) == {0, 4}
    for acc in [*rec["accuracy_random_demos"].values(), rec["accuracy_balanced_one_per_class"]]:
        assert 0.0 <= acc <= 1.0
    assert rec["bayes_balanced_one_per_class"] == 1.0  # one demonstration of every class
    assert rec["bayes_random_demos"][0] == pytest.approx(1 / rec["task"]["classes"])
