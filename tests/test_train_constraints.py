"""The project's own training-only constraint types (sftbench/tasks/train_constraints.py, issue 22): each checker
on passing and failing answers; none is an IFEval or IFBench test type; their phrasings share no 8-gram with
either benchmark's prompts; augmentation with them alone writes records that re-verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftbench.tasks import train_constraints as TC

ROOT = Path(__file__).resolve().parents[1]

CASES = [  # (id, kwargs, passing answers, failing answers)
    ("train:start_phrase", {"start_phrase": "Good question."},
     ["Good question. Paris is big.", "  \nGood question.\nYes."],
     ["good question. Paris is big.", "Paris is big. Good question.", "Good question"]),
    ("train:end_with_question", {},
     ["Paris is big. Want more?", "Is it?  \n"],
     ["Want more? Paris is big.", "Paris is big.", "Is it ?."]),
    ("train:wrap_tag", {"tag": "answer"},
     ["<answer>\nParis is big.\n</answer>", "  <answer>Yes</answer>\n"],
     ["<answer>Paris is big.", "Paris <answer>is</answer> big.", "<reply>Yes</reply>", "<answer></answer>"]),
    ("train:max_sentence_words", {"max_words": 5},
     ["Paris is big. It is old.", "One two three four five."],
     ["One two three four five six.", "Short. This one has far too many words in it.", ""]),
    ("train:no_digits", {},
     ["Paris has two million people.", "No numbers here."],
     ["Paris has 2 million people.", "It was 1990.", "   "]),
]


@pytest.mark.parametrize("iid,kw,good,bad", CASES, ids=[c[0] for c in CASES])
def test_checker_passes_and_fails(iid, kw, good, bad):
    assert [TC.CHECKERS[iid](r, kw) for r in good] == [True] * len(good)
    assert [TC.CHECKERS[iid](r, kw) for r in bad] == [False] * len(bad)
    cons = [{"instruction_id": iid, "kwargs": kw}]
    assert TC.failures(cons, good[0]) == [] and TC.failures(cons, bad[0]) == [iid]


def test_every_own_type_is_tested_and_is_in_the_augmentation():
    from sftbench.data import augment_types as T

    assert sorted(c[0] for c in CASES) == sorted(TC.CHECKERS)
    assert set(TC.CHECKERS) <= set(T.TYPES) and all(i.startswith(TC.PREFIX) for i in TC.CHECKERS)
    assert not set(TC.CHECKERS) & set(T.HELD_OUT)


def test_no_own_type_is_an_ifeval_or_ifbench_test_type():
    from sftbench.tasks.scoring import Scorer

    ifeval = set(Scorer().registry.INSTRUCTION_DICT)
    ifbench = {i for line in (ROOT / "sftbench" / "tasks" / "prompts" / "ifbench_test.jsonl").read_text().splitlines()
               for i in json.loads(line)["instruction_id_list"]}
    assert len(ifeval) == 25 and len(ifbench) == 57
    own = set(TC.CHECKERS)
    assert not own & ifeval and not own & ifbench
    # nor the same idea under another name: no own id shares its name part with a test id
    names = {i.split(":")[1] for i in ifeval | ifbench}
    assert not {i.split(":")[1] for i in own} & names


def test_own_phrasings_share_no_8_gram_with_either_benchmark():
    from sftbench.core.io import read_jsonl
    from sftbench.data import augment_types as T
    from sftbench.data.contamination import find_contaminated

    prompts = ROOT / "sftbench" / "tasks" / "prompts"
    refs = {"ifeval": {r["key"]: r["prompt"] for r in read_jsonl(prompts / "ifeval_input_data.jsonl")},
            "ifbench": {r["key"]: r["prompt"] for r in read_jsonl(prompts / "ifbench_test.jsonl")}}
    texts = [{"messages": [{"role": "user", "content": s}]}
             for iid in TC.CHECKERS for v in T.TYPES[iid].templates.values() for s in v]
    assert len(texts) == 15 and find_contaminated(texts, refs, n=8) == []


def test_augmenting_with_own_types_only_reverifies():
    from sftbench.data import augment as A

    ans = ("Paris is the capital of France. It has 2,100,000 residents and 130 museums. Visitors love the food.")
    records = [{"messages": [{"role": "user", "content": f"Tell me about Paris, part {i}."},
                             {"role": "assistant", "content": ans}]} for i in range(6)]
    cfg = A.AugmentConfig(fraction=1.0, types=",".join(TC.CHECKERS), max_constraints=3, variants=3, seed=1)
    checker = A.Checker()
    out, stats = A.augment_records(records, cfg, checker=checker)
    assert stats.kept >= 12 and set(stats.per_type) == set(TC.CHECKERS)
    for r in out:
        assert r["constraints"] and A.verify_record(r, checker) == []
        assert {c["instruction_id"] for c in r["constraints"]} <= set(TC.CHECKERS)
    assert A.verify_record({**out[0], "messages": out[0]["messages"][:-1] + [{"role": "assistant", "content": ""}]},
                           checker) != []
