"""Evaluate every checkpoint of a training run with IFEval (and IFBench), in one process, resumably.

    python -m sftbench.eval.sweep ckpt/run1 results/run1 [--include_base [PATH]] [--watch] [--benchmarks ifeval,ifbench]
                           [eval options]

Writes `results/run1/checkpoint-<step>/` (one IFEval result directory each, see docs/ARCHITECTURE.md),
`results/run1/sweep.csv` (one row per checkpoint) and `results/run1/sweep.json` (the run dir, the eval
settings and what was evaluated), rewritten after every checkpoint so the curve grows while it runs.
With `--benchmarks ifeval,ifbench`, IFBench's go to `results/run1/ifbench/` in the same layout; checkpoint
by checkpoint, the weights are loaded once for both.

- Speed: each checkpoint is generated in the main thread (GPU) while the previous one is scored and written
  in a background thread (CPU, one worker); sweep.csv has the seconds of each stage (load_s, generate_s,
  score_s, write_s), and the log ends with a per-evaluation table of sweep seconds vs generation seconds.

- Discovery: `checkpoint-<step>/` directories holding config.json and a weights file (`.checkpoint-*.tmp`
  is ignored; an incomplete `checkpoint-<step>/` is skipped with a log line, and listed by --dry_run), the
  final model in the run directory's root (skipped when its trainer_state.json global_step equals a
  checkpoint's step: same weights), and with `--include_base` the starting model as step 0.
- Resumable and idempotent: a checkpoint whose summary.json is complete with the same settings and the same
  weights (sftbench.core.fingerprint) is skipped; one whose weights changed (a retrain into the same run directory)
  is re-evaluated; a different setting is an error (use a new results directory or --force).
- `--watch`: poll the run directory and evaluate checkpoints as training writes them; stop once the final
  model is there and evaluated and no trainer holds the run directory's lock (a finished run being extended with
  `--resume_from_checkpoint latest` and a larger `--max_steps` is followed to its new end), or after
  --watch_timeout seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sftbench.core import rundir
from sftbench.core.cli import HelpFormatter, add_config_arguments, config_from_namespace, field_default
from sftbench.core.errors import UserError, exit_with_user_error
from sftbench.core.io import atomic_write_text, read_json
from sftbench.core.lock import LOCK_NAME, DirLock, pid_alive, read_lock
from sftbench.core.rundir import final_model_present, is_model_dir, load_metrics, loss_at_step  # noqa: F401 (API)

from sftbench.model.chat_template import MODEL
from sftbench.model.hf import chat_template_of, load_tokenizer
from sftbench.model.offline import resolve_model_path

from sftbench.eval import results
from sftbench.eval.config import SweepConfig
from sftbench.eval.results import CSV_COLUMNS, METRICS, read_summary, sweep_rows, write_sweep_csv  # noqa: F401 (API)

PROG = "sftbench.eval.sweep"


# ----------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class Checkpoint:
    """One model to evaluate.  kind: "base" (step 0, the starting model), "checkpoint" or "final"."""

    step: int
    path: str
    kind: str

    @property
    def name(self) -> str:
        """The result directory name: checkpoint-<step> for all kinds (step 0 = the starting model)."""
        return f"checkpoint-{self.step}"


def discover_checkpoints(run_dir: str | os.PathLike, include_base: str | None = None) -> list[Checkpoint]:
    """Models to evaluate in a run directory, sorted by step.

    `include_base`: a model path/name for step 0, or None.  Raises UserError when the run directory is
    missing.  The final model (the run root) gets its step from trainer_state.json (else the last step
    in metrics.jsonl) and is dropped when a checkpoint has the same step.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: run directory not found (give the training output directory that holds checkpoint-<step>/ folders).")
    found = {step: Checkpoint(step, str(p.resolve()), "checkpoint") for step, p in rundir.list_checkpoints(run)}
    if is_model_dir(run):
        step = rundir.global_step(run)
        if step is None:
            step = rundir.last_logged_step(run)
        if step is None:
            step = max(found, default=0) + 1
            print(f"[{PROG}] {run}: the final model has no trainer_state.json and no metrics.jsonl; "
                  f"calling it step {step}", file=sys.stderr)
        if step not in found:
            found[step] = Checkpoint(step, str(run.resolve()), "final")
    if include_base is not None:
        if 0 in found:
            print(f"[{PROG}] the run already has a step-0 checkpoint; --include_base ignored", file=sys.stderr)
        else:
            found[0] = Checkpoint(0, include_base, "base")
    return [found[s] for s in sorted(found)]


