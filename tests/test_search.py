"""sftbench.search on CPU: a two-configuration grid on the tiny model with a --limit'ed eval, interrupted in the
second configuration's training and resumed without redoing the first; the grid's validation; the default grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sftbench import search as S
from sftbench.data.demo import make_conversations
from sftbench.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
IFEVAL = ROOT / "sftbench" / "tasks" / "prompts" / "ifeval_input_data.jsonl"


def grid_file(tmp_path: Path, model_dir: Path, data: Path) -> Path:
    g = {"base": {"model_name_or_path": str(model_dir), "data_path": str(data), "max_steps": 2, "save_steps": 1,
                  "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "model_max_length": 128,
                  "data_cache_dir": "none", "progress": False, "loss_chunk_size": 64, "seed": 7},
         "eval": {"limit": 2, "max_new_tokens": 4, "device": "cpu", "batch_size": 2, "data": str(IFEVAL)},
         "configs": [{"name": "a", "learning_rate": 1e-3}, {"name": "b", "learning_rate": 3e-3}]}
    p = tmp_path / "grid.json"
    p.write_text(json.dumps(g))
    return p


class Calls:
    """Counts the search's calls into the trainer (a TrainConfig each) and the sweep (run and results directories,
    EvalConfig, SweepConfig); interrupts b's training after its checkpoint-1."""

    def __init__(self, monkeypatch, interrupt: bool):
        self.train: list = []
        self.sweep: list[tuple] = []
        real_train, real_sweep = S._train, S._sweep
        monkeypatch.setattr(S, "_train", lambda cfg: (self.train.append(cfg), real_train(cfg))[1])
        monkeypatch.setattr(S, "_sweep", lambda *a: (self.sweep.append(a), real_sweep(*a))[1])
        if interrupt:
            import sftbench.train.loop as loop

            real_save = loop.save_step

            def save(run, step):
                real_save(run, step)
                if run.out.name == "b" and step == 1:
                    raise RuntimeError("simulated interruption")

            monkeypatch.setattr(loop, "save_step", save)

    def names(self, which: list) -> list[str]:
        return [Path(a.output_dir).name if hasattr(a, "output_dir") else Path(a[0]).name for a in which]


