"""Evaluate every checkpoint of a training run with IFEval, in one process, resumably.

    python -m ifeval.sweep ckpt/run1 results/run1 [--include_base [PATH]] [--watch] [eval options]

Writes `results/run1/checkpoint-<step>/` (one IFEval result directory each, see docs/ARCHITECTURE.md),
`results/run1/sweep.csv` (one row per checkpoint) and `results/run1/sweep.json` (the run dir, the eval
settings and what was evaluated), rewritten after every checkpoint so the curve grows while it runs.

- Discovery: `checkpoint-<step>/` directories holding config.json and a weights file (`.checkpoint-*.tmp`
  is ignored; an incomplete `checkpoint-<step>/` is skipped with a log line, and listed by --dry_run), the
  final model in the run directory's root (skipped when its trainer_state.json global_step equals a
  checkpoint's step: same weights), and with `--include_base` the starting model as step 0.
- Resumable and idempotent: a checkpoint whose summary.json is complete with the same settings and the same
  weights (sftbench.fingerprint) is skipped; one whose weights changed (a retrain into the same run directory)
  is re-evaluated; a different setting is an error (use a new results directory or --force).
- `--watch`: poll the run directory and evaluate checkpoints as training writes them; stop once the final
  model is there and evaluated (or after --watch_timeout seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sftbench import rundir
from sftbench.cli import HelpFormatter, add_config_arguments, config_from_namespace, field_default
from sftbench.errors import UserError, exit_with_user_error
from sftbench.io import read_json
from sftbench.rundir import final_model_present, is_model_dir, load_metrics, loss_at_step  # noqa: F401 (API)

from ifeval import results
from ifeval.config import SweepConfig
from ifeval.results import CSV_COLUMNS, METRICS, read_summary, sweep_rows, write_sweep_csv  # noqa: F401 (API)

PROG = "ifeval.sweep"


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
def config_dict(cfg: Any) -> dict:
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    if isinstance(cfg, dict):
        return dict(cfg)
    return dict(vars(cfg))


def config_hash(cfg: Any) -> str:
    """sha256 of the eval config (all fields, canonical JSON): the sweep-level settings identity."""
    blob = json.dumps(config_dict(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _same_model(a: str | None, b: str | None) -> bool:
    """One model under two spellings (relative vs absolute path, a symlink) counts as the same."""
    from ifeval.run import same_model  # lazy: the sweep's CLI imports the runner only when it runs

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
                 resolve_model: Callable[[str], str] | None = None, log=print):
        self.paths = SweepPaths(Path(run_dir), Path(results_dir))
        self.cfg = cfg
        self.evaluate = evaluate
        self.session = session
        self.include_base = include_base
        self.force = force
        self.expected_hash = expected_hash
        self.resolve_model = resolve_model or (lambda p: p)
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
            want = self.expected_hash(model_path, self.cfg)
            if have == want:
                return "done"
            problem = f"its settings_hash {str(have)[:12]} differs from this sweep's {want[:12]}"
        elif entry is not None:
            if entry.get("settings_hash") == have and entry.get("eval_config_hash") == self.cfg_hash \
                    and _same_model(entry.get("model_path"), model_path):
                return "done"
            problem = "it was written with other settings or for another model than this sweep's"
        else:
            conflicts = _settings_conflicts(summary, self.cfg)
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
        summary = self.evaluate(model_path, str(out), self.cfg, **kwargs)
        if not isinstance(summary, dict):
            summary = read_summary(out) or {}
        self.state["entries"][ck.name] = results.sweep_entry(ck.step, ck.kind, model_path, summary.get("settings_hash"),
                                                             self.cfg_hash, wall_s=time.time() - t0)
        self._save_state()
        self.write_csv()
        acc = (summary.get("accuracy") or {}).get("prompt_strict", {}).get("value")
        if acc is not None:
            self.log(f"[{PROG}] {ck.name}: prompt-level strict accuracy {100 * acc:.2f}%")
        return summary

    def run_once(self, ready: Callable[[Checkpoint], bool] = lambda ck: True) -> tuple[int, int]:
        """Evaluate every ready, not yet evaluated checkpoint.  Returns (evaluated now, already done)."""
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
            self.log(f"[{PROG}] {len(done)} checkpoint(s) already evaluated with these settings: "
                     f"{', '.join(ck.name for ck in done)}")
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        it = tqdm(todo, desc="checkpoints", unit="ckpt", file=sys.stderr) if tqdm and len(todo) > 1 else todo
        for ck, path in it:
            self.evaluate_one(ck, path)
        self.write_csv()
        return len(todo), len(done)

    def watch(self, poll_s: float = 60.0, timeout_s: float | None = None, sleep=time.sleep) -> str:
        """Poll the run directory; evaluate checkpoints once complete and unchanged over one poll.

        Returns "final" when the final model was evaluated, "timeout" when timeout_s passed first.
        A checkpoint is evaluated only when its file list, sizes and mtimes are the same at two
        consecutive polls (trainers that do not write atomically), so a half-written one is never read.
        """
        t0 = time.time()
        seen: dict[str, tuple] = {}
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
                pending = [ck for ck, _, st in self.plan() if st != "done"]
                if final and not pending:
                    self.log(f"[{PROG}] the final model is evaluated; done")
                    return "final"
            if timeout_s is not None and time.time() - t0 >= timeout_s:
                self.log(f"[{PROG}] --watch_timeout {timeout_s:g} s reached; stopping (rerun to finish the rest)")
                return "timeout"
            sleep(poll_s)

    # -- outputs -----------------------------------------------------------------------------------
    def write_csv(self) -> None:
        write_sweep_csv(self.paths.results_dir, self.paths.run_dir, self.state)


def _dir_signature(p: Path) -> tuple:
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file()))
    except OSError:
        return ()


# --------------------------------------------------------------------------------------------- CLI
def build_parser(config_cls) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """(parser, SweepConfig flag names, eval config flag names): both generated by sftbench/cli.py."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="IFEval every checkpoint of a training run (one process; resumable) and write sweep.csv. "
                    "Then `python -m analysis.report RESULTS_DIR` writes the report.",
        formatter_class=HelpFormatter)
    p.add_argument("run_dir", help="training output directory (holds checkpoint-<step>/, metrics.jsonl, sft_config.json)")
    p.add_argument("results_dir", help="where to write checkpoint-<step>/ results, sweep.csv and sweep.json")
    inc = next(f for f in dataclasses.fields(SweepConfig) if f.name == "include_base")
    p.add_argument("--include_base", nargs="?", const="", default=field_default(inc), metavar="PATH",
                   help=inc.metadata["help"])
    sweep_names = add_config_arguments(p, SweepConfig)
    group = p.add_argument_group("evaluation options (the same as ifeval/run.sh; passed to every checkpoint)")
    eval_names = add_config_arguments(group, config_cls, hidden=("score_only",))
    return p, sweep_names, eval_names


