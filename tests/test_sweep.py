"""sftbench/eval/sweep.py: discovery, skip/resume, settings changes, --watch, sweep.csv, CLI (fake evaluator)."""

from __future__ import annotations

import csv
import json
import shutil
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures_results import fake_model_dir, make_fake_run, write_fake_result
from sftbench.eval import sweep as sw
from sftbench.core.errors import UserError


@dataclass
class FakeConfig:
    """Stands in for sftbench.eval.run.EvalConfig."""

    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N prompts"})
    max_new_tokens: int = field(default=1280, metadata={"help": "generation cap"})
    device: str = "auto"
    greedy: bool = True
    benchmark: str = "ifeval"


class FakeEvaluator:
    """evaluate_checkpoint stand-in: writes the documented result files; records calls; can fail on demand."""

    def __init__(self, fail_on: set[str] | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail_on = fail_on or set()
        self.loaded = []

    def __call__(self, model_path, out_dir, cfg, *, loaded=None):
        name = Path(out_dir).name
        self.loaded.append(loaded)
        if name in self.fail_on:
            (Path(out_dir)).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "responses.jsonl").write_text('{"key": 1000}\n')  # partial, no summary
            raise RuntimeError(f"simulated crash in {name}")
        self.calls.append((name, model_path))
        step = int(name.split("-")[1])
        settings = {"max_new_tokens": cfg.max_new_tokens, "limit": cfg.limit, "device": "cpu"}
        return write_fake_result(Path(out_dir), step, model_path, gpu=False, settings=settings,
                                 settings_hash=f"h-{cfg.max_new_tokens}-{cfg.limit}",
                                 followed={step: min(30, 15 + step // 2)})


def _names(cks):
    return [(c.name, c.kind) for c in cks]


# ------------------------------------------------------------------------------------------ discovery
def test_discovery_ignores_incomplete_and_tmp(tmp_path):
    run = make_fake_run(tmp_path / "run", steps=(5, 10), final_step=None)
    fake_model_dir(tmp_path / "run" / ".checkpoint-15.tmp", 15)            # being written
    (tmp_path / "run" / "checkpoint-20").mkdir()                            # no config, no weights
    (tmp_path / "run" / "checkpoint-20" / "config.json").write_text("{}")
    (tmp_path / "run" / "checkpoint-25").mkdir()                            # weights only
    (tmp_path / "run" / "checkpoint-25" / "model.safetensors").write_bytes(b"0")
    fake_model_dir(tmp_path / "run" / "checkpoint-final")                   # not checkpoint-<int>
    (tmp_path / "run" / "checkpoint-7").write_text("a file")
    assert _names(sw.discover_checkpoints(run)) == [("checkpoint-5", "checkpoint"), ("checkpoint-10", "checkpoint")]


def test_discovery_final_dedup_and_base(tmp_path):
    run = make_fake_run(tmp_path / "run", steps=(5, 10), final_step=10)
    assert _names(sw.discover_checkpoints(run)) == [("checkpoint-5", "checkpoint"), ("checkpoint-10", "checkpoint")]
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 12}))
    cks = sw.discover_checkpoints(run, include_base="some/base")
    assert _names(cks) == [("checkpoint-0", "base"), ("checkpoint-5", "checkpoint"), ("checkpoint-10", "checkpoint"),
                           ("checkpoint-12", "final")]
    assert cks[0].path == "some/base" and cks[-1].path == str(run.resolve())
    # no trainer_state.json: the final step is the last logged step of metrics.jsonl (make_fake_run logs 1..10)
    (run / "trainer_state.json").unlink()
    shutil.rmtree(run / "checkpoint-10")
    assert _names(sw.discover_checkpoints(run)) == [("checkpoint-5", "checkpoint"), ("checkpoint-10", "final")]
    assert sw.base_model_from_run(run) == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_discovery_missing_run_dir(tmp_path):
    with pytest.raises(UserError, match="run directory not found"):
        sw.discover_checkpoints(tmp_path / "nope")


def test_loss_at_step_nearest_logged_below():
    metrics = [{"step": 1, "loss": 3.0}, {"step": 4, "loss": 2.5}, {"step": 8, "loss": 2.0}, {"step": 9}]
    assert sw.loss_at_step(metrics, 0) == (None, None)
    assert sw.loss_at_step(metrics, 4) == (2.5, 4)
    assert sw.loss_at_step(metrics, 7) == (2.5, 4)
    assert sw.loss_at_step(metrics, 100) == (2.0, 8)


