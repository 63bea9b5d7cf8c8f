"""CI must show pytest's closing `N passed, M skipped` line: at most one -q in total (-qq hides it)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quiet_level(args: list[str]) -> int:
    n = 0
    for a in args:
        if a == "--quiet":
            n += 1
        elif re.fullmatch(r"-q+", a):
            n += len(a) - 1
    return n


def test_test_command_keeps_pytest_summary_line():
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get("addopts", "")
    pytest_lines = [ln for ln in (ROOT / "scripts/test.sh").read_text().splitlines()
                    if re.match(r"\s*python3? -m pytest\b", ln)]
    assert len(pytest_lines) == 1, pytest_lines
    cmd = shlex.split(pytest_lines[0], comments=True)
    assert _quiet_level(shlex.split(addopts)) + _quiet_level(cmd) <= 1