def test_search_interrupted_then_resumed_without_redoing_the_first(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(16, seed=1)))
    grid, out = grid_file(tmp_path, tiny_model_dir, data), tmp_path / "search"

    calls = Calls(monkeypatch, interrupt=True)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        S.main([str(grid), str(out)])
    assert calls.names(calls.train) == ["a", "b"] and calls.names(calls.sweep) == ["_start", "a"]
    assert sorted(p.name for p in (out / "results" / "a").glob("checkpoint-*")) == ["checkpoint-0", "checkpoint-1",
                                                                                     "checkpoint-2"]
    assert (out / "runs" / "b" / "checkpoint-1").is_dir() and not (out / "ranking.csv").exists()
    a_summary = out / "results" / "a" / "checkpoint-2" / "summary.json"
    a_time, start_time = a_summary.stat().st_mtime_ns, (out / "results" / "_start" / "checkpoint-0" / "summary.json").stat().st_mtime_ns
    # the start was evaluated once: a's step 0 is its copy, adopted by a's sweep (not evaluated again)
    assert (out / "results" / "a" / "checkpoint-0" / "summary.json").stat().st_mtime_ns == start_time
    plan = dict((c.name, act) for c, act in S.Search(S.load_grid(grid), out).plan())
    assert plan == {"a": "done", "b": "resume"}

    monkeypatch.undo()
    calls = Calls(monkeypatch, interrupt=False)
    assert S.main([str(grid), str(out)]) == 0
    assert calls.names(calls.train) == ["b"] and calls.train[0].resume_from_checkpoint == "latest"
    assert calls.names(calls.sweep) == ["b"]
    assert a_summary.stat().st_mtime_ns == a_time
    assert (out / "results" / "_start" / "checkpoint-0" / "summary.json").stat().st_mtime_ns == start_time
    assert (out / "results" / "b" / "checkpoint-0" / "summary.json").stat().st_mtime_ns == start_time
    b_metrics = [json.loads(l)["step"] for l in (out / "runs" / "b" / "metrics.jsonl").read_text().splitlines()]
    assert b_metrics == [1, 2]

    rows = list(csv.DictReader(open(out / "ranking.csv")))
    assert sorted((r["config"], r["step"]) for r in rows) == [("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    for r in rows:
        assert r["n_prompts"] == "2" and r["verdict"] == "no significant change"
        assert float(r["p_holm"]) >= float(r["p_mcnemar"]) and r["overrides"] in ('{"learning_rate": 0.001}',
                                                                                 '{"learning_rate": 0.003}')
    md = (out / "ranking.md").read_text()
    assert "Holm-corrected over 4 checkpoints" in md and "| 1 | " in md and "- b: --learning_rate 0.003" in md

    # everything done: nothing is trained or evaluated again, the ranking is rewritten the same
    monkeypatch.undo()
    calls = Calls(monkeypatch, interrupt=False)
    before = (out / "ranking.csv").read_text()
    assert S.main([str(grid), str(out)]) == 0
    assert calls.train == [] and calls.sweep == []
    assert (out / "ranking.csv").read_text() == before


def test_grid_product_names_and_validation(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"base": {"max_steps": 3}, "axes": {"learning_rate": [1e-5, 2e-5], "augment_fraction": [0, 0.5]}}))
    g = S.load_grid(p, {"data_path": "x.jsonl"})
    assert [c.name for c in g.configs] == ["learning_rate=1e-05_augment_fraction=0", "learning_rate=1e-05_augment_fraction=0.5",
                                           "learning_rate=2e-05_augment_fraction=0", "learning_rate=2e-05_augment_fraction=0.5"]
    assert g.configs[1].flags == {"max_steps": 3, "data_path": "x.jsonl", "learning_rate": 1e-5, "augment_fraction": 0.5}
    p.write_text(json.dumps({"base": {"lerning_rate": 1}, "configs": [{"name": "a"}]}))
    with pytest.raises(UserError, match=r"g.json: \"base\": not a trainer flag: lerning_rate"):
        S.load_grid(p)
    p.write_text(json.dumps({"configs": [{"name": "a", "output_dir": "x"}]}))
    with pytest.raises(UserError, match=r"output_dir \(set by the search\)"):
        S.load_grid(p)
    p.write_text(json.dumps({"configs": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(UserError, match="two configurations are named 'a'"):
        S.load_grid(p)
    assert S.flag_args({"lr": 2e-5, "bf16": True, "x": None}) == ["--lr", "2e-05", "--bf16", "True", "--x", "none"]


def test_cli_bad_grid_exits_2_before_any_work(tmp_path, capsys):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"configs": [{"name": "a", "learning_rate": "fast"}]}))
    with pytest.raises(SystemExit) as e:
        S.main([str(p), str(tmp_path / "out")])
    assert e.value.code == 2 and not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        S.main([str(tmp_path / "missing.json"), str(tmp_path / "out")])
    assert e.value.code == 2 and "missing.json: grid file not found" in capsys.readouterr().err


