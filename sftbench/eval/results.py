"""The results schema: file names, summary.json fields, sweep.csv columns and sweep.json, with their
writers and readers (docs/ARCHITECTURE.md, "An IFEval result directory" and "A sweep directory").

Writers (sftbench/eval/run.py, sftbench/eval/sweep.py) and readers (sftbench/eval/sweep.py, analysis/) share this module, so a
field is named in one place.  Every write is atomic (sftbench.core.io); summary.json is written last.
No torch import: analysis and the sweep's CLI load it cheaply.

    write_result_dir(out, responses, strict, loose, memory_samples, summary)   # one checkpoint's files
    make_summary(...) -> dict          the summary.json fields
    read_summary(result_dir)           complete summary or None;   load_summary: any summary (UserError if unreadable)
    check_summaries(results_dir)       UserError naming a checkpoint's unreadable summary.json (the report)
    result_problems(results_dir, csv_steps)  {checkpoint: why} stale (fingerprint) or damaged results (the report)
    weights_changed(record, file, model_path)  why a summary is not about the weights now there, or None
    load_outcomes(result_dir)          per-prompt strict/loose outcomes from eval_results_*.jsonl
    sweep_rows(results_dir, run_dir, state) -> [row]   one sweep.csv row per complete result dir
    write_sweep_csv / read_sweep_csv   sweep.csv;    write_sweep_state / read_sweep_state: sweep.json
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sftbench.core.cli import config_defaults
from sftbench.core import fingerprint as fpr
from sftbench.core.errors import UserError
from sftbench.core.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, read_jsonl
from sftbench.core.rundir import checkpoint_step, load_metrics, loss_at_step

from sftbench.eval.config import EvalConfig
from sftbench.tasks.prompts import IFBENCH_N_PROMPTS

# ---------------------------------------------------------------------------------- file names
RESPONSES = "responses.jsonl"
STRICT = "eval_results_strict.jsonl"
LOOSE = "eval_results_loose.jsonl"
MEMORY_SAMPLES = "memory_samples.jsonl"
SUMMARY = "summary.json"
RESULT_FILES = (RESPONSES, STRICT, LOOSE, MEMORY_SAMPLES, SUMMARY)
SWEEP_CSV = "sweep.csv"
SWEEP_JSON = "sweep.json"
# summary.json (and partial_settings.json): sftbench.core.fingerprint of the evaluated weights (absent before v2)
FINGERPRINT = "model_fingerprint"

# ---------------------------------------------------------------------------------- benchmarks
# settings["benchmark"] of a summary (absent = "ifeval": results written before IFBench was added).  A sweep
# writes IFEval results in RESULTS/ itself and each other benchmark's in RESULTS/<benchmark>/, same schema.
BENCHMARKS = ("ifeval", "ifbench")
DEFAULT_BENCHMARK = "ifeval"
# summary.json: prompts left out before generation because their checkers cannot run here (IFBench offline):
# {"count": n, "keys": [...], "missing_nltk_data": {resource: n prompts}}.
DROPPED = "dropped_unscorable"
# summary.json: how the answers were produced (sftbench.core.capabilities.generation_path): {"backend": fast|hf,
# "attention": triton|torch|hf, "compile": bool, "cuda_graphs": bool, "dtype": bf16|fp16|fp32, "why": str}.
# Greedy answers change with the kernel (19.59% vs 20.33% prompt strict measured without/with Triton).
PATH = "path"
PATH_FIELDS = ("backend", "attention", "compile", "cuda_graphs", "dtype", "template_sha256")
# settings that name a file (its content is compared through the *_sha256 next to it)
LOCATION_SETTINGS = ("data_path", "chat_template", "responses_path")


def comparable_settings(summary: dict) -> dict:
    """What must be equal for two results to share a curve or a ranking: the eval settings (not where their files
    are) and the generation path, each field only when recorded (results written before a field existed)."""
    s = {k: v for k, v in (summary.get("settings") or {}).items() if k not in LOCATION_SETTINGS}
    path = summary.get(PATH) or {}
    s.update({k: v for k, v in path.items() if k in PATH_FIELDS})
    if "template_sha256" in path:  # the used template's text decides; its name (`model`, a file) does not
        s.pop("chat_template_sha256", None)
    return s


def settings_differences(summaries: dict[str, dict]) -> list[str]:
    """["limit: 2 (a), 8 (b)", ...] for each comparable setting whose recorded values differ across the named
    summaries (a field missing from one of them is not compared)."""
    comp = {name: comparable_settings(s) for name, s in summaries.items()}
    keys = sorted({k for c in comp.values() for k in c})
    out = []
    for k in keys:
        have = {name: c[k] for name, c in comp.items() if k in c}
        if len(have) == len(comp) and len({json.dumps(v, sort_keys=True) for v in have.values()}) > 1:
            out.append(f"{k}: " + ", ".join(f"{json.dumps(v)} ({name})" for name, v in have.items()))
    return out


def path_label(summary: dict) -> str:
    """One line: how a result's answers were produced ("fast backend, triton attention, compiled, CUDA graphs on,
    bf16"), or "not recorded" for results written before it was."""
    p = summary.get(PATH)
    if not p:
        return "not recorded"
    return (f"{p.get('backend')} backend, {p.get('attention')} attention, "
            f"{'compiled' if p.get('compile') else 'eager'}, CUDA graphs {'on' if p.get('cuda_graphs') else 'off'}, "
            f"{p.get('dtype')}")


