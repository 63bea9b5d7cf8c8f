"""conversation_func: exact masks on the tiny tokenizer, formats, rounds, truncation, bad input, cache, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import conversation_func as cf
from sftbench.data import masking
from conversation_func import (
    build_examples,
    collate,
    load_records,
    normalize_messages,
    render_and_mask,
    truncate_example,
    truncate_rounds,
)
from sftbench.model.chat_template import PLAIN_CHATML
from sftbench.core.errors import UserError

IM_END_ID = 2

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "List three fruits"},
    {"role": "assistant", "content": "apple, banana, cherry.\nP.S. hello"},
]


def _runs(labels):
    """Maximal runs of supervised positions as (start, stop) index pairs."""
    runs, start = [], None
    for i, x in enumerate(labels + [-100]):
        if x != -100 and start is None:
            start = i
        elif x == -100 and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --- masks ---------------------------------------------------------------------------------------------------


def test_assistant_mask_is_exactly_content_plus_im_end(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = render_and_mask(CONV, tok)
    assert len(ids) == len(labels)
    assert ids == tok(tok.apply_chat_template(CONV, tokenize=False), add_special_tokens=False)["input_ids"]
    assistant = [m["content"] for m in CONV if m["role"] == "assistant"]
    runs = _runs(labels)
    assert len(runs) == 2  # multi-turn: both assistant turns are trained
    for (a, b), content in zip(runs, assistant):
        assert labels[a:b] == ids[a:b]
        assert tok.decode(ids[a:b]) == content + "<|im_end|>"
        assert ids[b - 1] == IM_END_ID
        # Exactly the content's own tokens followed by <|im_end|>: no header, no trailing newline.
        assert ids[a:b] == tok(content, add_special_tokens=False)["input_ids"] + [IM_END_ID]
        assert tok.decode(ids[:a]).endswith("<|im_start|>assistant\n")
        assert tok.decode(ids[b : b + 1]) == "\n"
    # Nothing else is labelled: the decoded unlabelled tokens are the full text minus the trained parts.
    text = tok.apply_chat_template(CONV, tokenize=False)
    rest = tok.decode([t for t, l in zip(ids, labels) if l == -100])
    expected = text
    for content in assistant:
        expected = expected.replace(content + "<|im_end|>", "", 1)
    assert rest == expected


def test_system_message_kept_and_not_trained(tiny_tokenizer):
    ids, labels = render_and_mask(CONV, tiny_tokenizer)
    text = tiny_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    first_label = next(i for i, x in enumerate(labels) if x != -100)
    assert "Be brief." in tiny_tokenizer.decode(ids[:first_label])


def test_homework_mode_trains_header_and_trailing_newline(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = render_and_mask(CONV, tok, mode="homework")
    assert tok.decode(ids[:1]) == "\n"  # the homework template's stray leading newline
    runs = _runs(labels)
    assert [tok.decode(ids[a:b]) for a, b in runs] == [
        f"<|im_start|>assistant\n{m['content']}<|im_end|>\n" for m in CONV if m["role"] == "assistant"
    ]


def test_tokenizer_without_template_uses_plain_chatml(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    ids, labels = render_and_mask(CONV, tok)
    ids2, labels2 = render_and_mask(CONV, tiny_tokenizer, chat_template=PLAIN_CHATML)
    assert (ids, labels) == (ids2, labels2)


def test_template_with_default_system_prompt(tiny_tokenizer):
    # SmolLM2-Instruct style: a system prompt is injected when none is given; it must not be trained.
    tmpl = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    conv = CONV[1:]
    ids, labels = render_and_mask(conv, tiny_tokenizer, chat_template=tmpl)
    assert tiny_tokenizer.decode(ids).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    decoded = [tiny_tokenizer.decode(ids[a:b]) for a, b in _runs(labels)]
    assert decoded == [m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant"]


def test_assistant_content_that_looks_like_a_header(tiny_tokenizer):
    conv = [{"role": "user", "content": "say assistant"}, {"role": "assistant", "content": "assistant"}]
    ids, labels = render_and_mask(conv, tiny_tokenizer)
    (a, b), = _runs(labels)
    assert tiny_tokenizer.decode(ids[a:b]) == "assistant<|im_end|>"
    assert tiny_tokenizer.decode(ids[:a]).endswith("<|im_start|>assistant\n")


# --- normalisation -------------------------------------------------------------------------------------------


def test_sharegpt_and_role_aliases():
    rec = {"conversations": [
        {"from": "System", "value": "sys"},
        {"from": "human", "value": "hi"},
        {"from": "GPT", "value": "hello"},
        {"from": "User", "value": "again"},
        {"from": "bot", "value": "yes"},
        {"from": "user", "value": "and"},
        {"from": "Model", "value": "ok"},
        {"from": "ASSISTANT", "value": "more"},
    ]}
    out = normalize_messages(rec, "f.jsonl:1")
    assert out == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "and"},
        {"role": "assistant", "content": "ok"},
        {"role": "assistant", "content": "more"},
    ]
    assert cf.ROLE_ALIASES["human"] == "user" and cf.ROLE_ALIASES["gpt"] == "assistant"


@pytest.mark.parametrize(
    "record, fragment",
    [
        ({"text": "hi"}, "no conversation"),
        ({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'tool'"),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}, "empty"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]}, "must be a string"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": [{"type": "text", "text": "y"}]}]}, "must be a string"),
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]}, "no assistant turn"),
        ({"messages": []}, "non-empty list"),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
def test_normalize_errors_name_where(record, fragment):
    with pytest.raises(UserError) as ei:
        normalize_messages(record, "data.jsonl:7")
    msg = str(ei.value)
    assert msg.startswith("data.jsonl:7: ")
    assert fragment in msg


# --- rounds and truncation -----------------------------------------------------------------------------------


def test_truncate_rounds_keeps_system_and_first_rounds():
    assert truncate_rounds(CONV, 1) == CONV[:3]
    assert truncate_rounds(CONV, 2) == CONV
    assert truncate_rounds(CONV, 5) == CONV
    for keep_all in (None, 0, -1):
        assert truncate_rounds(CONV, keep_all) == CONV
    no_sys = CONV[1:]
    assert truncate_rounds(no_sys, 1) == no_sys[:2]


def test_truncate_example_sides():
    ids = list(range(10))
    labels = [-100] * 5 + list(range(5, 10))
    assert truncate_example(ids, labels, 4, "right") == ([0, 1, 2, 3], [-100] * 4)
    assert truncate_example(ids, labels, 4, "left") == ([6, 7, 8, 9], [6, 7, 8, 9])
    assert truncate_example(ids, labels, 20, "left") == (ids, labels)
    with pytest.raises(UserError):
        truncate_example(ids, labels, 4, "middle")


def test_build_examples_max_rounds_and_stats(tmp_path, tiny_tokenizer):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV}, {"messages": CONV[1:3]}])
    ex, stats = build_examples(str(data), tiny_tokenizer, max_length=4096, max_rounds=1, progress=False)
    assert stats.as_dict() == {"records": 2, "examples": 2, "dropped_no_target": 0, "truncated": 0, "rounds_cut": 1, "skipped_bad": {}}
    ids, labels = render_and_mask(CONV[:3], tiny_tokenizer)
    assert ex[0] == {"input_ids": ids, "labels": labels}
    ex_all, stats_all = build_examples(str(data), tiny_tokenizer, max_length=4096, max_rounds=None, progress=False)
    assert stats_all.rounds_cut == 0
    assert ex_all[0]["input_ids"] == render_and_mask(CONV, tiny_tokenizer)[0]


def test_truncation_and_dropping_examples_without_targets(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    long_user = {"messages": [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 4},
                              {"role": "assistant", "content": "Paris."}]}
    data = _write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV}, long_user])
    full_ids, full_labels = render_and_mask(long_user["messages"], tok)
    prompt_len = next(i for i, x in enumerate(full_labels) if x != -100)
    max_len = prompt_len - 1  # right truncation removes every target of the long record
    ex, stats = build_examples(str(data), tok, max_length=max_len, max_rounds=None, progress=False)
    assert stats.dropped_no_target == 1 and stats.examples == len(ex)
    assert all(len(e["input_ids"]) <= max_len for e in ex)
    assert all(any(x != -100 for x in e["labels"][1:]) for e in ex)
    # Left truncation keeps the answer instead.
    ex_l, stats_l = build_examples(str(data), tok, max_length=max_len, max_rounds=None, truncation_side="left", progress=False)
    assert stats_l.dropped_no_target == 0 and stats_l.examples == 2
    assert ex_l[1]["input_ids"] == full_ids[-max_len:]
    assert ex_l[1]["labels"] == full_labels[-max_len:]
    assert len(render_and_mask(CONV, tok)[0]) <= max_len  # only the long record was cut
    assert stats.truncated == stats_l.truncated == 1


def test_round_aware_truncation_drops_whole_rounds(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    data = _write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV}])
    one_round = render_and_mask(CONV[:3], tok)
    full = render_and_mask(CONV, tok)
    assert len(one_round[0]) < len(full[0])
    ex, stats = build_examples(str(data), tok, max_length=len(one_round[0]) + 2, max_rounds=None, truncation_side="rounds", progress=False)
    assert ex[0] == {"input_ids": one_round[0], "labels": one_round[1]}
    assert stats.truncated == 1


# --- loading and bad input -----------------------------------------------------------------------------------


def test_load_formats(tmp_path):
    rec = {"messages": CONV[1:3]}
    jl = _write_jsonl(tmp_path / "a.jsonl", [rec, "", rec])
    js = tmp_path / "b.json"
    js.write_text(json.dumps([rec, rec, rec]))
    jd = tmp_path / "c.json"
    jd.write_text(json.dumps({"data": [rec]}))
    r = load_records(str(jl))
    assert [(s, i) for s, i, _ in r] == [(str(jl), 1), (str(jl), 3)]  # blank line 2 skipped, numbering kept
    assert [i for _, i, _ in load_records(str(js))] == [1, 2, 3]
    assert len(load_records(str(jd))) == 1
    both = load_records(str(tmp_path))  # folder: files sorted by name
    assert [Path(s).name for s, _, _ in both] == ["a.jsonl"] * 2 + ["b.json"] * 3 + ["c.json"]


def test_missing_path_error(tmp_path, tiny_tokenizer):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match="nope.jsonl: data path not found"):
        load_records(str(missing))
    with pytest.raises(UserError, match="nope.jsonl"):
        build_examples(str(missing), tiny_tokenizer, max_length=64, max_rounds=None, progress=False)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(UserError, match="someone/no-such-set: not a local path, and loading it as a Hugging Face dataset"):
        load_records("someone/no-such-set")


def test_hub_id_uses_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"messages": CONV[1:3]}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    recs = load_records("PeterV09/smol-smoltalk-6k")
    assert calls == [("PeterV09/smol-smoltalk-6k", "train")]
    assert recs[0][:2] == ("PeterV09/smol-smoltalk-6k", 1) and recs[0][2]["messages"] == CONV[1:3]


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "bad_line, fragment, reason",
    [
        ('{"messages": [', "malformed JSON", "malformed_json"),
        ({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role", "unknown_role"),
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}, "empty", "empty_content"),
        ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "y"}]}, "must be a string", "non_string_content"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn", "no_assistant_turn"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, tiny_tokenizer, monkeypatch, bad_line, fragment, reason):
    data = _write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad_line, GOOD])

    # Validation happens before any tokenising: the error comes without the tokenizer ever being called.
    def no_encode(*a, **k):
        raise AssertionError("tokenised before validating every record")

    monkeypatch.setattr(masking, "encode", no_encode)
    with pytest.raises(UserError) as ei:
        build_examples(str(data), tiny_tokenizer, max_length=64, max_rounds=None, progress=False)
    assert str(ei.value).startswith(f"{data}:3: ")
    assert fragment in str(ei.value)
    monkeypatch.undo()

    ex, stats = build_examples(str(data), tiny_tokenizer, max_length=64, max_rounds=None, on_bad_record="skip", progress=False)
    assert stats.skipped_bad == {reason: 1}
    assert stats.records == 4 and stats.examples == 3 and len(ex) == 3


def test_error_counts_other_bad_records(tmp_path, tiny_tokenizer):
    bad = {"messages": [{"role": "user", "content": "x"}]}
    data = _write_jsonl(tmp_path / "d.jsonl", [bad, GOOD, bad, bad])
    with pytest.raises(UserError, match=r"d.jsonl:1: .*2 more bad record"):
        build_examples(str(data), tiny_tokenizer, max_length=64, max_rounds=None, progress=False)


def test_json_list_error_names_record(tmp_path, tiny_tokenizer):
    js = tmp_path / "d.json"
    js.write_text(json.dumps([GOOD, {"messages": [{"role": "user", "content": "x"}]}]))
    with pytest.raises(UserError, match=r"d.json: record 2: no assistant turn"):
        build_examples(str(js), tiny_tokenizer, max_length=64, max_rounds=None, progress=False)
    js.write_text('[\n{"messages": 1},\n{oops}\n]')
    with pytest.raises(UserError, match=r"d.json:3: malformed JSON"):
        load_records(str(js))


def test_bad_options(tmp_path, tiny_tokenizer):
    data = _write_jsonl(tmp_path / "d.jsonl", [GOOD])
    for kw in ({"mode": "all"}, {"truncation_side": "middle"}, {"on_bad_record": "ignore"}, {"max_length": 0}):
        args = {"max_length": 64, "max_rounds": None, "progress": False, **kw}
        with pytest.raises(UserError):
            build_examples(str(data), tiny_tokenizer, **args)


# --- cache -------------------------------------------------------------------------------------------------


def test_cache_roundtrip_and_key(tmp_path, tiny_tokenizer, monkeypatch):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV}, GOOD])
    cache = tmp_path / "cache"
    ex1, st1 = build_examples(str(data), tiny_tokenizer, max_length=64, max_rounds=None, cache_dir=str(cache), progress=False)
    files = list(cache.glob("*.jsonl"))
    assert len(files) == 1
    lines = files[0].read_text().splitlines()
    assert json.loads(lines[0])["stats"] == st1.as_dict() and len(lines) == 1 + len(ex1)

    def no_encode(*a, **k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(masking, "encode", no_encode)
    ex2, st2 = build_examples(str(data), tiny_tokenizer, max_length=64, max_rounds=None, cache_dir=str(cache), progress=False)
    assert (ex2, st2) == (ex1, st1)
    # Any setting that changes the result misses the cache.
    for kw in ({"max_length": 32}, {"max_rounds": 1}, {"mode": "homework"}, {"truncation_side": "left"}, {"chat_template": "\n" + PLAIN_CHATML}):
        args = {"max_length": 64, "max_rounds": None, "cache_dir": str(cache), "progress": False, **kw}
        with pytest.raises(AssertionError, match="cache miss"):
            build_examples(str(data), tiny_tokenizer, **args)
    # So does a change of the data.
    _write_jsonl(data, [{"messages": CONV}])
    with pytest.raises(AssertionError, match="cache miss"):
        build_examples(str(data), tiny_tokenizer, max_length=64, max_rounds=None, cache_dir=str(cache), progress=False)


# --- collate ------------------------------------------------------------------------------------------------


def test_collate_right_pads():
    b = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=2)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert all(t.dtype == torch.long for t in b.values())


# --- CLI ----------------------------------------------------------------------------------------------------


def test_cli_shows_stats_and_highlight(tmp_path, capsys):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"messages": CONV}])
    assert cf.main([str(data), "--tokenizer", "tiny", "--model_max_length", "512"]) == 0
    out = capsys.readouterr().out
    assert '"examples": 1' in out
    assert "[[Paris is the capital of France.<|im_end|>]]" in out
    assert "[[apple, banana, cherry.\nP.S. hello<|im_end|>]]" in out


def test_cli_missing_file_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        cf.main([str(tmp_path / "missing.jsonl"), "--tokenizer", "tiny"])
    assert ei.value.code == 2
    assert "missing.jsonl: data path not found" in capsys.readouterr().err


# --- one vocabulary with the trainer -----------------------------------------------------------------------


def test_all_rounds_has_one_spelling_and_accepts_legacy_ones():
    from sftbench.data.normalise import ALL_ROUNDS, rounds_limit

    assert ALL_ROUNDS == -1
    assert [rounds_limit(v) for v in (ALL_ROUNDS, None, 0, -5, 3)] == [None, None, None, None, 3]
    assert truncate_rounds(CONV, ALL_ROUNDS) == CONV


def test_bad_records_hint_names_the_trainers_flag(tmp_path, tiny_tokenizer):
    bad = {"messages": [{"role": "user", "content": "x"}]}
    data = _write_jsonl(tmp_path / "d.jsonl", [bad, GOOD, bad])
    with pytest.raises(UserError) as ei:
        build_examples(str(data), tiny_tokenizer, max_length=64, max_rounds=None, progress=False)
    assert str(ei.value).endswith("(1 more bad record(s) in this data; pass --skip_bad_records to skip and count them)")


def test_cli_defaults_are_the_trainers_and_old_flags_are_gone(capsys):
    from sftbench.core.cli import config_defaults, config_from_namespace
    from sftbench.data.cli import InspectConfig, build_parser
    from sftbench.config.train import TrainConfig

    ap, names = build_parser()
    ns = ap.parse_args(["d.jsonl"])
    cfg = config_from_namespace(InspectConfig, ns, names, data_path=ns.data_path)
    train = config_defaults(TrainConfig)
    assert (cfg.tokenizer, cfg.model_max_length, cfg.max_rounds, cfg.masking, cfg.truncation_side, cfg.skip_bad_records) == (
        train["model_name_or_path"], train["model_max_length"], train["max_rounds"], train["masking"],
        train["truncation_side"], train["skip_bad_records"])
    ns = ap.parse_args(["d.jsonl", "--model_max_length", "77", "--max_rounds", "2", "--masking", "homework",
                        "--truncation_side", "left", "--skip_bad_records", "True", "--chat_template", "plain"])
    cfg = config_from_namespace(InspectConfig, ns, names, data_path=ns.data_path)
    assert (cfg.model_max_length, cfg.max_rounds, cfg.masking, cfg.truncation_side, cfg.skip_bad_records,
            cfg.chat_template) == (77, 2, "homework", "left", True, "plain")
    for old in ("--max_length", "--on_bad_record", "--chat-template", "--max-rounds"):
        with pytest.raises(SystemExit) as e:
            ap.parse_args(["d.jsonl", old, "x"])
        assert e.value.code == 2 and f"unrecognized arguments: {old} x" in capsys.readouterr().err


def test_load_tokenizer_template_and_pad(tmp_path):
    from sftbench.model.hf import load_tokenizer

    tok = load_tokenizer("tiny")
    assert tok.chat_template == PLAIN_CHATML and tok.pad_token == "<|im_end|>"
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert load_tokenizer("tiny", str(tmpl)).chat_template == tmpl.read_text()
    with pytest.raises(UserError, match=r"--chat_template .*nope.jinja: file not found"):
        load_tokenizer("tiny", str(tmp_path / "nope.jinja"))
    tmpl.write_text("{% for m in messages %}")
    with pytest.raises(UserError, match=r"t.jinja:1: Jinja syntax error"):
        load_tokenizer("tiny", str(tmpl))
    with pytest.raises(UserError, match="no/such/dir: tokenizer/model path not found"):
        load_tokenizer("no/such/dir")
