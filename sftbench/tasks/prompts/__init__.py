"""Prompt sets shipped with sftbench (see NOTICE in this directory for sources and licences).

- `packaged_ifeval_path()`: Google's 541 IFEval prompts (`ifeval_input_data.jsonl`, byte-identical to
  google-research's instruction_following_eval/data/input_data.jsonl at commit 19638399), or None when
  the file is absent (a trimmed install).  `sftbench.tasks.data` uses it after `--data`, SFTBENCH_IFEVAL_DATA and the hub.
- `ifbench_path()`: IFBench's 294 test prompts (`ifbench_test.jsonl`); read by `sftbench.tasks.ifbench`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
IFEVAL_FILE = HERE / "ifeval_input_data.jsonl"
IFEVAL_SHA256 = "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
IFEVAL_N_PROMPTS = 541
IFBENCH_N_PROMPTS = 294
IFBENCH_FILE = HERE / "ifbench_test.jsonl"
IFBENCH_SHA256 = "11c3d683dcc7f4908a4d3cacd05c9a8bbd5484af2f8fde969e7abe2b8bad3e34"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def packaged_ifeval_path(verify: bool = False) -> Path | None:
    """The shipped IFEval prompt file, or None if absent.  verify: also None unless its sha256 is Google's."""
    if not IFEVAL_FILE.is_file():
        return None
    if verify and sha256(IFEVAL_FILE) != IFEVAL_SHA256:
        return None
    return IFEVAL_FILE


def ifbench_path() -> Path:
    return IFBENCH_FILE
