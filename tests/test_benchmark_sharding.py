"""benchmarks/sharding.py: a smoke run (``--quick``) on 8 forced host devices; no timing is asserted.

A subprocess: the script forces 8 CPU devices, which must happen before jax initialises."""

import pathlib
import subprocess
import sys

from conftest import host_devices_env

SCRIPT = pathlib.Path(__file__).parents[1] / "benchmarks" / "sharding.py"


def test_quick_checks_two_layouts_and_records(tmp_path):
    out = tmp_path / "README.md"
    command = [sys.executable, str(SCRIPT), "--quick", "--only", "tensor 1x8", "--record", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=host_devices_env(8), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "layout" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| 1 device", "| tensor 1x8"], result.stdout
    assert rows[0].split(" | ")[8:12] == ["0"] * 4  # one device: no collectives
    assert int(rows[1].split(" | ")[9]) > 0  # tensor parallel: all-reduces
    assert "share the same" in result.stdout and "not a speedup" in result.stdout
    text = out.read_text()
    assert "`python benchmarks/sharding.py --quick --only 'tensor 1x8' --record" in text
    assert "| tensor 1x8 |" in text and "8 forced CPU devices" in text