def test_bad_grid_values_name_the_grid_file_and_the_entry(tmp_path, capsys):
    """Each configuration becomes a TrainConfig, and the eval flags an EvalConfig + SweepConfig, through the
    stages' own parsers before any work: a bad value is one error line naming the grid file and the entry."""
    p = tmp_path / "g.json"
    for grid, msg in (({"configs": [{"name": "a"}, {"name": "b", "learning_rate": "fast"}]},
                       "configuration b: argument --learning_rate: invalid float value: 'fast'"),
                      ({"configs": [{"name": "a", "learning_rate": -1}]},
                       "configuration a: --learning_rate -1.0: give a finite learning rate > 0"),
                      ({"eval": {"limt": 3}, "configs": [{"name": "a"}]}, '"eval": unrecognized arguments: --limt 3'),
                      ({"eval": {"max_new_tokens": "x"}, "configs": [{"name": "a"}]},
                       "\"eval\": argument --max_new_tokens: invalid int value: 'x'")):
        p.write_text(json.dumps(grid))
        with pytest.raises(SystemExit) as e:
            S.main([str(p), str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"python -m sftbench.search: error: {p}: {msg}"), err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_search_calls_the_stages_as_functions_with_typed_configs(tmp_path):
    from sftbench.config.train import TrainConfig
    from sftbench.eval.config import EvalConfig, SweepConfig

    p = tmp_path / "g.json"
    p.write_text(json.dumps({"base": {"max_steps": 3, "bf16": True}, "eval": {"limit": 2, "benchmarks": "ifeval,ifbench"},
                             "configs": [{"name": "a", "learning_rate": 1e-5}]}))
    grid = S.load_grid(p)
    cfg = S.train_config(grid, grid.configs[0], tmp_path / "runs" / "a", resume=True)
    assert isinstance(cfg, TrainConfig)
    assert (cfg.learning_rate, cfg.max_steps, cfg.bf16, cfg.output_dir, cfg.resume_from_checkpoint) == \
        (1e-5, 3, True, str(tmp_path / "runs" / "a"), "latest")
    search = S.Search(grid, tmp_path / "out")
    ev, opts = search.eval_configs("base/model")
    assert isinstance(ev, EvalConfig) and isinstance(opts, SweepConfig)
    assert (ev.limit, opts.benchmarks, opts.include_base) == (2, "ifeval,ifbench", "base/model")


def test_default_grid_has_five_configurations_that_parse(tmp_path):
    """At most five configurations (issue 22: the whole grid in about 10 minutes on one GPU): preset A as the
    plain-SFT baseline, and the two self-answer volume configurations among them."""
    g = S.load_grid(ROOT / "sftbench" / "grids" / "default.json", {"data_path": "chat.jsonl"})
    assert [c.name for c in g.configs] == ["presetA", "lr1e-5", "lr2e-5_aug1_data", "lr4e-5_self_v8",
                                           "lr4e-5_self_v4_s4"]
    assert (g.configs[0].flags["learning_rate"], g.configs[0].flags["num_train_epochs"]) == (4e-5, 5)
    assert [(c.flags["augment_variants"], c.flags["augment_samples"]) for c in g.configs[3:]] == [(8, 1), (4, 4)]
    assert {c.flags["learning_rate"] for c in g.configs} == {1e-5, 2e-5, 4e-5}
    assert {c.flags.get("augment_fraction", 0) for c in g.configs} == {0, 1.0}
    # the baseline (preset A as shipped), the data's own answers rewritten, and the start model's own answers
    assert {(c.flags.get("augment_fraction", 0), c.flags.get("augment_targets", "data")) for c in g.configs} == \
        {(0, "data"), (1.0, "data"), (1.0, "self")}
    assert g.eval["benchmarks"] == "ifeval,ifbench"
    for c in g.configs:
        S.check_trainer_flags(c, tmp_path / c.name)


def _result(d: Path, follows: list[bool]) -> None:
    d.mkdir(parents=True)
    rows = [{"prompt": f"p{i}", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"],
             "follow_instruction_list": [True, f and i % 2 == 0], "follow_all_instructions": f}
            for i, f in enumerate(follows)]
    (d / "eval_results_strict.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"complete": True}))


def test_ranking_exact_numbers_holm_and_headline(tmp_path):
    """20 prompts.  Start: 5 followed (i % 4 == 0); a step 5: all 20 (ckpt-only 15, start-only 0); b step 5: the
    start's minus prompt 0 (start-only 1)."""
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"configs": [{"name": "a", "learning_rate": 1e-5}, {"name": "b", "learning_rate": 4e-5}]}))
    search = S.Search(S.load_grid(p), tmp_path / "out")
    start = [i % 4 == 0 for i in range(20)]
    _result(search.results_dir(S.START) / "checkpoint-0", start)
    _result(search.results_dir("a") / "checkpoint-5", [True] * 20)
    _result(search.results_dir("b") / "checkpoint-5", [s and i != 0 for i, s in enumerate(start)])
    _result(search.results_dir("b") / "checkpoint-0", start)  # the start's copy: not ranked
    res = S.write_ranking(search)
    a, b = res["rows"]
    assert (a["config"], a["rank"], a["prompt_strict"], a["delta_points"], a["ckpt_only"], a["start_only"]) == \
        ("a", 1, 1.0, 75.0, 15, 0)
    assert a["p_mcnemar"] == 2 / 2**15 and a["p_holm"] == 4 / 2**15 and a["verdict"] == "better than start"
    assert (b["config"], b["rank"], b["prompt_strict"], b["delta_points"], b["p_mcnemar"], b["p_holm"], b["verdict"]) == \
        ("b", 2, 0.2, -5.0, 1.0, 1.0, "no significant change")
    assert (a["inst_seen"], a["inst_held_out"]) == (1.0, 0.5)
    # the sentence is sftbench.analysis.verdict's (family_headline): its test name and p-value format
    assert res["headline"] == ("Training helped: a checkpoint-5 follows 100.0% (prompt-level strict) "
                               "against 25.0% for the starting model, +75.0 points, p = 1.2e-04 (exact sign test "
                               "over prompts, Holm-corrected over 2 checkpoints, alpha 0.05); 1 of 2 checkpoints "
                               "are significantly better.")
    md = (tmp_path / "out" / "ranking.md").read_text()
    assert "| 1 | a | checkpoint-5 | 100.0 | +75.0 | 15 / 0 | 6.1e-05 | 0.000122 | better than start | 100.0 | 50.0 |" in md
    assert "| 2 | b | checkpoint-5 | 20.0 | -5.0 | 0 / 1 | 1 | 1 | no significant change | 100.0 | 20.0 |" in md


