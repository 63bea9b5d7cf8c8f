"""sftbench.data.augment / augment_types: every rewrite on fixed inputs (exact output, passes lm-eval's checker),
whole-data runs with their drop counts, self targets with a fake generator, and bad input."""

from __future__ import annotations

import json
from random import Random

import pytest

from sftbench.data import augment as A
from sftbench.data import augment_types as T
from sftbench.core.errors import UserError

ANSWER = ("Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. "
          "Visitors love the food.")
REQUEST = "Tell me about Paris in a few sentences."


@pytest.fixture(scope="module")
def checker():
    return A.Checker()


CASES = [
    ('length_constraints:number_words', {'relation': 'less than', '_keep': 2},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river.',
     {'relation': 'less than', 'num_words': 20}),
    ('length_constraints:number_sentences', {'relation': 'less than', '_keep': 1},
     'Paris is the capital of France.',
     {'relation': 'less than', 'num_sentences': 3}),
    ('punctuation:no_comma', {},
     'Paris is the capital of France. It has about 2100000 residents many museums and the Seine river. Visitors love the food.',
     {}),
    ('length_constraints:number_paragraphs', {},
     'Paris is the capital of France.\n\n***\n\nIt has about 2,100,000 residents, many museums, and the Seine river.\n\n***\n\nVisitors love the food.',
     {'num_paragraphs': 3}),
    ('detectable_format:multiple_sections', {'section_spliter': 'SECTION'},
     'SECTION 1\nParis is the capital of France.\n\nSECTION 2\nIt has about 2,100,000 residents, many museums, and the Seine river.\n\nSECTION 3\nVisitors love the food.',
     {'section_spliter': 'SECTION', 'num_sections': 3}),
    ('detectable_format:number_bullet_lists', {},
     '* Paris is the capital of France.\n* It has about 2,100,000 residents, many museums, and the Seine river.\n* Visitors love the food.',
     {'num_bullets': 3}),
    ('detectable_format:number_highlighted_sections', {'num_highlights': 2},
     '*Paris is the capital of France.* *It has about 2,100,000 residents, many museums, and the Seine river.* Visitors love the food.',
     {'num_highlights': 2}),
    ('detectable_format:title', {'_title': 'About Paris In A Few Sentences'},
     '<<About Paris In A Few Sentences>>\n\nParis is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {}),
    ('combination:repeat_prompt', {'prompt_to_repeat': 'Tell me about Paris in a few sentences.'},
     'Tell me about Paris in a few sentences.\n\nParis is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'prompt_to_repeat': 'Tell me about Paris in a few sentences.'}),
    ('detectable_content:postscript', {'postscript_marker': 'P.P.S', '_note': 'I am happy to expand on any part of this.'},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.\n\nP.P.S I am happy to expand on any part of this.',
     {'postscript_marker': 'P.P.S'}),
    ('startend:end_checker', {'end_phrase': 'I hope this helps.'},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.\n\nI hope this helps.',
     {'end_phrase': 'I hope this helps.'}),
    ('change_case:english_lowercase', {},
     'paris is the capital of france. it has about 2,100,000 residents, many museums, and the seine river. visitors love the food.',
     {}),
    ('change_case:english_capital', {},
     'PARIS IS THE CAPITAL OF FRANCE. IT HAS ABOUT 2,100,000 RESIDENTS, MANY MUSEUMS, AND THE SEINE RIVER. VISITORS LOVE THE FOOD.',
     {}),
    ('startend:quotation', {},
     '"Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food."',
     {}),
    ('detectable_format:json_format', {'_key': 'answer'},
     '```json\n{\n  "answer": "Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food."\n}\n```',
     {}),
    ('keywords:existence', {},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'keywords': ['residents', 'capital']}),
    ('keywords:frequency', {},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'keyword': 'residents', 'frequency': 3, 'relation': 'less than'}),
    ('keywords:forbidden_words', {},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'forbidden_words': ['essentially', 'basically']}),
    ('keywords:letter_frequency', {},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'letter': 'p', 'let_frequency': 4, 'let_relation': 'less than'}),
    # the project's own training-only types (issue 22; checkers in sftbench/tasks/train_constraints.py)
    ('train:max_sentence_words', {},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'max_words': 16}),
    ('train:no_digits', {},
     'Paris is the capital of France. It has about two million one hundred thousand residents, many museums, and the Seine river. Visitors love the food.',
     {}),
    ('train:start_phrase', {'start_phrase': 'Good question.'},
     'Good question. Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'start_phrase': 'Good question.'}),
    ('train:end_with_question', {'_question': 'Shall I add an example?'},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.\n\nShall I add an example?',
     {}),
    ('train:wrap_tag', {'tag': 'reply'},
     '<reply>\nParis is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.\n</reply>',
     {'tag': 'reply'}),
    ('train:max_paragraph_sentences', {},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'max_sentences': 4}),
    ('train:no_char', {'char': '!'},
     'Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'char': '!'}),
    ('train:line_prefix', {'prefix': '| '},
     '| Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. Visitors love the food.',
     {'prefix': '| '}),
]