def base_model_from_run(run_dir: str | os.PathLike) -> str:
    """`model_name_or_path` recorded in the run's sft_config.json (UserError if it cannot be found)."""
    f = Path(run_dir) / "sft_config.json"
    if not f.is_file():
        raise UserError(f"{f}: not found, so the starting model is unknown; pass it: --include_base PATH_OR_NAME.")
    cfg = read_json(f)
    for key in ("model_name_or_path", "model", "model_path"):
        if isinstance(cfg, dict) and cfg.get(key):
            return str(cfg[key])
    raise UserError(f"{f}: has no model_name_or_path; pass the starting model: --include_base PATH_OR_NAME.")


# ---------------------------------------------------------------------------------------- settings
BASE_TEMPLATE = "base_chat_template.jinja"  # in the results directory: the run's template, for the base model


def run_chat_template(run_dir: str | os.PathLike) -> str | None:
    """The chat template text the run trained with: `chat_template` of its sft_config.json (the run directory's,
    else the newest checkpoint's); None when none records it."""
    run = Path(run_dir)
    for f in [run / "sft_config.json"] + [p / "sft_config.json" for _, p in reversed(rundir.list_checkpoints(run))]:
        c = read_json(f) if f.is_file() else None
        if isinstance(c, dict) and isinstance(c.get("chat_template"), str) and c["chat_template"]:
            return c["chat_template"]
    return None


def base_template(run_dir: str | os.PathLike, base: str, cfg: Any) -> str | None:
    """The run's chat template when the base model must be given it: no --chat_template was chosen for every
    model, the run recorded its template, and the base's own (or the plain ChatML fallback) is another text.
    So the starting model is evaluated with the prompts its checkpoints are, e.g. SmolLM2-135M (no template)."""
    if getattr(cfg, "chat_template", MODEL) not in (None, MODEL):
        return None
    text = run_chat_template(run_dir)
    if text is None:
        return None
    try:
        own = chat_template_of(load_tokenizer(base)).text
    except UserError:  # an unloadable base: its evaluation says so
        own = None
    return None if own == text else text


def config_dict(cfg: Any) -> dict:
    """The eval config as a dict; `benchmark: "ifeval"` left out (absent = ifeval, as in sweeps before IFBench)."""
    if dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    elif isinstance(cfg, dict):
        d = dict(cfg)
    else:
        d = dict(vars(cfg))
    if d.get("benchmark") == results.DEFAULT_BENCHMARK:
        del d["benchmark"]
    return d


