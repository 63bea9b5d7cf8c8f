"""The trainer's start-up contamination guard and --augment_fraction (issue 13), on CPU with the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftbench.data.demo import make_conversations
from sftbench.core.io import read_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def ifeval_prompt(key: int) -> str:
    rows = read_jsonl(ROOT / "sftbench" / "tasks" / "prompts" / "ifeval_input_data.jsonl")
    return next(r["prompt"] for r in rows if r["key"] == key)


def write_data(path: Path, n: int = 16, planted: str | None = None) -> Path:
    convs = make_conversations(n, seed=1)
    if planted is not None:
        convs.insert(3, {"messages": [{"role": "user", "content": planted},
                                      {"role": "assistant", "content": "Here it is."}]})
    path.write_text("".join(json.dumps(c) + "\n" for c in convs))
    return path


def argv(model_dir, data, out, **over) -> list[str]:
    base = dict(model_name_or_path=str(model_dir), data_path=str(data), output_dir=str(out), max_steps=2,
                per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-3, model_max_length=128,
                save_steps=2, seed=7, data_cache_dir="none", progress=False, loss_chunk_size=64)
    base.update(over)
    return [x for k, v in base.items() for x in (f"--{k}", str(v))]


def train(args):
    from sftbench.config.train import parse_train_config
    from train_hw_parallel import train as _train

    return _train(parse_train_config(args))


def test_planted_ifeval_prompt_is_counted_and_dropped_unless_kept(tiny_model_dir, tmp_path, capsys):
    data = write_data(tmp_path / "chat.jsonl", planted="Please help. " + ifeval_prompt(1001))
    res = train(argv(tiny_model_dir, data, tmp_path / "dropped", model_max_length=512))
    log = capsys.readouterr().out
    assert "contamination guard: 1 of 17 examples share a 13-word n-gram with a benchmark prompt (ifeval 541, " \
           "ifbench 294 prompts checked" in log
    assert "dropped (--keep_contaminated True keeps them)" in log
    assert res["data_stats"]["records"] == 16 and res["data_stats"]["examples"] == 16
    rep = read_json(tmp_path / "dropped" / "contamination.json")
    assert (rep["records"], rep["contaminated"], rep["dropped"], rep["kept_by_flag"]) == (17, 1, 1, False)
    assert {(h["record"], h["benchmark"], h["key"]) for h in rep["hits"]} == {(4, "ifeval", 1001)}
    assert read_json(tmp_path / "dropped" / "sft_config.json")["keep_contaminated"] is False

    res = train(argv(tiny_model_dir, data, tmp_path / "kept", model_max_length=512, keep_contaminated=True))
    assert "kept (--keep_contaminated)" in capsys.readouterr().out
    assert res["data_stats"]["records"] == 17 and res["data_stats"]["examples"] == 17
    rep = read_json(tmp_path / "kept" / "contamination.json")
    assert (rep["contaminated"], rep["dropped"], rep["kept_by_flag"]) == (1, 0, True)


def test_clean_data_is_read_from_data_path_unchanged(tiny_model_dir, tmp_path):
    from sftbench.config.train import parse_train_config
    from sftbench.train.dist import Dist
    from sftbench.train.prepare import prepare_data

    data = write_data(tmp_path / "chat.jsonl")
    prep = prepare_data(parse_train_config(argv(tiny_model_dir, data, tmp_path / "o")), Dist())
    assert prep.data_path == str(data) and prep.tmp_dir is None
    assert prep.reports["contamination.json"]["contaminated"] == 0
    assert "augment_stats.json" not in prep.reports


def test_augment_fraction_on_the_fly_is_cached_and_logged(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    from sftbench.data.augment_types import HELD_OUT

    data = write_data(tmp_path / "chat.jsonl", n=24)
    cache = tmp_path / "cache"
    flags = dict(augment_fraction=1.0, data_cache_dir=str(cache), augment_types="punctuation:no_comma,"
                 "change_case:english_lowercase,detectable_format:title")
    res = train(argv(tiny_model_dir, data, tmp_path / "a", **flags))
    log = capsys.readouterr().out
    stats = read_json(tmp_path / "a" / "augment_stats.json")
    assert stats["records"] == 24 and stats["selected"] == 24 and stats["cache_hit"] is False
    assert stats["kept"] > 0 and stats["held_out"] == list(HELD_OUT)
    assert set(stats["per_type"]) <= {"punctuation:no_comma", "change_case:english_lowercase", "detectable_format:title"}
    assert f"augmentation ({stats['seconds']} s): {stats['kept']} of 24 conversations got constraints" in log
    aug = cache / f"augment-{stats['cache_key']}.jsonl"
    rows = read_jsonl(aug)
    assert sum(bool(r["constraints"]) for r in rows) == stats["kept"]
    # the tokenised cache is keyed by the augmented file (its name carries the augmentation's key)
    tokenised = sorted(p.name for p in cache.glob("examples-*.jsonl"))
    assert len(tokenised) == 1 and res["data_stats"]["examples"] == 24
    cfg = read_json(tmp_path / "a" / "sft_config.json")
    assert cfg["augment_fraction"] == 1.0 and cfg["augment_targets"] == "data"

    # same settings: both caches hit; another fraction: a new augmentation and a new tokenised entry
    train(argv(tiny_model_dir, data, tmp_path / "b", **flags))
    assert "augmentation (cached)" in capsys.readouterr().out
    assert read_json(tmp_path / "b" / "augment_stats.json")["cache_hit"] is True
    assert sorted(p.name for p in cache.glob("examples-*.jsonl")) == tokenised
    train(argv(tiny_model_dir, data, tmp_path / "c", **{**flags, "augment_fraction": 0.5}))
    assert read_json(tmp_path / "c" / "augment_stats.json")["selected"] == 12
    assert len(list(cache.glob("examples-*.jsonl"))) == 2 and len(list(cache.glob("augment-*.jsonl"))) == 2


def test_bad_augment_settings_are_user_errors_before_any_work(tiny_model_dir, tmp_path):
    from sftbench.core.errors import UserError

    data = write_data(tmp_path / "chat.jsonl")
    with pytest.raises(UserError, match="--augment_fraction 1.5: give a share between 0 and 1"):
        train(argv(tiny_model_dir, data, tmp_path / "x", augment_fraction=1.5))
    with pytest.raises(UserError, match="unknown or unsupported type"):
        train(argv(tiny_model_dir, data, tmp_path / "y", augment_fraction=0.5, augment_types="no:such_type"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
