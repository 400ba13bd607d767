"""benchmarks/reproduce_mnist.py's seeds table (the aggregation behind RESULTS.md's multi-seed rows)."""

import json

import pytest
from conftest import benchmark


@pytest.fixture(scope="module")
def reproduce():
    return benchmark("reproduce_mnist")


def _run(seed, last, selected):
    return {"recipe": {"seed": seed}, "labels": ["rlm", "ilm"], "test_last": last, "test_selected": selected}


def test_seeds_table_means_and_sample_sd(reproduce):
    runs = [_run(0, [0.80, 0.85], [0.81, 0.86]), _run(3, [0.84, 0.87], [0.83, 0.90])]
    rows = reproduce.seeds_table(runs).splitlines()
    assert "seeds 0 / 3" in rows[0]
    # rlm: mean 82.0, sample sd |84 - 80| / sqrt(2) = 2.83; val-selected mean 82.0.
    assert rows[2] == "| rlm | 80.0 / 84.0 | **82.0 ± 2.8** | 82.0 |"
    assert rows[3] == "| ilm | 85.0 / 87.0 | **86.0 ± 1.4** | 88.0 |"
    no_validation = reproduce.seeds_table([_run(0, [0.8, 0.9], None)]).splitlines()
    assert no_validation[2] == "| rlm | 80.0 | **80.0 ± nan** | — |"


def test_seeds_table_rejects_different_candidates(reproduce):
    other = {**_run(1, [0.8, 0.9], None), "labels": ["rlm", "blm"]}
    with pytest.raises(ValueError, match="same candidates"):
        reproduce.seeds_table([_run(0, [0.8, 0.9], None), other])
    with pytest.raises(ValueError, match="same candidates"):
        reproduce.seeds_table([])


def test_summarize_reads_finished_runs(reproduce, tmp_path, capsys):
    folders = []
    for seed, last in ((0, [0.5, 0.6]), (1, [0.7, 0.8])):
        folder = tmp_path / f"run_{seed}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(_run(seed, last, last)))
        folders.append(str(folder))
    assert reproduce.main(["--summarize", *folders]) == 0
    out = capsys.readouterr().out
    assert "| ilm | 60.0 / 80.0 | **70.0 ± 14.1** | 70.0 |" in out