# ---------------------------------------------------------------------- the transfer guard in the ranking (issue 22)
SEEN, HELD = "punctuation:no_comma", "startend:quotation"  # a trained type; a held-out one (augment_types.HELD_OUT)


def _guard_rows(seen_ok: int, held_ok: int, n: int = 100) -> list[dict]:
    """IFEval rows: n prompts with the trained type (the first seen_ok follow it), n with the held-out type (the
    first held_ok follow it), n with both (none followed)."""
    def row(key, ids, oks):
        return {"prompt": key, "instruction_id_list": ids, "follow_instruction_list": oks,
                "follow_all_instructions": all(oks)}

    return ([row(f"s{i}", [SEEN], [i < seen_ok]) for i in range(n)] + [row(f"h{i}", [HELD], [i < held_ok]) for i in range(n)]
            + [row(f"b{i}", [SEEN, HELD], [False, False]) for i in range(n)])


def _bench_rows(ok: int, n: int = 100) -> list[dict]:
    return [{"prompt": f"q{i}", "instruction_id_list": ["count:word_count_range"], "follow_instruction_list": [i < ok],
             "follow_all_instructions": i < ok} for i in range(n)]


def _write_rows(d: Path, rows: list[dict]) -> None:
    d.mkdir(parents=True)
    (d / "eval_results_strict.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"complete": True}))


def _guarded_search(tmp_path: Path, configs: dict[str, tuple], bench_start: int | None = 20):
    """A search over `configs` ({name: (seen_ok, held_ok, ifbench_ok or None)}, one checkpoint-10 each) against the
    start (40 / 40 of 100 on each type; IFBench bench_start of 100, None: no IFBench results); its ranking."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"configs": [{"name": n, "learning_rate": 1e-5 * (i + 1)} for i, n in enumerate(configs)]}))
    search = S.Search(S.load_grid(p), tmp_path / "out")
    _write_rows(search.results_dir(S.START) / "checkpoint-0", _guard_rows(40, 40))
    if bench_start is not None:
        _write_rows(search.results_dir(S.START) / "ifbench" / "checkpoint-0", _bench_rows(bench_start))
    for name, (seen_ok, held_ok, bench_ok) in configs.items():
        _write_rows(search.results_dir(name) / "checkpoint-10", _guard_rows(seen_ok, held_ok))
        if bench_ok is not None:
            _write_rows(search.results_dir(name) / "ifbench" / "checkpoint-10", _bench_rows(bench_ok))
    res = S.write_ranking(search)
    md = (tmp_path / "out" / "ranking.md").read_text()
    return res, md, list(csv.DictReader(open(tmp_path / "out" / "ranking.csv")))


GUARD_COLUMNS = ("guard", "guard_blocks", "pick", "start_inst_seen", "start_inst_held_out", "held_out_p",
                 "guard_ifbench_start", "guard_ifbench", "guard_ifbench_p")
TOP_TRANSFERS = ("The gain transfers: IFEval prompt-level strict 26.7 -> 38.3 (+11.7 points, p = 5.8e-11); IFEval "
                 "held-out types (instruction-level) 20.0 -> 22.5 (+2.5 points, p = 0.012); IFBench prompt-level "
                 "strict 20.0 -> 22.0 (+2.0 points, p = 0.50) (at or above the start).")


def test_ranking_guard_transfers_the_top_configuration_is_the_pick(tmp_path):
    res, md, rows = _guarded_search(tmp_path, {"top": (70, 45, 22), "next": (55, 40, 20)})
    assert res["pick"] == "top checkpoint-10"
    assert res["pick_sentence"] == "The pick: top checkpoint-10. " + TOP_TRANSFERS
    assert "\n" + res["pick_sentence"] + "\n" in md
    assert ("| 1 | top | checkpoint-10 | 38.3 | +11.7 | 35 / 0 | 5.82e-11 | 1.16e-10 | better than start | 35.0 | 22.5 "
            "| 22.0 | +2.0 | 1 | 20.0 → 35.0 | 20.0 → 22.5 (p 0.012) | 20.0 → 22.0 (p 0.50) | transfers (pick) |") in md
    assert ("| 2 | next | checkpoint-10 | 31.7 | +5.0 | 15 / 0 | 6.1e-05 | 6.1e-05 | better than start | 27.5 | 20.0 "
            "| 20.0 | +0.0 | 1 | 20.0 → 27.5 | 20.0 → 20.0 (p 1.0) | 20.0 → 20.0 (p 1.0) | transfers |") in md
    assert [rows[0][k] for k in GUARD_COLUMNS] == ["transfers", "False", "True", "0.2", "0.2", "0.012", "0.2",
                                                   "0.22", "0.5"]
    assert res["headline"].startswith("Training helped: top checkpoint-10 follows 38.3%")


def test_ranking_guard_trained_types_only_is_picked_and_labelled(tmp_path):
    """A gain with the held-out types and IFBench below the start, not significantly: the guard does not block
    (issue 22: only a significant fall does); the pick's sentence and the table say so."""
    res, md, rows = _guarded_search(tmp_path, {"top": (70, 37, 18), "next": (55, 40, 20)})
    assert res["pick"] == "top checkpoint-10"
    assert res["pick_sentence"] == (
        "The pick: top checkpoint-10 (labelled: its gain is on trained constraint types only). The gain is on "
        "trained constraint types only: IFEval prompt-level strict 26.7 -> 35.7 (+9.0 points, p = 1.4e-06); IFEval "
        "trained types (instruction-level) 20.0 -> 35.0 (+15.0 points, p = 0.0e+00); but IFEval held-out types "
        "(instruction-level) 20.0 -> 18.5 (-1.5 points, p = 0.11); IFBench prompt-level strict 20.0 -> 18.0 "
        "(-2.0 points, p = 0.50) (below the start, not significantly).")
    assert ("| 1 | top | checkpoint-10 | 35.7 | +9.0 | 30 / 3 | 1.4e-06 | 2.8e-06 | better than start | 35.0 | 18.5 "
            "| 18.0 | -2.0 | 1 | 20.0 → 35.0 | 20.0 → 18.5 (p 0.11) | 20.0 → 18.0 (p 0.50) | trained types only (pick) |"
            ) in md
    assert [rows[0][k] for k in GUARD_COLUMNS[:3]] == ["trained types only", "False", "True"]
    assert rows[1]["pick"] == "False"


HELD_OUT_FALL = ("Not a pick: IFEval held-out types (instruction-level) 20.0 -> 10.0 (-10.0 points, p = 0.0e+00) "
                 "(significant at 0.05), although IFEval prompt-level strict 26.7 -> 40.0 (+13.3 points, p = 8.6e-06).")


def test_ranking_guard_falls_the_top_ifeval_configuration_is_passed_over(tmp_path):
    """The top IFEval configuration loses 10 points on the held-out types (significant): the next one is the pick,
    and the summary says why the higher one was passed over (the guard's sentence)."""
    res, md, rows = _guarded_search(tmp_path, {"top": (100, 20, 20), "next": (70, 45, 22)})
    assert [(r["rank"], r["config"], r["prompt_strict"]) for r in rows] == [("1", "top", "0.4"), ("2", "next", "0.38333333333333336")]
    assert res["pick"] == "next checkpoint-10"
    assert res["pick_sentence"] == ("The pick: next checkpoint-10. " + TOP_TRANSFERS
                                    + " Passed over top checkpoint-10 (higher on IFEval): " + HELD_OUT_FALL)
    assert ("| 1 | top | checkpoint-10 | 40.0 | +13.3 | 60 / 20 | 8.58e-06 | 8.58e-06 | better than start | 50.0 | 10.0 "
            "| 20.0 | +0.0 | 1 | 20.0 → 50.0 | 20.0 → 10.0 (p 0.0e+00) | 20.0 → 20.0 (p 1.0) "
            "| falls on held-out or IFBench (significant) |") in md
    assert ("| 2 | next | checkpoint-10 | 38.3 | +11.7 | 35 / 0 | 5.82e-11 | 1.16e-10 | better than start | 35.0 | 22.5 "
            "| 22.0 | +2.0 | 1 | 20.0 → 35.0 | 20.0 → 22.5 (p 0.012) | 20.0 → 22.0 (p 0.50) | transfers (pick) |") in md
    assert [rows[0][k] for k in GUARD_COLUMNS[:3]] == ["falls on held-out or IFBench (significant)", "True", "False"]
    # the family's verdict names the pick first, not the blocked configuration
    assert res["headline"].startswith("Training helped: next checkpoint-10 follows 38.3% (prompt-level strict)")
    assert res["headline"].endswith("2 of 2 checkpoints are significantly better.")

    # a significant fall on IFBench blocks too
    res, md, _ = _guarded_search(tmp_path / "ifbench", {"top": (70, 40, 5), "next": (60, 42, 22)})
    assert res["pick"] == "next checkpoint-10"
    assert res["pick_sentence"].endswith(
        " Passed over top checkpoint-10 (higher on IFEval): Not a pick: IFBench prompt-level strict 20.0 -> 5.0 "
        "(-15.0 points, p = 6.1e-05) (significant at 0.05), although IFEval prompt-level strict 26.7 -> 36.7 "
        "(+10.0 points, p = 1.9e-09).")
    assert "| 20.0 → 20.0 (p 1.0) | 20.0 → 5.0 (p 6.1e-05) | falls on held-out or IFBench (significant) |" in md


def test_ranking_guard_without_ifbench_uses_the_held_out_types_and_says_so(tmp_path):
    res, md, rows = _guarded_search(tmp_path, {"top": (100, 20, None), "next": (70, 45, None)}, bench_start=None)
    no_ifbench = "IFBench was not evaluated: the guard checked the held-out IFEval types only."
    assert res["pick"] == "next checkpoint-10"
    assert res["pick_sentence"] == (
        "The pick: next checkpoint-10. The gain transfers: IFEval prompt-level strict 26.7 -> 38.3 (+11.7 points, "
        "p = 5.8e-11); IFEval held-out types (instruction-level) 20.0 -> 22.5 (+2.5 points, p = 0.012) (at or above "
        f"the start). {no_ifbench} Passed over top checkpoint-10 (higher on IFEval): {HELD_OUT_FALL} {no_ifbench}")
    assert "| 20.0 → 50.0 | 20.0 → 10.0 (p 0.0e+00) |  | falls on held-out or IFBench (significant) |" in md
    assert rows[0]["guard_ifbench_p"] == "" and rows[1]["pick"] == "True"


def test_ranking_guard_no_pick_when_nothing_gains_unblocked(tmp_path):
    res, _, rows = _guarded_search(tmp_path, {"top": (100, 20, 20), "flat": (40, 40, 20)})
    assert res["pick"] is None
    assert res["pick_sentence"] == (
        "No pick: no configuration gains on IFEval without a significant fall on the held-out types or IFBench; "
        "keep the starting model. Passed over top checkpoint-10 (higher on IFEval): " + HELD_OUT_FALL)
    assert [(r["config"], r["guard"], r["pick"]) for r in rows] == [
        ("top", "falls on held-out or IFBench (significant)", "False"), ("flat", "no gain", "False")]


def test_round_after_starts_from_the_earlier_final_model(tiny_model_dir, tmp_path, monkeypatch):
    """{"after": "a"}: a further round (expert iteration) trains from a's final model, is swept against the same
    start, named in the ranking; it cannot run before a has finished."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in make_conversations(16, seed=1)))
    grid = grid_file(tmp_path, tiny_model_dir, data)
    g = json.loads(grid.read_text())
    g["configs"] = [{"name": "a", "learning_rate": 1e-3}, {"name": "a_r2", "after": "a", "learning_rate": 1e-3}]
    grid.write_text(json.dumps(g))
    out = tmp_path / "search"
    with pytest.raises(SystemExit) as e:  # the round alone: its first round was never trained
        S.main([str(grid), str(out), "--only", "a_r2"])
    assert e.value.code == 2
    calls = Calls(monkeypatch, interrupt=False)
    assert S.main([str(grid), str(out)]) == 0
    assert calls.names(calls.train) == ["a", "a_r2"]
    r2 = calls.train[1]
    assert r2.model_name_or_path == str(out / "runs" / "a")
    assert json.loads((out / "runs" / "a_r2" / "sft_config.json").read_text())["model_name_or_path"] == str(out / "runs" / "a")
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert {(r["config"], r["checkpoint"]) for r in rows} == {("a", "checkpoint-1"), ("a", "checkpoint-2"),
                                                              ("a_r2", "checkpoint-1"), ("a_r2", "checkpoint-2")}
    assert {json.loads(r["overrides"]).get("after") for r in rows if r["config"] == "a_r2"} == {"a"}
    md = (out / "ranking.md").read_text()
    assert "- a_r2: (base) (a round after a: starts from its final model)" in md
    assert json.loads((out / "search.json").read_text())["configs"]["a_r2"]["after"] == "a"
    # the grid may not silently change what a trained round started from
    g["configs"][1]["after"] = None
    g["configs"][1].pop("after")
    grid.write_text(json.dumps(g))
    with pytest.raises(SystemExit) as e:
        S.main([str(grid), str(out)])
    assert e.value.code == 2


def test_round_after_validation(tmp_path):
    p = tmp_path / "g.json"
    for cfgs, msg in (([{"name": "r2", "after": "a"}, {"name": "a"}], r"configs\[0\] \(r2\): \"after\": 'a' is not an earlier"),
                      ([{"name": "a"}, {"name": "r2", "after": "zz"}], r"\"after\": 'zz' is not an earlier"),
                      ([{"name": "a"}, {"name": "r2", "after": "a", "model_name_or_path": "m"}],
                       r"give \"after\" or model_name_or_path, not both")):
        p.write_text(json.dumps({"configs": cfgs}))
        with pytest.raises(UserError, match=msg):
            S.load_grid(p)
    p.write_text(json.dumps({"configs": [{"name": "a"}, {"name": "r2", "after": "a"}], "axes": {"seed": [1, 2]}}))
    with pytest.raises(UserError, match="cannot be combined"):
        S.load_grid(p)
    p.write_text(json.dumps({"configs": [{"name": "a"}, {"name": "r2", "after": "a", "augment_seed": 1}]}))
    g = S.load_grid(p)
    assert (g.configs[1].after, g.configs[1].flags) == ("a", {"augment_seed": 1})
    cfg = S.train_config(g, g.configs[1], tmp_path / "runs" / "r2")
    assert cfg.model_name_or_path == str(tmp_path / "runs" / "a")


def test_grid_extends_another_and_the_shipped_rounds_grid(tmp_path):
    parent = tmp_path / "p.json"
    parent.write_text(json.dumps({"base": {"max_steps": 3, "seed": 1}, "eval": {"limit": 2},
                                  "configs": [{"name": "a", "learning_rate": 1e-5}]}))
    child = tmp_path / "c.json"
    child.write_text(json.dumps({"extends": "p.json", "base": {"seed": 2}, "eval": {"max_new_tokens": 8},
                                 "configs": [{"name": "a_r2", "after": "a"}]}))
    g = S.load_grid(child)
    assert [(c.name, c.after, c.flags) for c in g.configs] == [
        ("a", None, {"max_steps": 3, "seed": 2, "learning_rate": 1e-5}), ("a_r2", "a", {"max_steps": 3, "seed": 2})]
    assert g.eval == {"limit": 2, "max_new_tokens": 8}
    child.write_text(json.dumps({"extends": "c.json", "configs": []}))
    with pytest.raises(UserError, match="without a cycle"):
        S.load_grid(child)
    child.write_text(json.dumps({"extends": "nope.json"}))
    with pytest.raises(UserError, match=r"nope.json: grid file not found"):
        S.load_grid(child)
    # the shipped rounds grid: the default grid's configurations, unchanged, then the second round
    default = S.load_grid(ROOT / "sftbench" / "grids" / "default.json")
    rounds = S.load_grid(ROOT / "sftbench" / "grids" / "rounds.json")
    assert [(c.name, c.flags) for c in rounds.configs[:-1]] == [(c.name, c.flags) for c in default.configs]
    assert rounds.eval == default.eval
    r2 = rounds.configs[-1]
    assert (r2.name, r2.after, r2.flags["augment_seed"], r2.flags["augment_targets"]) == \
        ("lr4e-5_self_v8_r2", "lr4e-5_self_v8", 1, "self")