def config_hash(cfg: Any) -> str:
    """sha256 of the eval config (all fields, canonical JSON): the sweep-level settings identity."""
    blob = json.dumps(config_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _same_model(a: str | None, b: str | None) -> bool:
    """One model under two spellings (relative vs absolute path, a symlink) counts as the same."""
    from sftbench.eval.run import same_model  # lazy: the sweep's CLI imports the runner only when it runs

    return same_model(a, b)


def _settings_conflicts(summary: dict, cfg: Any) -> list[str]:
    """Settings recorded in a summary that contradict an explicit value in cfg (for adopting old results)."""
    rec = summary.get("settings") or {}
    out = []
    for k, v in config_dict(cfg).items():
        if k in rec and v not in (None, "auto") and rec[k] is not None and rec[k] != v:
            out.append(f"{k}: {rec[k]!r} there, {v!r} now")
    return out


# ------------------------------------------------------------------------------------------- sweep
EvaluateFn = Callable[..., dict]


@dataclass
class SweepPaths:
    run_dir: Path
    results_dir: Path

    @property
    def state_file(self) -> Path:
        return self.results_dir / results.SWEEP_JSON

    @property
    def csv_file(self) -> Path:
        return self.results_dir / results.SWEEP_CSV


class Sweep:
    """Evaluates checkpoints of one run into one results directory; one scorer/generator session.

    evaluate: `evaluate_checkpoint(model_path, out_dir, cfg, *, loaded=...) -> summary dict`.
    session: passed as `loaded=` so the scorer and compiled machinery are built once (None: let evaluate load).
    expected_hash: optional `fn(model_path, cfg) -> settings_hash` from the runner, to check old summaries.
    """

    def __init__(self, run_dir, results_dir, cfg, evaluate: EvaluateFn, *, session=None,
                 include_base: str | None = None, force: bool = False,
                 expected_hash: Callable[[str, Any], str] | None = None,
                 resolve_model: Callable[[str], str] | None = None, log=print, start: Callable | None = None):
        self.paths = SweepPaths(Path(run_dir), Path(results_dir))
        self.cfg = cfg
        self.evaluate = evaluate
        # start: the runner's `start_checkpoint(...) -> Pending` (generation now, `.finish()` = scoring + writing),
        # so scoring one checkpoint overlaps the next one's generation; None: `evaluate`, one after the other.
        self.start = start
        self.benchmark = cfg.benchmark
        self.companions: list["Sweep"] = []  # other benchmarks' sweeps of the same run, run checkpoint by checkpoint
        self.session = session
        self.include_base = include_base
        self.force = force
        self.expected_hash = expected_hash
        self.resolve_model = resolve_model or (lambda p: p)
        self.base_template: str | None = None  # set by _make_sweep: see base_template()
        self.log = log
        self.cfg_hash = config_hash(cfg)
        self.state = self._load_state()
        self._reported_skips: set[str] = set()

    # -- state -------------------------------------------------------------------------------------
    def _load_state(self) -> dict:
        fresh = results.new_sweep_state(self.paths.run_dir, self.include_base, config_dict(self.cfg), self.cfg_hash)
        old = results.read_sweep_state(self.paths.results_dir)
        if old is None:
            return fresh
        # A state with no entries evaluated nothing (e.g. a first try that stopped on a bad option): nothing to mix.
        nothing_done = not old.get("entries")
        if old.get("eval_config_hash") != self.cfg_hash and not self.force and not nothing_done:
            before = old.get("eval_config") or {}
            now = config_dict(self.cfg)
            diff = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                    if before.get(k) != now.get(k)]
            raise UserError(
                f"{self.paths.results_dir}: was swept with different eval settings ({'; '.join(diff) or 'unknown'}). "
                f"Results with different settings must not be mixed: use a new results directory, or pass --force "
                f"to re-evaluate every checkpoint with the new settings.")
        old_run = old.get("run_dir")
        if old_run and Path(old_run).resolve() != self.paths.run_dir.resolve() and not self.force and not nothing_done:
            raise UserError(
                f"{self.paths.results_dir}: holds the sweep of another run ({old_run}); use a new results "
                f"directory for {self.paths.run_dir}, or --force.")
        if self.force:
            return fresh
        fresh["entries"] = old.get("entries") or {}
        if self.include_base is None:
            fresh["include_base"] = old.get("include_base")
        return fresh

    def _save_state(self) -> None:
        results.write_sweep_state(self.paths.results_dir, self.state)

    def cfg_for(self, ck: Checkpoint):
        """The eval config of one checkpoint: the sweep's, with the run's chat template for the base model when
        it needs it (written to RESULTS/base_chat_template.jinja, which the base's settings then name)."""
        if ck.kind != "base" or self.base_template is None:
            return self.cfg
        path = self.paths.results_dir / BASE_TEMPLATE
        if not path.is_file() or path.read_text(encoding="utf-8") != self.base_template:
            atomic_write_text(path, self.base_template)
            self.log(f"[{PROG}] {ck.name} (base): evaluated with the chat template the run trained with "
                     f"(its sft_config.json), written to {path}")
        return dataclasses.replace(self.cfg, chat_template=str(path))

    # -- decisions ---------------------------------------------------------------------------------
    def status(self, ck: Checkpoint, model_path: str) -> str:
        """"done" (skip), "todo", "stale" (a result of other weights than those at the path now: redo);
        raises UserError when a complete result has other settings."""
        out = self.paths.results_dir / ck.name
        summary = read_summary(out)
        if summary is None or self.force:
            return "todo"
        if results.weights_changed(summary, out / results.SUMMARY, model_path) is not None:
            return "stale"
        entry = self.state["entries"].get(ck.name)
        have = summary.get("settings_hash")
        if self.expected_hash is not None:
            want = self.expected_hash(model_path, self.cfg_for(ck))
            if have == want:
                return "done"
            problem = f"its settings_hash {str(have)[:12]} differs from this sweep's {want[:12]}"
        elif entry is not None:
            if entry.get("settings_hash") == have and entry.get("eval_config_hash") == self.cfg_hash \
                    and _same_model(entry.get("model_path"), model_path):
                return "done"
            problem = "it was written with other settings or for another model than this sweep's"
        else:
            conflicts = _settings_conflicts(summary, self.cfg_for(ck))
            if summary.get("model_path") is not None and not _same_model(summary.get("model_path"), model_path):
                conflicts.append(f"model_path: {summary.get('model_path')!r} there, {model_path!r} now")
            if not conflicts:
                return "done"
            problem = "; ".join(conflicts)
        raise UserError(
            f"{out}/summary.json: a complete result with different settings ({problem}). Use a new results "
            f"directory, or pass --force to re-evaluate.")

    # -- work --------------------------------------------------------------------------------------
    def plan(self) -> list[tuple[Checkpoint, str, str]]:
        """[(checkpoint, resolved model path, "done"|"todo")] for what is in the run directory now."""
        base = self.state.get("include_base")
        plan = []
        for ck in discover_checkpoints(self.paths.run_dir, include_base=base):
            path = self.resolve_model(ck.path) if ck.kind == "base" else ck.path
            plan.append((ck, path, self.status(ck, path)))
        return plan

    def skipped(self) -> list[tuple[str, str, str]]:
        """[(name, path, why)]: checkpoint-<step>/ directories of the run that are not complete checkpoints."""
        return [(p.name, str(p), why) for _, p, why in rundir.incomplete_checkpoints(self.paths.run_dir)]

    def _log_skipped(self) -> None:
        for name, path, why in self.skipped():
            if name not in self._reported_skips:  # once per sweep, not at every --watch poll
                self._reported_skips.add(name)
                self.log(f"[{PROG}] {name}: skipped, not a complete checkpoint ({why}): {path}")

    def evaluate_one(self, ck: Checkpoint, model_path: str) -> dict:
        out = self.paths.results_dir / ck.name
        self.log(f"[{PROG}] evaluating {ck.name} ({ck.kind}, step {ck.step}): {model_path}")
        t0 = time.time()
        kwargs = {"loaded": self.session} if self.session is not None else {}
        summary = self.evaluate(model_path, str(out), self.cfg_for(ck), **kwargs)
        return self.record(ck, model_path, summary, time.time() - t0)

    def record(self, ck: Checkpoint, model_path: str, summary, wall_s: float, step_s: float | None = None) -> dict:
        """Enter a finished checkpoint in sweep.json and sweep.csv (always from the sweep's main thread)."""
        out = self.paths.results_dir / ck.name
        if not isinstance(summary, dict):
            summary = read_summary(out) or {}
        self.state["entries"][ck.name] = results.sweep_entry(ck.step, ck.kind, model_path, summary.get("settings_hash"),
                                                             self.cfg_hash, wall_s=wall_s)
        if step_s is not None:
            self.state["entries"][ck.name]["sweep_s"] = round(step_s, 3)
        self._save_state()
        self.write_csv()
        acc = (summary.get("accuracy") or {}).get("prompt_strict", {}).get("value")
        if acc is not None:
            t = summary.get("timing") or {}
            times = ", ".join(f"{k[:-2]} {t[k]:.2f}" for k in results.TIMING_FIELDS if t.get(k) is not None)
            self.log(f"[{PROG}] {ck.name}{'' if self.benchmark == 'ifeval' else ' ' + self.benchmark}: prompt-level "
                     f"strict accuracy {100 * acc:.2f}%" + (f" (s: {times})" if times else ""))
        return summary

    def prepare(self, ready: Callable[[Checkpoint], bool] = lambda ck: True) -> list[tuple[Checkpoint, str]]:
        """Adopt results already there, save sweep.json; the ready checkpoints still to evaluate."""
        plan = self.plan()
        self._log_skipped()
        todo = [(ck, p) for ck, p, st in plan if st != "done" and ready(ck)]
        done = [ck for ck, _, st in plan if st == "done"]
        for ck, _, st in plan:
            if st == "stale" and ready(ck):
                self.log(f"[{PROG}] {ck.name}: weights changed since it was evaluated; re-evaluating")
        for ck in done:  # adopt results from an earlier sweep (or a crash before sweep.json was updated)
            if ck.name not in self.state["entries"]:
                s = read_summary(self.paths.results_dir / ck.name) or {}
                self.state["entries"][ck.name] = results.sweep_entry(ck.step, ck.kind, s.get("model_path"),
                                                                     s.get("settings_hash"), self.cfg_hash)
        self._save_state()
        if done:
            what = "" if self.benchmark == "ifeval" else f" ({self.benchmark})"
            self.log(f"[{PROG}] {len(done)} checkpoint(s) already evaluated{what} with these settings: "
                     f"{', '.join(ck.name for ck in done)}")
        self._n_done = len(done)
        return todo

    def run_once(self, ready: Callable[[Checkpoint], bool] = lambda ck: True) -> tuple[int, int]:
        """Evaluate every ready, not yet evaluated checkpoint (of every benchmark: self and companions).
        Returns (evaluated now, already done), over all benchmarks."""
        sweeps = [self, *self.companions]
        work = []
        for order, sw in enumerate(sweeps):
            work += [(ck.step, order, sw, ck, p) for ck, p in sw.prepare(ready)]
        work.sort(key=lambda w: (w[0], w[1]))  # checkpoint by checkpoint: its weights are loaded once
        from tqdm.auto import tqdm  # lazy: tqdm.auto takes ~0.2 s to import; --help and dry runs skip it

        items = [(sw, ck, p) for _, _, sw, ck, p in work]
        n_ck = len({w[0] for w in work})
        it = tqdm(items, desc="checkpoints" if len(sweeps) == 1 else "evaluations", unit="eval",
                  file=sys.stderr) if n_ck > 1 else items
        self.timings = run_pipelined(it)
        for sw in sweeps:
            sw.write_csv()
        if len(self.timings) > 1:
            self.log(timing_table(self.timings))
        return len(items), sum(sw._n_done for sw in sweeps)

    def watch(self, poll_s: float = 60.0, timeout_s: float | None = None, sleep=time.sleep) -> str:
        """Poll the run directory; evaluate checkpoints once complete and unchanged over one poll.

        Returns "final" when the final model was evaluated and no trainer holds the run directory's lock (a
        run resumed with a larger --max_steps keeps a final model from before while it writes new checkpoints),
        "timeout" when timeout_s passed first.
        A checkpoint is evaluated only when its file list, sizes and mtimes are the same at two
        consecutive polls (trainers that do not write atomically), so a half-written one is never read.
        """
        t0 = time.time()
        seen: dict[str, tuple] = {}
        said_extended = False
        self.log(f"[{PROG}] watching {self.paths.run_dir} every {poll_s:g} s"
                 + (f" for at most {timeout_s:g} s" if timeout_s else "") + "; Ctrl-C to stop")
        while True:
            final = self.paths.run_dir.is_dir() and final_model_present(self.paths.run_dir)
            stable: set[str] = set()
            if self.paths.run_dir.is_dir():
                current = {}
                for ck in discover_checkpoints(self.paths.run_dir):
                    current[ck.path] = _dir_signature(Path(ck.path))
                    if seen.get(ck.path) == current[ck.path]:
                        stable.add(ck.path)
                seen = current

                def ready(ck: Checkpoint) -> bool:
                    return ck.kind == "base" or ck.path in stable

                self.run_once(ready)
                pending = [ck for sw in (self, *self.companions) for ck, _, st in sw.plan() if st != "done"]
                trainer = training_in_progress(self.paths.run_dir)
                if final and not pending and trainer is None:
                    self.log(f"[{PROG}] the final model is evaluated; done")
                    return "final"
                if final and not pending and not said_extended:
                    said_extended = True
                    self.log(f"[{PROG}] the final model is evaluated, but {trainer} is still writing "
                             f"{self.paths.run_dir} (the run is being extended): watching on")
            if timeout_s is not None and time.time() - t0 >= timeout_s:
                self.log(f"[{PROG}] --watch_timeout {timeout_s:g} s reached; stopping (rerun to finish the rest)")
                return "timeout"
            sleep(poll_s)

    # -- outputs -----------------------------------------------------------------------------------
    def write_csv(self) -> None:
        write_sweep_csv(self.paths.results_dir, self.paths.run_dir, self.state)


