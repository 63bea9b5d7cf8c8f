"""The project's own training-only constraint types (sftbench/tasks/train_constraints.py, issue 22): each checker
on passing and failing answers, each rewrite on a failing answer; none is an IFEval or IFBench test type; their phrasings share no 8-gram with
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
    ("train:line_prefix", {"prefix": "> "},
     ["> Paris is big.\n>  It is old.", "> One.\n\n   \n> Two.\n"],
     ["Paris is big.", "> Paris is big.\nIt is old.", " > Paris is big.", ">Paris is big.", "  \n"]),
    ("train:no_char", {"char": ":"},
     ["Paris is big; it is old!", "Note - yes."],
     ["Note: yes.", "It opens at 10:30.", "  "]),
    ("train:max_paragraph_sentences", {"max_sentences": 2},
     ["One. Two.\n\nThree.", "Only one here.", "A. B.\n  \nC. D.\n\n\nE."],
     ["One. Two. Three.\n\nFour.", "One.\n\nTwo. Three. Four.", "  \n "]),
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
    assert len(texts) == 3 * len(TC.CHECKERS) == 24 and find_contaminated(texts, refs, n=8) == []


def test_augmenting_with_own_types_only_reverifies():
    from sftbench.data import augment as A

    ans = ("Paris is the capital of France. It has 2,100,000 residents and 130 museums. Visitors love the food!"
           "\n\nThe river Seine runs through it; its banks are lovely.")
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


@pytest.mark.parametrize("iid,planned,answer", [
    ("train:line_prefix", {"prefix": ">> "}, "Paris is big.\n\n  \nIt is old.\n* A list item."),
    ("train:no_char", {"char": "!"}, "Wow! Paris is big!! Really?! Yes."),
    ("train:no_char", {"char": ";"}, "Paris is big; it is old ; and loved."),
    ("train:no_char", {"char": ":"}, "Note: Paris is big.\n: odd line\nKey points : many."),
])
def test_rewrite_makes_a_failing_answer_pass(iid, planned, answer):
    from sftbench.data import augment_types as T

    assert not TC.CHECKERS[iid](answer, planned)
    out = T.TYPES[iid].apply(answer, planned)
    assert TC.CHECKERS[iid](out, planned)


def test_new_rewrites_exact():
    from sftbench.data import augment_types as T

    assert T.prefix_rewrite("A.\n\n  \nB.", {"prefix": "| "}) == "| A.\n\n\n| B."
    assert T.no_char_rewrite("Wow! Really?! Yes!!", {"char": "!"}) == "Wow. Really? Yes."
    assert T.no_char_rewrite("a; b ; c", {"char": ";"}) == "a, b, c"
    # no line may start with "-" (IFEval's bullet checker would count it); a colon opening a line is dropped
    assert T.no_char_rewrite("Note: a\n: b\nc :d", {"char": ":"}) == "Note - a\nb\nc -d"


def test_no_char_plan_and_final_kwargs():
    from random import Random

    from sftbench.data import augment_types as T

    assert T._plan_no_char("```\nx = 1\n```", "", Random(0)) is None
    assert all(T._plan_no_char("See https://example.org at 10:30.", "", Random(s))["char"] != ":" for s in range(30))
    assert {T._plan_no_char("Plain text.", "", Random(s))["char"] for s in range(60)} == {"!", ";", ":"}
    # a later addition (the start phrase "Short answer first:") brought the planned ":" back: another absent char
    fin = T._fin_no_char("Short answer first: Paris is big!", {"char": ":"}, Random(0), None)
    assert fin == {"char": ";"}
    assert T._fin_no_char("a! b; c: d", {"char": ":"}, Random(0), None) is None


def test_paragraph_sentences_plan_and_final_kwargs():
    from random import Random

    from sftbench.data import augment_types as T

    assert T._plan_paragraph_sentences("One paragraph. Two sentences.", "", Random(0)) is None
    assert T._plan_paragraph_sentences("One. Two.\n\nThree.", "", Random(0)) == {}
    kws = {T._fin_paragraph_sentences("One. Two.\n\nThree.", {}, Random(s), None)["max_sentences"] for s in range(20)}
    assert kws == {2, 3}
    assert T._fin_paragraph_sentences(" ".join(["Word."] * 9) + "\n\nEnd.", {}, Random(0), None) is None


def test_new_conflicts():
    from sftbench.data import augment_types as T

    for other in ("startend:quotation", "train:wrap_tag", "train:start_phrase", "detectable_format:title",
                  "length_constraints:number_paragraphs", "detectable_format:multiple_sections",
                  "detectable_format:number_bullet_lists", "combination:repeat_prompt",
                  "detectable_format:json_format"):
        assert not T.compatible("train:line_prefix", other), other
    for other in ("detectable_content:postscript", "startend:end_checker", "train:end_with_question",
                  "keywords:existence", "change_case:english_lowercase", "train:no_char"):
        assert T.compatible("train:line_prefix", other), other
    assert not T.compatible("train:max_paragraph_sentences", "detectable_format:number_bullet_lists")
    # the ";" -> "," rewrite must run before punctuation:no_comma removes the commas
    assert T.ORDER.index("train:no_char") < T.ORDER.index("punctuation:no_comma")
    assert T.ORDER.index("train:line_prefix") > max(T.ORDER.index(i) for i in (
        "detectable_content:postscript", "startend:end_checker", "train:end_with_question",
        "change_case:english_capital"))
