"""sftbench.analysis.paired_stats against hand-computed values; sftbench.analysis.report files, pick and notebook."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from sftbench.analysis import paired_stats as ps
from sftbench.analysis import report
from fixtures_results import FOLLOWED, N_PROMPTS, make_fake_sweep

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ statistics
def test_mcnemar_exact_hand_values():
    assert ps.mcnemar_exact(15, 16) == 1.0                       # NOTES: the homework recipe, p = 1.0
    assert ps.mcnemar_exact(2, 10) == pytest.approx(2 * 79 / 4096)  # (1 + 12 + 66) / 2**12, doubled
    assert round(ps.mcnemar_exact(2, 10), 4) == 0.0386
    assert ps.mcnemar_exact(10, 2) == ps.mcnemar_exact(2, 10)
    assert ps.mcnemar_exact(0, 0) == 1.0
    assert ps.mcnemar_exact(0, 4) == 0.125
    assert ps.mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert ps.mcnemar_exact(400, 600) < 1e-9                     # large n: exact integers, no underflow
    with pytest.raises(ValueError):
        ps.mcnemar_exact(-1, 3)


def test_discordant_counts():
    a = [1, 1, 0, 0, 1]
    b = [1, 0, 1, 0, 0]
    assert ps.discordant_counts(a, b) == (2, 1)
    with pytest.raises(ValueError):
        ps.discordant_counts([1, 0], [1])


def test_holm_hand_values():
    assert ps.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert ps.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert ps.holm([0.6, 0.6]) == pytest.approx([1.0, 1.0])
    assert ps.holm([]) == []


def test_paired_bootstrap():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 1] * 10)
    r = ps.paired_bootstrap(a, a)
    assert r.diff == 0 and r.ci95 == (0.0, 0.0) and r.p_value == 1.0
    b = np.zeros_like(a)
    r = ps.paired_bootstrap(a, b, n_boot=2000)
    assert r.diff == pytest.approx(0.625) and r.p_value == 0.0 and 0.5 < r.ci95[0] < 0.625 < r.ci95[1] < 0.75
    # clustered, instruction level: 3 instructions per prompt
    r = ps.paired_bootstrap([3, 0, 3, 0], [0, 0, 3, 0], den=[3, 3, 3, 3], n_boot=500, seed=1)
    assert r.diff == pytest.approx(0.25)
    assert ps.paired_bootstrap(a, b, n_boot=500, seed=3).ci95 == ps.paired_bootstrap(a, b, n_boot=500, seed=3).ci95


def test_comparison_sentence():
    c = ps.compare("checkpoint-220", [1] * 13 + [0] * 87, "checkpoint-300", [1] * 10 + [0] * 90)
    assert (c.b_count, c.c_count, c.n) == (3, 0, 100)
    assert c.sentence(b_label="the final checkpoint").startswith(
        "checkpoint-220 beats the final checkpoint by 3.0 points, p = 0.25: not significant")
    d = ps.compare("a", [0] * 20, "b", [1] * 20)
    assert "a trails b by 100.0 points, p = 1.9e-06: significant" in d.sentence()
    assert "ties with" in ps.compare("a", [1, 0], "b", [0, 1]).sentence()


def _fixture_outcomes():
    return {f"checkpoint-{s}": [i < k for i in range(N_PROMPTS)] for s, k in FOLLOWED.items() if s > 0}


def test_defensible_pick_hand_values():
    out = _fixture_outcomes()
    order = ["checkpoint-5", "checkpoint-10", "checkpoint-20", "checkpoint-30"]
    pk = ps.defensible_pick(out, order)
    assert (pk.best, pk.pick, pk.runner_up) == ("checkpoint-20", "checkpoint-10", "checkpoint-30")
    c = pk.comparisons
    assert c["checkpoint-5"].p_value == pytest.approx(2 / 2**10) and c["checkpoint-5"].p_holm == pytest.approx(6 / 2**10)
    assert c["checkpoint-10"].p_value == 0.125 and c["checkpoint-10"].p_holm == 0.25
    assert c["checkpoint-30"].p_value == 0.5 and c["checkpoint-30"].p_holm == 0.5
    # the best is the earliest one when nothing else is close
    strict = {"a": [True] * 2 + [False] * 38, "b": [True] * 30 + [False] * 10}
    assert ps.defensible_pick(strict, ["a", "b"]).pick == "b"


# ------------------------------------------------------------------------------------------ report
def test_report_files_and_pick(tmp_path, capsys):
    _, res = make_fake_sweep(tmp_path)
    assert report.main([str(res)]) == 0
    for f in ("report.md", "report.html", "accuracy.png", "loss.png", "memory.png", "categories.png"):
        assert (res / f).is_file() and (res / f).stat().st_size > 0, f
        if f.endswith(".png"):
            assert (res / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (res / "report.md").read_text()
    assert "**Eval settings: --limit 60, --max_new_tokens 64 on CPU: a smoke test, not a benchmark.**" in md
    # i12: the start is a candidate; best vs start is Holm-corrected over the 4 trained checkpoints
    assert ("Best vs start: checkpoint-20 50.0% vs 25.0%, +25.0 points (checkpoint-20 follows more instructions on "
            "15 prompts, the start on 0), p = 2.4e-04 (Holm-corrected), significant.") in md
    assert ("checkpoint-20 beats the final checkpoint (checkpoint-30) by 3.3 points, p = 0.50: not significant "
            "(McNemar exact test over the same 60 prompts; 2 prompts only checkpoint-20 follows, 0 only checkpoint-30 follows)") in md
    assert ("Training helped: checkpoint-20 follows 50.0% (prompt-level strict) against 25.0% for the starting "
            "model, +25.0 points, p = 2.4e-04 (exact sign test over prompts, Holm-corrected over 4 checkpoints, "
            "alpha 0.05).") in md
    assert ("Pick: **checkpoint-10**. It is the earliest checkpoint significantly better than the start and not "
            "significantly worse than the best, checkpoint-20 (Holm-corrected).") in md
    assert "Defensible pick" not in md and "No checkpoint is significantly better" not in md
    assert "| 20 | checkpoint-20 (best) | 50.0 [" in md and "| 10 | checkpoint-10 (pick) |" in md
    assert "| 0 | checkpoint-0 (start) |" in md and "no GPU samples" not in md
    # train loss column: nearest logged step <= checkpoint step (loss = 2.0 - 0.01 * step)
    assert "| 1.8000 |" in md
    html = (res / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<strong>checkpoint-10</strong>" in html
    png = html.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(png)[:4] == b"\x89PNG"
    assert "  Pick: checkpoint-10. It is the earliest" in capsys.readouterr().out


def test_report_cpu_run_says_no_gpu_samples(tmp_path):
    _, res = make_fake_sweep(tmp_path, gpu=False)
    report.write_report([res])
    md = (res / "report.md").read_text()
    assert "no GPU samples" in md and "| — | — |" in md


def test_settings_note_variants(tmp_path):
    _, res = make_fake_sweep(tmp_path)
    sweep = report.load_sweep(res)
    sweep.settings.update(limit=None, max_new_tokens=1280, device="cuda")
    sweep.eval_config = {}
    sweep.table["n_prompts"] = 541
    assert report.settings_note(sweep) is None
    sweep.settings["max_new_tokens"] = 512
    assert report.settings_note(sweep) == ("--max_new_tokens 512 on cuda: not the full benchmark (541 prompts, "
                                           "1280 new tokens): not comparable with published IFEval scores.")


def test_report_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "nope")])
    assert e.value.code == 2 and "results directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "empty")])
    assert e.value.code == 2 and "no complete checkpoint results" in capsys.readouterr().err


def test_compare_runs(tmp_path):
    better = {0: 15, 5: 25, 10: 35, 20: 40, 30: 38}
    make_fake_sweep(tmp_path, "run1", extra_config={"learning_rate": 2e-5})
    _, res2 = make_fake_sweep(tmp_path, "run2", followed=better, extra_config={"learning_rate": 1e-4})
    out = report.write_report([tmp_path / "results" / "run1", res2])
    assert out["md"] == tmp_path / "results" / "comparison" / "report.md"
    md = out["md"].read_text()
    rank = md.split("## Ranking")[1]
    assert rank.index("| 1 | run2 | checkpoint-20 | 66.7 |") < rank.index("| 2 | run1 | checkpoint-20 | 50.0 |")
    assert "learning_rate" in md and "0.0001" in md and "2e-05" in md
    assert "run2/checkpoint-20 beats run1/checkpoint-20 by 16.7 points" in md
    assert (tmp_path / "results" / "comparison" / "accuracy.png").is_file()


def test_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _, res = make_fake_sweep(tmp_path)
    monkeypatch.setenv("SWEEP_RESULTS", str(res))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "analysis" / "sweep_report.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    text = json.dumps(nb)
    assert "Pick: **checkpoint-10**." in text and "Training helped: checkpoint-20 follows 50.0%" in text
    assert "image/png" in text
    # the notebook only reads: nothing new in the results directory
    assert not (res / "report.md").exists()