def run_pipelined(items) -> list[dict]:
    """Evaluate [(sweep, checkpoint, model path)] in order; for a sweep with `start`, the scoring and writing of
    one item (CPU) run in a background thread (one worker) while the next item loads and generates (GPU).
    Results are recorded from this thread, in order.  Returns one timing row per item evaluated:
    {"checkpoint", "benchmark", "step_s", load/generate/score/write seconds}; step_s is the sweep's wall time
    from this item's start to the next one's (for the last, to its end): what the item costs the sweep."""
    rows: list[dict] = []
    prev = None  # (sweep, checkpoint, path, future, began)

    def settle(next_began: float | None) -> None:
        nonlocal prev
        sw, ck, path, fut, began = prev
        prev = None
        summary = fut.result()
        step_s = (next_began or time.time()) - began
        sw.record(ck, path, summary, time.time() - began, step_s=step_s)
        rows.append(_timing_row(sw, ck, summary, step_s))

    # The scorer is pure Python: while it holds the GIL the generating thread waits up to the switch interval
    # (5 ms by default) to launch its next decode window; 1 ms keeps generation close to its unshared speed.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, 0.001))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ifeval-score") as pool:
        try:
            for sw, ck, path in items:
                began = time.time()
                if sw.start is None:  # a runner without start_checkpoint: one after the other
                    if prev is not None:
                        settle(began)
                    summary = sw.evaluate_one(ck, path)
                    rows.append(_timing_row(sw, ck, summary, time.time() - began))
                    continue
                what = "" if sw.benchmark == "ifeval" else f" [{sw.benchmark}]"
                sw.log(f"[{PROG}] evaluating {ck.name}{what} ({ck.kind}, step {ck.step}): {path}")
                kwargs = {"loaded": sw.session} if sw.session is not None else {}
                pending = sw.start(path, str(sw.paths.results_dir / ck.name), sw.cfg_for(ck), **kwargs)
                if prev is not None:  # scored while this item generated: record it
                    settle(began)
                prev = (sw, ck, path, pool.submit(pending.finish), began)
        finally:
            try:
                if prev is not None:
                    settle(None)
            finally:
                sys.setswitchinterval(switch)
    return rows


