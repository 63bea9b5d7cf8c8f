"""Issue 12: the report answers "did training help?" with the start as a candidate (sftbench/analysis/verdict.py wired
into sftbench/analysis/report.py, the multi-run comparison and the notebook), and shows IFBench beside IFEval.

Result trees are written on disk by tests/fixtures_results.py (prompts 0..k-1 followed; see its docstring),
the report is run, and report.md's exact sentences are asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftbench.analysis import report
from sftbench.analysis import verdict as V
from fixtures_results import HURT, ISSUE_PRESET_A, NO_CHANGE, NO_START, make_fake_ifbench, make_fake_sweep

ROOT = Path(__file__).resolve().parents[1]
HOW = "exact sign test over prompts, Holm-corrected over 4 checkpoints, alpha 0.05"
# The issue's two wrong sentences, and the old trained-only pick: never again when the start is best.
OLD_WRONG = ("No checkpoint is significantly better than the starting model",
             "the training did not measurably change instruction following", "Defensible pick")


def _report(tmp_path, followed=None, n=60, name="run1", ifbench=None):
    run, res = make_fake_sweep(tmp_path, name, gpu=False, followed=followed, n=n)
    if ifbench is not None:
        make_fake_ifbench(res, run, followed=ifbench, n=n)
    out = report.write_report([res])
    return res, out["md"].read_text(), out["html"].read_text()


def _verdict_part(md: str) -> str:
    return md.split("## Did training help? (IFEval")[1].split("\n## ")[0]


def test_helped(tmp_path):
    res, md, html = _report(tmp_path)
    part = _verdict_part(md)
    assert part.splitlines()[2:8] == [
        f"Training helped: checkpoint-20 follows 50.0% (prompt-level strict) against 25.0% for the starting model, "
        f"+25.0 points, p = 2.4e-04 ({HOW}).",
        "",
        "- Best vs start: checkpoint-20 50.0% vs 25.0%, +25.0 points (checkpoint-20 follows more instructions on 15 "
        "prompts, the start on 0), p = 2.4e-04 (Holm-corrected), significant.",
        "- Final vs start: checkpoint-30 46.7% vs 25.0%, +21.7 points (checkpoint-30 follows more instructions on 13 "
        "prompts, the start on 0), p = 7.3e-04 (Holm-corrected), significant.",
        "- Among the trained checkpoints: checkpoint-20 beats the final checkpoint (checkpoint-30) by 3.3 points, "
        "p = 0.50: not significant (McNemar exact test over the same 60 prompts; 2 prompts only checkpoint-20 "
        "follows, 0 only checkpoint-30 follows).",
        "",
    ]
    assert ("Pick: **checkpoint-10**. It is the earliest checkpoint significantly better than the start and not "
            "significantly worse than the best, checkpoint-20 (Holm-corrected).") in part
    assert ("| prompt-level strict | 25.0% | checkpoint-20 50.0% | +25.0 (p = 2.4e-04) | checkpoint-30 46.7% | "
            "+21.7 (p = 7.3e-04) | helped |") in part
    assert "| instruction-level loose | 45.8% | checkpoint-20 65.0% | +19.2 (p = 9.8e-04) |" in part
    # the verdict comes first, before the checkpoint table and the plots
    assert md.index("Training helped:") < md.index("## Checkpoints") < md.index("## Accuracy by checkpoint")
    assert "<td>prompt-level strict</td><td>25.0%</td>" in html and "<strong>checkpoint-10</strong>" in html
    for old in OLD_WRONG:
        assert old not in md and old not in html


def test_hurt_the_start_is_best(tmp_path):
    res, md, html = _report(tmp_path, HURT)
    part = _verdict_part(md)
    assert (f"Training hurt: keep the starting model. The start follows 50.0% (prompt-level strict) against 23.3% "
            f"for the final checkpoint, checkpoint-30 (-26.7 points, p = 1.2e-04; {HOW}). The first checkpoint "
            f"significantly below the start is checkpoint-20 (30.0%, -20.0 points, p = 0.00146).") in part
    assert ("- Best vs start: checkpoint-5 48.3% vs 50.0%, -1.7 points (checkpoint-5 follows more instructions on 0 "
            "prompts, the start on 1), p = 1.0 (Holm-corrected), not significant.") in part
    assert ("- Final vs start: checkpoint-30 23.3% vs 50.0%, -26.7 points (checkpoint-30 follows more instructions "
            "on 0 prompts, the start on 16), p = 1.2e-04 (Holm-corrected), significant.") in part
    assert "\nPick: **the starting model (step 0)**.\n" in part
    assert ("| prompt-level strict | 50.0% | checkpoint-5 48.3% | -1.7 (p = 1.0) | checkpoint-30 23.3% | "
            "-26.7 (p = 1.2e-04) | hurt |") in part
    assert "| 0 | checkpoint-0 (start, best, pick) | 50.0 [" in md
    assert "(best" not in md.replace("(start, best, pick)", "") and "(pick" not in md.replace("(start, best, pick)", "")
    assert "Training hurt: keep the starting model." in html
    for old in OLD_WRONG:
        assert old not in md and old not in html


def test_the_issue_preset_a_on_541_prompts(tmp_path, capsys):
    """20.3 at the start, then 17.7, 17.6, 17.4, 15.7, 15.3, 14.2 (final): the old report said checkpoint-5
    and 'no measurable change'.  Now: training hurt, keep the start, final -6.1 points."""
    run, res = make_fake_sweep(tmp_path, "presetA", gpu=False, followed=ISSUE_PRESET_A, n=541)
    assert report.main([str(res)]) == 0
    md = (res / "report.md").read_text()
    assert ("Training hurt: keep the starting model. The start follows 20.3% (prompt-level strict) against 17.7% "
            "for the best trained checkpoint, checkpoint-50 (-2.6 points, p = 1.2e-04; exact sign test over prompts, "
            "Holm-corrected over 6 checkpoints, alpha 0.05). The first checkpoint significantly below the start is "
            "checkpoint-50 (17.7%, -2.6 points, p = 1.2e-04).") in md
    assert ("- Final vs start: checkpoint-300 14.2% vs 20.3%, -6.1 points (checkpoint-300 follows more instructions "
            "on 0 prompts, the start on 33), p = 1.4e-09 (Holm-corrected), significant.") in md
    assert "Pick: **the starting model (step 0)**." in md
    for old in OLD_WRONG:
        assert old not in md
    out = capsys.readouterr().out
    assert "  Training hurt: keep the starting model." in out and "  Pick: the starting model (step 0)." in out


def test_no_change(tmp_path):
    res, md, html = _report(tmp_path, NO_CHANGE)
    part = _verdict_part(md)
    assert (f"No measurable change: no trained checkpoint is significantly better or worse than the starting model "
            f"(33.3%, prompt-level strict); the best, checkpoint-10, is +3.3 points from it, p = 1.0 ({HOW}). Keep "
            f"the starting model unless another criterion favours a checkpoint.") in part
    assert ("- Best vs start: checkpoint-10 36.7% vs 33.3%, +3.3 points (checkpoint-10 follows more instructions on "
            "2 prompts, the start on 0), p = 1.0 (Holm-corrected), not significant.") in part
    assert ("- Final vs start: checkpoint-30 31.7% vs 33.3%, -1.7 points (checkpoint-30 follows more instructions on "
            "0 prompts, the start on 1), p = 1.0 (Holm-corrected), not significant.") in part
    assert "\nPick: **the starting model (step 0)**.\n" in part
    assert "| prompt-level loose | 43.3% | checkpoint-5 45.0% | +1.7 (p = 1.0) |" in part
    assert "| 0 | checkpoint-0 (start, pick) |" in md and "| 10 | checkpoint-10 (best) |" in md
    for old in OLD_WRONG:
        assert old not in md and old not in html


def test_no_start(tmp_path):
    res, md, html = _report(tmp_path, NO_START)
    part = _verdict_part(md)
    assert ("The verdict (did training help?) cannot be given: the starting model was not evaluated. Rerun the "
            "sweep with `--include_base` (the starting model, as step 0) to evaluate it on the same prompts.") in part
    assert "Best vs start" not in part and "Final vs start" not in part
    assert ("Pick: **checkpoint-10**. Among the trained checkpoints only: the earliest not significantly worse "
            "than the best, checkpoint-20 (McNemar exact, Holm-corrected).") in part
    assert "| prompt-level strict | not evaluated | checkpoint-20 50.0% | — | checkpoint-30 46.7% | — | no start |" \
        in part
    assert "| 10 | checkpoint-10 (pick) |" in md and "| 20 | checkpoint-20 (best) |" in md
    assert "(start" not in md
    assert "Rerun the sweep with <code>--include_base</code> (the starting model, as step 0)" in html


def test_no_verdict_without_per_prompt_results_or_trained_checkpoints(tmp_path):
    _, res = make_fake_sweep(tmp_path, gpu=False)
    for f in res.glob("checkpoint-*/eval_results_*.jsonl"):
        f.unlink()
    vr = report.analyse_verdict(report.load_sweep(res))
    assert (vr.verdict, vr.pick, vr.sentences) == (None, None, [report.MISSING_OUTCOMES])
    assert report.MISSING_OUTCOMES == ("Per-prompt results (eval_results_strict.jsonl and eval_results_loose.jsonl) "
                                       "are missing, so no paired test and no verdict were possible.")
    _, res = make_fake_sweep(tmp_path / "only", gpu=False, followed={0: 15, 5: 20})
    sweep = report.load_sweep(res)
    sweep.table = sweep.table[sweep.table["step"] == 0]
    vr = report.analyse_verdict(sweep)
    assert (vr.verdict, vr.pick, vr.sentences) == (None, "checkpoint-0", [
        "Only the starting model was evaluated: there is no trained checkpoint to compare with it."])


def test_no_change_with_a_dip_does_not_claim_no_checkpoint_was_worse():
    """verdict.py fix: a checkpoint significantly below the start in the middle, recovered by the end."""
    b = lambda k: [i < k for i in range(40)]
    v = V.verdict({"prompt_strict": {0: b(20), 10: b(3), 20: b(2), 30: b(19)}})
    assert v.outcome == "no_change"
    assert v.sentences[0] == (
        "No measurable change: neither the best nor the final trained checkpoint is significantly different from "
        "the starting model (50.0%, prompt-level strict); the best, checkpoint-30, is -2.5 points from it, p = 1.0 "
        "(exact sign test over prompts, Holm-corrected over 3 checkpoints, alpha 0.05). On the way, checkpoint-10 "
        "was significantly below the start (7.5%, -42.5 points, p = 3.1e-05). Keep the starting model unless "
        "another criterion favours a checkpoint.")


# ------------------------------------------------------------------------------------------ IFBench
def test_ifbench_verdict_under_ifeval_and_its_curve(tmp_path, capsys):
    run, res = make_fake_sweep(tmp_path, gpu=False)
    make_fake_ifbench(res, run, followed=HURT)
    assert report.main([str(res)]) == 0
    md, html = (res / "report.md").read_text(), (res / "report.html").read_text()
    ifb = md.split("## Did training help on IFBench? (out-of-distribution constraint types)\n\n")[1].split("\n## ")[0]
    assert ifb.startswith(
        "IFBench measures out-of-distribution instruction following: its 58 constraint types are not IFEval's, so "
        "it shows whether what training did on IFEval's constraint types transfers to new ones.\n\n"
        "**IFBench eval settings: --limit 60, --max_new_tokens 64 on CPU: a smoke test, not a benchmark.**\n\n"
        f"Training hurt: keep the starting model. The start follows 50.0% (prompt-level strict) against 23.3% for "
        f"the final checkpoint, checkpoint-30 (-26.7 points, p = 1.2e-04; {HOW}).")
    assert "Pick: **the starting model (step 0)**." in ifb
    # IFEval's verdict first, IFBench's under it, both before the checkpoint tables
    assert md.index("Training helped: checkpoint-20") < md.index("## Did training help on IFBench?") \
        < md.index("## Checkpoints")
    assert "IFBench:\n\n| step | checkpoint |" in md and "| 0 | checkpoint-0 (start, best, pick) | 50.0 [" in md
    assert "![IFBench accuracies against training step](accuracy_ifbench.png)" in md
    assert (res / "accuracy_ifbench.png").read_bytes()[:4] == b"\x89PNG"
    assert html.count("data:image/png;base64,") == 5
    out = capsys.readouterr().out
    assert "  IFBench: Training hurt: keep the starting model." in out
    # without RESULTS/ifbench/sweep.csv: no IFBench section
    (res / "ifbench" / "sweep.csv").unlink()
    report.write_report([res])
    assert "IFBench" not in (res / "report.md").read_text()


def test_ifbench_settings_note_counts_ifbench_prompts(tmp_path):
    run, res = make_fake_sweep(tmp_path, gpu=False)
    ifb = report.load_ifbench(report.load_sweep(make_fake_ifbench(res, run).parent))
    assert report.benchmark(ifb) == "IFBench"
    ifb.settings.update(limit=None, max_new_tokens=1280, device="cuda")
    ifb.eval_config = {}
    ifb.table["n_prompts"] = 294
    assert report.settings_note(ifb) is None
    ifb.table["n_prompts"] = 200
    assert report.settings_note(ifb) == ("200 prompts on cuda: not the full benchmark (294 prompts, 1280 new "
                                         "tokens): not comparable with published IFBench scores.")


def test_unreadable_ifbench_is_said_not_fatal(tmp_path):
    _, res = make_fake_sweep(tmp_path, gpu=False)
    (res / "ifbench").mkdir()
    (res / "ifbench" / "sweep.csv").write_text("step,checkpoint\n")
    md = report.write_report([res])["md"].read_text()
    assert f"The IFBench results in `{res / 'ifbench'}` could not be read: " in md
    assert "Training helped: checkpoint-20" in md


# ------------------------------------------------------------------------------------------ several runs
SAME_START_HURT = {0: 15, 5: 14, 10: 10, 20: 6, 30: 5}


def test_compare_runs_verdict_per_run_and_best_overall(tmp_path, capsys):
    make_fake_sweep(tmp_path, "good", gpu=False)
    make_fake_sweep(tmp_path, "bad", gpu=False, followed=SAME_START_HURT)
    r = tmp_path / "results"
    assert report.main([str(r / "good"), str(r / "bad")]) == 0
    md = (r / "comparison" / "report.md").read_text()
    best = md.split("## Best model overall\n\n")[1].split("\n## ")[0]
    assert best == (
        "Best model overall by prompt-level strict accuracy (each run's best and starting model are the candidates): "
        "**good/checkpoint-20** (50.0%).\n\n"
        "- good/checkpoint-20 beats the starting model (good/checkpoint-0) by 25.0 points, p = 6.1e-05 "
        "(Holm-corrected): significant (McNemar exact test over the same 60 prompts; 15 prompts only "
        "good/checkpoint-20 follows, 0 only the starting model (good/checkpoint-0) follows).\n")
    assert "| 1 | good | checkpoint-20 | 50.0 | 58.3 | helped | checkpoint-10 |" in md
    assert "| 2 | bad | checkpoint-0 (start) | 25.0 | 37.5 | hurt | the starting model (step 0) |" in md
    runs = md.split("## Did training help? (each run)")[1]
    assert f"### good\n\nTraining helped: checkpoint-20 follows 50.0% (prompt-level strict)" in runs
    assert (f"### bad\n\nTraining hurt: keep the starting model. The start follows 25.0% (prompt-level strict) "
            f"against 8.3% for the final checkpoint, checkpoint-30 (-16.7 points, p = 0.00781; {HOW}). The first "
            f"checkpoint significantly below the start is checkpoint-20 (10.0%, -15.0 points, p = 0.0117).") in runs
    for old in OLD_WRONG:
        assert old not in md
    assert "  Best model overall by prompt-level strict accuracy" in capsys.readouterr().out


def test_compare_runs_the_start_best_overall(tmp_path):
    make_fake_sweep(tmp_path, "bad1", gpu=False, followed=SAME_START_HURT)
    make_fake_sweep(tmp_path, "bad2", gpu=False, followed={0: 15, 5: 13, 10: 14, 20: 12, 30: 11})
    r = tmp_path / "results"
    md = report.write_report([r / "bad1", r / "bad2"])["md"].read_text()
    assert ("Best model overall by prompt-level strict accuracy (each run's best and starting model are the "
            "candidates): **the starting model (bad1/checkpoint-0)** (25.0%). No run's training produced a checkpoint "
            "that scores higher than the starting model.\n\n- Every run's best model is this one: there is no other "
            "candidate to compare it with.") in md
    # different starting results: two start candidates; Holm over the 2 comparisons with the best:
    # 26 and 21 prompts one way -> 2 * 2 / 2**26 = 6.0e-08 and 2 / 2**21 = 9.5e-07
    make_fake_sweep(tmp_path, "good", gpu=False, followed={0: 20, 5: 24, 10: 40, 20: 41, 30: 40})
    md = report.write_report([r / "bad1", r / "good"])["md"].read_text()
    assert "**good/checkpoint-20** (68.3%)." in md
    assert ("- good/checkpoint-20 beats the starting model (bad1/checkpoint-0) by 43.3 points, p = 6.0e-08 "
            "(Holm-corrected): significant") in md
    assert ("- good/checkpoint-20 beats the starting model (good/checkpoint-0) by 35.0 points, p = 9.5e-07 "
            "(Holm-corrected): significant") in md


# ------------------------------------------------------------------------------------------ notebook
def test_notebook_verdict_ifbench_and_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    run, res = make_fake_sweep(tmp_path, "bad", gpu=False, followed=HURT)
    make_fake_ifbench(res, run, followed=HURT)
    _, res2 = make_fake_sweep(tmp_path, "good", gpu=False)
    monkeypatch.setenv("SWEEP_RESULTS", f"{res}:{res2}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "analysis" / "sweep_report.ipynb", as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(ROOT)}}).execute()
    text = json.dumps(nb)
    for must in ("Training hurt: keep the starting model. The start follows 50.0%", "Pick: **the starting model (step 0)**.",
                 "IFBench measures out-of-distribution instruction following", "Training helped: checkpoint-20",
                 "Best model overall by prompt-level strict accuracy"):
        assert must in text, must
    for old in OLD_WRONG:
        assert old not in text
    assert not (res / "report.md").exists()
