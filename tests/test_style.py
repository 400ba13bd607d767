"""The repository stays ruff-clean (part of the README's test command)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    try:
        result = subprocess.run([*cmd, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    except FileNotFoundError:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    assert result.returncode == 0, result.stdout + result.stderr