def _load_runner():
    try:
        from ifeval import run as runner
    except ImportError as e:  # pragma: no cover - the runner ships with the project
        raise UserError(f"the IFEval runner (ifeval/run.py) could not be imported: {e}") from None
    return runner


def main(argv: list[str] | None = None, *, runner=None) -> int:
    """CLI entry.  `runner`: a module-like object with EvalConfig and evaluate_checkpoint (tests pass a fake)."""
    try:
        runner = runner or _load_runner()
    except UserError as e:
        exit_with_user_error(e, PROG)
    parser, sweep_names, eval_names = build_parser(runner.EvalConfig)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "score_only", None):  # one responses file would be scored as every checkpoint's answers
            raise UserError("--score_only scores one responses file: use it with ifeval/run.sh, not with a sweep, "
                            "which generates answers for each checkpoint.")
        cfg = config_from_namespace(runner.EvalConfig, args, eval_names)
        opts = config_from_namespace(SweepConfig, args, sweep_names, include_base=args.include_base)
        sweep = _make_sweep(Path(args.run_dir), Path(args.results_dir), cfg, opts, runner)
        if opts.dry_run:
            what = {"done": "skip (done)", "todo": "evaluate", "stale": "re-evaluate (weights changed)"}
            rows = [(ck.step, f"{ck.name:>18}  {ck.kind:<10}  {what[st]}  {path}") for ck, path, st in sweep.plan()]
            rows += [(rundir.checkpoint_step(name), f"{name:>18}  {'-':<10}  skip (not a complete checkpoint: {why})  "
                      f"{path}") for name, path, why in sweep.skipped()]
            for _, line in sorted(rows):
                print(line)
            return 0
        sweep.session = _open_session(runner, cfg)
        _run(sweep, opts)
        print(f"[{PROG}] wrote {sweep.paths.csv_file}; report: python -m analysis.report {args.results_dir}")
    except UserError as e:
        exit_with_user_error(e, PROG)
    except KeyboardInterrupt:
        print(f"[{PROG}] interrupted; rerun the same command to finish the remaining checkpoints", file=sys.stderr)
        return 130
    return 0


def _make_sweep(run_dir: Path, results_dir: Path, cfg, opts: SweepConfig, runner) -> Sweep:
    """Check the directories, resolve --include_base, and build the Sweep (UserError before any write)."""
    if not opts.watch and not run_dir.is_dir():
        raise UserError(f"{run_dir}: run directory not found.")
    if run_dir.resolve() == results_dir.resolve():
        raise UserError(f"{results_dir}: the results directory must differ from the run directory.")
    include_base = base_model_from_run(run_dir) if opts.include_base == "" else opts.include_base
    resolve = getattr(runner, "resolve_model_path", None)
    if resolve is None:
        try:
            from sftbench.models import resolve_model_path as resolve
        except ImportError:  # pragma: no cover
            resolve = None
    return Sweep(run_dir, results_dir, cfg, runner.evaluate_checkpoint, include_base=include_base,
                 force=opts.force, expected_hash=getattr(runner, "expected_settings_hash", None),
                 resolve_model=resolve)


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
    if opts.watch:
        sweep.watch(poll_s=opts.poll_s, timeout_s=opts.watch_timeout)
        return
    n_new, n_done = sweep.run_once()
    if n_new + n_done == 0:
        raise UserError(f"{sweep.paths.run_dir}: no complete checkpoint-<step>/ directory (config.json + weights) "
                        f"and no final model found.")


if __name__ == "__main__":
    sys.exit(main())
