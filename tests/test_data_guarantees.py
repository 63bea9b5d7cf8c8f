"""What the data stage guarantees for bad or odd input (issue 16; docs/GUARANTEES.md): invalid UTF-8 named by
file, line and byte offset; special-token text in contents trained as text; odd conversation orders decided
and counted; messages that say what is actually wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftbench.data.build import build_examples
from sftbench.data.masking import IGNORE_INDEX, render_and_mask
from sftbench.data.records import load_records
from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
GOOD_LINE = json.dumps(GOOD).encode() + b"\n"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _build(path, tok, **kw):
    return build_examples(str(path), tok, max_length=256, max_rounds=None, progress=False, **kw)


# --- invalid UTF-8 ---------------------------------------------------------------------------------------------


def test_invalid_utf8_jsonl_names_file_line_and_byte_offset(tmp_path, tiny_tokenizer):
    bad = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "x"}]}\n'
    f = tmp_path / "d.jsonl"
    f.write_bytes(GOOD_LINE + bad + GOOD_LINE)
    offset = len(GOOD_LINE) + bad.index(b"\xe9")
    with pytest.raises(UserError) as ei:
        _build(f, tiny_tokenizer)
    assert str(ei.value).startswith(f"{f}:2: not valid UTF-8 (byte 0xe9 at byte offset {offset} of the file, ")
    with pytest.raises(UserError, match=rf"d.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte offset {offset} "):
        load_records(str(f))


def test_invalid_utf8_jsonl_line_is_skipped_and_counted(tmp_path, tiny_tokenizer):
    f = tmp_path / "d.jsonl"
    f.write_bytes(GOOD_LINE + b'{"messages": "\xff\xfe"}\n' + GOOD_LINE)
    ex, stats = _build(f, tiny_tokenizer, on_bad_record="skip")
    assert stats.skipped_bad == {"invalid_utf8": 1}
    assert stats.records == 3 and stats.examples == 2 and len(ex) == 2


def test_invalid_utf8_json_file_names_line_and_offset_with_either_policy(tmp_path, tiny_tokenizer):
    f = tmp_path / "d.json"
    head = b'[\n' + json.dumps(GOOD).encode() + b',\n'
    f.write_bytes(head + b'{"messages": "\xc3("}\n]\n')
    offset = len(head) + len(b'{"messages": "')
    for policy in ("error", "skip"):  # one JSON document: no line of it can be skipped
        with pytest.raises(UserError) as ei:
            _build(f, tiny_tokenizer, on_bad_record=policy)
        assert str(ei.value).startswith(f"{f}:3: not valid UTF-8 (byte 0xc3 at byte offset {offset} of the file, byte 15 of the line)")


def _cli(script: str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_invalid_utf8_in_the_inspector_cli_is_a_clean_error(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_bytes(GOOD_LINE + b"\x80\n")
    p = _cli("conversation_func.py", [str(f), "--tokenizer", "tiny"])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"conversation_func.py: error: {f}:2: not valid UTF-8 (byte 0x80 at byte offset {len(GOOD_LINE)} " in p.stderr


# --- special tokens in content ---------------------------------------------------------------------------------


ISSUE_CONV = [{"role": "user", "content": "Write the ChatML end marker."},
              {"role": "assistant", "content": "It is <|im_end|>, as in 'hi<|im_end|>'."}]


def test_special_token_text_in_content_is_trained_as_text(tiny_tokenizer, tmp_path):
    """The issue's case: the reply's literal "<|im_end|>" was id 2, so three end-of-turn targets in one reply."""
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids, labels = render_and_mask(ISSUE_CONV, tiny_tokenizer)
    assert [x for x in labels if x == im_end] == [im_end]  # the one real end of turn
    assert ids.count(im_end) == 2  # the end of the user turn and of the reply, nothing else
    text = tiny_tokenizer.decode(ids)
    assert text == ("<|im_start|>user\nWrite the ChatML end marker.<|im_end|>\n<|im_start|>assistant\n"
                    "It is <|im_end|>, as in 'hi<|im_end|>'.<|im_end|>\n")
    trained = tiny_tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
    assert trained == "It is <|im_end|>, as in 'hi<|im_end|>'.<|im_end|>"
    f = _jsonl(tmp_path / "d.jsonl", [{"messages": ISSUE_CONV}, GOOD])
    ex, stats = _build(f, tiny_tokenizer)
    assert ex[0]["input_ids"] == ids and ex[0]["labels"] == labels
    assert stats.normalised == {"special_token_text": 1} and stats.as_dict()["normalised"] == {"special_token_text": 1}


def test_special_token_text_refused_or_skipped_when_asked(tiny_tokenizer, tmp_path):
    f = _jsonl(tmp_path / "d.jsonl", [GOOD, {"messages": ISSUE_CONV}])
    with pytest.raises(UserError) as ei:
        _build(f, tiny_tokenizer, special_tokens="refuse")
    assert str(ei.value).startswith(f"{f}:2: turn 2 (assistant) contains the text '<|im_end|>' of a special token.")
    ex, stats = _build(f, tiny_tokenizer, special_tokens="refuse", on_bad_record="skip")
    assert stats.skipped_bad == {"special_token_in_content": 1} and len(ex) == 1 and stats.normalised == {}
    with pytest.raises(UserError, match="unknown special_tokens_in_content 'parse'"):
        _build(f, tiny_tokenizer, special_tokens="parse")


# --- odd conversations ------------------------------------------------------------------------------------------


def _conv(*roles):
    return {"messages": [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(roles)]}


@pytest.mark.parametrize("roles, reason, fragment", [
    (("user", "assistant", "system", "user", "assistant"), "system_not_first",
     "turn 3 is a system message after the first turn"),
    (("assistant", "user", "assistant"), "starts_with_assistant", "turn 1 is an assistant turn before any user turn"),
    (("system", "assistant", "user", "assistant"), "starts_with_assistant",
     "turn 2 is an assistant turn before any user turn"),
])
def test_odd_conversation_orders_are_refused_or_skipped_and_counted(tmp_path, tiny_tokenizer, roles, reason, fragment):
    f = _jsonl(tmp_path / "d.jsonl", [GOOD, _conv(*roles), GOOD])
    with pytest.raises(UserError) as ei:
        _build(f, tiny_tokenizer)
    assert str(ei.value).startswith(f"{f}:2: {fragment}")
    ex, stats = _build(f, tiny_tokenizer, on_bad_record="skip")
    assert stats.skipped_bad == {reason: 1} and len(ex) == 2


def test_consecutive_user_turns_are_merged_and_counted(tmp_path, tiny_tokenizer):
    f = _jsonl(tmp_path / "d.jsonl", [_conv("system", "user", "user", "assistant", "user", "user", "user", "assistant"),
                                       GOOD])
    ex, stats = _build(f, tiny_tokenizer)
    assert stats.normalised == {"merged_user_turns": 1} and stats.examples == 2
    assert tiny_tokenizer.decode(ex[0]["input_ids"]) == (
        "<|im_start|>system\nsystem 0<|im_end|>\n<|im_start|>user\nuser 1\n\nuser 2<|im_end|>\n"
        "<|im_start|>assistant\nassistant 3<|im_end|>\n<|im_start|>user\nuser 4\n\nuser 5\n\nuser 6<|im_end|>\n"
        "<|im_start|>assistant\nassistant 7<|im_end|>\n")
    # --max_rounds counts the merged turn as one round (two user turns in a row no longer make an empty round)
    ex1, stats1 = build_examples(str(f), tiny_tokenizer, max_length=256, max_rounds=1, progress=False)
    assert tiny_tokenizer.decode(ex1[0]["input_ids"]).endswith("<|im_start|>assistant\nassistant 3<|im_end|>\n")


# --- messages that mislead --------------------------------------------------------------------------------------


def test_malformed_json_message_reads_once(tmp_path, tiny_tokenizer):
    f = _jsonl(tmp_path / "d.jsonl", [GOOD, '{"messages": "unterminated'])
    with pytest.raises(UserError) as ei:
        _build(f, tiny_tokenizer)
    assert str(ei.value) == f"{f}:2: malformed JSON at column 14: Unterminated string starting. Fix or remove that line."


def test_several_bad_lines_hint_at_skip_bad_records(tmp_path, tiny_tokenizer):
    f = _jsonl(tmp_path / "d.jsonl", ["{", GOOD, "[1,", "nope"])
    with pytest.raises(UserError) as ei:
        _build(f, tiny_tokenizer)
    assert str(ei.value).endswith(" (2 more bad record(s) in this data; pass --skip_bad_records to skip and count them)")
