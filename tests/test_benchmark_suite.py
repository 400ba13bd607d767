"""benchmarks/suite.py: smoke runs (``--quick``) of the JAX-vs-PyTorch step suite; no timing is asserted."""

import pathlib
import subprocess

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


# Measured with warm imports (tests/conftest.py's -O0): cartridge ~4 CPU-s, llama1b ~5; mpt ~9 and
# time_llm ~10 (their compilations), hence slow.
@pytest.mark.parametrize(
    "name",
    [
        "cartridge",
        "llama1b",  # only run when named: the converter path of a GPU row, checked here on a tiny config
        pytest.param("mpt", marks=pytest.mark.slow),
        pytest.param("time_llm", marks=pytest.mark.slow),
    ],
)
def test_quick_method_rows_check(suite, name, capsys):
    results = suite.main(["--quick", "--rows", name, "--reps", "1", "--warmup", "0"])
    _assert_rows(results, [name])
    assert f"{name}: check passed" in capsys.readouterr().out


def test_bf16_timed_steps_and_mfu(suite, capsys):
    """--precision bf16 (the GPU default) times fit's bf16 forward against PyTorch under autocast, after
    the float32 check; --peak-tflops adds the MFU column (on a GPU read off the device kind)."""
    argv = ["--quick", "--rows", "cartridge", "--precision", "bf16", "--peak-tflops", "1"]
    results = suite.main([*argv, "--reps", "1", "--warmup", "0"])
    _assert_rows(results, ["cartridge"])
    printed = capsys.readouterr().out
    assert "bf16, MFU of 1 TFLOP/s" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| cartridge |"))
    mfu = row.split("|")[-3].strip()
    assert mfu.endswith("%") and float(mfu[:-1]) > 0, row


def test_unknown_row_is_refused(suite):
    with pytest.raises(SystemExit):
        suite.main(["--quick", "--rows", "vgg"])


@pytest.mark.slow
def test_quick_all_rows_plain_torch_prompt(suite):
    results = suite.main(["--quick", "--torch-prompt", "plain"])
    _assert_rows(
        results,
        [
            "efficientnet",
            "resnet18",
            "resnet50",
            "vit_vpt_deep",
            "minilm",
            "minilm_ptv2",
            "gpt2",
            "mpt",
            "cartridge",
            "time_llm",
        ],
    )
    assert all("plain torch" in results[i]["shape"] for i in (4, 7, 8, 9))


def test_gpu_script_parses():
    """benchmarks/gpu.sh, the prepared device run, is at least valid bash (its plumbing was run on a CPU
    with DEVICE=cpu SUITE_ARGS='--quick --reps 1')."""
    script = pathlib.Path(__file__).parents[1] / "benchmarks" / "gpu.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert '--device "$device"' in script.read_text()