def test_every_type_has_a_fixed_case():
    assert sorted(c[0] for c in CASES) == sorted(T.TYPES)
    assert len(T.TYPES) == 27  # 19 IFEval types + 8 of the project's own (issue 22)


@pytest.mark.parametrize("iid,planned,expected,kwargs", CASES, ids=[c[0] for c in CASES])
def test_rewrite_exact_and_passes_its_checker(checker, iid, planned, expected, kwargs):
    t = T.TYPES[iid]
    text = t.apply(ANSWER, planned)
    assert text == expected
    fin = planned if t.finalize is None else t.finalize(text, planned, Random(0), checker.util)
    assert A.public(fin) == kwargs
    assert checker.failures(REQUEST, [{"instruction_id": iid, "kwargs": kwargs}], text) == []
    # The content survives: a cut keeps a prefix; other rewrites that do not edit words keep every word in order.
    if t.cuts:
        assert ANSWER.startswith(text)
    elif not t.changes_text:
        assert _subsequence(T._words(ANSWER), T._words(text))


def _subsequence(small, big):
    it = iter(big)
    return all(w in it for w in small)


def test_combined_rewrite_in_pipeline_order(checker):
    planned = {"change_case:english_lowercase": {}, "punctuation:no_comma": {},
               "detectable_content:postscript": {"postscript_marker": "P.S.", "_note": T.POSTSCRIPT_NOTES[1]}}
    text = A.rewrite(ANSWER, planned)
    assert text == ("paris is the capital of france. it has about 2100000 residents many museums and the seine river. "
                    "visitors love the food.\n\np.s. ask me if a step is unclear.")
    cons = [{"instruction_id": i, "kwargs": A.public(k)} for i, k in planned.items()]
    assert checker.failures(REQUEST, cons, text) == []


def test_cut_keeps_whole_sentences():
    assert T.cut_sentences("One two. Three four! Five six?", 2) == "One two. Three four!"
    assert T.cut_sentences("One two. Three four!", 5) == "One two. Three four!"
    assert T.cut_sentences("Tips:\n1. Start early. Plan well.\n2. Rest.", 3) == "Tips:\n1. Start early. Plan well."
    assert T.cut_sentences("Tips:\n1. Start early. Plan well.\n2. Rest.", 4) == "Tips:\n1. Start early. Plan well."


def test_title_from_the_answers_own_heading(checker):
    ans = "Title: Why Cats Purr\n\nCats purr when they are calm."
    kw = T.TYPES["detectable_format:title"].plan(ans, "why do cats purr", Random(0))
    assert kw["_title"] == "Why Cats Purr"
    assert T.title_rewrite(ans, kw) == "<<Why Cats Purr>>\n\nCats purr when they are calm."


def test_templates_are_ours_and_format():
    for t in T.TYPES.values():
        for variant, temps in t.templates.items():
            assert len(temps) >= 3, (t.iid, variant)
            assert len(set(temps)) == len(temps)


def test_templates_share_no_8_gram_with_ifeval(shared_dir):
    from sftbench.data.contamination import find_contaminated
    from sftbench.core.io import read_jsonl

    prompts = {r["key"]: r["prompt"] for r in read_jsonl(shared_dir / "data" / "ifeval" / "input_data.jsonl")}
    texts = [{"messages": [{"role": "user", "content": s}]} for t in T.TYPES.values() for v in t.templates.values() for s in v]
    assert find_contaminated(texts, {"ifeval": prompts}, n=8) == []


def test_conflicts_are_never_chosen_together():
    assert not T.compatible("change_case:english_lowercase", "change_case:english_capital")
    assert not T.compatible("detectable_format:json_format", "punctuation:no_comma")
    assert T.compatible("detectable_format:json_format", "keywords:existence")
    long_answer = " ".join(f"Sentence number {i} talks about gardens." for i in range(8))
    for seed in range(200):
        got = A.choose_types(long_answer, "Tell me about gardens.", list(T.ORDER), Random(seed), 3)
        assert 1 <= len(got) <= 3
        assert all(T.compatible(a, b) for a in got for b in got if a != b)


