"""Recipe search in one command: train every configuration of a grid, sweep every checkpoint, rank them all.

    python -m sftbench.search GRID.json OUT [--dry_run] [--only NAME,...] [--alpha 0.05] [TRAINER FLAGS ...]
    bash scripts/search.sh GRID.json OUT [...]                     # the same

GRID (JSON):
    {"base":    {trainer flag: value, ...},          # every configuration's flags (TrainConfig field names)
     "eval":    {sweep/eval flag: value, ...},       # passed to every sweep (sftbench.eval.sweep / sftbench/eval/run.py flags)
     "configs": [{"name": "lr2e-5", trainer flag: value, ...}, ...],   # named overrides, and/or
     "axes":    {trainer flag: [value, ...], ...}}   # a product (crossed with each named config, if any)
"extends": "OTHER.json" (a path relative to the grid file) starts from another grid: its base and eval updated by
this file's, its configurations followed by this file's.  A named configuration may say {"after": "NAME"} (an
earlier configuration): a further round of training (expert iteration) that starts from NAME's final model
instead of --model_name_or_path; with --augment_targets self that model answers this round's constraint prompts
(give another --augment_seed for other variants), the passing answers are this round's added data, and training
continues from its weights.
A flag with value true/false is a boolean; null passes `none`.  TRAINER FLAGS after OUT override the grid's
base for every configuration (e.g. --data_path, --model_name_or_path); OUT/runs/<name> is each --output_dir.

Writes OUT/search.json (the grid as resolved, each configuration's state), OUT/runs/<name>/ (training),
OUT/results/<name>/ (its sweep; checkpoint-0 = the starting model, evaluated once in OUT/results/_start/ and
copied), OUT/ranking.csv and OUT/ranking.md: every (configuration, checkpoint) with prompt-level strict accuracy,
the change from the start in points, the exact McNemar p-value against the start, Holm-corrected over every
checkpoint compared, and the verdict; each configuration's best checkpoint also gets the transfer guard
(sftbench.analysis.transfer: instruction-level strict on the trained and held-out IFEval types and IFBench
prompt-level strict, start -> best, and the guard's verdict), and the pick is the best-ranked configuration whose
held-out types or IFBench do not fall significantly (the summary names it and says why a higher one was passed
over).  Resumable and idempotent: a configuration whose training and sweep are
complete is skipped; a half-trained one resumes from its newest checkpoint (restarts when it has none); a
configuration whose flags changed since it was trained is an error (rename it or use a new OUT).  Everything runs
in this one process: each configuration's flags become a TrainConfig (through the trainer's own parser, before any
work) and the grid's eval flags an EvalConfig + SweepConfig (through the sweep's); the search then calls the
trainer (sftbench.train.loop.train under sftbench.train.oom's policy) and the sweep (sftbench.eval.sweep.sweep) as
functions, reusing one evaluation session (scorer, compiled generator) across configurations.  The statistics and
the verdict's words come from sftbench.analysis (paired_stats, verdict).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import itertools
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from sftbench.eval.results import IFBENCH_DIR
from sftbench.core.errors import UserError, exit_with_user_error

PROG = "python -m sftbench.search"
START = "_start"
RESERVED = ("output_dir", "resume_from_checkpoint")
AFTER = "after"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


# ------------------------------------------------------------------------------------------------ the grid
@dataclasses.dataclass
class Config:
    name: str
    flags: dict[str, Any]  # trainer flags (base + overrides), output_dir excluded
    after: str | None = None  # a round after this earlier configuration: starts from its final model


@dataclasses.dataclass
class Grid:
    path: str
    configs: list[Config]
    eval: dict[str, Any]


def flag_args(flags: dict[str, Any]) -> list[str]:
    """{"learning_rate": 2e-5, "bf16": True, "x": None} -> ["--learning_rate", "2e-05", "--bf16", "True", "--x", "none"]."""
    out = []
    for k, v in flags.items():
        out += [f"--{k}", "none" if v is None else str(v)]
    return out


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _product_names(axes: dict[str, list]) -> list[tuple[str, dict]]:
    keys = list(axes)
    return [("_".join(f"{k}={_short(v)}" for k, v in zip(keys, combo)), dict(zip(keys, combo)))
            for combo in itertools.product(*(axes[k] for k in keys))]


def _raw_grid(p: Path, seen: tuple = ()) -> dict:
    """The grid file's JSON object, with "extends": "OTHER.json" (a path relative to this file) resolved: the other
    grid's base and eval updated by this one's, its configurations followed by this one's."""
    from sftbench.core.io import read_json

    if not p.is_file():
        raise UserError(f"{p}: grid file not found. Give a JSON file with \"base\" flags and \"configs\" and/or \"axes\".")
    g = read_json(p)
    if not isinstance(g, dict) or not ({"configs", "axes", "extends"} & set(g)):
        raise UserError(f"{p}: a grid is a JSON object with \"base\" (trainer flags), \"eval\" (sweep flags) and "
                        f"\"configs\" (a list of named overrides) and/or \"axes\" ({{flag: [values]}}).")
    unknown = set(g) - {"base", "eval", "configs", "axes", "description", "extends"}
    if unknown:
        raise UserError(f"{p}: unknown top-level key(s) {sorted(unknown)}; use base, eval, configs, axes, description, "
                        f"extends.")
    if "extends" not in g:
        return g
    if not isinstance(g["extends"], str) or p.resolve() in seen:
        raise UserError(f"{p}: \"extends\" must name another grid file (a path relative to this one), without a cycle.")
    parent = _raw_grid(p.parent / g["extends"], seen + (p.resolve(),))
    if "axes" in g or "axes" in parent:
        raise UserError(f"{p}: \"extends\" and \"axes\" cannot be combined; list the configurations by name.")
    for key in ("base", "eval"):
        if not isinstance(g.get(key, {}), dict) or not isinstance(parent.get(key, {}), dict):
            raise UserError(f"{p}: \"{key}\" must be an object (here and in the grid it extends).")
    configs = g.get("configs", [])
    if not isinstance(configs, list):
        raise UserError(f"{p}: \"configs\" must be a list of named overrides.")
    return {"base": {**parent.get("base", {}), **g.get("base", {})}, "eval": {**parent.get("eval", {}), **g.get("eval", {})},
            "configs": list(parent.get("configs") or []) + configs}


