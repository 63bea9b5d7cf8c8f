"""What the trainer guarantees about its output directory and resume (issue 16; docs/GUARANTEES.md): it never
writes into a directory it did not create, a run killed before its first checkpoint can be started over, and a
resume with settings that break exact resume is refused unless asked for, with every change recorded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sftbench.data.demo import make_conversations
from sftbench.core.errors import UserError
from test_train import args as _train_args, run_train  # the tiny run and its flags, written once

ROOT = Path(__file__).resolve().parents[1]


def args(model_dir, data, out, **over) -> list[str]:
    """test_train's tiny run, 4 steps with a checkpoint every 2."""
    return _train_args(model_dir, data, out, **{"max_steps": 4, "save_steps": 2, **over})


def cli(argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_hw_parallel.py"), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def snapshot(d: Path) -> dict:
    """Every file under d with its sha256: a refusal must leave it exactly so."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]


def history(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "config_history.jsonl").read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "chat.jsonl"
    p.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(24, seed=1)))
    return p


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, data, tmp_path_factory):
    """4 steps, checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("runs") / "base"
    run_train(args(tiny_model_dir, data, out))
    return out


# --- item 2: an output directory the trainer did not create ----------------------------------------------------


def test_model_directory_as_output_dir_is_refused_and_untouched(tiny_model_dir, data, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    before = snapshot(d)
    p = cli(args(d, data, d))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"train_hw_parallel.py: error: --output_dir {d} holds a model directory (model.safetensors): " in p.stderr
    assert "Nothing was written." in p.stderr
    assert snapshot(d) == before


def test_output_dir_with_other_files_is_refused(tiny_model_dir, data, tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "todo.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files the trainer did not write: todo.txt\. "):
        run_train(args(tiny_model_dir, data, d))
    assert sorted(p.name for p in d.iterdir()) == ["todo.txt"]


# --- item 5: a run killed before its first checkpoint ----------------------------------------------------------


def _killed_before_first_checkpoint(tiny_model_dir, data, out, monkeypatch):
    """A real run that dies after its first logged step, before any checkpoint is written."""
    import sftbench.train.loop as loop

    def die(run, step):
        raise KeyboardInterrupt  # as from kill / Ctrl-C

    monkeypatch.setattr(loop, "save_step", die)
    with pytest.raises(KeyboardInterrupt):
        run_train(args(tiny_model_dir, data, out))
    monkeypatch.undo()
    assert [r["step"] for r in metrics(out)] == [1] and not list(out.glob("checkpoint-*"))


def test_run_killed_before_first_checkpoint_is_offered_and_started_over(tiny_model_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    _killed_before_first_checkpoint(tiny_model_dir, data, out, monkeypatch)
    before = snapshot(out)
    for over in ({}, {"resume_from_checkpoint": "latest"}):
        with pytest.raises(UserError) as ei:
            run_train(args(tiny_model_dir, data, out, **over))
        assert str(ei.value).startswith(f"--output_dir {out} holds a run that stopped before its first checkpoint (")
        assert "Start it over with --start_over True" in str(ei.value)
        assert snapshot(out) == before
    res = run_train(args(tiny_model_dir, data, out, start_over=True))
    assert res["global_step"] == 4 and [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    assert [h["event"] for h in history(out)] == ["start", "start_over"]
    ref = tmp_path / "straight"
    run_train(args(tiny_model_dir, data, ref))
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(ref)]
    # --start_over never discards checkpoints
    with pytest.raises(UserError, match=r"--start_over: .* holds checkpoints \(checkpoint-2, checkpoint-4\)"):
        run_train(args(tiny_model_dir, data, out, start_over=True, max_steps=6, resume_from_checkpoint="latest"))


def test_start_over_with_resume_latest_starts_a_killed_run_over(tiny_model_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    _killed_before_first_checkpoint(tiny_model_dir, data, out, monkeypatch)
    res = run_train(args(tiny_model_dir, data, out, start_over=True, resume_from_checkpoint="latest"))
    assert res["global_step"] == 4 and [r["step"] for r in metrics(out)] == [1, 2, 3, 4]


# --- item 6: resuming with changed settings -------------------------------------------------------------------


def _copy(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


@pytest.mark.parametrize("over, shown", [
    ({"learning_rate": 1e-3}, "learning_rate 0.003 -> 0.001"),
    ({"seed": 8}, "seed 7 -> 8"),
    ({"lr_scheduler_type": "cosine"}, "lr_scheduler_type 'linear' -> 'cosine'"),
    ({"gradient_accumulation_steps": 1}, "effective_batch_size 4 -> 2"),
    ({"data": "other"}, "the data ("),
    ({"data": "edited"}, "content differs"),
])
def test_resume_with_changed_settings_is_refused(base_run, tiny_model_dir, data, tmp_path, over, shown):
    out = _copy(base_run, tmp_path)
    over = dict(over, max_steps=6, resume_from_checkpoint="latest")
    d = data
    if over.get("data") == "other":
        d = tmp_path / "other.jsonl"
        d.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(24, seed=2)))
    elif over.get("data") == "edited":  # same path, other content
        d = tmp_path / "chat.jsonl"
        d.write_text(data.read_text() + json.dumps(make_conversations(1, seed=3)[0]) + "\n")
        (out / "checkpoint-4" / "sft_config.json").write_text(
            (out / "checkpoint-4" / "sft_config.json").read_text().replace(str(data), str(d)))
    over.pop("data", None)
    before = snapshot(out)
    with pytest.raises(UserError) as ei:
        run_train(args(tiny_model_dir, d, out, **over))
    msg = str(ei.value)
    assert msg.startswith(f"--resume_from_checkpoint {out / 'checkpoint-4'}: this run's settings differ from the checkpoint's")
    assert shown in msg and "--allow_changed_settings True" in msg and "Nothing was written." in msg
    assert snapshot(out) == before


def test_changed_settings_refusal_is_exit_2_on_the_command_line(base_run, tiny_model_dir, data, tmp_path):
    out = _copy(base_run, tmp_path)
    before = snapshot(out)
    p = cli(args(tiny_model_dir, data, out, learning_rate=1e-3, max_steps=6, resume_from_checkpoint="latest"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "learning_rate 0.003 -> 0.001" in p.stderr
    assert snapshot(out) == before


def test_allowed_changes_are_recorded_in_the_history(base_run, tiny_model_dir, data, tmp_path):
    out = _copy(base_run, tmp_path)
    run_train(args(tiny_model_dir, data, out, learning_rate=1e-3, max_steps=6, resume_from_checkpoint="latest",
                   allow_changed_settings=True))
    h = history(out)
    assert [r["event"] for r in h] == ["start", "resume"]
    assert h[1]["step"] == 4 and h[1]["checkpoint"] == str(out / "checkpoint-4")
    assert h[1]["changed"] == {"learning_rate": {"from": 3e-3, "to": 1e-3}, "max_steps": {"from": 4, "to": 6}}
    assert json.loads((out / "sft_config.json").read_text())["learning_rate"] == 1e-3
    assert json.loads((out / "checkpoint-4" / "sft_config.json").read_text())["learning_rate"] == 3e-3


def test_changes_that_keep_exact_resume_are_accepted(base_run, tiny_model_dir, data, tmp_path):
    """A longer run (the tested extension of a finished run) and another split of the same effective batch."""
    out = _copy(base_run, tmp_path)
    res = run_train(args(tiny_model_dir, data, out, max_steps=6, per_device_train_batch_size=1,
                         gradient_accumulation_steps=4, save_steps=3, resume_from_checkpoint="latest"))
    assert res["global_step"] == 6
    assert history(out)[-1]["changed"] == {"max_steps": {"from": 4, "to": 6}}


# --- item 9: every record bad ------------------------------------------------------------------------------------


def test_every_line_malformed_is_not_blamed_on_max_length(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "x\n{oops}\nnot json\n')
    p = cli(args(tiny_model_dir, bad, tmp_path / "o", skip_bad_records=True))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert (f"{bad}: no trainable conversation: all 3 records are bad and were skipped by --skip_bad_records "
            f"(malformed_json: 3); run without --skip_bad_records to see the first one with its file and line.") in p.stderr
    assert "--model_max_length" not in p.stderr and not (tmp_path / "o").exists()
    p = cli(args(tiny_model_dir, bad, tmp_path / "o"))
    assert p.returncode == 2 and f"{bad}:1: malformed JSON at column 14: Unterminated string starting. " in p.stderr
    assert "(2 more bad record(s) in this data; pass --skip_bad_records to skip and count them)" in p.stderr


def test_invalid_utf8_training_data_is_a_clean_error(tiny_model_dir, tmp_path):
    f = tmp_path / "d.jsonl"
    line = json.dumps(make_conversations(1)[0]).encode() + b"\n"
    f.write_bytes(line * 4 + b'{"messages": "\xff"}\n')
    p = cli(args(tiny_model_dir, f, tmp_path / "o"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{f}:5: not valid UTF-8 (byte 0xff at byte offset {4 * len(line) + 14} of the file, byte 15 of the line)" in p.stderr
    assert not (tmp_path / "o").exists()
