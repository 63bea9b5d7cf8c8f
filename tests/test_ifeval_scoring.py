"""IFEval scoring: Google's reference results, hand-made responses, seeding, the offline punkt_tab."""

import importlib.util
import json
from pathlib import Path

import pytest

from sftbench.tasks import data as ifdata
from sftbench.tasks.data import Example
from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scorer():
    from sftbench.tasks.scoring import Scorer

    return Scorer(seed=0)


def _ex(key, ids, kwargs, prompt="p"):
    return Example(key=key, prompt=prompt, instruction_id_list=ids, kwargs=kwargs)


def test_conformance_with_google_reference(shared_dir, scorer):
    """Per-prompt and per-instruction strict/loose equal Google's, except keys 1122 and 1129 (random letter)."""
    d = shared_dir / "data" / "ifeval"
    by_prompt = {e.prompt: e for e in ifdata.load_jsonl(d / "input_data.jsonl")}
    ref_dir = d / "reference_gpt4"
    responses = [json.loads(l) for l in next(ref_dir.glob("input_response_data_gpt4_*.jsonl")).open()]
    responses = [r for r in responses if r["prompt"] in by_prompt]  # key 2785's prompt was revised later
    exs = [by_prompt[r["prompt"]] for r in responses]
    strict, loose = scorer.score_all(exs, [r["response"] for r in responses])
    compared = 0
    for name, rows in (("strict", strict), ("loose", loose)):
        ref = {json.loads(l)["prompt"]: json.loads(l) for l in (ref_dir / f"eval_results_{name}.jsonl").open()}
        assert len(ref) == 540
        mismatched = set()
        for row in rows:
            g = ref.get(row["prompt"])
            if g is None:
                continue
            compared += 1
            assert row["instruction_id_list"] == g["instruction_id_list"]
            if (row["follow_instruction_list"], row["follow_all_instructions"]) != (
                    g["follow_instruction_list"], g["follow_all_instructions"]):
                mismatched.add(row["key"])
        assert mismatched <= {1122, 1129}, (name, sorted(mismatched))
    assert compared == 2 * 540
    # Aggregates as documented in shared/README (540 scored prompts here; README's use 541).
    from sftbench.tasks.scoring import aggregate

    acc = aggregate(strict, loose, n_boot=200)["accuracy"]
    assert acc["prompt_loose"]["value"] == pytest.approx(431 / 540)


