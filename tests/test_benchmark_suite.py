"""benchmarks/suite.py: smoke runs (``--quick``) of the JAX-vs-PyTorch step suite; no timing is asserted."""

import pytest
from conftest import benchmark

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def suite():
    return benchmark("suite")


def _assert_rows(results, names):
    assert [r["row"] for r in results] == names
    for r in results:
        c = r["check"]  # the equality check ran (and passed: main raises otherwise)
        assert c["loss_err"] <= c["loss_tol"] and c["grad_err"] <= c["grad_tol"]
        assert r["jax_s"] > 0 and r["torch_s"] > 0 and r["ratio"] > 0
        assert r["first_call"]["jax"] > 0


def test_quick_text_rows_check_and_record(suite, tmp_path, capsys):
    out = tmp_path / "README.md"
    results = suite.main(["--quick", "--rows", "gpt2,minilm", "--record", str(out)])
    _assert_rows(results, ["gpt2", "minilm"])
    printed = capsys.readouterr().out
    assert "gpt2: check passed" in printed and "minilm: check passed" in printed
    text = out.read_text()
    assert "`python benchmarks/suite.py --quick --rows gpt2,minilm --record" in text
    assert "jax " in text and "torch " in text and "CPUs" in text
    assert "| gpt2 | GPT-2 2L/64 prefix" in text and "| minilm | MiniLM-L6 soft prompt P=20" in text


def test_unknown_row_is_refused(suite):
    with pytest.raises(SystemExit):
        suite.main(["--quick", "--rows", "vgg"])


@pytest.mark.slow
def test_quick_all_rows_plain_torch_prompt(suite):
    results = suite.main(["--quick", "--torch-prompt", "plain"])
    _assert_rows(
        results, ["efficientnet", "resnet18", "resnet50", "vit_vpt_deep", "minilm", "minilm_ptv2", "gpt2"]
    )
    assert "plain torch" in results[4]["shape"]
