"""Volume in one generator session (issue 22): constraint variants per conversation, multi-turn self answers with
the earlier turns byte-identical, the best passing sample, one generate call for every variant, per-type counts,
and the same settings on the augment CLI and the trainer (--augment_*)."""

from __future__ import annotations

import json

import pytest

from sftbench.data import augment as A

ANSWER = ("Paris is the capital of France. It has about 2,100,000 residents, many museums, and the Seine river. "
          "Visitors love the food. The metro is quick and cheap.")
REQUEST = "Tell me about Paris in a few sentences."


@pytest.fixture(scope="module")
def checker():
    return A.Checker()


def _conv(user, answer, earlier=(), system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [m for u, a in earlier for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    return {"messages": msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _sig(rec):
    return json.dumps(rec["constraints"], sort_keys=True)


def test_variants_of_one_conversation_differ_and_all_reverify(checker):
    records = [_conv(REQUEST, ANSWER), _conv("Name a colour.", "Blue is a calm colour. It is the sky's colour.")]
    cfg = A.AugmentConfig(fraction=1.0, variants=5, seed=2)
    out, stats = A.augment_records(records, cfg, checker=checker)
    first = [r for r in out if r["messages"][0]["content"].startswith(REQUEST)]
    assert len(first) >= 4  # variants of the first conversation, each its own record
    assert len({_sig(r) for r in first}) == len(first)  # no two carry the same constraints
    assert len({r["messages"][0]["content"] for r in first}) == len(first)  # nor the same prompt
    assert stats.kept == len(out) - (2 - stats.conversations) and stats.variants == 5
    assert stats.kept + sum(stats.dropped.values()) == 10  # every variant is kept or counted as dropped
    for r in out:
        assert r["constraints"] and A.verify_record(r, checker) == []
    # variant 0 is what a run without variants writes
    one, _ = A.augment_records(records, A.AugmentConfig(fraction=1.0, variants=1, seed=2), checker=checker)
    assert one[0] == first[0]


def test_multi_turn_self_answers_keep_earlier_turns_byte_identical(checker):
    earlier = [("Hi there!  ", "Hello\u00a0— how can I help?\n\n"), ("Weather?", "Sunny, with  two spaces.")]
    rec = _conv(REQUEST, ANSWER, earlier=earlier, system="Be brief.\t")
    calls = []

    def fake(prompts, n, temperature):
        calls.append(prompts)
        return [["Paris is lovely and old. It sits on the Seine."] * n for _ in prompts]

    cfg = A.AugmentConfig(fraction=1.0, types="punctuation:no_comma", targets="self", samples=2, variants=1)
    out, stats = A.augment_records([rec], cfg, checker=checker, generate=fake)
    assert stats.kept == 1 and stats.target_source == {"self": 1}
    (prompt,) = calls[0]
    assert prompt[:-1] == rec["messages"][:-2]  # the model saw the earlier turns as they are
    assert prompt[-1] == {"role": "user", "content": out[0]["messages"][-2]["content"]}
    assert out[0]["messages"][:-2] == rec["messages"][:-2]
    assert [json.dumps(m) for m in out[0]["messages"][:-2]] == [json.dumps(m) for m in rec["messages"][:-2]]
    assert out[0]["messages"][-1]["content"] == "Paris is lovely and old. It sits on the Seine."
    assert A.verify_record(out[0], checker) == []
    # single-turn prompts stay plain strings (the generator renders them with the eval's system prompt policy)
    A.augment_records([_conv(REQUEST, ANSWER)], cfg, checker=checker, generate=fake)
    assert isinstance(calls[-1][0], str) and calls[-1][0].startswith(REQUEST)


def test_one_generate_call_for_every_variant_and_the_best_sample(checker):
    records = [_conv(REQUEST, ANSWER), _conv("Tell me about Rome.", "Rome is old. It has many churches, and pasta."),
               _conv("Again?", "Yes.", earlier=[("Hi", "Hello.")])]
    calls = []

    def fake(prompts, n, temperature):
        calls.append((len(prompts), n, temperature))
        # sample 0 has commas (passes only after the rewrite), sample 1 passes as generated, sample 2 ran to the cap
        return [["It is old, and big.", "It is old and big.", ""] for _ in prompts]

    cfg = A.AugmentConfig(fraction=1.0, types="punctuation:no_comma,detectable_content:postscript", max_constraints=2,
                          targets="self", samples=3, temperature=0.9, variants=3)
    out, stats = A.augment_records(records, cfg, checker=checker, generate=fake)
    tried = sum(p["tried"] for p in stats.per_type.values())
    assert len(calls) == 1 and calls[0][1:] == (3, 0.9)
    n_variants = stats.kept + sum(stats.dropped.values())
    assert calls[0][0] == n_variants - stats.dropped.get("duplicate_variant", 0) and calls[0][0] >= 4
    for r in out:
        if not r["constraints"]:
            continue
        assert A.verify_record(r, checker) == []
        ids = {c["instruction_id"] for c in r["constraints"]}
        if ids == {"punctuation:no_comma"}:  # the sample that passes as generated wins over the rewritable one
            assert r["messages"][-1]["content"] == "It is old and big."
    pt = stats.per_type["punctuation:no_comma"]
    assert pt["passed_as_generated"] == pt["tried"] and pt["passed_after_rewrite"] == 0
    ps = stats.per_type.get("detectable_content:postscript")
    if ps:  # no sample has a P.S.: every kept one was rewritten
        assert ps["passed_as_generated"] == 0 and ps["passed_after_rewrite"] == ps["kept"] == ps["tried"]
    assert tried == sum(len(r["constraints"]) for r in out) + sum(
        v for k, v in stats.dropped.items() if k in ("no_passing_sample", "checker_failed"))


def test_settings_are_checked_and_named_on_both_clis(tiny_model_dir, tmp_path):
    from sftbench.core.errors import UserError

    with pytest.raises(UserError, match="--variants 0: give at least 1"):
        A.AugmentConfig(variants=0).check()
    with pytest.raises(UserError, match="--augment_top_p 0.0: give a share"):
        A.AugmentConfig(top_p=0.0).check(prefix="augment_")
    assert A.cache_key("d", A.AugmentConfig()) != A.cache_key("d", A.AugmentConfig(variants=2))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(_conv(REQUEST, ANSWER)) + "\n")
    dst = tmp_path / "out.jsonl"
    assert A.main([str(src), str(dst), "--fraction", "1", "--variants", "3", "--types", "punctuation:no_comma,"
                   "startend:end_checker,detectable_content:postscript", "--max_constraints", "1"]) == 0
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert len(rows) == 3 and len({_sig(r) for r in rows}) == 3
    from sftbench.config.train import parse_train_config

    cfg = parse_train_config(["--model_name_or_path", str(tiny_model_dir), "--augment_fraction", "0.5",
                              "--augment_variants", "3", "--augment_top_p", "0.9", "--augment_samples", "2"])
    assert (cfg.augment.variants, cfg.augment.top_p, cfg.augment.samples) == (3, 0.9, 2)


def test_parallel_verification_equals_serial(checker, monkeypatch):
    """Past PARALLEL_FROM variants the samples are verified in spawned workers: the same records and counts."""
    import os

    records = [_conv(f"Tell me about city number {i}.", ANSWER) for i in range(4)]

    def fake(prompts, n, temperature):
        return [["It is old, and big. It has a river.", "It is old and big!", ""] for _ in prompts]

    cfg = A.AugmentConfig(fraction=1.0, targets="self", samples=3, temperature=0.9, variants=3, seed=4,
                          types="punctuation:no_comma,detectable_content:postscript,train:end_with_question")
    serial = A.augment_records(records, cfg, checker=checker, generate=fake)
    monkeypatch.setattr(A, "PARALLEL_FROM", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    parallel = A.augment_records(records, cfg, checker=checker, generate=fake)
    assert parallel[0] == serial[0] and parallel[1].kept == serial[1].kept > 0
    assert parallel[1].per_type == serial[1].per_type and parallel[1].dropped == serial[1].dropped


def test_project_generator_samples_reproducibly_and_skips_long_prompts(tiny_model_dir, monkeypatch):
    """CPU: the HF generator with the project's sampler; a prompt's samples do not depend on the other prompts;
    a prompt over MAX_PROMPT_TOKENS gets no answer."""
    gen = A.project_generator(str(tiny_model_dir), max_new_tokens=6, seed=3)
    a = gen(["Tell me a story.", "Hi"], 2, 0.9)
    b = gen(["Hi", [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Yes."},
                    {"role": "user", "content": "Tell me a story."}]], 2, 0.9)
    assert len(a) == 2 and [len(x) for x in a] == [2, 2] and len(b[1]) == 2
    assert b[0] == a[1]  # "Hi" drew the same samples next to another prompt
    assert gen(["Tell me a story.", "Hi"], 2, 0.9) == a
    monkeypatch.setattr(A, "MAX_PROMPT_TOKENS", 12)
    long = gen(["word " * 40, "Hi"], 2, 0.9)
    assert long[0] == ["", ""] and long[1] == a[1]