def load_grid(path: str | Path, cli_flags: dict[str, Any] | None = None) -> Grid:
    """Read and validate a grid file (UserError naming the file and the entry)."""
    from sftbench.config.train import TrainConfig

    p = Path(path)
    g = _raw_grid(p)
    fields = set(TrainConfig().to_dict())  # the trainer's flat flag names (sub-configs walked)

    def check_flags(d: Any, where: str) -> dict:
        if not isinstance(d, dict):
            raise UserError(f"{p}: {where} must be an object of trainer flags.")
        bad = [k for k in d if k not in fields or k in RESERVED]
        if bad:
            why = [f"{k} (set by the search)" if k in RESERVED else k for k in bad]
            raise UserError(f"{p}: {where}: not a trainer flag: {', '.join(why)}. See python train_hw_parallel.py --help.")
        return dict(d)

    base = check_flags(g.get("base", {}), "\"base\"")
    base.update(cli_flags or {})
    named: list[tuple[str, dict]] = []
    after: dict[str, str] = {}
    for i, c in enumerate(g.get("configs") or []):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise UserError(f"{p}: configs[{i}] must be an object with a \"name\" and trainer flags.")
        where = f"configs[{i}] ({c['name']})"
        if AFTER in c:
            prev = c[AFTER]
            if not isinstance(prev, str) or prev not in [n for n, _ in named]:
                raise UserError(f"{p}: {where}: \"after\": {prev!r} is not an earlier configuration's name; a round "
                                f"starts from the final model of a configuration listed before it.")
            if "model_name_or_path" in c:
                raise UserError(f"{p}: {where}: give \"after\" or model_name_or_path, not both (\"after\" starts "
                                f"from {prev}'s final model).")
            after[c["name"]] = prev
        named.append((c["name"], check_flags({k: v for k, v in c.items() if k not in ("name", AFTER)}, where)))
    axes = g.get("axes") or {}
    if axes and after:
        raise UserError(f"{p}: \"after\" (rounds) and \"axes\" cannot be combined; list each round as a named "
                        f"configuration.")
    if axes:
        check_flags(axes, "\"axes\"")
        if not all(isinstance(v, list) and v for v in axes.values()):
            raise UserError(f"{p}: \"axes\": every axis must be a non-empty list of values.")
        prod = _product_names(axes)
        named = [(f"{n}_{pn}" if n else pn, {**o, **po}) for n, o in (named or [("", {})]) for pn, po in prod]
    configs = [Config(n, {**base, **o}, after.get(n)) for n, o in named]
    seen: set[str] = set()
    for c in configs:
        if not NAME_RE.match(c.name) or c.name == START:
            raise UserError(f"{p}: configuration name {c.name!r}: use letters, digits and . _ = + - (not {START}).")
        if c.name in seen:
            raise UserError(f"{p}: two configurations are named {c.name!r}; names must be unique.")
        seen.add(c.name)
    ev = g.get("eval", {})
    if not isinstance(ev, dict):
        raise UserError(f"{p}: \"eval\" must be an object of sweep flags (e.g. {{\"limit\": 50}}).")
    return Grid(str(p), configs, dict(ev))


