"""One training start reads (and hashes) the data file once: records, cache key, contamination guard and
the resume fingerprint all come from that one read (sftbench.data.records.read_file_bytes)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sftbench.data import records
from sftbench.data.demo import make_conversations


def _argv(model_dir, data, out, **over) -> list[str]:
    base = dict(model_name_or_path=str(model_dir), data_path=str(data), output_dir=str(out), max_steps=1,
                per_device_train_batch_size=2, gradient_accumulation_steps=1, model_max_length=64, save_steps=1,
                seed=0, progress=False)
    base.update(over)
    return [x for k, v in base.items() for x in (f"--{k}", str(v))]


@pytest.fixture
def reads(monkeypatch):
    seen: Counter = Counter()
    real = records.read_file_bytes

    def counting(f: Path) -> bytes:
        seen[Path(f).resolve()] += 1
        return real(f)

    monkeypatch.setattr(records, "read_file_bytes", counting)
    return seen


@pytest.mark.parametrize("cache", ["none", "dir"])
def test_a_training_start_reads_the_data_file_once(tiny_model_dir, tmp_path, reads, cache):
    from sftbench.config.train import parse_train_config
    from sftbench.train.setup import start

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(8, seed=1)))
    cache_dir = "none" if cache == "none" else str(tmp_path / "cache")
    run = start(parse_train_config(_argv(tiny_model_dir, data, tmp_path / "out", data_cache_dir=cache_dir)))
    assert reads == Counter({data.resolve(): 1})
    assert run.data_fingerprint == records.read_records(str(data)).fingerprint
    assert run.data_fingerprint.startswith("files:") and run.stats.records == 8 and len(run.examples) == 7


def test_read_records_parses_and_hashes_the_same_bytes(tmp_path, reads):
    a, b = tmp_path / "d" / "a.jsonl", tmp_path / "d" / "b.json"
    a.parent.mkdir()
    a.write_text('{"messages": []}\nnot json\n')
    b.write_text('[{"messages": []}]')
    loaded = records.read_records(str(a.parent), lenient=True)
    assert reads == Counter({a.resolve(): 1, b.resolve(): 1})
    assert [(Path(s).name, i) for s, i, _ in loaded.records] == [("a.jsonl", 1), ("b.json", 1)]
    assert [(x.reason, str(x)) for x in loaded.bad] == [
        ("malformed_json", f"{a}:2: malformed JSON at column 1: Expecting value. Fix or remove that line.")]
    with pytest.raises(records.UserError, match=r"a.jsonl:2: malformed JSON at column 1: Expecting value\."):
        records.read_records(str(a.parent))