def benchmark_of(summary: dict) -> str:
    return (summary.get("settings") or {}).get("benchmark") or DEFAULT_BENCHMARK


def benchmark_dir(results_dir: str | os.PathLike, benchmark: str) -> Path:
    """Where a sweep writes one benchmark's checkpoint-<step>/, sweep.csv and sweep.json."""
    return Path(results_dir) if benchmark == DEFAULT_BENCHMARK else Path(results_dir) / benchmark

# ---------------------------------------------------------------------------------- fields
METRICS = ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")
CSV_COLUMNS = (["step", "checkpoint", "kind"]
               + [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
               + ["n_prompts", "hit_cap_fraction", "tokens_per_s", "wall_s", "torch_peak_allocated_gib",
                  "nvml_peak_gib", "train_loss", "train_loss_step", "model_path"]
               + ["benchmark", "load_s", "generate_s", "score_s", "write_s"])
# sweep.csv columns the report computes with: a cell that is not a number (or empty) is an error naming it
NUMERIC_COLUMNS = (["step"] + [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
                   + ["n_prompts", "hit_cap_fraction", "tokens_per_s", "wall_s", "torch_peak_allocated_gib",
                      "nvml_peak_gib", "train_loss", "train_loss_step"])
# summary.json "timing": seconds of each stage of this process's evaluation (0 for a stage it skipped).
# load: tokenizer, prompts rendered, weights into the generator; generate; score (checkers + CIs); write.
# In a sweep scoring and writing overlap the next checkpoint's generation, so wall_s >= their sum.
TIMING_FIELDS = ("load_s", "generate_s", "score_s", "write_s")
MEMORY_FIELDS = ("torch_peak_allocated_gib", "torch_peak_reserved_gib", "nvml_peak_gib", "nvml_mean_gib",
                 "gpu_name", "gpu_total_gib")
# The full benchmark: every IFEval prompt at EvalConfig's default cap (a report flags anything less).
FULL_PROMPTS = 541
# IFBench results of a sweep live in RESULTS/ifbench/, the same layout; its full test set has 294 prompts.
IFBENCH_DIR = "ifbench"
IFBENCH_PROMPTS = IFBENCH_N_PROMPTS
FULL_MAX_NEW_TOKENS = config_defaults(EvalConfig)["max_new_tokens"]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------- one result dir
def response_row(key, prompt: str, prompt_text: str | None, response: str, generated_tokens: int | None,
                 hit_cap: bool | None, **extra) -> dict:
    """One responses.jsonl row (the partial file adds "settings_hash")."""
    return {"key": key, "prompt": prompt, "prompt_text": prompt_text, "response": response,
            "generated_tokens": generated_tokens, "hit_cap": hit_cap, **extra}


def make_summary(*, model_path: str | None, step: int | None, settings: dict, settings_hash: str, agg: dict,
                 rows: list[dict], generation: dict, memory: dict, memory_cap_gib: float | None,
                 git_commit: str | None, wall_s: float, extra: dict | None = None,
                 timing: dict | None = None) -> dict:
    """summary.json.  agg: scoring.aggregate's {"accuracy", "per_category", "counts"}; rows: responses.jsonl
    rows (generated_tokens, hit_cap); generation: this process's {"wall_s", "generated_tokens", "new_prompts",
    "stop_token_ids"}; memory: torch/NVML peaks (MEMORY_FIELDS)."""
    n_tok = sum(int(r.get("generated_tokens") or 0) for r in rows)
    hit = sum(bool(r.get("hit_cap")) for r in rows)
    wall = generation.get("wall_s") or 0.0
    new_tok = generation.get("generated_tokens") or 0
    acc = agg["accuracy"]
    summary = {
        "complete": True,
        "model_path": model_path,
        "step": step,
        "settings": settings,
        "settings_hash": settings_hash,
        "accuracy": acc,
        "per_category": agg["per_category"],
        "counts": {**agg["counts"], "hit_cap": hit},
        "generation": {
            "wall_s": round(wall, 3), "generated_tokens": n_tok,
            # tokens/s over this process's generation only (a resumed run generated part of the answers).
            "tokens_per_s": round(new_tok / wall, 1) if wall > 0 else None,
            "new_generated_tokens": new_tok, "new_prompts": generation.get("new_prompts", 0),
            "hit_cap_fraction": round(hit / len(rows), 4) if rows else None,
            "mean_generated_tokens": round(n_tok / len(rows), 1) if rows else None,
            "stop_token_ids": generation.get("stop_token_ids"),
        },
        "memory": {**{k: memory.get(k) for k in MEMORY_FIELDS}, "memory_cap_gib": memory_cap_gib},
        "leaderboard_score": round((acc["prompt_strict"]["value"] + acc["inst_strict"]["value"]) / 2, 6),
        "git_commit": git_commit,
        "created": now(),
        "wall_s": round(wall_s, 3),
        "timing": {k: round(float((timing or {}).get(k) or 0.0), 3) for k in TIMING_FIELDS},
    }
    if extra:
        summary.update(extra)
    return summary


def write_result_dir(out: Path, responses: list[dict], strict: list[dict], loose: list[dict],
                     memory_samples: list[dict] | None, summary: dict) -> Path:
    """Write one IFEval result directory; summary.json last (a stale one is removed first, so a crash
    in between never leaves a complete-looking directory).  Returns the summary path.  The time spent on the
    other files goes into summary["timing"]["write_s"] (and wall_s) when the summary has "timing"."""
    import time

    t0 = time.perf_counter()
    out = Path(out)
    summary_path = out / SUMMARY
    summary_path.unlink(missing_ok=True)
    atomic_write_jsonl(out / RESPONSES, responses)
    atomic_write_jsonl(out / STRICT, strict)
    atomic_write_jsonl(out / LOOSE, loose)
    if memory_samples:
        atomic_write_jsonl(out / MEMORY_SAMPLES, memory_samples)
    if isinstance(summary.get("timing"), dict):
        dt = time.perf_counter() - t0
        summary["timing"]["write_s"] = round(summary["timing"].get("write_s", 0.0) + dt, 3)
        summary["wall_s"] = round(summary.get("wall_s", 0.0) + dt, 3)
    atomic_write_json(summary_path, summary)
    return summary_path


def read_summary(result_dir: str | os.PathLike) -> dict | None:
    """summary.json if present and complete, else None (an unreadable file counts as incomplete)."""
    f = Path(result_dir) / SUMMARY
    if not f.is_file():
        return None
    try:
        s = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        return None
    return s if isinstance(s, dict) and s.get("complete") is True else None


def load_summary(result_dir: str | os.PathLike) -> dict:
    """summary.json as written, complete or not ({} when absent; UserError when unreadable or not an object)."""
    f = Path(result_dir) / SUMMARY
    if not f.is_file():
        return {}
    s = read_json(f)
    if not isinstance(s, dict):
        raise UserError(f"{f}: not a result summary (valid JSON, but a {type(s).__name__}, not an object).")
    return s


def check_summaries(results_dir: str | os.PathLike) -> None:
    """UserError naming the first checkpoint-<step>/summary.json that cannot be read as a summary (malformed
    JSON, or not an object), and saying what to do: a report must not silently drop or misread a checkpoint."""
    res = Path(results_dir)
    for child in sorted(res.iterdir()) if res.is_dir() else []:
        if checkpoint_step(child.name) is None or not (child / SUMMARY).is_file():
            continue
        try:
            load_summary(child)
        except UserError as e:
            raise UserError(f"{e} So the results of {child.name} cannot be read. Rerun the sweep (python -m "
                            f"sftbench.eval.sweep RUN_DIR {res}) to re-evaluate that checkpoint, or delete {child} to "
                            f"leave it out of the report.") from None


def weights_changed(record: dict, record_file: str | os.PathLike, model_path: str | None,
                    current: str | None = None) -> str | None:
    """Why `record` (a summary or partial_settings.json, at record_file) is not about the weights now at
    model_path, or None when it is (or cannot be checked: a hub id, a missing path).

    A record with a fingerprint must match the current one.  A record from before fingerprints existed is
    trusted only when no weights file (or config.json) was modified after record_file was written."""
    if not model_path or not Path(model_path).is_dir():
        return None
    have = record.get(FINGERPRINT)
    if have is not None:
        current = current or fpr.fingerprint(model_path)
        return None if current is None or have == current else "weights changed since it was evaluated"
    try:
        t = Path(record_file).stat().st_mtime
    except OSError:
        return None
    if fpr.weights_newer_than(model_path, t):
        return "weights changed since it was evaluated (written after its results; no fingerprint recorded)"
    return None


def result_problems(results_dir: str | os.PathLike, csv_steps: dict[str, int] | None = None) -> dict[str, str]:
    """{checkpoint name: why its results must not be used} for a sweep's results directory (the report's check).

    csv_steps: sweep.csv's {checkpoint name: step} (None: no sweep.csv; rows are rebuilt from the result dirs).
    A checkpoint is damaged when sweep.csv has a row for it but checkpoint-<step>/ lacks summary.json (or it is
    not complete) or eval_results_{strict,loose}.jsonl, when a results file has fewer rows than the summary's
    prompt count (a missing one only when other checkpoints have theirs), or when a complete result directory
    has no row in sweep.csv; it is stale when the weights at
    its model_path are not the ones evaluated (`weights_changed`: the fingerprint, when the path is reachable).
    """
    res = Path(results_dir)
    names = {c.name for c in res.iterdir() if c.is_dir() and checkpoint_step(c.name) is not None} if res.is_dir() else set()
    if csv_steps is not None:
        names |= set(csv_steps)
    out: dict[str, str] = {}
    # Results with no per-prompt files at all (written by other tools) give a report without a paired verdict;
    # one checkpoint without them among others with them is damage.
    per_prompt = any((res / n / f).is_file() for n in names for f in (STRICT, LOOSE))
    for name in sorted(names, key=lambda n: (checkpoint_step(n) is None, checkpoint_step(n) or 0, n)):
        d = res / name
        summary = read_summary(d)
        if summary is None:
            if csv_steps is not None and name in csv_steps:
                out[name] = (f"sweep.csv has a row for it but {d}/{SUMMARY} is missing or incomplete"
                             if d.is_dir() else f"sweep.csv has a row for it but {d}/ is missing")
            continue
        why = weights_changed(summary, d / SUMMARY, summary.get("model_path"))
        if why is not None:
            out[name] = f"stale: the {why} ({summary.get('model_path')})"
            continue
        if csv_steps is not None and name not in csv_steps:
            out[name] = f"{d} is complete but has no row in {res / SWEEP_CSV}"
            continue
        want = (summary.get("counts") or {}).get("prompts")
        bad = []
        for fname in (STRICT, LOOSE):
            f = d / fname
            if not f.is_file():
                if per_prompt:
                    bad.append(f"{fname} is missing")
                continue
            n = sum(1 for line in f.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
            if isinstance(want, int) and n < want:
                bad.append(f"{fname} has {n} rows, its {SUMMARY} counts {want} prompts")
        if bad:
            out[name] = "; ".join(bad)
            continue
    return out


def load_outcomes(result_dir: str | os.PathLike) -> dict:
    """{prompt key: {"ids": [instruction ids], "n", "strict", "loose", "strict_followed", "loose_followed",
    "strict_list", "loose_list"}} from eval_results_{strict,loose}.jsonl ({} when absent)."""
    out: dict = {}
    for mode, name in (("strict", STRICT), ("loose", LOOSE)):
        f = Path(result_dir) / name
        if not f.is_file():
            continue
        for i, row in enumerate(read_jsonl(f)):
            key = row.get("key", row.get("prompt", i))
            fl = [bool(x) for x in row.get("follow_instruction_list", [])]
            d = out.setdefault(key, {"ids": list(row.get("instruction_id_list", [])), "n": len(fl)})
            d[mode] = bool(row.get("follow_all_instructions", all(fl)))
            d[f"{mode}_followed"] = sum(fl)
            d[f"{mode}_list"] = fl
    return out


def load_memory_samples(path: str | os.PathLike) -> list[tuple[float, float]]:
    """[(t seconds, NVML GiB)] from a memory_samples.jsonl ([] when absent)."""
    f = Path(path)
    if not f.is_file():
        return []
    return [(float(r["t"]), float(r["nvml_used_gib"])) for r in read_jsonl(f, tolerate_partial_tail=True)
            if isinstance(r, dict) and r.get("nvml_used_gib") is not None and r.get("t") is not None]


# ---------------------------------------------------------------------------------- sweep.csv
def summary_row(summary: dict, step: int, name: str, kind: str, metrics: list[dict]) -> dict[str, Any]:
    """One sweep.csv row (CSV_COLUMNS) from a checkpoint's summary and the run's metrics.jsonl rows."""
    acc = summary.get("accuracy") or {}
    gen = summary.get("generation") or {}
    mem = summary.get("memory") or {}
    cnt = summary.get("counts") or {}
    timing = summary.get("timing") or {}
    row: dict[str, Any] = {"step": step, "checkpoint": name, "kind": kind}
    for k in METRICS:
        a = acc.get(k) or {}
        ci = a.get("ci95") or [None, None]
        row[k], row[f"{k}_lo"], row[f"{k}_hi"] = a.get("value"), ci[0], ci[1]
    loss, loss_step = loss_at_step(metrics, step)
    row.update({"n_prompts": cnt.get("prompts"), "hit_cap_fraction": gen.get("hit_cap_fraction"),
                "tokens_per_s": gen.get("tokens_per_s"), "wall_s": summary.get("wall_s", gen.get("wall_s")),
                "torch_peak_allocated_gib": mem.get("torch_peak_allocated_gib"),
                "nvml_peak_gib": mem.get("nvml_peak_gib"), "train_loss": loss, "train_loss_step": loss_step,
                "model_path": summary.get("model_path"), "benchmark": benchmark_of(summary),
                **{k: timing.get(k) for k in TIMING_FIELDS}})
    return row


def sweep_rows(results_dir: str | os.PathLike, run_dir: str | os.PathLike | None, state: dict | None = None) -> list[dict]:
    """One row per complete result directory checkpoint-<step>/ in results_dir, sorted by step."""
    results = Path(results_dir)
    metrics = load_metrics(run_dir) if run_dir and Path(run_dir).is_dir() else []
    entries = (state or {}).get("entries") or {}
    rows = []
    for child in sorted(results.iterdir()) if results.is_dir() else []:
        step = checkpoint_step(child.name)
        summary = read_summary(child) if step is not None and child.is_dir() else None
        if summary is None:
            continue
        # accuracies of weights that are no longer there must not be paired with the run's current losses
        if weights_changed(summary, child / SUMMARY, summary.get("model_path")) is not None:
            continue
        kind = (entries.get(child.name) or {}).get("kind", "base" if step == 0 else "checkpoint")
        rows.append(summary_row(summary, step, child.name, kind, metrics))
    rows.sort(key=lambda r: r["step"])
    return rows


def write_sweep_csv(results_dir, run_dir, state: dict | None = None) -> Path:
    """(Re)write results_dir/sweep.csv from the complete result directories (atomic)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in sweep_rows(results_dir, run_dir, state):
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    out = Path(results_dir) / SWEEP_CSV
    atomic_write_text(out, buf.getvalue())
    return out


def read_sweep_csv(results_dir: str | os.PathLike, run_dir=None, state: dict | None = None):
    """sweep.csv as a pandas DataFrame (rebuilt from the result dirs when the file is missing), sorted by
    step.  UserError when unreadable, empty, or missing a required column."""
    import pandas as pd

    results = Path(results_dir)
    f = results / SWEEP_CSV
    if f.is_file():
        try:
            table = pd.read_csv(f)
        except Exception as e:
            raise UserError(f"{f}: cannot be read as CSV ({e}).") from None
    else:
        table = pd.DataFrame(sweep_rows(results, run_dir, state))
    if table.empty:
        raise UserError(f"{results}: no complete checkpoint results (checkpoint-<step>/summary.json) yet.")
    missing = [c for c in ("step", "checkpoint", *METRICS) if c not in table.columns]
    if missing:
        raise UserError(f"{f}: missing column(s) {', '.join(missing)}; rerun the sweep to rewrite it.")
    for col in table.columns:
        if col in NUMERIC_COLUMNS and not pd.api.types.is_numeric_dtype(table[col]):
            num = pd.to_numeric(table[col], errors="coerce")
            bad = table[col].notna() & num.isna()
            if not bad.any():
                table[col] = num
                continue
            i = int(bad.to_numpy().argmax())
            raise UserError(f"{f}: row {i + 1} (line {i + 2}), column {col}: {table[col].iloc[i]!r} is not a "
                            f"number. Rerun the sweep to rewrite sweep.csv (python -m sftbench.eval.sweep RUN_DIR "
                            f"{results}), or fix that cell.")
    if table["step"].isna().any():
        i = int(table["step"].isna().to_numpy().argmax())
        raise UserError(f"{f}: row {i + 1} (line {i + 2}), column step: empty. Rerun the sweep to rewrite sweep.csv.")
    return table.sort_values("step").reset_index(drop=True)


# ---------------------------------------------------------------------------------- sweep.json
def new_sweep_state(run_dir: str | os.PathLike, include_base: str | None, eval_config: dict, eval_config_hash: str) -> dict:
    """sweep.json: the run dir, --include_base, the eval config and its hash, and one entry per checkpoint
    ({"step", "kind", "model_path", "settings_hash", "eval_config_hash", "wall_s"}), plus "updated"."""
    return {"run_dir": str(Path(run_dir).resolve()), "include_base": include_base, "eval_config": eval_config,
            "eval_config_hash": eval_config_hash, "entries": {}}


def sweep_entry(step: int, kind: str, model_path: str | None, settings_hash: str | None, eval_config_hash: str,
                wall_s: float | None = None) -> dict:
    e = {"step": step, "kind": kind, "model_path": model_path, "settings_hash": settings_hash,
         "eval_config_hash": eval_config_hash}
    if wall_s is not None:
        e["wall_s"] = round(wall_s, 3)
    return e


def read_sweep_state(results_dir: str | os.PathLike) -> dict | None:
    """sweep.json (None when absent; UserError when it is not a JSON object)."""
    f = Path(results_dir) / SWEEP_JSON
    if not f.is_file():
        return None
    old = read_json(f)
    if not isinstance(old, dict):
        raise UserError(f"{f}: not a sweep state file (expected a JSON object).")
    return old


def write_sweep_state(results_dir: str | os.PathLike, state: dict) -> Path:
    state["updated"] = now()
    f = Path(results_dir) / SWEEP_JSON
    atomic_write_json(f, state)
    return f
