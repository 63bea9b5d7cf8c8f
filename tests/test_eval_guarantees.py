"""Issue 16, eval side: results are keyed by the weights, bad input is a one-paragraph error (exit 2) with
nothing half-written.  CPU, tiny Llama, seconds.  The guarantees are written up in docs/GUARANTEES.md (part 2)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from fixtures_results import fake_model_dir, make_fake_run, make_fake_sweep, write_fake_result
from sftbench.analysis import report
from sftbench.tasks import data as ifdata
from sftbench.engine import generate as gen
from sftbench.model.load import load_model
from sftbench.eval import run as runner
from sftbench.eval import sweep as sw
from sftbench.eval.config import EvalConfig
from sftbench.core import fingerprint as fpr
from sftbench.core.errors import UserError

TINY = str(ifdata.TINY_PROMPTS)


@pytest.fixture(scope="module")
def session():
    return runner.EvalSession(EvalConfig())


def cfg(**kw):
    base = dict(data=TINY, limit=3, max_new_tokens=4, batch_size=2, device="cpu")
    base.update(kw)
    return EvalConfig(**base)


def retrain(model_dir: Path, seed: int) -> None:
    """Other weights at the same path, as a retrain into the same run directory writes them."""
    from sftbench.model.tiny import build_tiny_model, build_tiny_tokenizer

    time.sleep(0.01)  # a later mtime than the results written before
    build_tiny_model(len(build_tiny_tokenizer()), seed=seed).save_pretrained(model_dir)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_tells_weights_apart_cheaply(tiny_model_dir, tmp_path):
    a = copy_model(tiny_model_dir, tmp_path / "a")
    fp = fpr.fingerprint(a)
    assert fp.startswith("sfp1:") and len(fp) == 5 + 64
    assert fpr.fingerprint(copy_model(a, tmp_path / "copy")) == fp  # what the model is, not where
    os.utime(a / "model.safetensors")                                  # touching is not changing
    assert fpr.fingerprint(a) == fp
    retrain(a, seed=1)
    assert fpr.fingerprint(a) != fp
    assert fpr.fingerprint("HuggingFaceTB/SmolLM2-135M-Instruct") is None and fpr.fingerprint(tmp_path / "nope") is None


# ------------------------------------------------------------------------------------------ item 1: stale results
def test_run_reevaluates_when_weights_at_the_path_changed(tiny_model_dir, tmp_path, session, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "checkpoint-10")
    out = tmp_path / "res"
    first = runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session)
    assert first["model_fingerprint"] == fpr.fingerprint(model)
    again = runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session)
    assert again == first and "already complete with these settings" in capsys.readouterr().err
    retrain(model, seed=1)
    capsys.readouterr()
    new = runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session)
    err = capsys.readouterr().err
    assert f"{out}: weights changed since it was evaluated; re-evaluating" in err
    assert "already complete" not in err
    assert new["model_fingerprint"] == fpr.fingerprint(model) != first["model_fingerprint"]
    assert json.loads((out / "summary.json").read_text()) == new


def test_old_summary_without_fingerprint_is_trusted_only_if_weights_are_older(tiny_model_dir, tmp_path, session,
                                                                              capsys):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    out = tmp_path / "res"
    s = runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session)
    del s["model_fingerprint"]  # a summary written before fingerprints existed
    (out / "summary.json").write_text(json.dumps(s))
    assert runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session) == s   # weights older: kept
    retrain(model, seed=2)
    capsys.readouterr()
    new = runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session)
    assert "weights changed since it was evaluated (written after its results" in capsys.readouterr().err
    assert new["model_fingerprint"] == fpr.fingerprint(model)


def test_partial_answers_are_not_resumed_across_weights(tiny_model_dir, tmp_path, session, monkeypatch, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    out = tmp_path / "res"
    real = gen.HFGenerator.generate
    calls = {"n": 0}

    def crash_after_one_batch(self, ids):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # kill -9 after the first batch
        return real(self, ids)

    monkeypatch.setattr(gen.HFGenerator, "generate", crash_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session)
    assert len((out / runner.PARTIAL).read_text().splitlines()) == 2
    monkeypatch.setattr(gen.HFGenerator, "generate", real)
    retrain(model, seed=3)
    capsys.readouterr()
    s = runner.evaluate_checkpoint(str(model), out, cfg(), loaded=session)
    assert "unfinished answers of other weights" in capsys.readouterr().err
    assert s["generation"]["new_prompts"] == 3          # all regenerated with the new weights
    ref = runner.evaluate_checkpoint(str(model), tmp_path / "ref", cfg(), loaded=session)
    assert [r["response"] for r in map(json.loads, (out / "responses.jsonl").read_text().splitlines())] == \
           [r["response"] for r in map(json.loads, (tmp_path / "ref" / "responses.jsonl").read_text().splitlines())]
    assert s["accuracy"] == ref["accuracy"]


def _tiny_run(root: Path, tiny_model_dir: Path, loss: float) -> Path:
    run = root / "run"
    for step in (5, 10):
        if not (run / f"checkpoint-{step}").exists():
            copy_model(tiny_model_dir, run / f"checkpoint-{step}")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": loss}) + "\n" for s in (5, 10)))
    return run


def test_sweep_after_retrain_reevaluates_and_pairs_the_same_weights(tiny_model_dir, tmp_path, session):
    run = _tiny_run(tmp_path, tiny_model_dir, loss=2.5)
    res = tmp_path / "res"
    logs: list[str] = []

    def sweep():
        return sw.Sweep(run, res, cfg(), runner.evaluate_checkpoint, session=session,
                        expected_hash=lambda p, c: runner.expected_settings_hash(p, c, session), log=logs.append)

    assert sweep().run_once() == (2, 0)
    old_fp = json.loads((res / "checkpoint-10" / "summary.json").read_text())["model_fingerprint"]
    # retrain into the same run directory: other weights for checkpoint-10, other losses
    retrain(run / "checkpoint-10", seed=4)
    _tiny_run(tmp_path, tiny_model_dir, loss=1.25)
    sweep().write_csv()  # before re-evaluating: old accuracies are not paired with the new losses
    assert [r["checkpoint"] for r in csv.DictReader(open(res / "sweep.csv"))] == ["checkpoint-5"]
    logs.clear()
    assert sweep().run_once() == (1, 1)
    assert "[sftbench.eval.sweep] checkpoint-10: weights changed since it was evaluated; re-evaluating" in logs
    assert "[sftbench.eval.sweep] 1 checkpoint(s) already evaluated with these settings: checkpoint-5" in logs
    new = json.loads((res / "checkpoint-10" / "summary.json").read_text())
    assert new["model_fingerprint"] == fpr.fingerprint(run / "checkpoint-10") != old_fp
    rows = list(csv.DictReader(open(res / "sweep.csv")))
    assert [(r["checkpoint"], r["train_loss"]) for r in rows] == [("checkpoint-5", "1.25"), ("checkpoint-10", "1.25")]
    assert float(rows[1]["prompt_strict"]) == new["accuracy"]["prompt_strict"]["value"]
    logs.clear()
    assert sweep().run_once() == (0, 2)  # and a rerun is a no-op again


# ------------------------------------------------------------------------------------------ item 3: invalid UTF-8
def test_invalid_utf8_data_file_names_file_line_and_byte(tiny_model_dir, tmp_path, capsys):
    good = Path(TINY).read_bytes().splitlines(keepends=True)
    bad = tmp_path / "latin1.jsonl"
    line2 = good[1].replace(b'"prompt": "', b'"prompt": "caf\xe9 ', 1)
    assert line2 != good[1]
    bad.write_bytes(good[0] + line2 + b"".join(good[2:]))
    col = line2.index(b"\xe9")
    offset = len(good[0]) + col
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        runner.main([str(tiny_model_dir), str(out), "--data", str(bad), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert (f"{runner.PROG}: error: {bad}:2: not valid UTF-8 (byte 0xe9 at byte offset {offset} of the file, "
            f"byte {col + 1} of the line)") in err
    assert "Traceback" not in err and not out.exists()


# ------------------------------------------------------------------------------------------ item 7: report
def test_report_stops_on_a_corrupted_middle_summary(tmp_path, capsys):
    _, res = make_fake_sweep(tmp_path)
    f = res / "checkpoint-10" / "summary.json"
    f.write_text(f.read_text()[:200])  # cut mid-file
    with pytest.raises(SystemExit) as e:
        report.main([str(res)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"sftbench.analysis.report: error: {f}:" in err and "malformed JSON" in err
    assert "cannot be read" in err and f"delete {res / 'checkpoint-10'}" in err
    assert not (res / "report.md").exists()


def test_report_names_a_summary_that_is_not_an_object(tmp_path, capsys):
    _, res = make_fake_sweep(tmp_path)
    f = res / "checkpoint-0" / "summary.json"
    f.write_text("[1, 2, 3]\n")
    with pytest.raises(SystemExit) as e:
        report.main([str(res)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"sftbench.analysis.report: error: {f}: not a result summary (valid JSON, but a list, not an object)." in err


# ------------------------------------------------------------------------------------------ item 9: broken checkpoints
def test_truncated_safetensors_is_a_user_error_and_leaves_no_out(tiny_model_dir, tmp_path, capsys):
    model = copy_model(tiny_model_dir, tmp_path / "checkpoint-3")
    w = model / "model.safetensors"
    size = w.stat().st_size
    with open(w, "r+b") as fh:
        fh.truncate(size // 2)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        runner.main([str(model), str(out), "--data", TINY, "--limit", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"{runner.PROG}: error: {w}: truncated safetensors file: its header needs {size} bytes, the file has " \
           f"{size // 2} ({size - size // 2} missing)." in err
    assert not out.exists()


def test_load_model_reports_a_corrupt_weights_file(tiny_model_dir, tmp_path):
    model = copy_model(tiny_model_dir, tmp_path / "m")
    with open(model / "model.safetensors", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)
    import torch

    with pytest.raises(UserError, match=f"{model}: could not load the model"):
        load_model(str(model), "fp32", torch.device("cpu"))


class _FakeEval:
    def __init__(self):
        self.calls = []

    def __call__(self, model_path, out_dir, cfg, *, loaded=None):
        self.calls.append(Path(out_dir).name)
        step = int(Path(out_dir).name.split("-")[1])
        return write_fake_result(Path(out_dir), step, model_path, gpu=False)


def test_sweep_names_a_checkpoint_without_weights(tmp_path, capsys):
    import types

    run = make_fake_run(tmp_path / "run", steps=(5,), final_step=None, gpu=False)
    (run / "checkpoint-10").mkdir()
    (run / "checkpoint-10" / "config.json").write_text("{}")
    fake = types.SimpleNamespace(EvalConfig=EvalConfig, evaluate_checkpoint=_FakeEval())
    assert sw.main([str(run), str(tmp_path / "res"), "--dry_run"], runner=fake) == 0
    lines = capsys.readouterr().out.splitlines()
    # columns: name, benchmark, kind, action, path
    assert [ln.split()[:3] for ln in lines] == [["checkpoint-5", "ifeval", "checkpoint"], ["checkpoint-10", "-", "-"]]
    assert (f"skip (not a complete checkpoint: no weights (model.safetensors, model.safetensors.index.json, "
            f"pytorch_model.bin, ...))  {run / 'checkpoint-10'}") in lines[1]
    logs: list[str] = []
    s = sw.Sweep(run, tmp_path / "res", EvalConfig(), fake.evaluate_checkpoint, log=logs.append)
    assert s.run_once() == (1, 0) and fake.evaluate_checkpoint.calls == ["checkpoint-5"]
    assert logs[0] == (f"[sftbench.eval.sweep] checkpoint-10: skipped, not a complete checkpoint (no weights "
                       f"(model.safetensors, model.safetensors.index.json, pytorch_model.bin, ...)): "
                       f"{run / 'checkpoint-10'}")


def test_sweep_csv_drops_results_of_replaced_weights_without_fingerprint(tmp_path):
    """Results written before fingerprints: a weights file newer than summary.json means other weights."""
    run = make_fake_run(tmp_path / "run", steps=(5, 10), final_step=None, gpu=False)
    res = tmp_path / "res"
    for step in (5, 10):
        write_fake_result(res / f"checkpoint-{step}", step, str((run / f"checkpoint-{step}").resolve()), gpu=False)
    time.sleep(0.01)
    fake_model_dir(run / "checkpoint-10", 10)  # rewritten after its results
    logs: list[str] = []
    ev = _FakeEval()
    s = sw.Sweep(run, res, EvalConfig(max_new_tokens=64, system_prompt="none", limit=60), ev, log=logs.append)
    assert [st for _, _, st in s.plan()] == ["done", "stale"]
    assert s.run_once() == (1, 1) and ev.calls == ["checkpoint-10"]
    assert "[sftbench.eval.sweep] checkpoint-10: weights changed since it was evaluated; re-evaluating" in logs


def test_sweep_stops_on_a_truncated_checkpoint_keeping_what_is_done(tiny_model_dir, tmp_path, capsys):
    run = _tiny_run(tmp_path, tiny_model_dir, loss=2.0)
    w = run / "checkpoint-10" / "model.safetensors"
    with open(w, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 100)
    res = tmp_path / "res"
    with pytest.raises(SystemExit) as e:
        sw.main([str(run), str(res), "--data", TINY, "--limit", "2", "--max_new_tokens", "4", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"sftbench.eval.sweep: error: {w}: truncated safetensors file" in err
    assert json.loads((res / "checkpoint-5" / "summary.json").read_text())["complete"] is True
    assert not (res / "checkpoint-10").exists()


def test_sweep_csv_keeps_results_of_pruned_checkpoints(tmp_path):
    """A checkpoint deleted after its evaluation (save_total_limit) keeps its row and its loss."""
    run = make_fake_run(tmp_path / "run", steps=(5, 10), final_step=None, gpu=False)
    res = tmp_path / "res"
    for step in (5, 10):
        write_fake_result(res / f"checkpoint-{step}", step, str((run / f"checkpoint-{step}").resolve()), gpu=False)
    shutil.rmtree(run / "checkpoint-5")
    from sftbench.eval.results import sweep_rows

    assert [(r["checkpoint"], r["train_loss"]) for r in sweep_rows(res, run)] == [("checkpoint-5", 1.95),
                                                                                 ("checkpoint-10", 1.9)]