def parsed(where: str, parse: Callable, *args):
    """parse(*args) with a command-line parser's usage error (argparse prints it and exits 2) turned into one
    UserError naming `where` (the grid file and the entry), so a bad grid value stops the search before any work."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(*args)
    except SystemExit:
        lines = [l for l in err.getvalue().splitlines() if l.strip()]
        why = lines[-1].split(" error: ", 1)[-1] if lines else "invalid flags"
        raise UserError(f"{where}: {why}") from None


def train_config(grid: Grid, c: Config, out_dir: Path, resume: bool = False):
    """The configuration's TrainConfig (--output_dir out_dir; resume: --resume_from_checkpoint latest), built by
    the trainer's own parser from the grid's flags: a bad value is a UserError naming the grid file and the
    configuration.  With --augment_fraction, the augmentation settings are checked too."""
    from sftbench.config.train import parse_train_config

    flags = {**c.flags, "model_name_or_path": str(out_dir.parent / c.after)} if c.after else c.flags
    argv = flag_args(flags) + ["--output_dir", str(out_dir)] + (["--resume_from_checkpoint", "latest"] if resume else [])
    where = f"{grid.path}: configuration {c.name}"
    cfg = parsed(where, parse_train_config, argv, f"{PROG} ({c.name})")
    try:
        cfg.check()  # every value, by the config that defines it (as the trainer's start does)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if cfg.augment_fraction > 0:
        from sftbench.train.prepare import checked_augment_config

        checked_augment_config(cfg, model_path="-")
    return cfg


def check_trainer_flags(c: Config, out_dir: Path, grid: Grid | None = None) -> None:
    """Build the configuration's TrainConfig now, so a bad value stops the search before any work."""
    train_config(grid or Grid("the grid", [c], {}), c, out_dir)


def eval_configs(grid: Grid):
    """(EvalConfig, SweepConfig) of the grid's "eval" flags, through the sweep's own parser (UserError naming the
    grid file on a bad flag)."""
    from sftbench.eval.config import EvalConfig
    from sftbench.eval.sweep import configs_from_flags

    return parsed(f"{grid.path}: \"eval\"", configs_from_flags, eval_flag_args(grid.eval), EvalConfig)


def eval_flag_args(flags: dict[str, Any]) -> list[str]:
    """The sweep's flags: a boolean is a switch (--dry_run), None passes `none`."""
    out = []
    for k, v in flags.items():
        if isinstance(v, bool):
            out += [f"--{k}"] if v else []
        else:
            out += [f"--{k}", "none" if v is None else str(v)]
    return out


# ------------------------------------------------------------------------------------- what is done already
def run_complete(run: Path) -> bool:
    """The trainer wrote its final model (root trainer_state.json with "final": true)."""
    f = run / "trainer_state.json"
    if not ((run / "config.json").is_file() and f.is_file()):
        return False
    try:
        return json.loads(f.read_text(encoding="utf-8")).get("final") is True
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


def resumable(run: Path) -> bool:
    from sftbench.train.checkpoint import list_checkpoints

    return any((p / "training_state" / "optimizer.safetensors").is_file() for _, p in list_checkpoints(run))


def result_steps(results: Path) -> set[int]:
    """Steps with a complete result (checkpoint-<step>/summary.json, sftbench.eval.results.read_summary)."""
    from sftbench.eval.results import read_summary
    from sftbench.core.rundir import checkpoint_step

    steps = {checkpoint_step(c.name) for c in results.iterdir()} if results.is_dir() else set()
    return {s for s in steps if s is not None and read_summary(results / f"checkpoint-{s}") is not None}


def run_steps(run: Path) -> set[int]:
    """Steps a sweep of this run evaluates (checkpoints and the final model), plus 0 (the start)."""
    from sftbench.train.checkpoint import list_checkpoints

    steps = {s for s, _ in list_checkpoints(run)} | {0}
    if run_complete(run):
        steps.add(int(json.loads((run / "trainer_state.json").read_text())["global_step"]))
    return steps


# ------------------------------------------------------------------------------------------- the work
TRAIN_PROG = "train_hw_parallel.py"


def _train(cfg) -> int:
    """The trainer, in this process, under its out-of-memory policy (tests wrap it)."""
    from sftbench.train.loop import train
    from sftbench.train.oom import run_with_oom_policy

    return run_with_oom_policy(cfg, train, TRAIN_PROG)


def _sweep(run_dir: Path, results_dir: Path, cfg, opts, runner: "EvalStage | None") -> None:
    """The sweep, in this process (tests wrap it)."""
    from sftbench.eval.sweep import sweep

    sweep(run_dir, results_dir, cfg, opts, runner=runner)


