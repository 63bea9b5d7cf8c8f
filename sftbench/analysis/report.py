"""Sweep report: did training help? (sftbench/analysis/verdict.py), plots and a table, as report.md + report.html (+ PNGs).

    python -m sftbench.analysis.report results/run1                 # one run -> results/run1/report.{md,html}
    python -m sftbench.analysis.report results/run1 results/run2    # overlay and rank runs -> results/comparison/

Only reads result files (docs/ARCHITECTURE.md: sweep.csv, sweep.json, checkpoint-<step>/ result dirs, and
the run directory's metrics.jsonl, memory_samples.jsonl, sft_config.json; IFBench results, when present, in
RESULTS/ifbench/ with the same layout).  The verdict compares every trained checkpoint with the starting model
(step 0, `--include_base`), which is a candidate of the pick: "keep the starting model" is a possible answer.
The plotting functions return
matplotlib Figures built without pyplot, so they work headless (Agg) and in a notebook
(analysis/sweep_report.ipynb uses them).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sftbench.analysis import seen_unseen
from sftbench.analysis import verdict as V
from sftbench.analysis.paired_stats import compare, holm
from sftbench.analysis.verdict import Verdict
from sftbench.eval import results
from sftbench.eval.results import FULL_MAX_NEW_TOKENS, FULL_PROMPTS, IFBENCH_DIR, IFBENCH_PROMPTS, METRICS
from sftbench.core.cli import HelpFormatter
from sftbench.core.errors import UserError, exit_with_user_error
from sftbench.core.io import atomic_write_text, read_json
from sftbench.core.rundir import load_metrics

PROG = "sftbench.analysis.report"
LABELS = V.METRIC_LABELS
VRAM_LINE_GIB = 8.0
ALPHA = V.ALPHA


# ------------------------------------------------------------------------------------------ loading
@dataclass
class SweepData:
    """Everything the report needs about one run's sweep.

    table: one row per checkpoint (sweep.csv columns), sorted by step.
    outcomes: checkpoint name -> {prompt key -> {"strict": bool, "loose": bool, "n": int,
              "strict_followed": int, "loose_followed": int, "ids": [instruction ids], "strict_list": [...]}}.
    """

    results_dir: Path
    name: str
    table: pd.DataFrame
    run_dir: Path | None
    settings: dict
    eval_config: dict
    outcomes: dict[str, dict] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # checkpoint -> why its results were left out
    summaries: dict[str, dict] = field(default_factory=dict)  # checkpoint -> its summary.json
    mixed: list[str] = field(default_factory=list)  # settings that differ across its checkpoints (allowed)

    def path_line(self) -> str:
        """How the answers were produced (generator backend, attention kernel, compile/graphs, dtype)."""
        labels = {ck: results.path_label(s) for ck, s in self.summaries.items()}
        if len(set(labels.values())) <= 1:
            return next(iter(labels.values()), "not recorded")
        return "; ".join(f"{ck}: {lab}" for ck, lab in labels.items())

    @property
    def checkpoints(self) -> list[str]:
        return list(self.table["checkpoint"])

    @property
    def has_base(self) -> bool:
        return bool((self.table["step"] == 0).any())

    def metrics(self) -> list[dict]:
        return load_metrics(self.run_dir) if self.run_dir else []

    def sft_config(self) -> dict:
        f = self.run_dir / "sft_config.json" if self.run_dir else None
        return read_json(f) if f is not None and f.is_file() else {}


def load_sweep(results_dir: str | os.PathLike, name: str | None = None, allow_incomplete: bool = False,
               allow_mixed_settings: bool = False) -> SweepData:
    """Read a sweep directory.  sweep.csv is rebuilt from the result dirs when missing.  UserError if empty, and
    when a checkpoint's results are stale or damaged (`results.result_problems`) unless allow_incomplete, which
    leaves those checkpoints out (SweepData.excluded says which and why)."""
    res = Path(results_dir)
    if not res.is_dir():
        raise UserError(f"{res}: results directory not found (run `bash scripts/sweep.sh RUN_DIR {res}` first).")
    state = results.read_sweep_state(res) or {}
    results.check_summaries(res)  # an unreadable checkpoint summary stops the report, naming the file
    run_dir = Path(state["run_dir"]) if state.get("run_dir") else None
    if run_dir is not None and not run_dir.is_dir():
        print(f"[{PROG}] {run_dir} (the run directory recorded in sweep.json) is gone: no training loss/memory",
              file=sys.stderr)
        run_dir = None
    table = results.read_sweep_csv(res, run_dir, state)
    csv_steps = ({str(c): int(st) for c, st in zip(table["checkpoint"], table["step"])}
                 if (res / results.SWEEP_CSV).is_file() else None)
    problems = results.result_problems(res, csv_steps)
    if problems and not allow_incomplete:
        raise IncompleteResults(incomplete_message(res, problems))
    table = table[~table["checkpoint"].astype(str).isin(problems)].reset_index(drop=True)
    if table.empty:
        raise IncompleteResults(incomplete_message(res, problems) + " No usable checkpoint is left.")
    settings: dict = {}
    outcomes, summaries = {}, {}
    for ck in table["checkpoint"]:
        summaries[ck] = results.load_summary(res / ck)
        if not settings:
            settings = dict(summaries[ck].get("settings") or {})
        outcomes[ck] = results.load_outcomes(res / ck)
    mixed = results.settings_differences(summaries)
    if mixed and not allow_mixed_settings:
        raise UserError(mixed_message(f"{res}: its checkpoints were evaluated", mixed, "one curve"))
    return SweepData(res, name or res.name, table, run_dir, settings,
                     dict(state.get("eval_config") or {}), outcomes, problems, summaries, mixed)


def mixed_message(what: str, diffs: list[str], where: str) -> str:
    """The refusal to put results of other eval settings or generation paths in `where`."""
    return (f"{what} with different eval settings or generation paths ({'; '.join(diffs)}), so {where} would mix "
            f"them (greedy answers change with the limit, the cap, the backend and the kernel). Re-evaluate with the "
            f"same settings on the same path, or pass --allow_mixed_settings to report them anyway (the report "
            f"says so).")


class IncompleteResults(UserError):
    """Stale or damaged checkpoint results (the report stops rather than mix them in)."""


def incomplete_message(res: Path, problems: dict[str, str]) -> str:
    """The refusal when results are stale or damaged: one line per checkpoint, then what to do."""
    lines = "; ".join(f"{name}: {why}" for name, why in problems.items())
    return (f"{res}: the results of {len(problems)} checkpoint(s) are stale or damaged, so the curve, verdict and "
            f"pick would mix them in: {lines}. Rerun the sweep (python -m sftbench.eval.sweep RUN_DIR {res}) to "
            f"re-evaluate them, or pass --allow_incomplete to leave them out of the report (it lists them).")


# ------------------------------------------------------------------------------------------ settings
def settings_note(sweep: SweepData) -> str | None:
    """One line when the evaluation is not the full benchmark (None when it is): IFEval, or IFBench for
    RESULTS/ifbench/."""
    s = {**sweep.eval_config, **{k: v for k, v in sweep.settings.items() if v is not None}}
    bench = benchmark(sweep)
    full = IFBENCH_PROMPTS if bench == "IFBench" else FULL_PROMPTS
    n = int(sweep.table["n_prompts"].max()) if "n_prompts" in sweep.table and sweep.table["n_prompts"].notna().any() else None
    parts = []
    if s.get("limit") not in (None, "", 0):
        parts.append(f"--limit {s['limit']}")
    if s.get("subset") not in (None, "full"):
        parts.append(f"--subset {s['subset']}")
    mnt = s.get("max_new_tokens")
    if mnt is not None and int(mnt) < FULL_MAX_NEW_TOKENS:
        parts.append(f"--max_new_tokens {mnt}")
    if not parts and (n is None or n >= full):
        return None
    if n is not None and n < full and not any(p.startswith(("--limit", "--subset")) for p in parts):
        parts.append(f"{n} prompts")
    device = str(s.get("device") or "").lower()
    where = f" on {'CPU' if device == 'cpu' else device}" if device and device != "auto" else ""
    smoke = (n is not None and n < 100) or (mnt is not None and int(mnt) < 256)
    verdict = ("a smoke test, not a benchmark" if smoke else
               f"not the full benchmark ({full} prompts, {FULL_MAX_NEW_TOKENS} new tokens): "
               f"not comparable with published {bench} scores")
    return f"{', '.join(parts)}{where}: {verdict}."


# ------------------------------------------------------------------------------------------ verdict
BENCHMARKS = {"ifeval": "IFEval", "ifbench": "IFBench"}
IFBENCH_NOTE = ("IFBench measures out-of-distribution instruction following: its 58 constraint types are not "
                "IFEval's, so it shows whether what training did on IFEval's constraint types transfers to new ones.")
MISSING_OUTCOMES = ("Per-prompt results (eval_results_strict.jsonl and eval_results_loose.jsonl) are missing, "
                    "so no paired test and no verdict were possible.")
ONLY_START = "Only the starting model was evaluated: there is no trained checkpoint to compare with it."


def benchmark(sweep: SweepData) -> str:
    """"IFEval" or "IFBench", from summary.json settings["benchmark"] (absent: IFEval)."""
    b = str(sweep.settings.get("benchmark") or "ifeval")
    return BENCHMARKS.get(b.lower(), b)


def aligned(sweep: SweepData, names: list[str], mode: str = "strict") -> dict[str, list[bool]]:
    """Prompt-level outcomes over the prompts every named checkpoint was scored on ([n] each, same order)."""
    have = [n for n in names if sweep.outcomes.get(n)]
    if not have:
        return {}
    keys = set.intersection(*(set(sweep.outcomes[n]) for n in have))
    keys = sorted(keys, key=lambda k: (str(type(k)), k))
    return {n: [bool(sweep.outcomes[n][k].get(mode, False)) for k in keys] for n in have}


def step_names(sweep: SweepData) -> dict[int, str]:
    return {int(s): str(c) for s, c in zip(sweep.table["step"], sweep.table["checkpoint"])}


def verdict_rows(sweep: SweepData) -> dict[int, dict[str, list[dict]]]:
    """{step: {"strict": rows, "loose": rows}} in eval_results shape, for `verdict.outcomes_from_rows`."""
    rows = {}
    for step, ck in step_names(sweep).items():
        out = sweep.outcomes.get(ck)
        if out:
            rows[step] = {m: [{"key": k, "follow_instruction_list": d.get(f"{m}_list", []),
                               "follow_all_instructions": d[m]} for k, d in out.items() if m in d]
                          for m in ("strict", "loose")}
    return rows


@dataclass
class VerdictReport:
    """One sweep's verdict (sftbench/analysis/verdict.py) in checkpoint names.

    best: the best model by prompt-level strict accuracy in sweep.csv, the start a candidate (ties: the
    earliest); pick: the model to keep (the verdict's pick; None without a verdict).  sentences: what the
    report prints, the pick last; without a verdict one sentence saying why.
    """

    sweep: SweepData
    verdict: Verdict | None
    best: str
    pick: str | None
    sentences: list[str]
    extra: list[str] = field(default_factory=list)  # supplementary comparisons among the trained checkpoints

    def name(self, step: int) -> str:
        return V.default_name(0) if step == 0 else step_names(self.sweep).get(step, f"checkpoint-{step}")


def analyse_verdict(sweep: SweepData, alpha: float = ALPHA) -> VerdictReport:
    """Did training help?  `verdict.verdict` over the checkpoints with per-prompt results, the start a candidate."""
    t = sweep.table
    best = str(t.loc[t["prompt_strict"].idxmax(), "checkpoint"])  # sorted by step: the earliest among ties
    names = step_names(sweep)
    if not any(s > 0 for s in names):
        return VerdictReport(sweep, None, best, best, [ONLY_START])
    rows = verdict_rows(sweep)
    per_metric = V.outcomes_from_rows(rows) if rows else {}
    ps = per_metric.get("prompt_strict") or {}
    if not any(s > 0 for s in ps) or not next(iter(ps.values())) or (sweep.has_base and 0 not in ps):
        return VerdictReport(sweep, None, best, None, [MISSING_OUTCOMES])
    vr = VerdictReport(sweep, None, best, None, [])
    v = V.verdict(per_metric, alpha, name=vr.name)
    vr.verdict, vr.pick, vr.sentences = v, vr.name(v.pick), list(v.sentences)
    mv = v.metrics["prompt_strict"]
    if v.outcome == "no_start":
        vr.sentences[-1] += (f" Among the trained checkpoints only: the earliest not significantly worse than the "
                             f"best, {vr.name(mv.best)} (McNemar exact, Holm-corrected).")
    elif v.outcome == "helped" and v.pick != mv.best:
        vr.sentences[-1] += (f" It is the earliest checkpoint significantly better than the start and not "
                             f"significantly worse than the best, {vr.name(mv.best)} (Holm-corrected).")
    vr.extra = trained_comparisons(sweep, mv, vr.name, alpha)
    return vr


def trained_comparisons(sweep: SweepData, mv, name, alpha: float = ALPHA) -> list[str]:
    """The best trained checkpoint against the final one (McNemar exact), when they differ."""
    best, final = name(mv.best), name(mv.final)
    if best == final:
        return [f"Among the trained checkpoints, the best is the final one ({final})."]
    out = aligned(sweep, [best, final])
    if len(out) < 2:
        return []
    c = compare(best, out[best], final, out[final])
    return ["Among the trained checkpoints: " + c.sentence(alpha, b_label=f"the final checkpoint ({final})") + "."]


def verdict_section(doc: "Doc", vr: VerdictReport) -> None:
    """The verdict: the headline, best/final vs start, the pick, the four-metric table (or why there is none)."""
    s = vr.sentences
    doc.p(s[0])
    if vr.verdict is None:
        return
    doc.ul(s[1:-1] + vr.extra)
    doc.p(s[-1].replace(f"Pick: {vr.pick}.", f"Pick: **{vr.pick}**.", 1))
    doc.table(*V.table(vr.verdict, vr.name))
    doc.p(V.footnote(vr.verdict))


def verdict_markdown(vr: VerdictReport) -> str:
    """`verdict_section` as Markdown (the notebook)."""
    doc = Doc(None)
    verdict_section(doc, vr)
    return doc.markdown()


def load_ifbench(sweep: SweepData, allow_incomplete: bool = False) -> SweepData | None:
    """RESULTS/ifbench/ as a sweep when RESULTS/ifbench/sweep.csv exists (i12: IFBench beside IFEval), else None."""
    d = sweep.results_dir / IFBENCH_DIR
    if not (d / results.SWEEP_CSV).is_file():
        return None
    ifb = load_sweep(d, name=f"{sweep.name} (IFBench)", allow_incomplete=allow_incomplete)
    ifb.settings.setdefault("benchmark", "ifbench")
    if ifb.run_dir is None:
        ifb.run_dir = sweep.run_dir
    return ifb


# ------------------------------------------------------------------------------------------ across runs
@dataclass
class Candidate:
    label: str
    sweep: SweepData
    checkpoint: str
    acc: float


def candidates(sweeps: list[SweepData], verdicts: dict[str, VerdictReport]) -> list[Candidate]:
    """Each run's starting model and best model (one candidate when they coincide).  Runs that evaluated the
    same starting model (same model path, same per-prompt results) share one start candidate."""
    out: list[Candidate] = []
    starts: list[Candidate] = []
    for s in sweeps:
        t = s.table.set_index("checkpoint")
        names = step_names(s)
        if 0 in names:
            ck = names[0]
            same = [c for c in starts if _same_start(c, s, ck)]
            if not same:
                c = Candidate(f"the starting model ({s.name}/{ck})", s, ck, float(t.loc[ck, "prompt_strict"]))
                starts.append(c)
                out.append(c)
        best = verdicts[s.name].best
        if best != names.get(0):
            out.append(Candidate(f"{s.name}/{best}", s, best, float(t.loc[best, "prompt_strict"])))
    return out


def _same_start(c: Candidate, sweep: SweepData, ck: str) -> bool:
    t1, t2 = c.sweep.table.set_index("checkpoint"), sweep.table.set_index("checkpoint")
    path = lambda t, k: t.loc[k, "model_path"] if "model_path" in t.columns else None
    o1, o2 = c.sweep.outcomes.get(c.checkpoint) or {}, sweep.outcomes.get(ck) or {}
    return path(t1, c.checkpoint) == path(t2, ck) and bool(o1) and o1 == o2


def best_overall(sweeps: list[SweepData], verdicts: dict[str, VerdictReport], alpha: float = ALPHA) -> list[str]:
    """The best model across runs, the starting model a candidate; paired tests (McNemar exact) of it against
    every other candidate, Holm-corrected as one family."""
    cands = candidates(sweeps, verdicts)
    top = max(cands, key=lambda c: (c.acc, -cands.index(c)))
    lines = [f"Best model overall by prompt-level strict accuracy (each run's best and starting model are the "
             f"candidates): **{top.label}** ({100 * top.acc:.1f}%)."]
    if top.checkpoint == step_names(top.sweep).get(0):
        lines[0] += " No run's training produced a checkpoint that scores higher than the starting model."
    comps = []
    for c in cands:
        if c is top:
            continue
        ka, kb = top.sweep.outcomes.get(top.checkpoint) or {}, c.sweep.outcomes.get(c.checkpoint) or {}
        keys = sorted(set(ka) & set(kb), key=lambda k: (str(type(k)), k))
        if keys:
            comps.append(compare(top.label, [ka[k].get("strict", False) for k in keys],
                                 c.label, [kb[k].get("strict", False) for k in keys]))
    for c, adj in zip(comps, holm([c.p_value for c in comps])):
        c.p_holm = adj
    items = [c.sentence(alpha) + "." for c in comps]
    if len(cands) == 1:
        items = ["Every run's best model is this one: there is no other candidate to compare it with."]
    elif not comps:
        items = ["No other candidate shares per-prompt results with it: no paired test was possible."]
    return lines + items


def best_overall_markdown(sweeps: list[SweepData]) -> str:
    """The across-runs section as Markdown (the notebook)."""
    verdicts = {s.name: analyse_verdict(s) for s in sweeps}
    lines = best_overall(sweeps, verdicts)
    return "\n".join([lines[0], ""] + [f"- {x}" for x in lines[1:]]) + "\n"


def category_table(sweep: SweepData, mode: str = "strict") -> pd.DataFrame:
    """Instruction-level accuracy per category (rows) and checkpoint (columns), in [0, 1]."""
    cols = {}
    for ck in sweep.checkpoints:
        agg: dict[str, list[int]] = {}
        for rec in (sweep.outcomes.get(ck) or {}).values():
            for iid, f in zip(rec.get("ids", []), rec.get(f"{mode}_list", [])):
                agg.setdefault(iid.split(":")[0], []).append(int(f))
        if not agg:  # fall back to the summary's per-category numbers
            per = (results.load_summary(sweep.results_dir / ck).get("per_category") or {}).get(mode, {})
            cols[ck] = pd.Series(per, dtype=float)
        else:
            cols[ck] = pd.Series({c: float(np.mean(v)) for c, v in agg.items()})
    return pd.DataFrame(cols).sort_index()


# ------------------------------------------------------------------------------------------ plots
def _runs(sweeps) -> list[SweepData]:
    return [sweeps] if isinstance(sweeps, SweepData) else list(sweeps)


def plot_accuracy(sweeps) -> Figure:
    """The four accuracies (%) against step, 95% CI bands, the starting model (step 0) as a dashed line.
    The title names the benchmark of the first run (IFEval, or IFBench for RESULTS/ifbench/)."""
    runs = _runs(sweeps)
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, m in zip(axes, METRICS):
        for i, sw in enumerate(runs):
            color = f"C{i}"
            t = sw.table
            tr = t[t["step"] > 0]
            label = sw.name if len(runs) > 1 else "checkpoints"
            if not tr.empty:
                ax.plot(tr["step"], 100 * tr[m], "o-", color=color, label=label)
                if {f"{m}_lo", f"{m}_hi"} <= set(t.columns) and tr[f"{m}_lo"].notna().any():
                    ax.fill_between(tr["step"], 100 * tr[f"{m}_lo"], 100 * tr[f"{m}_hi"], color=color, alpha=0.18,
                                    label="95% CI" if len(runs) == 1 else None)
            base = t[t["step"] == 0]
            if not base.empty:
                ax.axhline(100 * float(base[m].iloc[0]), color=color, ls="--", lw=1,
                           label="starting model (step 0)" if len(runs) == 1 else f"{sw.name}: start")
        ax.set_title(LABELS[m])
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{benchmark(runs[0])} accuracy by checkpoint")
    return fig


def plot_loss(sweeps) -> Figure:
    """Training loss from each run's metrics.jsonl on the step axis, checkpoint steps marked."""
    runs = _runs(sweeps)
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax = fig.subplots()
    any_data = False
    for i, sw in enumerate(runs):
        rows = [r for r in sw.metrics() if isinstance(r.get("loss"), (int, float))]
        if rows:
            any_data = True
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=f"C{i}", lw=1.2,
                    label=sw.name if len(runs) > 1 else "training loss")
            for s in sw.table["step"]:
                if s > 0:
                    ax.axvline(s, color=f"C{i}", alpha=0.15, lw=1)
    if not any_data:
        ax.text(0.5, 0.5, "no training metrics (metrics.jsonl) found", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("training loss (vertical lines: evaluated checkpoints)")
    ax.grid(alpha=0.3)
    return fig


def memory_series(sweep: SweepData) -> dict[str, list[tuple[float, float]]]:
    """{"training": [(t, GiB)], "eval checkpoint-N": [...]} from memory_samples.jsonl files (GPU runs only)."""
    series = {}
    files = [("training", sweep.run_dir / results.MEMORY_SAMPLES if sweep.run_dir else None)]
    files += [(f"eval {ck}", sweep.results_dir / ck / results.MEMORY_SAMPLES) for ck in sweep.checkpoints]
    for label, f in files:
        pts = results.load_memory_samples(f) if f is not None else []
        if pts:
            series[label] = pts
    return series


def plot_memory(sweep: SweepData) -> Figure:
    """NVML device memory over time: training (left) and each evaluation (right), with the 8 GiB line."""
    series = memory_series(sweep)
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    ax_t, ax_e = fig.subplots(1, 2)
    for ax, title in ((ax_t, "training"), (ax_e, "evaluation (per checkpoint)")):
        ax.set_title(f"device memory (NVML): {title}")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("GiB")
        ax.grid(alpha=0.3)
    if "training" in series:
        t, v = zip(*series["training"])
        ax_t.plot(t, v, color="C0")
    else:
        ax_t.text(0.5, 0.5, "no GPU samples", ha="center", va="center", transform=ax_t.transAxes)
    evals = [k for k in series if k != "training"]
    for i, k in enumerate(evals):
        t, v = zip(*series[k])
        ax_e.plot(t, v, color=f"C{i % 10}", lw=1, label=k[5:])
    if not evals:
        ax_e.text(0.5, 0.5, "no GPU samples", ha="center", va="center", transform=ax_e.transAxes)
    elif len(evals) <= 12:
        ax_e.legend(fontsize=7)
    if series:
        for ax in (ax_t, ax_e):
            ax.axhline(VRAM_LINE_GIB, color="red", ls="--", lw=1, label="8 GiB")
            ax.set_ylim(0, max(VRAM_LINE_GIB * 1.1, max(v for pts in series.values() for _, v in pts) * 1.05))
    return fig


def plot_categories(sweep: SweepData, mode: str = "strict") -> Figure:
    """Heatmap: instruction categories (rows) x checkpoints (columns), instruction-level accuracy (%)."""
    tab = category_table(sweep, mode)
    fig = Figure(figsize=(max(6, 1.1 * tab.shape[1] + 3), max(3, 0.45 * tab.shape[0] + 1.5)), layout="constrained")
    ax = fig.subplots()
    if tab.empty:
        ax.text(0.5, 0.5, "no per-instruction results", ha="center", va="center", transform=ax.transAxes)
        return fig
    data = 100 * tab.to_numpy(dtype=float)
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(tab.shape[1]), list(tab.columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(tab.shape[0]), list(tab.index), fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title(f"instruction-level {mode} accuracy per category")
    return fig


def fig_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ tables
def _pct(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * float(v):.1f}"


def _num(v, fmt="{:.3g}") -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(float(v))


def checkpoint_table(sweep: SweepData, pick: VerdictReport | None = None) -> tuple[list[str], list[list[str]]]:
    """The sweep.csv rows; tags: (start), (best) = the best by prompt-level strict, the start a candidate, (pick)."""
    head = ["step", "checkpoint", *(LABELS[m] + " %" for m in METRICS), "train loss", "tokens/s", "hit cap %",
            "torch peak GiB", "NVML peak GiB"]
    rows = []
    for _, r in sweep.table.iterrows():
        name = str(r["checkpoint"])
        tags = ["start"] if int(r["step"]) == 0 else []
        if pick is not None:
            pick_ck = step_names(sweep).get(pick.verdict.pick) if pick.verdict is not None else pick.pick
            tags += [t for t, c in (("best", pick.best), ("pick", pick_ck)) if c == name]
        cells = [str(int(r["step"])), name + (f" ({', '.join(tags)})" if tags else "")]
        for m in METRICS:
            lo, hi = r.get(f"{m}_lo"), r.get(f"{m}_hi")
            ci = f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None and not pd.isna(lo) else ""
            cells.append(_pct(r[m]) + ci)
        cells += [_num(r.get("train_loss"), "{:.4f}"), _num(r.get("tokens_per_s"), "{:.0f}"),
                  _num(None if pd.isna(r.get("hit_cap_fraction", np.nan)) else 100 * r.get("hit_cap_fraction"), "{:.1f}"),
                  _num(r.get("torch_peak_allocated_gib"), "{:.2f}"), _num(r.get("nvml_peak_gib"), "{:.2f}")]
        rows.append(cells)
    return head, rows


# ------------------------------------------------------------------------------------------ rendering
class Doc:
    """A tiny document model rendered to both Markdown and self-contained HTML (images base64-embedded)."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, head: list[str], rows: list[list[str]]):
        self.blocks.append(("table", head, rows))

    def img(self, fig: Figure, filename: str, alt: str):
        png = fig_png(fig)
        atomic_write_bytes(self.out_dir / filename, png)
        self.blocks.append(("img", filename, alt, png))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {x}" for x in b[1]))
            elif b[0] == "table":
                esc = lambda s: str(s).replace("|", "\\|")
                out.append("\n".join(["| " + " | ".join(map(esc, b[1])) + " |",
                                      "|" + "---|" * len(b[1])] + ["| " + " | ".join(map(esc, r)) + " |" for r in b[2]]))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        def bold(s: str) -> str:
            parts = s.split("**")
            return "".join(f"<strong>{x}</strong>" if i % 2 else x for i, x in enumerate(parts))

        def inline(s: str) -> str:  # Markdown's `code` and **bold**, nothing else
            parts = html.escape(s).split("`")
            return "".join(f"<code>{x}</code>" if i % 2 else bold(x) for i, x in enumerate(parts))

        out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
               "body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;line-height:1.45}"
               "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}"
               "th{background:#f3f3f3}img{max-width:100%}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{inline(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b[1]) + "</tr>"
                           + "".join("<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
                           + "</table>")
            elif b[0] == "img":
                data = base64.b64encode(b[3]).decode()
                out.append(f"<p><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'></p>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------ reports
def _settings_lines(doc: Doc, sweep: SweepData) -> None:
    note = settings_note(sweep)
    s = {**sweep.eval_config, **sweep.settings}
    shown = ", ".join(f"{k} {s[k]}" for k in ("subset", "limit", "max_new_tokens", "batch_size", "dtype", "device",
                                               "backend", "chat_template", "system_prompt") if k in s)
    if note:
        doc.p(f"**Eval settings: {note}**")
    doc.p(f"Results: `{sweep.results_dir}`; run: `{sweep.run_dir or 'unknown'}`. Settings: {shown or 'not recorded'}.")
    if any(results.PATH in s for s in sweep.summaries.values()):  # results written before paths were recorded: no line
        doc.p(f"Generated by: {sweep.path_line()}.")
    if sweep.mixed:
        doc.p(f"**Mixed eval settings in this curve (--allow_mixed_settings): {'; '.join(sweep.mixed)}.**")


def ifbench_section(doc: Doc, sweep: SweepData, allow_incomplete: bool = False
                    ) -> tuple[SweepData | None, VerdictReport | None]:
    """Under the IFEval verdict: the IFBench verdict (same code) when RESULTS/ifbench/sweep.csv exists."""
    try:
        ifb = load_ifbench(sweep, allow_incomplete)
    except IncompleteResults:
        raise
    except UserError as e:
        doc.h(2, "Did training help on IFBench?")
        doc.p(f"The IFBench results in `{sweep.results_dir / IFBENCH_DIR}` could not be read: {e}")
        return None, None
    if ifb is None:
        return None, None
    doc.h(2, "Did training help on IFBench? (out-of-distribution constraint types)")
    doc.p(IFBENCH_NOTE)
    note = settings_note(ifb)
    if note:
        doc.p(f"**IFBench eval settings: {note}**")
    excluded_note(doc, ifb)
    vr = analyse_verdict(ifb)
    verdict_section(doc, vr)
    return ifb, vr


def seen_unseen_section(doc: Doc, sweep: SweepData) -> None:
    """Instruction-level strict accuracy on the constraint types seen in training vs held out of it (issue 13):
    a gain only on seen types is fitting the augmentation, not instruction following."""
    held = seen_unseen.held_out_of(sweep.run_dir)
    kept = {int(st) for st in sweep.table["step"]}  # stale or damaged checkpoints stay out of this section too
    per = seen_unseen.per_checkpoint({st: rows for st, rows in seen_unseen.load_results(sweep.results_dir).items()
                                      if st in kept}, held)
    if not per:
        return
    steps = sorted(per)
    doc.h(2, "Seen and held-out constraint types")
    doc.p("Instruction-level strict accuracy, split by whether a type can be trained by the augmentation "
          f"(`--augment_*`); held out of training: {', '.join(f'`{h}`' for h in held) or 'none'}.")
    doc.table(*seen_unseen.table(per, 0 if 0 in per else None))
    if 0 in per and steps[-1] != 0:
        doc.p(f"From the start to step {steps[-1]}: {seen_unseen.sentence(per[0], per[steps[-1]])}")


def excluded_note(doc: Doc, sweep: SweepData) -> None:
    """With --allow_incomplete: which checkpoints were left out of the curve, verdict and pick, and why."""
    if sweep.excluded:
        doc.p(f"**Left out of this report ({len(sweep.excluded)} checkpoint(s) with stale or damaged results; "
              f"rerun the sweep to re-evaluate them):**")
        doc.ul([f"{name}: {why}" for name, why in sweep.excluded.items()])


def single_report(sweep: SweepData, out_dir: Path | None = None, allow_incomplete: bool = False) -> dict:
    """Write report.md, report.html and PNGs for one sweep.  Returns {"md", "html", "verdict", "ifbench"}."""
    out = Path(out_dir or sweep.results_dir)
    doc = Doc(out)
    bench = benchmark(sweep)
    doc.h(1, f"{bench} sweep: {sweep.name}")
    _settings_lines(doc, sweep)
    excluded_note(doc, sweep)
    vr = analyse_verdict(sweep)
    doc.h(2, f"Did training help? ({bench}: the starting model against every checkpoint)")
    verdict_section(doc, vr)
    ifb, ifb_vr = ifbench_section(doc, sweep, allow_incomplete)
    seen_unseen_section(doc, sweep)
    doc.h(2, "Checkpoints")
    doc.p("Accuracies in % with 95% confidence intervals in brackets. Unpaired intervals overlap even when a "
          "paired test (above) finds a difference: compare checkpoints with the paired test, not the intervals.")
    doc.table(*checkpoint_table(sweep, vr))
    if ifb is not None:
        doc.p("IFBench:")
        doc.table(*checkpoint_table(ifb, ifb_vr))
    doc.h(2, "Accuracy by checkpoint")
    doc.img(plot_accuracy(sweep), "accuracy.png", f"{bench} accuracies against training step")
    if ifb is not None:
        doc.img(plot_accuracy(ifb), "accuracy_ifbench.png", "IFBench accuracies against training step")
    doc.h(2, "Training loss")
    doc.img(plot_loss(sweep), "loss.png", "training loss against step")
    doc.h(2, "Device memory")
    if not memory_series(sweep):
        doc.p("no GPU samples (CPU runs record no device memory).")
    doc.img(plot_memory(sweep), "memory.png", "NVML device memory over time, training and evaluation")
    doc.h(2, "Accuracy per instruction category")
    doc.img(plot_categories(sweep), "categories.png", "instruction-level strict accuracy per category and checkpoint")
    tab = category_table(sweep)
    if not tab.empty:
        doc.table(["category", *tab.columns], [[c, *(_pct(v) for v in row)] for c, row in tab.iterrows()])
    md, ht = out / "report.md", out / "report.html"
    atomic_write_text(md, doc.markdown())
    atomic_write_text(ht, doc.html(f"{bench} sweep: {sweep.name}"))
    return {"md": md, "html": ht, "verdict": vr, "ifbench": ifb_vr}


HYPER_KEYS = ("model_name_or_path", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "gradient_accumulation_steps", "max_length", "warmup_steps", "lr_scheduler_type", "weight_decay")


def compare_report(sweeps: list[SweepData], out_dir: Path) -> dict:
    """Overlay several runs' curves; each run's verdict; rank runs by their best model (the start a candidate);
    the best model overall (paired, Holm-corrected); hyperparameters."""
    out = Path(out_dir)
    doc = Doc(out)
    doc.h(1, "IFEval sweeps compared: " + ", ".join(s.name for s in sweeps))
    for s in sweeps:
        note = settings_note(s)
        if note:
            doc.p(f"**Eval settings of {s.name}: {note}**")
        doc.p(f"{s.name} generated by: {s.path_line()}.")
        if s.mixed:
            doc.p(f"**{s.name}: mixed eval settings (--allow_mixed_settings): {'; '.join(s.mixed)}.**")
        if s.excluded:
            doc.p(f"**{s.name}: left out (stale or damaged results):** "
                  + "; ".join(f"{n}: {why}" for n, why in s.excluded.items()) + ".")
    verdicts = {s.name: analyse_verdict(s) for s in sweeps}
    doc.h(2, "Best model overall")
    lines = best_overall(sweeps, verdicts)
    doc.p(lines[0])
    doc.ul(lines[1:])
    ranked = sorted(sweeps, key=lambda s: -float(s.table.set_index("checkpoint").loc[verdicts[s.name].best,
                                                                                    "prompt_strict"]))
    doc.h(2, "Ranking (best model of each run, the starting model a candidate; prompt-level strict)")
    rows = []
    for i, s in enumerate(ranked, 1):
        vr = verdicts[s.name]
        row = s.table[s.table["checkpoint"] == vr.best].iloc[0]
        best = vr.best + (" (start)" if int(row["step"]) == 0 else "")
        outcome = vr.verdict.outcome.replace("_", " ") if vr.verdict else "no verdict"
        rows.append([str(i), s.name, best, _pct(row["prompt_strict"]), _pct(row["inst_strict"]), outcome,
                     vr.pick or "—"])
    doc.table(["rank", "run", "best model", "prompt strict %", "inst strict %", "did training help?", "pick"], rows)
    doc.h(2, "Did training help? (each run)")
    for s in sweeps:
        doc.h(3, s.name)
        verdict_section(doc, verdicts[s.name])
    cfgs = {s.name: s.sft_config() for s in sweeps}
    keys = [k for k in HYPER_KEYS if any(k in c for c in cfgs.values())]
    keys += sorted(k for k in set().union(*map(set, cfgs.values())) if k not in keys
                   and len({json.dumps(c.get(k), sort_keys=True, default=str) for c in cfgs.values()}) > 1)
    if keys:
        doc.h(2, "Hyperparameters (from each run's sft_config.json)")
        doc.table(["run", *keys], [[s.name, *(str(cfgs[s.name].get(k, "")) for k in keys)] for s in ranked])
    else:
        doc.p("No sft_config.json found for these runs (the sweep records the run directory in sweep.json).")
    doc.h(2, "Accuracy by checkpoint")
    doc.img(plot_accuracy(sweeps), "accuracy.png", "IFEval accuracies of all runs against step")
    doc.h(2, "Training loss")
    doc.img(plot_loss(sweeps), "loss.png", "training loss of all runs")
    md, ht = out / "report.md", out / "report.html"
    atomic_write_text(md, doc.markdown())
    atomic_write_text(ht, doc.html("IFEval sweeps compared"))
    return {"md": md, "html": ht, "verdicts": verdicts, "best_overall": lines}


def write_report(results_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None,
                 allow_incomplete: bool = False, allow_mixed_settings: bool = False) -> dict:
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir}: exists and is a file; give a directory.")
    sweeps = [load_sweep(d, allow_incomplete=allow_incomplete, allow_mixed_settings=allow_mixed_settings)
              for d in results_dirs]
    names = [s.name for s in sweeps]
    if len(set(names)) != len(names):
        for s in sweeps:
            s.name = str(s.results_dir)
    if len(sweeps) == 1:
        return single_report(sweeps[0], Path(out_dir) if out_dir else None, allow_incomplete)
    firsts = {str(s.results_dir): next(iter(s.summaries.values()), {}) for s in sweeps}
    across = results.settings_differences(firsts)
    if across and not allow_mixed_settings:
        raise UserError(mixed_message("these runs were evaluated", across, "one ranking"))
    for s in sweeps:  # said in the comparison as for a curve
        s.mixed = s.mixed + [f"across runs: {d}" for d in across]
    if out_dir is None:
        out_dir = Path(os.path.commonpath([str(s.results_dir.resolve()) for s in sweeps])) / "comparison"
    return compare_report(sweeps, Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=(
        "Write report.md and report.html (plots embedded) for an IFEval sweep directory; with several "
        "directories, overlay their curves and rank the runs."), formatter_class=HelpFormatter)
    p.add_argument("results_dirs", nargs="+", help="sweep result directories (from scripts/sweep.sh)")
    p.add_argument("--out", default=None, help="output directory (default: the results directory; with several, "
                                               "their common parent's comparison/)")
    p.add_argument("--allow_incomplete", action="store_true",
                   help="leave checkpoints whose results are stale (other weights now at their path) or damaged "
                        "(a missing file or sweep.csv row, a cut results file) out of the report and list them, "
                        "instead of stopping")
    p.add_argument("--allow_mixed_settings", action="store_true",
                   help="report results evaluated with different eval settings (limit, cap, template, ...) or "
                        "generation paths (backend, attention kernel, compile, dtype) in one curve or ranking, "
                        "saying so, instead of stopping")
    args = p.parse_args(argv)
    try:
        res = write_report(args.results_dirs, args.out, args.allow_incomplete, args.allow_mixed_settings)
    except UserError as e:
        exit_with_user_error(e, PROG)
    print(f"[{PROG}] wrote {res['md']} and {res['html']}")
    for key, label in (("verdict", ""), ("ifbench", "IFBench: ")):
        for line in res[key].sentences if res.get(key) else []:
            print("  " + label + line.replace("**", ""))
    for line in res.get("best_overall", []):
        print("  " + line.replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