def test_hand_made_responses(scorer):
    cases = [
        (_ex(1, ["punctuation:no_comma"], [{}]), "No commas here at all.", [True]),
        (_ex(2, ["punctuation:no_comma"], [{}]), "One, two.", [False]),
        (_ex(3, ["change_case:english_lowercase"], [{}]), "all lowercase words in english here.", [True]),
        (_ex(4, ["change_case:english_lowercase"], [{}]), "Not all lowercase.", [False]),
        (_ex(5, ["detectable_content:postscript"], [{"postscript_marker": "P.S."}]), "Hi.\n\nP.S. bye", [True]),
        (_ex(6, ["detectable_format:json_format"], [{}]), '```json\n{"a": 1}\n```', [True]),
        (_ex(7, ["detectable_format:json_format"], [{}]), "{not json", [False]),
        (_ex(8, ["detectable_format:number_bullet_lists"], [{"num_bullets": 2}]), "* one\n* two", [True]),
        (_ex(9, ["length_constraints:number_words"], [{"relation": "less than", "num_words": 4}]), "one two three", [True]),
        (_ex(10, ["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}]),
         "Dr. Smith went home. He slept. Then he woke.", [False]),  # 3 sentences by punkt ("Dr." is no end)
        (_ex(11, ["length_constraints:number_sentences"], [{"relation": "at least", "num_sentences": 3}]),
         "Dr. Smith went home. He slept. Then he woke.", [True]),
        (_ex(12, ["keywords:existence", "startend:quotation"], [{"keywords": ["sea"]}, {}]), '"The sea."', [True, True]),
        (_ex(13, ["punctuation:no_comma"], [{}]), "   ", [False]),  # an empty answer follows nothing
    ]
    for ex, resp, want in cases:
        s, lo = scorer.score_one(ex, resp)
        assert s["follow_instruction_list"] == want, (ex.key, resp)
        assert s["follow_all_instructions"] == all(want)
        assert s["key"] == ex.key and s["response"] == resp
    # Loose removes markdown asterisks and first/last lines: strict fails, loose passes.
    ex = _ex(14, ["startend:end_checker"], [{"end_phrase": "Is there anything else I can help with?"}])
    s, lo = scorer.score_one(ex, "Answer.\nIs there anything else I can help with?\n**")
    assert s["follow_instruction_list"] == [False] and lo["follow_instruction_list"] == [True]


def test_random_letter_is_seeded(scorer):
    """Key 1122: letter "#" is no letter, so the checker draws one at random: same seed, same result."""
    ex = _ex(1122, ["keywords:letter_frequency"], [{"let_relation": "at least", "letter": "#", "let_frequency": 4}])
    resp = "abcdefghijklmnopqrstuvwxyz " * 2 + "aaaa eeee"
    first = [scorer.score_one(ex, resp)[0]["follow_instruction_list"] for _ in range(5)]
    assert all(f == first[0] for f in first)
    import random

    random.seed(123)
    before = random.random()
    random.seed(123)
    scorer.score_one(ex, resp)
    assert random.random() == before  # the global random state is restored


def test_unknown_instruction_id(scorer):
    with pytest.raises(UserError, match="unknown instruction id"):
        scorer.check_ids([_ex(5, ["keywords:nonsense"], [{}])], "f.jsonl")


def test_missing_punkt_tab_is_a_clear_error(monkeypatch):
    import nltk

    from sftbench.tasks import scoring

    def not_found(*a, **k):
        raise LookupError("nope")

    monkeypatch.setattr(nltk.data, "find", not_found)
    with pytest.raises(UserError, match="setup_nltk.py"):
        scoring.require_punkt_tab()


def test_setup_nltk_builds_punkt_tab(tmp_path, monkeypatch):
    """The offline build writes NLTK's 4 files, NLTK loads them and splits like the punkt package."""
    spec = importlib.util.spec_from_file_location("setup_nltk", ROOT / "scripts" / "setup_nltk.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    target = mod.build_punkt_tab(tmp_path / "nltk_data", log=lambda *a: None)
    eng = target / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in eng.iterdir()) == sorted(mod.FILES)
    assert "dr" in (eng / "abbrev_types.txt").read_text().split("\n")
    import nltk
    import punkt
    from nltk.tokenize.punkt import PunktTokenizer

    monkeypatch.setattr(nltk.data, "path", [str(target)])  # only the fresh build is visible to NLTK
    assert nltk.data.find("tokenizers/punkt_tab/english/").path.startswith(str(target))
    tok = PunktTokenizer("english")
    text = "Mr. Smith paid $3.50 at 5 p.m. on Jan. 5. He left. The U.S. team won! Did it? Yes."
    assert tok.tokenize(text) == punkt.sent_tokenize(text)
    assert len(tok.tokenize(text)) == 5
    # idempotent: a second build keeps the files
    mtime = (eng / "abbrev_types.txt").stat().st_mtime_ns
    mod.build_punkt_tab(tmp_path / "nltk_data", log=lambda *a: None)
    assert (eng / "abbrev_types.txt").stat().st_mtime_ns == mtime


def test_load_jsonl_errors_name_the_line(tmp_path):
    good = {"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps({"key": 2, "prompt": "y", "kwargs": [{}]}) + "\n")
    with pytest.raises(UserError, match=r"d.jsonl:2: missing field\(s\) instruction_id_list"):
        ifdata.load_jsonl(f)
    f.write_text(json.dumps(good) + "\n{bad json\n")
    with pytest.raises(UserError, match=r"d.jsonl:2: malformed JSON"):
        ifdata.load_jsonl(f)
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "kwargs": [{}, {}]}) + "\n")
    with pytest.raises(UserError, match=r"d.jsonl:2: 1 instruction ids but 2 kwargs"):
        ifdata.load_jsonl(f)
    f.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(UserError, match=r"d.jsonl:2: duplicate key 1"):
        ifdata.load_jsonl(f)


def test_tiny_prompts_are_valid(scorer):
    exs = ifdata.load_jsonl(ifdata.TINY_PROMPTS)
    assert len(exs) == 6
    scorer.check_ids(exs)


def test_hw100_subset(shared_dir):
    ps = ifdata.load_prompt_set("hw100", str(shared_dir / "data/ifeval/input_data.jsonl"), allow_hub=False)
    assert len(ps.examples) == 100 and {e.key for e in ps.examples} == ifdata.HW100_KEYS
    direct = ifdata.load_jsonl(shared_dir / "data/ifeval/sampled_100_input_data.jsonl")
    assert {e.key for e in direct} == ifdata.HW100_KEYS