class EvalStage:
    """The evaluation stage as the sweep calls it (sftbench.eval.run's EvalConfig, evaluate_checkpoint,
    start_checkpoint, expected_settings_hash and EvalSession), except that an EvalSession is built once per
    settings and kept: the scorer and the compiled generator then serve every configuration of the search."""

    def __init__(self):
        from sftbench.eval import run

        self.EvalConfig = run.EvalConfig
        self.evaluate_checkpoint = run.evaluate_checkpoint
        self.start_checkpoint = run.start_checkpoint
        self.expected_settings_hash = run.expected_settings_hash
        self._session_cls = run.EvalSession
        self._sessions: dict[str, Any] = {}

    def EvalSession(self, cfg):  # noqa: N802 (the runner's class name: the sweep calls runner.EvalSession(cfg))
        key = repr(cfg)
        if key not in self._sessions:
            self._sessions[key] = self._session_cls(cfg)
        return self._sessions[key]

    def release_gpu(self) -> None:
        """Before training in this process: the sessions' generators give back their KV caches (the trainer
        needs the memory under the same cap); their weights buffers and compiled kernels are kept for the next
        sweep, which reloads the next checkpoint's weights into them."""
        for s in self._sessions.values():
            if s.fast_generator is not None:  # a FastBackend: its engine holds the KV cache
                s.fast_generator.engine.release_buffers()
            s.generator = s.generator_key = None
        _free_memory()


def _call(what: str, fn, *args) -> None:
    try:
        rc = fn(*args)
    except SystemExit as e:  # a stage's user error: it has printed `prog: error: ...`
        rc = e.code if isinstance(e.code, int) else 2
    if rc:
        raise UserError(f"{what} stopped (exit status {rc}); fix the cause above and rerun the same command: "
                        f"finished configurations are kept and skipped.")


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