# ------------------------------------------------------------------------------------------ resume
def test_sweep_skip_resume_and_csv(tmp_path):
    run = make_fake_run(tmp_path / "run", steps=(5, 10, 20), final_step=20, gpu=False)
    res = tmp_path / "res"
    ev = FakeEvaluator(fail_on={"checkpoint-10"})
    cfg = FakeConfig(limit=2, max_new_tokens=4)
    s = sw.Sweep(run, res, cfg, ev, include_base="base/model", session="SESSION", log=lambda *a: None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        s.run_once()
    assert [c[0] for c in ev.calls] == ["checkpoint-0", "checkpoint-5"]
    assert ev.loaded == ["SESSION"] * 3                       # one session reused across checkpoints

    # rerun after the crash: only what is missing, base remembered from sweep.json
    ev2 = FakeEvaluator()
    s2 = sw.Sweep(run, res, cfg, ev2, log=lambda *a: None)
    assert s2.run_once() == (2, 2)
    assert [c[0] for c in ev2.calls] == ["checkpoint-10", "checkpoint-20"]
    # idempotent
    ev3 = FakeEvaluator()
    assert sw.Sweep(run, res, cfg, ev3, log=lambda *a: None).run_once() == (0, 4)
    assert ev3.calls == []

    rows = list(csv.DictReader(open(res / "sweep.csv")))
    assert [r["step"] for r in rows] == ["0", "5", "10", "20"]
    assert [r["checkpoint"] for r in rows] == ["checkpoint-0", "checkpoint-5", "checkpoint-10", "checkpoint-20"]
    assert rows[0]["kind"] == "base" and rows[0]["train_loss"] == ""        # nothing logged at step <= 0
    assert float(rows[2]["train_loss"]) == pytest.approx(2.0 - 0.01 * 10) and rows[2]["train_loss_step"] == "10"
    # followed = 15 + step // 2 of 60 prompts at step 10 -> 20 / 60
    assert float(rows[2]["prompt_strict"]) == pytest.approx(20 / 60)
    assert rows[1]["prompt_strict_lo"] != "" and rows[1]["model_path"].endswith("checkpoint-5")
    state = json.loads((res / "sweep.json").read_text())
    assert state["run_dir"] == str(run.resolve()) and state["include_base"] == "base/model"
    assert state["eval_config"] == {"limit": 2, "max_new_tokens": 4, "device": "auto", "greedy": True}


def test_changed_settings_error_and_force(tmp_path):
    run = make_fake_run(tmp_path / "run", steps=(5,), final_step=None, gpu=False)
    res = tmp_path / "res"
    sw.Sweep(run, res, FakeConfig(limit=2), FakeEvaluator(), log=lambda *a: None).run_once()
    with pytest.raises(UserError, match=r"max_new_tokens: 1280 -> 64.*new results directory.*--force"):
        sw.Sweep(run, res, FakeConfig(limit=2, max_new_tokens=64), FakeEvaluator(), log=lambda *a: None)
    ev = FakeEvaluator()
    sw.Sweep(run, res, FakeConfig(limit=2, max_new_tokens=64), ev, force=True, log=lambda *a: None).run_once()
    assert [c[0] for c in ev.calls] == ["checkpoint-5"]
    assert json.loads((res / "checkpoint-5" / "summary.json").read_text())["settings"]["max_new_tokens"] == 64


def test_expected_hash_from_runner(tmp_path):
    run = make_fake_run(tmp_path / "run", steps=(5, 10), final_step=None, gpu=False)
    res = tmp_path / "res"
    cfg = FakeConfig(limit=2)
    h = lambda path, c: f"h-{c.max_new_tokens}-{c.limit}"
    sw.Sweep(run, res, cfg, FakeEvaluator(), expected_hash=h, log=lambda *a: None).run_once()
    (res / "sweep.json").unlink()  # even without the sweep's own record, the runner's hash decides
    ev = FakeEvaluator()
    assert sw.Sweep(run, res, cfg, ev, expected_hash=h, log=lambda *a: None).run_once() == (0, 2)
    with pytest.raises(UserError, match="settings_hash"):
        sw.Sweep(run, res, cfg, ev, expected_hash=lambda p, c: "other", log=lambda *a: None).run_once()


def test_foreign_results_with_other_settings_are_not_mixed(tmp_path):
    run = make_fake_run(tmp_path / "run", steps=(5,), final_step=None, gpu=False)
    res = tmp_path / "res"
    ck = str((run / "checkpoint-5").resolve())
    write_fake_result(res / "checkpoint-5", 5, ck, gpu=False, settings={"max_new_tokens": 64, "limit": 2})
    with pytest.raises(UserError, match=r"checkpoint-5/summary.json.*max_new_tokens: 64 there, 1280 now"):
        sw.Sweep(run, res, FakeConfig(limit=2), FakeEvaluator(), log=lambda *a: None).run_once()
    ev = FakeEvaluator()  # same settings: adopted, not re-evaluated
    assert sw.Sweep(run, res, FakeConfig(limit=2, max_new_tokens=64), ev, log=lambda *a: None).run_once() == (0, 1)


# ------------------------------------------------------------------------------------------ watch
def test_watch_evaluates_checkpoints_as_training_writes_them(tmp_path):
    run = tmp_path / "run"
    make_fake_run(run, steps=(2,), final_step=None, gpu=False)
    res = tmp_path / "res"
    ev = FakeEvaluator()

    def trainer():
        for step in (4, 6):
            time.sleep(0.3)
            tmp = run / f".checkpoint-{step}.tmp"
            fake_model_dir(tmp, step)          # written under a temporary name, then renamed (atomic)
            tmp.rename(run / f"checkpoint-{step}")
        time.sleep(0.3)
        (run / "model.safetensors").write_bytes(b"0" * 8)   # the final model (step 6 = last checkpoint: deduped)
        (run / "trainer_state.json").write_text(json.dumps({"global_step": 6}))
        (run / "config.json").write_text("{}")

    t = threading.Thread(target=trainer)
    t.start()
    s = sw.Sweep(run, res, FakeConfig(limit=2), ev, log=lambda *a: None)
    outcome = s.watch(poll_s=0.05, timeout_s=30)
    t.join()
    assert outcome == "final"
    assert [c[0] for c in ev.calls] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert not any(".tmp" in c[1] for c in ev.calls)
    rows = list(csv.DictReader(open(res / "sweep.csv")))
    assert [r["step"] for r in rows] == ["2", "4", "6"]


def test_watch_timeout_and_waits_for_run_dir(tmp_path):
    ev = FakeEvaluator()
    s = sw.Sweep(tmp_path / "not-yet", tmp_path / "res", FakeConfig(), ev, log=lambda *a: None)
    assert s.watch(poll_s=0.02, timeout_s=0.1) == "timeout"
    assert ev.calls == []


# ------------------------------------------------------------------------------------------ CLI
def _fake_runner(ev):
    return types.SimpleNamespace(EvalConfig=FakeConfig, evaluate_checkpoint=ev)


def test_cli_include_base_default_and_passthrough(tmp_path, capsys):
    run = make_fake_run(tmp_path / "run", steps=(5,), final_step=None, gpu=False, base="my/base-model")
    res = tmp_path / "res"
    ev = FakeEvaluator()
    rc = sw.main([str(run), str(res), "--include_base", "--limit", "2", "--max_new_tokens", "4",
                  "--greedy", "false"], runner=_fake_runner(ev))
    assert rc == 0
    assert ev.calls == [("checkpoint-0", "my/base-model"), ("checkpoint-5", str((run / "checkpoint-5").resolve()))]
    assert json.loads((res / "sweep.json").read_text())["eval_config"] == {
        "limit": 2, "max_new_tokens": 4, "device": "auto", "greedy": False}
    # a changed setting: a clear error, exit 2, nothing evaluated
    ev2 = FakeEvaluator()
    with pytest.raises(SystemExit) as e:
        sw.main([str(run), str(res), "--limit", "3", "--max_new_tokens", "4"], runner=_fake_runner(ev2))
    assert e.value.code == 2 and ev2.calls == []
    err = capsys.readouterr().err
    assert "sftbench.eval.sweep: error:" in err and "--force" in err and "limit: 2 -> 3" in err


def test_cli_errors_and_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sw.main([str(tmp_path / "missing"), str(tmp_path / "res")], runner=_fake_runner(FakeEvaluator()))
    assert e.value.code == 2 and "run directory not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        sw.main([str(empty), str(tmp_path / "res")], runner=_fake_runner(FakeEvaluator()))
    assert e.value.code == 2 and "no complete checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sw.main([str(empty), str(tmp_path / "res"), "--include_base"], runner=_fake_runner(FakeEvaluator()))
    assert e.value.code == 2 and "sft_config.json: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sw.main(["--help"], runner=_fake_runner(FakeEvaluator()))
    out = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--include_base", "--watch", "--poll_s", "--watch_timeout", "--force", "--limit",
                 "evaluate only the first N prompts"):
        assert flag in out


