"""sftbench.data.contamination: normalisation, a planted IFEval prompt is flagged, the shipped demo data is clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftbench.data import contamination as C
from sftbench.core.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]
PROMPT = ("Write a 300+ word summary of the wikipedia page about the history of the Eiffel Tower. "
          "Do not use any commas and highlight at least 3 sections.")


def _user(text, answer="Sure."):
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}


def test_words_normalisation():
    assert C.words("Write a 300+ word *essay*, on \"AI_safety\"!") == ["write", "a", "300", "word", "essay", "on", "ai", "safety"]
    assert C.words("Café au lait") == ["café", "au", "lait"]


def test_find_contaminated_flags_a_planted_prompt_and_nothing_else():
    bench = {"ifeval": {1001: PROMPT, 1002: "Short prompt."}, "ifbench": {"7": "Another prompt with nothing in common."}}
    planted = "Hi! " + PROMPT.upper().replace(",", " ;") + " Thanks."
    records = [_user("What is 2 plus 2?"), _user(planted), _user("Write a 300 word summary of a page.", PROMPT)]
    hits = C.find_contaminated(records, bench)
    assert hits == [(1, "ifeval", 1001, "write a 300 word summary of the wikipedia page about the history of")]
    # 12 shared words are not enough; the assistant's text is never checked.
    twelve = " ".join(C.words(PROMPT)[:12])
    assert C.find_contaminated([_user(twelve)], bench) == []
    assert C.find_contaminated([_user(twelve)], bench, n=12) == [(0, "ifeval", 1001, twelve)]
    assert C.drop_contaminated(records, hits) == [records[0], records[2]]


def test_sharegpt_records_are_read():
    rec = {"conversations": [{"from": "human", "value": PROMPT}, {"from": "gpt", "value": "ok"}]}
    assert [h[:3] for h in C.find_contaminated([rec], {"ifeval": {5: PROMPT}})] == [(0, "ifeval", 5)]


def test_planted_ifeval_prompt_in_demo_data_is_flagged_and_demo_is_clean(shared_dir):
    prompts = {r["key"]: r["prompt"] for r in read_jsonl(shared_dir / "data" / "ifeval" / "input_data.jsonl")}
    demo = read_jsonl(REPO / "sftbench" / "data" / "demo_chat.jsonl")
    assert len(demo) == 300
    assert C.find_contaminated(demo, {"ifeval": prompts}) == []
    planted = list(demo)
    planted.insert(17, _user(prompts[1001] + "\nPlease."))
    hits = C.find_contaminated(planted, {"ifeval": prompts})
    assert {(h[0], h[1]) for h in hits} == {(17, "ifeval")}
    assert 1001 in {h[2] for h in hits}


def test_cli_reports_hits_and_writes_json(tmp_path, capsys):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"key": 1001, "prompt": PROMPT, "instruction_id_list": ["punctuation:no_comma"],
                                 "kwargs": [{}]}) + "\n")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(_user("hello there")) + "\n" + json.dumps(_user(PROMPT)) + "\n")
    out = tmp_path / "hits.json"
    assert C.main([str(data), "--ifeval", str(bench), "--ifbench", str(bench), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{data}: record 2: ifeval 1001: \"write a 300 word summary" in text
    assert text.strip().endswith("1 of 2 examples share a 13-word n-gram with a benchmark prompt (ifeval 1, ifbench 1 prompts checked)")
    assert [h["record"] for h in json.loads(out.read_text())] == [1, 1]


def test_cli_bad_input_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        C.main([str(tmp_path / "missing.jsonl")])
    assert e.value.code == 2 and "missing.jsonl: file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": 1\n')
    with pytest.raises(SystemExit) as e:
        C.main([str(bad), "--json", str(tmp_path / "h.json")])
    assert e.value.code == 2 and f"{bad}:1: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "h.json").exists()


def test_benchmark_prompts_adapter_tolerates_missing_ifbench(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "_ifbench_file", lambda: None)
    logs = []
    got = C.benchmark_prompts(ifeval_path=str(REPO / "sftbench" / "tasks" / "tiny_prompts.jsonl"), log=logs.append)
    assert set(got) == {"ifeval"} and len(got["ifeval"]) == 6
    assert any("IFBench prompts not found" in m for m in logs)