class Search:
    def __init__(self, grid: Grid, out: str | Path, alpha: float = 0.05, log=print, runner: EvalStage | None = None):
        self.grid, self.out, self.alpha, self._log = grid, Path(out), alpha, log
        self.t0 = time.monotonic()
        self.runner = runner  # None: the plain sftbench.eval.run (a session per sweep)
        self._eval: tuple | None = None
        self.only: set[str] | None = None  # --only: run these configurations (the ranking covers every one done)
        self.state_file = self.out / "search.json"
        self.state = self._load_state()

    def log(self, msg: str) -> None:
        """A progress line with the seconds since the search started (msg starts with "[search] ")."""
        self._log(msg.replace("[search]", f"[search {time.monotonic() - self.t0:.0f} s]", 1), flush=True) \
            if self._log is print else self._log(msg)

    # -- state ---------------------------------------------------------------------------------------------
    def _load_state(self) -> dict:
        from sftbench.core.io import read_json

        old = read_json(self.state_file) if self.state_file.is_file() else {}
        state = {"grid": self.grid.path, "eval": self.grid.eval, "configs": old.get("configs", {})}
        if old and old.get("eval") != self.grid.eval and any(c.get("swept") for c in state["configs"].values()):
            raise UserError(f"{self.out}: was searched with other eval settings ({old.get('eval')} there, "
                            f"{self.grid.eval} now). Use a new OUT: results with different settings must not be mixed.")
        for c in self.grid.configs:
            rec = state["configs"].get(c.name)
            if rec and rec.get(AFTER) != c.after and (self.run_dir(c.name).exists() or rec.get("swept")):
                raise UserError(f"{self.out}: configuration {c.name} was trained after {rec.get(AFTER) or 'the start'}, "
                                f"the grid now says after {c.after or 'the start'}. Rename it in the grid, or use a new OUT.")
            if rec and rec.get("flags") != c.flags and (self.run_dir(c.name).exists() or rec.get("swept")):
                old_f = rec.get("flags") or {}
                diff = [f"--{k} {old_f.get(k)!r} -> {c.flags.get(k)!r}" for k in sorted(set(old_f) | set(c.flags))
                        if old_f.get(k) != c.flags.get(k)]
                raise UserError(f"{self.out}: configuration {c.name} was trained with other flags ({'; '.join(diff[:6])}). "
                                f"Rename it in the grid, or use a new OUT.")
        return state

    def _save(self) -> None:
        from sftbench.core.io import atomic_write_json

        atomic_write_json(self.state_file, self.state)

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def results_dir(self, name: str) -> Path:
        return self.out / "results" / name

    def start_model(self) -> str:
        from sftbench.core.cli import config_defaults
        from sftbench.config.train import TrainConfig

        flags = self.grid.configs[0].flags
        return str(flags.get("model_name_or_path", config_defaults(TrainConfig)["model_name_or_path"]))

    def eval_configs(self, include_base: str):
        """(EvalConfig, SweepConfig with include_base) of the grid's eval flags, parsed once."""
        if self._eval is None:
            self._eval = eval_configs(self.grid)
        cfg, opts = self._eval
        return cfg, dataclasses.replace(opts, include_base=include_base)

    def _sweep(self, what: str, run: Path, res: Path) -> None:
        cfg, opts = self.eval_configs(self.start_model())
        _call(what, _sweep, run, res, cfg, opts, self.runner)

    # -- the steps -----------------------------------------------------------------------------------------
    def plan(self) -> list[tuple[Config, str]]:
        """[(configuration, "done" | "sweep" | "resume" | "restart" | "train")]."""
        out = []
        for c in self.grid.configs:
            run, res = self.run_dir(c.name), self.results_dir(c.name)
            rec = self.state["configs"].get(c.name) or {}
            if run_complete(run):
                done = rec.get("swept") and run_steps(run) <= result_steps(res)
                out.append((c, "done" if done else "sweep"))
            elif run.exists():
                out.append((c, "resume" if resumable(run) else "restart"))
            else:
                out.append((c, "train"))
        return out

    def evaluate_start(self) -> Path:
        """OUT/results/_start/checkpoint-0: the starting model, evaluated once for every configuration."""
        empty, res = self.run_dir(START), self.results_dir(START)
        if 0 not in result_steps(res):
            empty.mkdir(parents=True, exist_ok=True)
            self.log(f"[search] evaluating the starting model {self.start_model()} once (step 0 of every configuration)")
            self._sweep("the sweep of the starting model", empty, res)
        return res / "checkpoint-0"

    def check_first_round(self, c: Config) -> None:
        """A round (c.after) starts from the earlier configuration's final model: UserError until it exists."""
        if not run_complete(self.run_dir(c.after)):
            raise UserError(f"{c.name} is a round after {c.after}, whose training has not finished "
                            f"({self.run_dir(c.after)}); run {c.after} first (leave it in --only).")

    def train(self, c: Config, action: str) -> None:
        run = self.run_dir(c.name)
        if c.after:
            self.check_first_round(c)
        cfg = train_config(self.grid, c, run, resume=action == "resume")
        if action == "restart":
            self.log(f"[search] {c.name}: {run} holds no resumable checkpoint; starting it again")
            shutil.rmtree(run)
        self.state["configs"][c.name] = {"flags": c.flags, AFTER: c.after, "swept": False, "started": _now()}
        self._save()
        self.log(f"[search] {c.name}: training ({'resuming' if action == 'resume' else 'from the start'}"
                 f"{f' of a round after {c.after}' if c.after else ''}): "
                 f"{' '.join(flag_args({k: v for k, v in c.flags.items() if k not in self.common()}))}")
        if self.runner is not None:
            self.runner.release_gpu()
        _call(f"training of {c.name}", _train, cfg)
        _free_memory()

    def sweep(self, c: Config, start_result: Path) -> None:
        run, res = self.run_dir(c.name), self.results_dir(c.name)
        res.mkdir(parents=True, exist_ok=True)
        for sub in ("", IFBENCH_DIR):  # the start's results, shared (the sweep adopts them: same settings)
            src, dst = start_result.parent / sub / "checkpoint-0", res / sub / "checkpoint-0"
            if src.is_dir() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, dst.parent / ".checkpoint-0.tmp", dirs_exist_ok=True)
                (dst.parent / ".checkpoint-0.tmp").rename(dst)
        self._sweep(f"the sweep of {c.name}", run, res)
        rec = self.state["configs"].setdefault(c.name, {"flags": c.flags})
        rec.update({"swept": True, "finished": _now()})
        self._save()
        _free_memory()

    def common(self) -> set[str]:
        """Flags every configuration shares (left out of the log lines and the ranking's config column)."""
        cs = self.grid.configs
        return {k for k, v in cs[0].flags.items() if all(c.flags.get(k, object()) == v for c in cs)} if len(cs) > 1 else set()

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self._save()
        plan = [(c, a) for c, a in self.plan() if self.only is None or c.name in self.only]
        planned = {c.name for c, a in plan if a != "done"}
        for c, action in plan:
            if c.after and action != "done" and c.after not in planned:
                self.check_first_round(c)  # before any work: the round before it will not run here
            self.log(f"[search] {c.name}: {action}")
        start = self.evaluate_start()
        for c, action in plan:
            if action == "done":
                continue
            if action in ("train", "resume", "restart"):
                self.train(c, action)
            self.sweep(c, start)
        res = write_ranking(self, self.alpha)
        self.log(f"[search] done; {len(res['rows'])} checkpoints ranked")
        return res


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------------------ ranking
def _strict_rows(result_dir: Path) -> dict[str, dict]:
    """{prompt: eval_results_strict.jsonl row} of one checkpoint's result directory."""
    from sftbench.eval.results import STRICT
    from sftbench.core.io import read_jsonl

    return {r["prompt"]: r for r in read_jsonl(result_dir / STRICT)}


