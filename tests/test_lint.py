"""The linter is part of the tests: ``ruff check`` over the whole repository with the rules in
pyproject.toml ([tool.ruff]) passes."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")

pytestmark = pytest.mark.lint


def test_ruff_check_passes():
    assert RUFF, "ruff is not installed (requirements.txt pins it; scripts/install.sh installs it)"
    p = subprocess.run([RUFF, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"ruff check found problems:\n{p.stdout}{p.stderr}"
