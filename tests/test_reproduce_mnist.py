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


def _mappings(seed, rlm, flm, ilm, blm_plus):
    accs = [rlm, flm, ilm, blm_plus]
    return {"recipe": {"seed": seed}, "labels": ["rlm", "flm", "ilm", "blm_plus"], "test_last": accs,
            "test_selected": accs}  # fmt: skip


def test_chain_table_pairs_by_seed(reproduce):
    runs = [_mappings(0, 0.80, 0.82, 0.82, 0.81), _mappings(1, 0.84, 0.83, 0.87, 0.86)]
    rows = reproduce.chain_table(runs).splitlines()
    assert rows[0].startswith("| link | b − a, mean ± sd (2 seeds)")
    # flm - rlm: +2, -1 -> mean +0.5, sd 3/sqrt(2) = 2.12, se 1.5, t = 0.33;
    # 95% CI: 0.5 ± t(0.975, df=1) · 1.5 = 0.5 ± 12.706 · 1.5 = 0.5 ± 19.06
    assert rows[2] == "| rlm < flm | +0.5 ± 2.1 | 1/2 (0) | +0.33 | [-18.6, +19.6] | holds |"
    # ilm - flm: 0 (a tie), +4 -> mean +2.0, sd 2.83, se 2.0, t = 1.00; <= holds
    assert rows[3] == "| flm ≤ ilm | +2.0 ± 2.8 | 1/2 (1) | +1.00 | [-23.4, +27.4] | holds |"
    # blm_plus - ilm: -1, -1 -> mean -1.0, sd 0 (t undefined, the interval a point)
    assert rows[4] == "| ilm ≤ blm_plus | -1.0 ± 0.0 | 0/2 (0) | +nan | [-1.0, -1.0] | does not hold |"
    # three seeds: t(0.975, df=2) = 4.303; ilm - rlm: +2, +3, +7 -> mean 4.0, sd 2.65, se 1.53
    three = [*runs, _mappings(2, 0.80, 0.85, 0.87, 0.88)]
    row = reproduce.chain_table(three, "rlm < ilm").splitlines()[2]
    assert row == "| rlm < ilm | +4.0 ± 2.6 | 3/3 (0) | +2.62 | [-2.6, +10.6] | holds |"
    tie = reproduce.chain_table(runs, "flm < ilm").splitlines()
    assert tie[2].endswith("| holds |")  # +2.0 on the means
    strict = reproduce.chain_table([_mappings(0, 0.8, 0.8, 0.8, 0.8)], "rlm < flm <= ilm").splitlines()
    assert strict[2].endswith("| does not hold |") and strict[3].endswith("| holds |")  # 0 < 0 no, 0 <= 0 yes


def test_chain_table_rejects_bad_chains(reproduce):
    runs = [_mappings(0, 0.8, 0.8, 0.8, 0.8)]
    for chain in ("rlm", "rlm < flm <", "rlm > flm", "rlm flm ilm"):
        with pytest.raises(ValueError, match="a chain is"):
            reproduce.chain_table(runs, chain)
    with pytest.raises(ValueError, match=r"no candidates \['blm'\]"):
        reproduce.chain_table(runs, "ilm <= blm")


def test_summarize_checks_the_papers_chain_when_the_runs_have_it(reproduce, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(_mappings(0, 0.8, 0.81, 0.82, 0.83)))
    assert reproduce.main(["--summarize", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "| ilm ≤ blm_plus | +1.0 ± nan | 1/1 (0) | +nan | — | holds |" in out
    assert reproduce.main(["--summarize", str(folder), "--chain", "ilm < rlm"]) == 0
    assert "| ilm < rlm | -2.0 ± nan | 0/1 (0) | +nan | — | does not hold |" in capsys.readouterr().out


def test_an_explicit_chain_is_checked_before_any_run(reproduce, tmp_path, capsys):
    with pytest.raises(SystemExit):  # argparse's one-line usage error, before the recipe runs
        reproduce.main(["mnist5k_lite0_mappings", "--seeds", "0", "--chain", "rlm > flm"])
    assert "a chain is" in capsys.readouterr().err
    folder = tmp_path / "run"  # a single-mapping run: no default chain, an explicit one is an error
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(_run(0, [0.5, 0.6], None)))
    assert reproduce.main(["--summarize", str(folder)]) == 0
    assert "| link |" not in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"no candidates \['flm'\]"):
        reproduce.main(["--summarize", str(folder), "--chain", "rlm < flm"])


def test_every_recipe_is_checked_before_the_first_run(reproduce, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(reproduce.recipes, "run", lambda *a, **k: pytest.fail("ran before checking"))
    for argv, what in ((["mnist5k_lite0_pad_ilm", "no_such_recipe"], "no recipe 'no_such_recipe'"),
                       (["mnist5k_lite0_pad_ilm", "--set", "epochs=abc"], "epochs must be an integer"),
                       (["--summarize", str(tmp_path / "none")], "no finished run there")):  # fmt: skip
        with pytest.raises(SystemExit):  # argparse's one-line error, not a traceback after hours
            reproduce.main([*argv, "--out", str(tmp_path / "out")])
        assert what in capsys.readouterr().err