def ranking_rows(search: Search, alpha: float = 0.05) -> list[dict]:
    """Every (configuration, trained checkpoint) vs the start: accuracy, delta, exact McNemar p, Holm over all
    (sftbench.analysis.verdict.compare_with_start), and the verdict's label (verdict.versus_label)."""
    from sftbench.analysis import verdict as V
    from sftbench.analysis.seen_unseen import group_accuracy, held_out_of

    start_dir = search.results_dir(START) / "checkpoint-0"
    start = _strict_rows(start_dir)
    prompts = list(start)
    common = search.common()
    rows: list[dict] = []
    outcomes: list[tuple[int, list[bool]]] = []
    a = [bool(start[p]["follow_all_instructions"]) for p in prompts]
    for c in search.grid.configs:
        res = search.results_dir(c.name)
        held = held_out_of(search.run_dir(c.name))
        for step in sorted(result_steps(res) - {0}):
            got = _strict_rows(res / f"checkpoint-{step}")
            if set(got) != set(prompts):
                raise UserError(f"{res}/checkpoint-{step}: scored on other prompts than the start "
                                f"({len(got)} vs {len(prompts)}); results with different settings cannot be paired.")
            b = [bool(got[p]["follow_all_instructions"]) for p in prompts]
            outcomes.append((step, b))
            ga = group_accuracy(got.values(), held)
            rows.append({"config": c.name, "step": step, "checkpoint": f"checkpoint-{step}",
                         "prompt_strict": sum(b) / len(b), "start_prompt_strict": sum(a) / len(a),
                         "delta_points": round(100 * (sum(b) - sum(a)) / len(b), 2),
                         "inst_seen": ga.seen, "inst_held_out": ga.held_out, "n_prompts": len(b),
                         "overrides": json.dumps({**({AFTER: c.after} if c.after else {}),
                                                  **{k: v for k, v in c.flags.items() if k not in common}}, sort_keys=True),
                         "result_dir": str(res / f"checkpoint-{step}")})
    _ifbench_columns(search, rows)
    for r, vs in zip(rows, V.compare_with_start(a, outcomes)):
        r.update({"versus": vs, "ckpt_only": vs.better, "start_only": vs.worse, "p_mcnemar": vs.p_value,
                  "p_holm": vs.p_holm, "verdict": V.versus_label(vs, alpha)})
    rows.sort(key=lambda r: (-r["prompt_strict"], r["p_holm"] if r["delta_points"] > 0 else -r["p_holm"],
                             r["config"], r["step"]))
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    return rows


def transfer_pick(search: "Search", rows: list[dict], alpha: float = 0.05) -> tuple[str | None, str]:
    """The transfer guard (sftbench.analysis.transfer) on each configuration's best checkpoint (its first row in
    rank order) against the start: IFEval rows, the held-out types its run recorded (seen_unseen.held_out_types),
    and IFBench rows where the sweep ran IFBench for both (else the guard checks the held-out types only and its
    sentence says so).  Writes the guard's columns into those rows and marks the pick: the best-ranked
    configuration that the guard does not block and that gains on IFEval.  Returns (pick "config checkpoint-N"
    or None, the summary naming it: transfer.pick_sentence)."""
    from sftbench.analysis.seen_unseen import held_out_types
    from sftbench.analysis.transfer import pick_sentence, transfer_guard
    from sftbench.eval.results import STRICT

    if not rows:
        return None, ""
    start = _strict_rows(search.results_dir(START) / "checkpoint-0")
    bench_dir = search.results_dir(START) / IFBENCH_DIR / "checkpoint-0"
    bench_start = _strict_rows(bench_dir) if (bench_dir / STRICT).is_file() else None
    best: dict[str, dict] = {}
    for r in rows:
        best.setdefault(r["config"], r)
    ranked = []
    for name, r in best.items():
        d = search.results_dir(name) / IFBENCH_DIR / r["checkpoint"]
        bench = _strict_rows(d) if bench_start is not None and (d / STRICT).is_file() else None
        if bench is not None and set(bench) != set(bench_start):
            bench = None  # scored on other prompts: cannot be paired (the IFBench columns leave it out too)
        t = transfer_guard(start, _strict_rows(Path(r["result_dir"])), bench_start if bench else None, bench,
                           held_out=held_out_types(search.run_dir(name)), alpha=alpha)
        r.update({"transfer": t, "guard": t.verdict, "guard_blocks": t.blocks,
                  "start_inst_seen": t.seen.start, "start_inst_held_out": t.held_out.start,
                  "held_out_p": t.held_out.p_value,
                  "guard_ifbench_start": None if t.ifbench is None else t.ifbench.start,
                  "guard_ifbench": None if t.ifbench is None else t.ifbench.candidate,
                  "guard_ifbench_p": None if t.ifbench is None else t.ifbench.p_value, "pick": False})
        ranked.append((f"{name} {r['checkpoint']}", t))
    pick, text = pick_sentence(ranked)
    for name, r in best.items():
        r["pick"] = f"{name} {r['checkpoint']}" == pick
    return pick, text