def _timing_row(sw: Sweep, ck: Checkpoint, summary, step_s: float) -> dict:
    t = (summary or {}).get("timing") or {} if isinstance(summary, dict) else {}
    return {"checkpoint": ck.name, "benchmark": sw.benchmark, "step_s": round(step_s, 3),
            **{k: t.get(k) for k in results.TIMING_FIELDS}}


def timing_table(rows: list[dict]) -> str:
    """Per evaluation: the sweep's wall seconds it took (scoring overlapped) vs its generation seconds."""
    lines = [f"[{PROG}] timing (s): {'checkpoint':>16} {'benchmark':>9} {'sweep':>7} {'generate':>8} {'ratio':>6} "
             f"{'load':>6} {'score':>6} {'write':>6}"]
    for r in rows:
        g = r.get("generate_s") or 0.0
        ratio = f"{r['step_s'] / g:.2f}" if g > 0 else "-"
        f = lambda k: f"{r[k]:.2f}" if r.get(k) is not None else "-"  # noqa: E731
        lines.append(f"[{PROG}] timing (s): {r['checkpoint']:>16} {r['benchmark']:>9} {r['step_s']:7.2f} "
                     f"{f('generate_s'):>8} {ratio:>6} {f('load_s'):>6} {f('score_s'):>6} {f('write_s'):>6}")
    per: dict[str, list[float]] = {}
    for r in rows:  # checkpoint -> [sweep s, generate s] over its benchmarks
        acc = per.setdefault(r["checkpoint"], [0.0, 0.0])
        acc[0] += r["step_s"]
        acc[1] += r.get("generate_s") or 0.0
    later = list(per.values())[1:]
    if later and sum(g for _, g in later) > 0:
        wall, gen = sum(w for w, _ in later) / len(later), sum(g for _, g in later) / len(later)
        lines.append(f"[{PROG}] per checkpoint after the first ({len(later)}): sweep {wall:.2f} s, generation "
                     f"{gen:.2f} s, ratio {wall / gen:.2f}")
    return "\n".join(lines)