def test_held_out_is_a_fifth_spread_over_categories():
    from sftbench.tasks.scoring import Scorer

    known = Scorer().registry.INSTRUCTION_DICT
    assert len(known) == 25 and len(T.HELD_OUT) == 5
    assert set(T.HELD_OUT) <= set(known)
    assert len({h.split(":")[0] for h in T.HELD_OUT}) == 5
    assert not set(T.HELD_OUT) & set(A.AugmentConfig().allowed())


def test_split_by_seen():
    ids = ["punctuation:no_comma", "startend:quotation", "keywords:existence", "keywords:letter_frequency"]
    assert T.split_by_seen(ids) == {"seen": [0, 2], "held_out": [1, 3]}
    assert T.split_by_seen(ids, held_out=[]) == {"seen": [0, 1, 2, 3], "held_out": []}


def _conv(user, answer=None, earlier=()):
    msgs = [m for u, a in earlier for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    msgs.append({"role": "user", "content": user})
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return {"messages": msgs}


def test_augment_records_counts_drops(checker):
    records = [
        _conv(REQUEST, ANSWER),
        _conv("Say hello in French.", "Bonjour, je suis très content de vous voir aujourd'hui, mes amis."),
        _conv("And a code sample?", "```python\nprint(1)\n```"),
        _conv("Unanswered question?", None, earlier=[("Hi", "Hello there.")]),
    ]
    cfg = A.AugmentConfig(fraction=1.0, types="change_case:english_capital", max_constraints=1)
    out, stats = A.augment_records(records, cfg, checker=checker)
    assert (stats.records, stats.selected, stats.kept) == (4, 4, 1)
    assert stats.dropped == {"checker_failed": 1, "no_suitable_type": 1, "no_final_answer": 1}
    assert stats.failed_checks == {"change_case:english_capital": 1}
    assert stats.per_type == {"change_case:english_capital": {"tried": 2, "passed_as_generated": 0,
                                                              "passed_after_rewrite": 1, "kept": 1}}
    assert out[0]["messages"][1]["content"] == ANSWER.upper()
    assert out[0]["messages"][0]["content"].startswith(REQUEST)
    assert out[0]["constraints"] == [{"instruction_id": "change_case:english_capital", "kwargs": {}}]
    assert [o["constraints"] for o in out[1:]] == [[], [], []]
    assert [o["messages"] for o in out[1:]] == [r["messages"] for r in records[1:]]
    assert A.verify_record(out[0], checker) == []


def test_augment_records_fraction_and_determinism(checker):
    records = [_conv(f"Question {i} about the sea?", f"The sea is deep. Fish live in it. Question {i} is good.")
               for i in range(10)]
    cfg = A.AugmentConfig(fraction=0.5, seed=3)
    out1, s1 = A.augment_records(records, cfg, checker=checker)
    out2, _ = A.augment_records(records, cfg, checker=checker)
    assert out1 == out2 and s1.selected == 5
    assert s1.kept + sum(s1.dropped.values()) == 5
    assert sum(bool(o["constraints"]) for o in out1) == s1.kept
    for o in out1:
        if o["constraints"]:
            assert A.verify_record(o, checker) == []
            assert not {c["instruction_id"] for c in o["constraints"]} & set(T.HELD_OUT)


def test_self_targets_with_a_fake_generator(checker):
    records = [_conv(REQUEST, ANSWER), _conv("Name a colour.", "Blue, mostly."),
               _conv("Again?", "Yes.", earlier=[("Hi", "Hello.")])]
    calls = []

    def fake(prompts, n, temperature):
        calls.append((list(prompts), n, temperature))
        return [["Paris, the capital, is lovely.", "Paris is lovely and old."], ["Red, or green, or blue."]][:len(prompts)]

    cfg = A.AugmentConfig(fraction=1.0, types="punctuation:no_comma", targets="self", samples=2, temperature=0.5,
                          multi_turn=False)
    out, stats = A.augment_records(records, cfg, checker=checker, generate=fake)
    assert len(calls) == 1 and calls[0][1:] == (2, 0.5) and len(calls[0][0]) == 2
    assert calls[0][0][0].startswith(REQUEST) and calls[0][0][0] == out[0]["messages"][0]["content"]
    assert stats.dropped == {"multi_turn_for_self_targets": 1}
    assert stats.target_source == {"self": 1, "self_rewritten": 1}
    assert out[0]["messages"][1]["content"] == "Paris is lovely and old."  # the sample that passes as it is
    assert out[1]["messages"][1]["content"] == "Red or green or blue."  # the only sample, rewritten
    assert out[2]["constraints"] == []


def test_self_targets_no_passing_sample(checker):
    def fake(prompts, n, temperature):
        return [[""] for _ in prompts]

    cfg = A.AugmentConfig(fraction=1.0, types="punctuation:no_comma", targets="self", samples=1)
    out, stats = A.augment_records([_conv(REQUEST, ANSWER)], cfg, checker=checker, generate=fake)
    assert stats.kept == 0 and stats.dropped == {"no_passing_sample": 1}


def test_config_errors():
    with pytest.raises(UserError, match="--types: unknown"):
        A.AugmentConfig(types="punctuation:no_comma,bogus:type").check()
    with pytest.raises(UserError, match="--fraction 1.5"):
        A.AugmentConfig(fraction=1.5).check()
    with pytest.raises(UserError, match="no type is left to add"):
        A.AugmentConfig(types="startend:quotation").check()
    assert A.AugmentConfig(types="startend:quotation", hold_out_types="none").allowed() == ["startend:quotation"]
    assert A.AugmentConfig(hold_out_types="none").allowed() == list(T.ORDER)
    assert A.cache_key("d", A.AugmentConfig()) != A.cache_key("d", A.AugmentConfig(seed=1))


@pytest.mark.parametrize("content,needle", [
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [\n',
     ":2: malformed JSON"),
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
     b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', ":2: not valid UTF-8"),
    (b'{"messages": [{"role": "robot", "content": "hi"}]}\n', ":1: turn 1 has unknown role"),
])
def test_bad_input_names_file_and_line_and_writes_nothing(tmp_path, capsys, content, needle):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(content)
    with pytest.raises(UserError, match=needle):
        A.read_chat_jsonl(src)
    with pytest.raises(SystemExit) as e:
        A.main([str(src), str(dst)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m sftbench.data.augment: error: ") and f"{src}{needle}" in err
    assert list(tmp_path.iterdir()) == [src]


def test_missing_file_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        A.main([str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl")])
    assert e.value.code == 2 and "nope.jsonl: file not found" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_on_demo_data(tmp_path, capsys, checker):
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "sftbench" / "data" / "demo_chat.jsonl"
    src = tmp_path / "in.jsonl"
    src.write_text("".join(demo.read_text().splitlines(keepends=True)[:40]))
    dst, st = tmp_path / "out.jsonl", tmp_path / "stats.json"
    assert A.main([str(src), str(dst), "--fraction", "1", "--seed", "1", "--stats_json", str(st)]) == 0
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    stats = json.loads(st.read_text())
    assert len(rows) == 40 and stats["selected"] == 40
    assert sum(bool(r["constraints"]) for r in rows) == stats["kept"] > 20
    assert stats["kept"] + sum(stats["dropped"].values()) == 40
    for r in rows:
        if r["constraints"]:
            assert A.verify_record(r, checker) == []
    assert f"kept {stats['kept']}" in capsys.readouterr().out


def test_project_generator_adapter_on_the_tiny_model(tiny_model_dir, capsys):
    gen = A.project_generator(str(tiny_model_dir), max_new_tokens=5)
    out = gen(["Tell me a story.", "Hi"], 3, 0.8)
    assert len(out) == 2 and [len(s) for s in out] == [3, 3]
    assert all(isinstance(t, str) for s in out for t in s)
    # says what it is about to do before the (on a CPU, minutes of) generation
    assert "[augment] answering 2 prompts x 3 on cpu (hf generator)" in capsys.readouterr().err
    gen(["p%d" % i for i in range(20)], 1, 0.0)
    assert "[augment] answering 20 prompts x 1 on cpu (hf generator, batches of 16)" in capsys.readouterr().err


def test_augment_cached(tmp_path, checker):
    records = [_conv(REQUEST, ANSWER)]
    cfg = A.AugmentConfig(fraction=1.0, types="punctuation:no_comma")
    out1, s1, hit1 = A.augment_cached(records, cfg, "fp1", tmp_path, checker=checker)
    out2, s2, hit2 = A.augment_cached(records, cfg, "fp1", tmp_path, checker=checker)
    assert (hit1, hit2) == (False, True) and out1 == out2 and s1.as_dict() == s2.as_dict()
    assert A.augment_cached(records, cfg, "fp2", tmp_path, checker=checker)[2] is False
    assert len(list(tmp_path.glob("augment-*.jsonl"))) == 2