def _ifbench_columns(search: "Search", rows: list[dict]) -> None:
    """IFBench prompt-level strict of each row's checkpoint vs the start's (exact McNemar, Holm over the rows),
    where the sweep ran IFBench too (RESULTS/<config>/ifbench/): is a gain instruction following or IFEval's types?"""
    from sftbench.analysis.verdict import compare_with_start

    start_dir = search.results_dir(START) / IFBENCH_DIR / "checkpoint-0"
    if not (start_dir / "eval_results_strict.jsonl").is_file():
        return
    start = _strict_rows(start_dir)
    a = [bool(start[k]["follow_all_instructions"]) for k in start]
    have, outcomes = [], []
    for r in rows:
        d = search.results_dir(r["config"]) / IFBENCH_DIR / r["checkpoint"]
        got = _strict_rows(d) if (d / "eval_results_strict.jsonl").is_file() else None
        if not got or set(got) != set(start):
            continue
        b = [bool(got[k]["follow_all_instructions"]) for k in start]
        r["ifbench_strict"], r["ifbench_start"] = sum(b) / len(b), sum(a) / len(a)
        r["ifbench_delta_points"] = round(100 * (sum(b) - sum(a)) / len(b), 2)
        have.append(r)
        outcomes.append((r["step"], b))
    for r, vs in zip(have, compare_with_start(a, outcomes)):
        r["ifbench_p_mcnemar"], r["ifbench_p_holm"] = vs.p_value, vs.p_holm


CSV_COLUMNS = ("rank", "config", "step", "checkpoint", "prompt_strict", "delta_points", "ckpt_only", "start_only",
               "p_mcnemar", "p_holm", "verdict", "inst_seen", "inst_held_out", "ifbench_strict", "ifbench_delta_points",
               "ifbench_p_holm", "start_inst_seen", "start_inst_held_out", "held_out_p", "guard_ifbench_start",
               "guard_ifbench", "guard_ifbench_p", "guard", "guard_blocks", "pick", "n_prompts", "overrides",
               "result_dir")


def headline(rows: list[dict], alpha: float) -> str:
    """The search's verdict in one or two sentences (sftbench.analysis.verdict.family_headline); rows ranked."""
    from sftbench.analysis.verdict import family_headline

    return family_headline([(f"{r['config']} {r['checkpoint']}", r["versus"]) for r in rows], alpha)


def _fmt(v, kind: str) -> str:
    if v is None:
        return ""
    if kind == "pct":
        return f"{100 * v:.1f}"
    if kind == "p":
        return f"{v:.3g}"
    if kind == "pts":
        return f"{v:+.1f}"
    return str(v)


def _guard_cell(start, cand, p=None) -> str:
    """"33.4 → 41.6" (percent, start → candidate), with " (p 0.21)" when a p-value is given."""
    from sftbench.analysis.paired_stats import format_p

    if start is None or cand is None:
        return ""
    return f"{100 * start:.1f} → {100 * cand:.1f}" + ("" if p is None else f" (p {format_p(p)})")