# ------------------------------------------------------------------------------------------ end to end
def test_end_to_end_tiny_run_on_cpu(tmp_path, shared_dir):
    """The real runner over a tiny run dir (two checkpoints): --limit 2 --max_new_tokens 4 on CPU."""
    runner = pytest.importorskip("sftbench.eval.run")
    from sftbench.model.tiny import make_tiny_model_dir

    run = tmp_path / "run"
    for step, seed in ((1, 0), (2, 1)):
        make_tiny_model_dir(run / f"checkpoint-{step}", seed=seed)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.5}\n{"step": 2, "loss": 5.25}\n')
    res = tmp_path / "res"
    fields = {f.name for f in __import__("dataclasses").fields(runner.EvalConfig)}
    argv = [str(run), str(res), "--limit", "2", "--max_new_tokens", "4"]
    for flag, value in (("device", "cpu"), ("batch_size", "2"),
                        ("data", str(shared_dir / "data" / "ifeval" / "input_data.jsonl"))):
        if flag in fields:
            argv += [f"--{flag}", value]
    assert sw.main(argv) == 0
    rows = list(csv.DictReader(open(res / "sweep.csv")))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert [r["train_loss"] for r in rows] == ["5.5", "5.25"]
    for r in rows:
        assert 0.0 <= float(r["prompt_strict"]) <= 1.0 and r["n_prompts"] == "2"
        assert len((res / r["checkpoint"] / "responses.jsonl").read_text().splitlines()) == 2
    # idempotent: a rerun skips both
    before = (res / "checkpoint-1" / "summary.json").read_text()
    assert sw.main(argv) == 0
    assert (res / "checkpoint-1" / "summary.json").read_text() == before
    from sftbench.analysis import report
    assert report.main([str(res)]) == 0 and "smoke test" in (res / "report.md").read_text()


