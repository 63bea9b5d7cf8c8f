"""sftbench/tasks/prompts/: the shipped prompt sets, their checksums, licence notice and package data."""

import json
import tomllib
from pathlib import Path

import pytest

from sftbench.tasks import prompts

ROOT = Path(__file__).resolve().parents[1]


def test_ifbench_file_is_shipped_with_its_checksum():
    assert prompts.sha256(prompts.ifbench_path()) == prompts.IFBENCH_SHA256
    assert sum(1 for _ in prompts.ifbench_path().open(encoding="utf-8")) == 294


def test_package_data_and_notice():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert cfg["tool"]["setuptools"]["package-data"]["sftbench.tasks.prompts"] == ["*.jsonl", "NOTICE"]
    notice = (Path(prompts.__file__).parent / "NOTICE").read_text()
    for needle in ("ifbench_test.jsonl", "ODC-BY-1.0", prompts.IFBENCH_SHA256,
                   "ifeval_input_data.jsonl", "google-research", prompts.IFEVAL_SHA256, "Apache License 2.0"):
        assert needle in notice


def test_packaged_ifeval_absent_is_none(monkeypatch, tmp_path):
    monkeypatch.setattr(prompts, "IFEVAL_FILE", tmp_path / "missing.jsonl")
    assert prompts.packaged_ifeval_path() is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    monkeypatch.setattr(prompts, "IFEVAL_FILE", bad)
    assert prompts.packaged_ifeval_path() == bad
    assert prompts.packaged_ifeval_path(verify=True) is None  # not Google's bytes


@pytest.mark.skipif(prompts.packaged_ifeval_path() is None, reason="this checkout does not ship the IFEval prompts")
def test_packaged_ifeval_is_googles_file(shared_dir):
    path = prompts.packaged_ifeval_path(verify=True)
    assert path is not None
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    assert len(rows) == prompts.IFEVAL_N_PROMPTS == 541
    assert prompts.sha256(path) == prompts.sha256(shared_dir / "data" / "ifeval" / "input_data.jsonl")


@pytest.mark.skipif(prompts.packaged_ifeval_path() is None, reason="this checkout does not ship the IFEval prompts")
def test_packaged_ifeval_loads_with_our_validation():
    from sftbench.tasks.data import HW100_KEYS, load_jsonl

    exs = load_jsonl(prompts.packaged_ifeval_path())
    assert len(exs) == 541 and len({e.key for e in exs}) == 541
    assert HW100_KEYS <= {e.key for e in exs}  # the homework's 100 prompts are a subset
    assert sum(len(e.instruction_id_list) for e in exs) == 834