def write_ranking(search: Search, alpha: float = 0.05) -> dict:
    """OUT/ranking.csv and OUT/ranking.md; returns {"rows", "headline", "start"}."""
    import csv
    import io

    from sftbench.core.io import atomic_write_text

    rows = ranking_rows(search, alpha)
    pick, pick_text = transfer_pick(search, rows, alpha)
    start = _strict_rows(search.results_dir(START) / "checkpoint-0")
    start_acc = sum(bool(r["follow_all_instructions"]) for r in start.values()) / len(start)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_COLUMNS})  # guard columns: best rows only
    atomic_write_text(search.out / "ranking.csv", buf.getvalue())
    # the family's verdict names checkpoints of configurations the guard does not block first (none is the pick)
    blocked = {r["config"] for r in rows if r.get("guard_blocks")}
    text = (headline(sorted(rows, key=lambda r: r["config"] in blocked), alpha) if rows
            else "No trained checkpoint has results yet.")
    lines = [f"# Recipe search: {search.grid.path}", "", text, "", *([pick_text, ""] if pick_text else []),
             f"Starting model: {search.start_model()}, prompt-level strict {100 * start_acc:.1f}% over {len(start)} "
             f"prompts (step 0 of every configuration). Shared flags: "
             f"{' '.join(flag_args({k: search.grid.configs[0].flags[k] for k in sorted(search.common())})) or 'none'}.",
             "", "| rank | config | checkpoint | prompt strict % | Δ vs start (points) | ckpt-only / start-only | "
                 "McNemar p | Holm p | verdict | inst. seen % | inst. held-out % | IFBench strict % | IFBench Δ | "
                 "IFBench Holm p | inst. seen % start → best | inst. held-out % start → best | "
                 "IFBench strict % start → best | transfer guard |",
             "|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['rank']} | {r['config']} | {r['checkpoint']} | {_fmt(r['prompt_strict'], 'pct')} | "
                     f"{_fmt(r['delta_points'], 'pts')} | {r['ckpt_only']} / {r['start_only']} | "
                     f"{_fmt(r['p_mcnemar'], 'p')} | {_fmt(r['p_holm'], 'p')} | {r['verdict']} | "
                     f"{_fmt(r['inst_seen'], 'pct')} | {_fmt(r['inst_held_out'], 'pct')} | "
                     f"{_fmt(r.get('ifbench_strict'), 'pct')} | {_fmt(r.get('ifbench_delta_points'), 'pts')} | "
                     f"{_fmt(r.get('ifbench_p_holm'), 'p')} | "
                     f"{_guard_cell(r.get('start_inst_seen'), r.get('inst_seen'))} | "
                     f"{_guard_cell(r.get('start_inst_held_out'), r.get('inst_held_out'), r.get('held_out_p'))} | "
                     f"{_guard_cell(r.get('guard_ifbench_start'), r.get('guard_ifbench'), r.get('guard_ifbench_p'))} | "
                     f"{(r['guard'] + (' (pick)' if r['pick'] else '')) if 'guard' in r else ''} |")
    lines += ["", "Configurations (flags that differ):", ""]
    common = search.common()
    lines += [f"- {c.name}: {' '.join(flag_args({k: v for k, v in c.flags.items() if k not in common})) or '(base)'}"
              + (f" (a round after {c.after}: starts from its final model)" if c.after else "")
              for c in search.grid.configs]
    lines += ["", f"Paired on the same prompts; ckpt-only / start-only: prompts only the checkpoint / only the start "
                  f"follows fully. Holm over all {len(rows)} (configuration, checkpoint) pairs compared with the "
                  f"start, alpha {alpha}. Instruction-level accuracy on the constraint types seen in training and on "
                  f"the held-out ones: sftbench/analysis/seen_unseen.py. Transfer guard "
                  f"(sftbench/analysis/transfer.py), on each configuration's best checkpoint: held-out types by a "
                  f"paired bootstrap over prompts, IFBench by exact McNemar, uncorrected, alpha {alpha}; a "
                  f"significant fall on either is never the pick."]
    atomic_write_text(search.out / "ranking.md", "\n".join(lines) + "\n")
    return {"rows": rows, "headline": text, "start": start_acc, "pick": pick, "pick_sentence": pick_text}


# ---------------------------------------------------------------------------------------------------- CLI
def _parse_flag_list(rest: list[str]) -> dict[str, Any]:
    """`--name value` pairs (and a bare `--name` = True) after OUT, for the trainer."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        a = rest[i]
        if not a.startswith("--"):
            raise UserError(f"{a!r}: expected a trainer flag (--name value) after GRID OUT.")
        name, eq, val = a[2:].partition("=")
        if eq:
            out[name] = val
            i += 1
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            out[name] = rest[i + 1]
            i += 2
        else:
            out[name] = True
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # trainer flags pass through: none may be taken for ours
    p.add_argument("grid", metavar="GRID", help="the grid (JSON; see sftbench/grids/default.json, which `sftbench search default OUT` runs)")
    p.add_argument("out", metavar="OUT", help="search directory: runs/, results/, search.json, ranking.md/.csv")
    p.add_argument("--only", default=None, help="comma-separated configuration names to run (the ranking covers all done)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the Holm-corrected tests")
    p.add_argument("--dry_run", action="store_true", help="list the configurations and what would be done, then exit")
    ns, rest = p.parse_known_args(argv)
    try:
        grid = load_grid(ns.grid, _parse_flag_list(rest))
        if ns.only:
            want = [s.strip() for s in ns.only.split(",") if s.strip()]
            missing = sorted(set(want) - {c.name for c in grid.configs})
            if missing:
                raise UserError(f"--only: no configuration named {', '.join(missing)} in {ns.grid}.")
        for c in grid.configs:  # every configuration's TrainConfig and the eval configs, before any work
            train_config(grid, c, Path(ns.out) / "runs" / c.name)
        eval_configs(grid)
        search = Search(grid, ns.out, ns.alpha, runner=None if ns.dry_run else EvalStage())
        search.only = set(want) if ns.only else None
        if ns.dry_run:
            for c, action in search.plan():
                print(f"{c.name:>32}  {action:<8}  {f'(after {c.after}) ' if c.after else ''}{' '.join(flag_args(c.flags))}")
            return 0
        res = search.run()
    except UserError as e:
        exit_with_user_error(e, PROG)
    except KeyboardInterrupt:
        print(f"[search] interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    print(res["headline"])
    if res["pick_sentence"]:
        print(res["pick_sentence"])
    print(f"[search] wrote {Path(ns.out) / 'ranking.md'} and ranking.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
