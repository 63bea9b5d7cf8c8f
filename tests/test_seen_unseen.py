"""sftbench/analysis/seen_unseen.py: instruction-level accuracy on seen vs held-out constraint types, table and sentence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftbench.analysis import seen_unseen as S

NC, LC, Q = "punctuation:no_comma", "change_case:english_lowercase", "startend:quotation"


def row(ids, ok):
    return {"instruction_id_list": ids, "follow_instruction_list": ok, "follow_all_instructions": all(ok),
            "prompt": "p", "response": "r"}


START = [row([NC, Q], [True, False]), row([NC, LC], [False, True]), row([Q], [True])]
END = [row([NC, Q], [True, False]), row([NC, LC], [True, True]), row([Q], [True])]


def test_group_accuracy_exact_counts():
    g = S.group_accuracy(START, held_out=[Q])
    assert (g.seen_followed, g.seen_total, g.held_out_followed, g.held_out_total) == (2, 3, 1, 2)
    assert g.as_dict() == {"seen": 2 / 3, "held_out": 0.5, "counts": {"seen_followed": 2, "seen_total": 3,
                                                                      "held_out_followed": 1, "held_out_total": 2}}
    # default: augment_types.HELD_OUT, which holds startend:quotation
    assert S.group_accuracy(START).held_out_total == 2


def test_table_and_sentence_for_a_seen_only_gain():
    per = S.per_checkpoint({30: END, 0: START}, held_out=[Q])
    assert list(per) == [0, 30]
    assert S.markdown_table(per) == (
        "| step | seen types | held-out types | seen Δ vs start | held-out Δ vs start |\n"
        "|---:|---:|---:|---:|---:|\n"
        "| 0 | 66.7 (2/3) | 50.0 (1/2) | +0.0 | +0.0 |\n"
        "| 30 | 100.0 (3/3) | 50.0 (1/2) | +33.3 | +0.0 |\n")
    assert S.sentence(per[0], per[30]) == ("The gain is on trained constraint types only (+33.3 points): held-out "
                                           "types moved +0.0 points.")


def test_sentences_of_the_other_cases():
    g = lambda sf, st, hf, ht: S.GroupAccuracy(sf, st, hf, ht)  # noqa: E731
    start = g(500, 1000, 200, 1000)
    assert S.sentence(start, g(520, 1000, 196, 1000)) == \
        "The gain is on trained constraint types only (+2.0 points): held-out types moved -0.4 points."
    assert S.sentence(start, g(520, 1000, 210, 1000)) == \
        "The gain carries over to held-out constraint types: seen types moved +2.0 points, held-out types moved +1.0 points."
    assert S.sentence(start, g(498, 1000, 210, 1000)) == \
        "Only held-out constraint types gained: seen types moved -0.2 points, held-out types moved +1.0 points."
    assert S.sentence(start, g(480, 1000, 199, 1000)) == \
        "No gain on either group: seen types moved -2.0 points, held-out types moved -0.1 points."
    assert S.sentence(start, g(502, 1000, 201, 1000)) == \
        "No change on either group: seen types moved +0.2 points, held-out types moved +0.1 points."
    assert S.sentence(g(1, 2, 0, 0), g(2, 2, 0, 0)).startswith("No held-out constraint types were evaluated")


def _results(tmp_path: Path) -> Path:
    res = tmp_path / "res"
    for step, rows in ((0, START), (30, END)):
        d = res / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "eval_results_strict.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "summary.json").write_text(json.dumps({"complete": True}))
    (res / "checkpoint-40").mkdir()  # no results: ignored
    return res


def test_held_out_from_the_run_and_the_cli(tmp_path, capsys):
    res = _results(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    assert S.held_out_of(run) == S.default_held_out()
    (run / "augment_stats.json").write_text(json.dumps({"held_out": [LC]}))
    assert S.held_out_of(run) == [LC]
    assert S.main([str(res), "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "held out of training: `change_case:english_lowercase`." in out
    assert "| 30 | 75.0 (3/4) | 100.0 (1/1) | +25.0 | +0.0 |" in out
    assert out.endswith("From the start to step 30: The gain is on trained constraint types only (+25.0 points): "
                        "held-out types moved +0.0 points.\n")
    assert S.main([str(res), "--held_out", Q]) == 0
    assert "| 30 | 100.0 (3/3) | 50.0 (1/2) | +33.3 | +0.0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        S.main([str(tmp_path / "missing")])
    assert e.value.code == 2
