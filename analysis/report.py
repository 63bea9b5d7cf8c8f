"""Sweep report: plots, a table and the checkpoint pick, as report.md + report.html (+ PNGs).

    python -m analysis.report results/run1                 # one run -> results/run1/report.{md,html}
    python -m analysis.report results/run1 results/run2    # overlay and rank runs -> results/comparison/

Only reads result files (docs/ARCHITECTURE.md: sweep.csv, sweep.json, checkpoint-<step>/ result dirs, and
the run directory's metrics.jsonl, memory_samples.jsonl, sft_config.json).  The plotting functions return
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

from analysis.paired_stats import Comparison, Pick, compare, defensible_pick, format_p
from ifeval import results
from ifeval.results import FULL_MAX_NEW_TOKENS, FULL_PROMPTS, METRICS
from sftbench.cli import HelpFormatter
from sftbench.errors import UserError, exit_with_user_error
from sftbench.io import atomic_write_text, read_json
from sftbench.rundir import load_metrics

PROG = "analysis.report"
LABELS = {"prompt_strict": "prompt-level strict", "inst_strict": "instruction-level strict",
          "prompt_loose": "prompt-level loose", "inst_loose": "instruction-level loose"}
VRAM_LINE_GIB = 8.0
ALPHA = 0.05


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


def load_sweep(results_dir: str | os.PathLike, name: str | None = None) -> SweepData:
    """Read a sweep directory.  sweep.csv is rebuilt from the result dirs when missing.  UserError if empty."""
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
    settings: dict = {}
    outcomes = {}
    for ck in table["checkpoint"]:
        if not settings:
            settings = dict(results.load_summary(res / ck).get("settings") or {})
        outcomes[ck] = results.load_outcomes(res / ck)
    return SweepData(res, name or res.name, table, run_dir, settings,
                     dict(state.get("eval_config") or {}), outcomes)


# ------------------------------------------------------------------------------------------ settings
def settings_note(sweep: SweepData) -> str | None:
    """One line when the evaluation is not the full benchmark (None when it is)."""
    s = {**sweep.eval_config, **{k: v for k, v in sweep.settings.items() if v is not None}}
    n = int(sweep.table["n_prompts"].max()) if "n_prompts" in sweep.table and sweep.table["n_prompts"].notna().any() else None
    parts = []
    if s.get("limit") not in (None, "", 0):
        parts.append(f"--limit {s['limit']}")
    if s.get("subset") not in (None, "full"):
        parts.append(f"--subset {s['subset']}")
    mnt = s.get("max_new_tokens")
    if mnt is not None and int(mnt) < FULL_MAX_NEW_TOKENS:
        parts.append(f"--max_new_tokens {mnt}")
    if not parts and (n is None or n >= FULL_PROMPTS):
        return None
    if n is not None and n < FULL_PROMPTS and not any(p.startswith(("--limit", "--subset")) for p in parts):
        parts.append(f"{n} prompts")
    device = str(s.get("device") or "").lower()
    where = f" on {'CPU' if device == 'cpu' else device}" if device and device != "auto" else ""
    smoke = (n is not None and n < 100) or (mnt is not None and int(mnt) < 256)
    verdict = ("a smoke test, not a benchmark" if smoke else
               f"not the full benchmark ({FULL_PROMPTS} prompts, {FULL_MAX_NEW_TOKENS} new tokens): "
               f"not comparable with published IFEval scores")
    return f"{', '.join(parts)}{where}: {verdict}."


# ------------------------------------------------------------------------------------------ stats
def aligned(sweep: SweepData, names: list[str], mode: str = "strict") -> dict[str, list[bool]]:
    """Prompt-level outcomes over the prompts every named checkpoint was scored on ([n] each, same order)."""
    have = [n for n in names if sweep.outcomes.get(n)]
    if not have:
        return {}
    keys = set.intersection(*(set(sweep.outcomes[n]) for n in have))
    keys = sorted(keys, key=lambda k: (str(type(k)), k))
    return {n: [bool(sweep.outcomes[n][k].get(mode, False)) for k in keys] for n in have}


@dataclass
class PickReport:
    best: str
    best_acc: float
    vs_last: Comparison | None
    vs_start: Comparison | None
    pick: Pick | None
    sentences: list[str]


def analyse_pick(sweep: SweepData, alpha: float = ALPHA) -> PickReport:
    """The best checkpoint by prompt-level strict accuracy, paired tests, and the defensible pick (NOTES)."""
    t = sweep.table
    trained = t[t["step"] > 0] if (t["step"] > 0).any() else t
    best_row = trained.loc[trained["prompt_strict"].idxmax()]  # idxmax: the earliest among ties
    best = str(best_row["checkpoint"])
    last = str(trained.iloc[-1]["checkpoint"])
    start = str(t.iloc[0]["checkpoint"]) if sweep.has_base else None
    lines = [f"Best checkpoint by prompt-level strict accuracy: **{best}** (step {int(best_row['step'])}, "
             f"{100 * best_row['prompt_strict']:.1f}%)."]
    names = list(trained["checkpoint"]) + ([start] if start else [])
    out = aligned(sweep, names)
    vs_last = vs_start = None
    pick = None
    if not out or best not in out:
        lines.append("Per-prompt results (eval_results_strict.jsonl) are missing, so no paired test was possible.")
        return PickReport(best, float(best_row["prompt_strict"]), None, None, None, lines)
    n = len(out[best])
    if last != best and last in out:
        vs_last = compare(best, out[best], last, out[last])
        lines.append(vs_last.sentence(alpha, b_label=f"the final checkpoint ({last})") + ".")
    elif last == best:
        lines.append(f"The best checkpoint is the last one ({last}).")
    if start and start in out:
        vs_start = compare(best, out[best], start, out[start])
        lines.append(vs_start.sentence(alpha, b_label=f"the starting model ({start})") + ".")
    trained_names = [c for c in trained["checkpoint"] if c in out]
    if len(trained_names) >= 2:
        pick = defensible_pick({c: out[c] for c in trained_names}, trained_names, alpha)
        pvals = ", ".join(f"{c}: p = {format_p(cmp.p_value)} (Holm {format_p(cmp.p_holm)})"
                          for c, cmp in pick.comparisons.items())
        acc = {c: 100 * float(np.mean(out[c])) for c in trained_names}
        if pick.pick == pick.best and trained_names.index(pick.best) == 0:
            txt = (f"Defensible pick: **{pick.pick}** — the best is also the earliest trained checkpoint "
                   f"(McNemar exact, Holm-corrected over {len(pick.comparisons)} comparisons, alpha {alpha}).")
        elif pick.pick == pick.best:
            txt = (f"Defensible pick: **{pick.pick}** — every earlier checkpoint is significantly worse than the "
                   f"best (McNemar exact, Holm-corrected over {len(pick.comparisons)} comparisons, alpha {alpha}).")
        else:
            txt = (f"Defensible pick: **{pick.pick}** ({acc[pick.pick]:.1f}%) — the earliest checkpoint not "
                   f"significantly worse than the best, {pick.best} ({acc[pick.best]:.1f}%): Holm-corrected "
                   f"p = {format_p(pick.comparisons[pick.pick].p_holm)} (alpha {alpha}).")
        if pick.runner_up:
            txt += f" Runner-up: {pick.runner_up} ({acc[pick.runner_up]:.1f}%)."
        lines.append(txt + f" Paired p-values against {pick.best} over the same {n} prompts: {pvals}.")
    if vs_start is not None and (vs_start.p_value >= alpha or vs_start.diff_points <= 0):
        lines.append("No checkpoint is significantly better than the starting model on these prompts: "
                     "the training did not measurably change instruction following.")
    return PickReport(best, float(best_row["prompt_strict"]), vs_last, vs_start, pick, lines)


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
    """The four accuracies (%) against step, 95% CI bands, the starting model (step 0) as a dashed line."""
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
    fig.suptitle("IFEval accuracy by checkpoint")
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


def checkpoint_table(sweep: SweepData, pick: PickReport | None = None) -> tuple[list[str], list[list[str]]]:
    head = ["step", "checkpoint", *(LABELS[m] + " %" for m in METRICS), "train loss", "tokens/s", "hit cap %",
            "torch peak GiB", "NVML peak GiB"]
    rows = []
    for _, r in sweep.table.iterrows():
        name = str(r["checkpoint"])
        tag = ""
        if pick is not None:
            tags = [t for t, c in (("best", pick.best), ("pick", pick.pick.pick if pick.pick else None)) if c == name]
            tag = f" ({', '.join(tags)})" if tags else ""
        if int(r["step"]) == 0:
            tag += " (start)"
        cells = [str(int(r["step"])), name + tag]
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

    def __init__(self, out_dir: Path):
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
        def inline(s: str) -> str:
            parts = html.escape(s).split("**")
            return "".join(f"<strong>{x}</strong>" if i % 2 else x for i, x in enumerate(parts))

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
def single_report(sweep: SweepData, out_dir: Path | None = None) -> dict:
    """Write report.md, report.html and PNGs for one sweep.  Returns {"md", "html", "pick"}."""
    out = Path(out_dir or sweep.results_dir)
    doc = Doc(out)
    doc.h(1, f"IFEval sweep: {sweep.name}")
    note = settings_note(sweep)
    s = {**sweep.eval_config, **sweep.settings}
    shown = ", ".join(f"{k} {s[k]}" for k in ("subset", "limit", "max_new_tokens", "batch_size", "dtype", "device",
                                               "backend", "chat_template", "system_prompt") if k in s)
    if note:
        doc.p(f"**Eval settings: {note}**")
    doc.p(f"Results: `{sweep.results_dir}`; run: `{sweep.run_dir or 'unknown'}`. Settings: {shown or 'not recorded'}.")
    pick = analyse_pick(sweep)
    doc.h(2, "The pick")
    doc.ul(pick.sentences)
    doc.h(2, "Checkpoints")
    doc.p("Accuracies in % with 95% confidence intervals in brackets. Unpaired intervals overlap even when a "
          "paired test (above) finds a difference: compare checkpoints with the paired test, not the intervals.")
    doc.table(*checkpoint_table(sweep, pick))
    doc.h(2, "Accuracy by checkpoint")
    doc.img(plot_accuracy(sweep), "accuracy.png", "IFEval accuracies against training step")
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
    atomic_write_text(ht, doc.html(f"IFEval sweep: {sweep.name}"))
    return {"md": md, "html": ht, "pick": pick}


HYPER_KEYS = ("model_name_or_path", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "gradient_accumulation_steps", "max_length", "warmup_steps", "lr_scheduler_type", "weight_decay")


def compare_report(sweeps: list[SweepData], out_dir: Path) -> dict:
    """Overlay several runs' curves, rank runs by their best prompt-level strict accuracy, hyperparameters."""
    out = Path(out_dir)
    doc = Doc(out)
    doc.h(1, "IFEval sweeps compared: " + ", ".join(s.name for s in sweeps))
    notes = {s.name: settings_note(s) for s in sweeps}
    for name, note in notes.items():
        if note:
            doc.p(f"**Eval settings of {name}: {note}**")
    picks = {s.name: analyse_pick(s) for s in sweeps}
    ranked = sorted(sweeps, key=lambda s: -picks[s.name].best_acc)
    doc.h(2, "Ranking (best checkpoint of each run, prompt-level strict)")
    rows = []
    for i, s in enumerate(ranked, 1):
        pk = picks[s.name]
        row = s.table[s.table["checkpoint"] == pk.best].iloc[0]
        rows.append([str(i), s.name, pk.best, _pct(row["prompt_strict"]), _pct(row["inst_strict"]),
                     pk.pick.pick if pk.pick else pk.best])
    doc.table(["rank", "run", "best checkpoint", "prompt strict %", "inst strict %", "defensible pick"], rows)
    top = ranked[0]
    lines = []
    for other in ranked[1:]:
        a, b = picks[top.name].best, picks[other.name].best
        ka, kb = top.outcomes.get(a) or {}, other.outcomes.get(b) or {}
        keys = sorted(set(ka) & set(kb), key=lambda k: (str(type(k)), k))
        if keys:
            cmp = compare(f"{top.name}/{a}", [ka[k].get("strict", False) for k in keys],
                          f"{other.name}/{b}", [kb[k].get("strict", False) for k in keys])
            lines.append(cmp.sentence(ALPHA) + ".")
    if lines:
        doc.ul(lines)
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
    return {"md": md, "html": ht, "picks": picks}


def write_report(results_dirs: list[str | os.PathLike], out_dir: str | os.PathLike | None = None) -> dict:
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"--out {out_dir}: exists and is a file; give a directory.")
    sweeps = [load_sweep(d) for d in results_dirs]
    names = [s.name for s in sweeps]
    if len(set(names)) != len(names):
        for s in sweeps:
            s.name = str(s.results_dir)
    if len(sweeps) == 1:
        return single_report(sweeps[0], Path(out_dir) if out_dir else None)
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
    args = p.parse_args(argv)
    try:
        res = write_report(args.results_dirs, args.out)
    except UserError as e:
        exit_with_user_error(e, PROG)
    print(f"[{PROG}] wrote {res['md']} and {res['html']}")
    if "pick" in res:
        for line in res["pick"].sentences:
            print("  " + line.replace("**", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