# ------------------------------------------------------------------------------------------ run-dir discovery
def test_rundir_list_checkpoints_one_definition(tmp_path):
    from sftbench.core import rundir

    run = make_fake_run(tmp_path / "run", steps=(5, 10), final_step=None)
    fake_model_dir(run / ".checkpoint-20.tmp", 20)          # being written
    (run / "checkpoint-30").mkdir()                          # no config.json, no weights
    fake_model_dir(run / "checkpoint-40")                    # no trainer_state.json
    assert [(s, p.name) for s, p in rundir.list_checkpoints(run)] == [
        (5, "checkpoint-5"), (10, "checkpoint-10"), (40, "checkpoint-40")]
    assert [s for s, _ in rundir.list_checkpoints(run, require=("trainer_state.json",))] == [5, 10]
    assert rundir.list_checkpoints(tmp_path / "missing") == []
    assert rundir.model_step(run / "checkpoint-10") == 10 and rundir.global_step(run / "checkpoint-40") is None
    assert rundir.loss_at_step(rundir.load_metrics(run), 7) == (1.93, 7)


def test_results_schema_defaults_come_from_eval_config():
    from sftbench.eval import results
    from sftbench.eval.config import EvalConfig

    assert results.FULL_MAX_NEW_TOKENS == EvalConfig().max_new_tokens == 1280
    assert results.CSV_COLUMNS[:6] == ["step", "checkpoint", "kind", "prompt_strict", "prompt_strict_lo",
                                       "prompt_strict_hi"]
    assert results.RESULT_FILES[-1] == "summary.json"