def training_in_progress(run_dir: Path) -> str | None:
    """"a trainer (pid N)" when a live process holds the run directory's lock (sftbench.core.lock: training, or a
    run being extended by --resume_from_checkpoint); None when no lock is there or its process is gone.  A lock
    from another host cannot be checked and counts as live (--watch_timeout ends the wait)."""
    info = read_lock(Path(run_dir) / LOCK_NAME)
    if info is None:
        return None
    pid, host = int(info.get("pid") or 0), info.get("host")
    if info and host == socket.gethostname() and not pid_alive(pid):
        return None
    return f"a trainer (pid {pid}" + ("" if not host or host == socket.gethostname() else f" on {host}") + ")"


def _dir_signature(p: Path) -> tuple:
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file()))
    except OSError:
        return ()


# --------------------------------------------------------------------------------------------- CLI
def build_parser(config_cls) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """(parser, SweepConfig flag names, eval config flag names): both generated by sftbench/core/cli.py."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="IFEval every checkpoint of a training run (one process; resumable) and write sweep.csv. "
                    "Then `python -m sftbench.analysis.report RESULTS_DIR` writes the report.",
        formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="training output directory (holds checkpoint-<step>/, metrics.jsonl, sft_config.json)")
    p.add_argument("results_dir", help="where to write checkpoint-<step>/ results, sweep.csv and sweep.json")
    inc = next(f for f in dataclasses.fields(SweepConfig) if f.name == "include_base")
    p.add_argument("--include_base", nargs="?", const="", default=field_default(inc), metavar="PATH",
                   help=inc.metadata["help"])
    sweep_names = add_config_arguments(p, SweepConfig)
    group = p.add_argument_group("evaluation options (the same as ifeval/run.sh; passed to every checkpoint)")
    eval_names = add_config_arguments(group, config_cls, hidden=("score_only",), skip=("benchmark",))
    return p, sweep_names, eval_names


def _load_runner():
    from sftbench.eval import run as runner  # lazy: the sweep's --help and dry runs need no scorer or generator

    return runner


def parse_sweep_args(argv: list[str] | None, config_cls) -> tuple[argparse.Namespace, Any, SweepConfig]:
    """The sweep's command line -> (namespace with run_dir and results_dir, eval config, SweepConfig).
    A malformed flag: usage + exit 2 (argparse); --score_only: UserError."""
    parser, sweep_names, eval_names = build_parser(config_cls)
    args = parser.parse_args(argv)
    if getattr(args, "score_only", None):  # one responses file would be scored as every checkpoint's answers
        raise UserError("--score_only scores one responses file: use it with ifeval/run.sh, not with a sweep, "
                        "which generates answers for each checkpoint.")
    cfg = config_from_namespace(config_cls, args, eval_names)
    opts = config_from_namespace(SweepConfig, args, sweep_names, include_base=args.include_base)
    return args, cfg, opts


def configs_from_flags(flags: list[str], config_cls) -> tuple[Any, SweepConfig]:
    """(eval config, SweepConfig) from sweep flags alone (no directories), through the sweep's own parser: for a
    caller that builds the configs once and runs several sweeps (sftbench.search)."""
    _, cfg, opts = parse_sweep_args(["RUN_DIR", "RESULTS_DIR", *flags], config_cls)
    return cfg, opts


def sweep(run_dir, results_dir, cfg, opts: SweepConfig | None = None, *, runner=None) -> Sweep:
    """Evaluate every checkpoint of `run_dir` into `results_dir` (the CLI as a function; --dry_run is the CLI's).

    cfg: the runner's EvalConfig; opts: the sweep's own options (opts.include_base: the starting model as step 0,
    "" = the one recorded in the run).  runner: a module-like object with EvalConfig and evaluate_checkpoint
    (default sftbench.eval.run).  Returns the Sweep (its companions: the other --benchmarks).  UserError on bad input."""
    runner = runner or _load_runner()
    opts = opts or SweepConfig()
    with DirLock(results_dir, what="sweep", flag="RESULTS_DIR"):  # one sweep per results dir (docs/GUARANTEES.md)
        s = _make_sweeps(Path(run_dir), Path(results_dir), cfg, opts, runner)
        _run(s, opts)
    return s


def main(argv: list[str] | None = None, *, runner=None) -> int:
    """CLI entry.  `runner`: a module-like object with EvalConfig and evaluate_checkpoint (tests pass a fake)."""
    try:
        runner = runner or _load_runner()
        args, cfg, opts = parse_sweep_args(argv, runner.EvalConfig)
        if opts.dry_run:
            first = _make_sweeps(Path(args.run_dir), Path(args.results_dir), cfg, opts, runner)
            what = {"done": "skip (done)", "todo": "evaluate", "stale": "re-evaluate (weights changed)"}
            rows = [(ck.step, sw.benchmark, f"{ck.name:>18}  {sw.benchmark:<8}  {ck.kind:<10}  {what[st]}  {path}")
                    for sw in (first, *first.companions) for ck, path, st in sw.plan()]
            rows += [(rundir.checkpoint_step(name), "", f"{name:>18}  {'-':<8}  {'-':<10}  skip (not a complete "
                      f"checkpoint: {why})  {path}") for name, path, why in first.skipped()]
            for *_, line in sorted(rows):
                print(line)
            return 0
        first = sweep(args.run_dir, args.results_dir, cfg, opts, runner=runner)
        csvs = " and ".join(str(sw.paths.csv_file) for sw in (first, *first.companions))
        print(f"[{PROG}] wrote {csvs}; report: python -m sftbench.analysis.report {args.results_dir}")
    except UserError as e:
        exit_with_user_error(e, PROG)
    except KeyboardInterrupt:
        print(f"[{PROG}] interrupted; rerun the same command to finish the remaining checkpoints", file=sys.stderr)
        return 130
    return 0


def parse_benchmarks(spec: str) -> list[str]:
    """`--benchmarks ifeval,ifbench` -> ["ifeval", "ifbench"] (UserError for an unknown or repeated name)."""
    names = [b.strip().lower() for b in str(spec).split(",") if b.strip()]
    bad = [b for b in names if b not in results.BENCHMARKS]
    if not names or bad or len(set(names)) != len(names):
        raise UserError(f"--benchmarks {spec!r}: give a comma-separated list of {', '.join(results.BENCHMARKS)} "
                        f"(each once), e.g. --benchmarks ifeval,ifbench.")
    return names


def benchmark_config(cfg, benchmark: str):
    """The eval config of one benchmark of a sweep: --data and --subset select IFEval prompts, so IFBench
    takes its own ($SFTBENCH_IFBENCH_DATA or the shipped copy) and the full set."""
    if benchmark == results.DEFAULT_BENCHMARK:
        return dataclasses.replace(cfg, benchmark=benchmark)
    return dataclasses.replace(cfg, benchmark=benchmark, data=None, subset="full")


def _make_sweeps(run_dir: Path, results_dir: Path, cfg, opts: SweepConfig, runner) -> Sweep:
    """One Sweep per --benchmarks entry (the first returned, the others its companions), sharing one lazily
    opened EvalSession; results of benchmark B in results.benchmark_dir(results_dir, B)."""
    names = parse_benchmarks(opts.benchmarks)
    sweeps = [_make_sweep(run_dir, results.benchmark_dir(results_dir, b), benchmark_config(cfg, b), opts, runner)
              for b in names]
    holder: dict = {}

    def session():
        if "s" not in holder:
            holder["s"] = _open_session(runner, sweeps[0].cfg)
        return holder["s"]

    want = getattr(runner, "expected_settings_hash", None)
    start = getattr(runner, "start_checkpoint", None)
    for sw in sweeps:
        if want is not None:
            sw.expected_hash = lambda p, c, _w=want: _w(p, c, session=session())
        sw.session_factory = session
        sw.start = start
    first = sweeps[0]
    first.companions = sweeps[1:]
    return first


def _make_sweep(run_dir: Path, results_dir: Path, cfg, opts: SweepConfig, runner) -> Sweep:
    """Check the directories, resolve --include_base, and build the Sweep (UserError before any write)."""
    if not opts.watch and not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found.")
    if run_dir.resolve() == results_dir.resolve():
        raise UserError(f"{results_dir}: the results directory must differ from the run directory.")
    include_base = base_model_from_run(run_dir) if opts.include_base == "" else opts.include_base
    resolve = getattr(runner, "resolve_model_path", None) or resolve_model_path
    sweep = Sweep(run_dir, results_dir, cfg, runner.evaluate_checkpoint, include_base=include_base,
                  force=opts.force, expected_hash=getattr(runner, "expected_settings_hash", None),
                  resolve_model=resolve)
    base = sweep.state.get("include_base")
    if base is not None:
        sweep.base_template = base_template(run_dir, resolve(base), cfg)
    return sweep


def _open_session(runner, cfg):
    """The runner's EvalSession (scorer and compiled machinery, built once), or None to load per checkpoint."""
    session_cls = getattr(runner, "EvalSession", None)
    if session_cls is None:
        return None
    try:
        return session_cls(cfg)
    except TypeError as e:  # a runner whose session takes other arguments: let it load per checkpoint
        print(f"[{PROG}] EvalSession(cfg) failed ({e}); each checkpoint loads its own machinery", file=sys.stderr)
        return None


def _run(sweep: Sweep, opts: SweepConfig) -> None:
    factory = getattr(sweep, "session_factory", None)
    if factory is not None:
        for sw in (sweep, *sweep.companions):
            sw.session = factory()
    if opts.watch:
        sweep.watch(poll_s=opts.poll_s, timeout_s=opts.watch_timeout)
        return
    n_new, n_done = sweep.run_once()
    if n_new + n_done == 0:
        raise UserError(f"{sweep.paths.run_dir}: no complete checkpoint-<step>/ directory (config.json + weights) "
                        f"and no final model found.")


if __name__ == "__main__":
    sys.exit(main())
