"""The command line: one line and exit code 2 for every input a user can get wrong, no tracebacks."""

import re

import pytest

from jaxreprog import cli


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_hostile_and_mistaken_inputs_are_one_line_exit_2(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"  # 'billion laughs': nine levels of aliases expand to 9**9 strings
    bomb.write_text(
        "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
    )
    bad_utf8 = tmp_path / "latin1.toml"
    bad_utf8.write_bytes("description = 'caf\xe9'\n".encode("latin-1"))
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"not a checkpoint")
    a_file = tmp_path / "data"
    a_file.write_text("")
    cases = [
        (["run", str(bomb), "--check"], r"YAML aliases \(\*a0\) are not allowed"),
        (["run", str(bad_utf8), "--check"], r"latin1\.toml: not UTF-8 text"),
        (["run", "digits_lite0_pad_ilm", "--set", "seed=-1", "--check"], "seed must be >= 0, got -1"),
        (
            ["run", "digits_lite0_pad_ilm", "--set", f"model.weights={weights}", "--set", "epochs=1",
             "--out", str(tmp_path / "o1"), "--no-progress"],
            r"weights\.pt: not a PyTorch checkpoint",
        ),
        (
            ["run", "digits_lite0_pad_ilm", "--set", f"dataset.data_dir={a_file}",
             "--out", str(tmp_path / "o2"), "--no-progress"],
            r"data_dir '.*data' is a file",
        ),
        (["run", "no_such_recipe"], "no recipe 'no_such_recipe'"),
    ]  # fmt: skip
    for argv, match in cases:
        rc, _, err = run(capsys, *argv)
        assert rc == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("jaxreprog run: error: ")
        assert re.search(match, err), (match, err)


def test_debug_shows_the_traceback_and_version_prints(capsys):
    with pytest.raises(ValueError, match="no recipe"):
        cli.main(["--debug", "run", "no_such_recipe"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("jaxreprog 0.")
