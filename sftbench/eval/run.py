"""IFEval (or IFBench, `--benchmark ifbench`) for one checkpoint: generate -> score -> summary, resumable and atomic.

    python -m sftbench.eval.run MODEL OUT [options]          (bash ifeval/run.sh MODEL OUT [options])
    python -m sftbench.eval.run OUT --score_only responses.jsonl [options]

OUT receives (docs/ARCHITECTURE.md): responses.jsonl, eval_results_strict.jsonl, eval_results_loose.jsonl,
memory_samples.jsonl (GPU only) and summary.json, written last.  While generating, each finished batch is
appended to OUT/responses.partial.jsonl (settings in OUT/partial_settings.json); rerunning the same command
after an interruption generates only the missing prompts.  A complete OUT with the same settings is
returned as is; one holding another model's results, or other settings, is an error.

Python API (used by sftbench/eval/sweep.py):
    cfg = EvalConfig(max_new_tokens=1024)
    session = EvalSession(cfg)                          # scorer + prompt set (+ fast generator), built once
    summary = evaluate_checkpoint("ckpt/run1/checkpoint-100", "results/run1/checkpoint-100", cfg, loaded=session)
    pending = start_checkpoint(model, out, cfg, loaded=session)   # checks + generation (GPU) ...
    summary = pending.finish()                                    # ... scoring + writing (CPU; a sweep overlaps it)

summary.json's "timing" gives the seconds of each stage (load, generate, score, write; sftbench/eval/results.py).
IFBench prompts whose checkers need NLTK data that is not installed are dropped before generation (logged;
listed in summary.json "dropped_unscorable").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jinja2

from sftbench.core import fingerprint as fpr
from sftbench.core.cli import HelpFormatter, add_config_arguments, config_defaults, config_from_namespace
from sftbench.core.errors import UserError, exit_with_user_error
from sftbench.core.io import append_jsonl, atomic_write_json, atomic_write_jsonl, iter_jsonl, read_json
from sftbench.core.capabilities import generation_line, generation_path, probe
from sftbench.core.lock import DirLock
from sftbench.core.memory import MemoryMonitor, apply_memory_cap, torch_peak_gib
from sftbench.core.rundir import model_step
from sftbench.engine import generate as gen
from sftbench.engine.generate import fast_generator_class, pick_generation_dtype
from sftbench.model.load import check_config_matches_weights, check_finite_weights, check_weight_files, load_model
from sftbench.model.offline import check_model_dir, resolve_model_path
from sftbench.model.chat_template import ChatTemplate
from sftbench.model.hf import (chat_template_of, load_generation_config, load_tokenizer, stop_token_ids,
                               tokenizer_files_fingerprint)

from sftbench.tasks import data as ifdata
from sftbench.eval import results
from sftbench.eval.config import EvalConfig

PROG = "sftbench.eval.run"
REPO = Path(__file__).resolve().parents[2]  # the repository root (sftbench/eval/run.py)
PARTIAL = "responses.partial.jsonl"
PARTIAL_SETTINGS = "partial_settings.json"
RESULT_FILES = results.RESULT_FILES


# ----------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[{PROG}] {msg}", file=sys.stderr, flush=True)


def resolve_user_path(p: str | None) -> str | None:
    """A relative path that does not exist from the working directory but does from the repo root is taken
    from the repo root (so `bash ifeval/run.sh ckpt/... results/...` works from ifeval/ too)."""
    if p is None:
        return None
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return str(path)
    if (REPO / path).exists():
        return str(REPO / path)
    return str(path)


def resolve_out_dir(p: str) -> Path:
    """OUT: relative to the working directory, except when running inside this repo's ifeval/ folder."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path
    if Path.cwd().resolve() == (REPO / "ifeval").resolve():
        return REPO / path
    return path


def model_identity(model_path: str | None) -> str | None:
    """How results name a model: a local directory by its absolute, symlink-free path (so `runs/a/checkpoint-8`
    and `/home/me/runs/a/checkpoint-8` are one model); a hub id or a missing path as given."""
    if not model_path:
        return model_path
    p = Path(model_path).expanduser()
    return str(p.resolve()) if p.exists() else model_path


def same_model(a: str | None, b: str | None) -> bool:
    return a == b or (a is not None and b is not None and model_identity(a) == model_identity(b))


def resolve_model(name_or_path: str) -> str:
    return model_identity(resolve_model_path(resolve_user_path(name_or_path)))


def _check_loadable(model_path: str) -> None:
    """Weights + tokenizer present in a local directory (hub ids are checked by from_pretrained)."""
    p = Path(model_path)
    if p.is_dir():
        check_model_dir(p)
        check_config_matches_weights(p)  # a config beside other weights would evaluate a random model
    elif p.exists():
        raise UserError(f"{p}: a model path must be a directory, not a file.")


def checked_fingerprint(model_path: str) -> str | None:
    """The weights' sftbench.core.fingerprint (None for a hub id); UserError for a truncated or corrupt weights file,
    before anything is written."""
    check_weight_files(model_path)
    return fpr.fingerprint(model_path)


def resolve_device(cfg: EvalConfig):
    from sftbench.core.device import pick_device  # lazy: imports torch; --help and score-only runs need none

    return pick_device(cfg.device)


def resolve_dtype(cfg: EvalConfig, device) -> str:
    return pick_generation_dtype(cfg.dtype, device)


def resolve_backend(cfg: EvalConfig, device) -> tuple[str, str | None]:
    """(backend, a log line when we fell back)."""
    want = cfg.backend
    if want == "auto":
        want = "fast" if device.type == "cuda" else "hf"
    if want == "fast":
        if fast_generator_class() is None:
            return "hf", "sftbench/engine/fast_generate.py (FastGenerator) is not available; falling back to hf model.generate"
    return want, None


def resolve_batch_size(cfg: EvalConfig, device, backend: str) -> int | str:
    """The recorded batch size: an int, or "auto" for the fast backend's memory-planned slots."""
    if cfg.batch_size is not None:
        return cfg.batch_size
    if backend == "fast":
        return "auto"
    return 64 if device.type == "cuda" else 8


FAST_CHUNK = 256  # prompts per fast-generator call: continuous batching inside, a resumable append after


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def settings_hash(settings: dict, model_path: str | None) -> str:
    # "benchmark": "ifeval" is the default of results written before IFBench: hashed as absent, so they still match.
    if settings.get("benchmark") == results.DEFAULT_BENCHMARK:
        settings = {k: v for k, v in settings.items() if k != "benchmark"}
    blob = json.dumps({"settings": settings, "model_path": model_path}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------- session
class EvalSession:
    """The heavy, model-independent pieces, built once and reused across checkpoints (and benchmarks):
    each benchmark's scorer (punkt_tab made available first), its validated prompt set, the tokenizer and
    rendered prompt ids (while the tokenizer files stay the same), and the generator (the fast one keeps its
    compiled graphs; a checkpoint's weights are loaded once for all benchmarks)."""

    def __init__(self, cfg: EvalConfig | None = None):
        self.cfg = cfg or EvalConfig()
        self._scorers: dict = {}
        self._prompt_sets: dict = {}
        self._tokenizers: dict = {}
        self._encoded: dict = {}
        self.fast_generator = None
        self.generator = None       # the last generator built, and what it holds:
        self.generator_key = None   # (backend, device, dtype, batch, spec, weights fingerprint)
        self.scorer_for(self.cfg.benchmark)  # checks punkt_tab (and the checkers' imports) before anything else

    def scorer_for(self, benchmark: str):
        if benchmark not in self._scorers:
            if benchmark == "ifbench":
                from sftbench.tasks.ifbench import IFBenchScorer  # lazy: the scorers load lm-eval/NLTK (~0.5 s)

                self._scorers[benchmark] = IFBenchScorer(seed=self.cfg.seed)
            else:
                from sftbench.tasks.scoring import Scorer  # lazy: as above

                self._scorers[benchmark] = Scorer(seed=self.cfg.seed)
        return self._scorers[benchmark]

    @property
    def scorer(self):
        """IFEval's scorer (the API before IFBench)."""
        return self.scorer_for("ifeval")

    def prompts(self, cfg: EvalConfig) -> ifdata.PromptSet:
        env = ifbench_env() if cfg.benchmark == "ifbench" else os.environ.get(ifdata.ENV_VAR)
        key = (cfg.benchmark, cfg.subset, cfg.data, cfg.limit, env)
        if key not in self._prompt_sets:
            if cfg.limit is not None and cfg.limit < 1:
                raise UserError(f"--limit {cfg.limit}: must be at least 1.")
            ps = self._load_ifbench(cfg) if cfg.benchmark == "ifbench" else \
                ifdata.load_prompt_set(cfg.subset, resolve_user_path(cfg.data), log=log)
            if cfg.limit is not None:
                ps = dataclasses.replace(ps, examples=ps.examples[: cfg.limit])
            if cfg.benchmark == "ifbench":
                self.scorer_for("ifbench").check(ps.examples, ps.source)
            else:
                self.scorer_for("ifeval").check_ids(ps.examples, ps.source)
            self._prompt_sets[key] = ps
        return self._prompt_sets[key]

    def _load_ifbench(self, cfg: EvalConfig) -> ifdata.PromptSet:
        """IFBench's prompts less those whose checkers need NLTK data that is not installed (logged, recorded)."""
        from sftbench.tasks import ifbench  # lazy: the scorers load lm-eval/NLTK (~0.5 s)

        if cfg.subset != "full":
            raise UserError(f"--subset {cfg.subset} selects IFEval prompts; IFBench has no subsets (use --subset full).")
        path = resolve_user_path(cfg.data)
        examples = ifbench.load_ifbench_prompts(path)
        source = str(ifbench.ifbench_source(path).resolve())
        bad = ifbench.unscorable(examples)
        kept = [e for e in examples if e.key not in bad]
        dropped = {}
        if bad:
            need: dict[str, int] = {}
            for res in bad.values():
                for r in res:
                    need[r] = need.get(r, 0) + 1
            dropped = {"count": len(bad), "keys": sorted(bad), "missing_nltk_data": need}
            log(f"IFBench: dropping {len(bad)} of {len(examples)} prompts before generation: their checkers need NLTK "
                f"data not installed here ({', '.join(f'{r}: {n}' for r, n in need.items())}); scores are over the "
                f"other {len(kept)} (keys recorded in summary.json {results.DROPPED})")
        if not kept:
            raise UserError(f"{source}: no IFBench prompt can be scored here (missing NLTK data: "
                            f"{', '.join(sorted({r for v in bad.values() for r in v}))}).")
        return ifdata.PromptSet(kept, source, "full", ifdata.sha256_of(kept), dropped=dropped)

    def tokenizer(self, model_path: str, cfg: EvalConfig):
        """The checked tokenizer, reused while the model's tokenizer files (and the template option) are the same."""
        key = (tokenizer_files_fingerprint(model_path), cfg.chat_template, cfg.system_prompt)
        if key[0] is None or key not in self._tokenizers:
            tok = _load_checked_tokenizer(model_path, cfg, self.prompts(cfg))
            if key[0] is None:
                return tok
            self._tokenizers = {key: tok}  # one kept: a run's checkpoints share their tokenizer
        return self._tokenizers[key]

    def encoded(self, tokenizer, cfg: EvalConfig, ps: ifdata.PromptSet) -> tuple[list[str], list[list[int]]]:
        """(rendered prompt strings, their token ids), computed once per tokenizer and prompt set."""
        key = (id(tokenizer), cfg.benchmark, ps.sha256, len(ps.examples), cfg.system_prompt)
        if key not in self._encoded:
            texts = gen.render_prompts(tokenizer, [e.prompt for e in ps.examples], cfg.system_prompt)
            self._encoded[key] = (texts, gen.encode(tokenizer, texts))
        return self._encoded[key]


def weights_signature(model_path: str) -> tuple:
    """A local model's weight files by name, size and mtime (a hub id: itself), to know loaded weights are current."""
    p = Path(model_path)
    if not p.is_dir():
        return (model_path,)
    return (str(p), tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir()
                                 if f.suffix in (".safetensors", ".bin") or f.name == "config.json")))


def ifbench_env() -> str | None:
    from sftbench.tasks.ifbench import ENV_VAR as IFBENCH_ENV  # lazy: as above

    return os.environ.get(IFBENCH_ENV)


def build_settings(cfg: EvalConfig, ps: ifdata.PromptSet, device, dtype: str, backend: str,
                   template: ChatTemplate) -> dict:
    """The settings recorded in summary.json; chat_template: `model`, `chatml (tokenizer has none)`,
    `plain_chatml`, `homework` or the template file's path (sftbench.model.chat_template.resolve_chat_template)."""
    return {
        "backend": backend, "max_new_tokens": cfg.max_new_tokens, "batch_size": resolve_batch_size(cfg, device, backend),
        "dtype": dtype,
        "device": device.type, "subset": cfg.subset, "limit": cfg.limit, "data_path": ps.source,
        "data_sha256": ps.sha256, "system_prompt": cfg.system_prompt, "chat_template": template.name,
        "chat_template_sha256": template.sha256, "padding_side": "left", "seed": cfg.seed,
        "benchmark": cfg.benchmark,
    }


def expected_settings_hash(model_path: str, cfg: EvalConfig, session: EvalSession | None = None) -> str:
    """The settings_hash evaluate_checkpoint would record (no model is loaded)."""
    model_path = model_identity(model_path)
    session = session or EvalSession(cfg)
    ps = session.prompts(cfg)
    device = resolve_device(cfg)
    backend, _ = resolve_backend(cfg, device)
    template = chat_template_of(session.tokenizer(model_path, cfg))
    return settings_hash(build_settings(cfg, ps, device, resolve_dtype(cfg, device), backend, template), model_path)


# ----------------------------------------------------------------------------------------- OUT state
def check_out_dir(out: Path, model_path: str | None, shash: str, settings: dict,
                  fingerprint: str | None = None) -> dict | None:
    """The complete summary to return as is, None to (re)start; UserError for another model's results or
    other settings (nothing is removed).  Results or unfinished answers of other weights at the same path
    (a retrain into the same directory) are stale: logged and redone, the unfinished answers discarded."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: OUT exists and is a file; give a directory.")
    summ = out / results.SUMMARY
    if summ.is_file():
        try:
            s = read_json(summ)
        except UserError:
            s = None
        if isinstance(s, dict) and s.get("complete") is True:
            if not same_model(s.get("model_path"), model_path):
                raise UserError(f"{out}: holds the IFEval results of another model ({s.get('model_path')}), not "
                                f"{model_path}. Use a separate OUT directory per checkpoint.")
            stale = results.weights_changed(s, summ, model_path, fingerprint)
            if stale:
                log(f"{out}: {stale}; re-evaluating")
                _discard_stale_partial(out, model_path, fingerprint)
                return None
            # results written before paths were made absolute hashed the path as typed
            if s.get("settings_hash") in (shash, settings_hash(settings, s.get("model_path"))):
                return s
            raise UserError(f"{out}: holds complete results for this model with other settings "
                            f"({_settings_diff(s.get('settings') or {}, settings)}). Use a new OUT directory, or "
                            f"delete {out} to re-evaluate.")
    ps_file = out / PARTIAL_SETTINGS
    if ps_file.is_file():
        try:
            old = read_json(ps_file)
        except UserError:
            old = {}
        old = old if isinstance(old, dict) else {}
        if same_model(old.get("model_path"), model_path) and _discard_stale_partial(out, model_path, fingerprint, old):
            return None
        if not same_model(old.get("model_path"), model_path):
            raise UserError(f"{out}: holds an unfinished IFEval run of another model ({old.get('model_path')}). "
                            f"Use another OUT directory, or delete {ps_file} and {out / PARTIAL}.")
        if old.get("settings_hash") not in (shash, settings_hash(settings, old.get("model_path"))):
            raise UserError(f"{out}: holds an unfinished run of this model with other settings "
                            f"({_settings_diff(old.get('settings') or {}, settings)}). Rerun with the same options "
                            f"to finish it, or delete {ps_file} and {out / PARTIAL} to start over.")
    return None


def _discard_stale_partial(out: Path, model_path: str | None, fingerprint: str | None, old: dict | None = None) -> bool:
    """Remove OUT's unfinished answers when they came from other weights than those at model_path now
    (old: partial_settings.json, read here when None).  True when they were removed."""
    ps_file = out / PARTIAL_SETTINGS
    if old is None:
        try:
            old = read_json(ps_file) if ps_file.is_file() else None
        except UserError:
            old = {}
    stale = results.weights_changed(old, ps_file, model_path, fingerprint) if isinstance(old, dict) else None
    if not stale:
        return False
    log(f"{out / PARTIAL}: unfinished answers of other weights (the weights at {model_path} changed since they "
        f"were generated); discarding them")
    for f in (PARTIAL, PARTIAL_SETTINGS):  # the answers first: settings without answers resume nothing
        (out / f).unlink(missing_ok=True)
    return True


def _settings_diff(old: dict, new: dict) -> str:
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(diff) or "model or settings differ"


def repair_partial(out: Path) -> None:
    """Drop a torn last line (a crash mid-append) so that rows appended now stay parseable."""
    f = out / PARTIAL
    if f.is_file() and f.stat().st_size and not f.read_bytes().endswith(b"\n"):
        rows = [row for _, row in iter_jsonl(f, tolerate_partial_tail=True)]
        atomic_write_jsonl(f, rows)


def read_partial(out: Path, shash: str, wanted: set[int]) -> dict[int, dict]:
    f = out / PARTIAL
    if not f.is_file():
        return {}
    done = {}
    for _, row in iter_jsonl(f, tolerate_partial_tail=True):
        if isinstance(row, dict) and row.get("settings_hash") == shash and row.get("key") in wanted:
            done[row["key"]] = row
    return done


# ----------------------------------------------------------------------------------------- generation
def generate_responses(model_path: str, out: Path, cfg: EvalConfig, session: EvalSession, ps: ifdata.PromptSet,
                       device, dtype: str, backend: str, shash: str, settings: dict, tokenizer) -> dict:
    """Generate the prompts not yet in the partial file; returns {"generation": stats, "memory": peaks,
    "timing": {"load_s", "generate_s"}} (load: prompts rendered + weights into the generator)."""
    t0 = time.perf_counter()
    texts, ids = session.encoded(tokenizer, cfg, ps)
    repair_partial(out)
    done = read_partial(out, shash, {e.key for e in ps.examples})
    todo = [i for i, e in enumerate(ps.examples) if e.key not in done]
    if done:
        log(f"resuming: {len(done)} of {len(ps.examples)} prompts already generated in {out / PARTIAL}")
    gen_stats = {"wall_s": 0.0, "generated_tokens": 0, "new_prompts": len(todo)}
    if not todo:
        return {"generation": gen_stats, "memory": {}, "timing": {"load_s": time.perf_counter() - t0}}
    generator = _build_generator(model_path, cfg, session, device, dtype, backend, tokenizer)
    gen_stats["stop_token_ids"] = generator.spec.stop_ids
    eng = getattr(generator, "engine", None)  # the fast generator: what it really runs (summary.json "path")
    if eng is not None and hasattr(eng, "attention"):
        gen_stats["path"] = {"attention": eng.attention, "compile": bool(getattr(eng, "compile", False)),
                             "cuda_graphs": bool(getattr(eng, "use_graph", False))}
    atomic_write_json(out / PARTIAL_SETTINGS, {"model_path": model_path, "settings_hash": shash, "settings": settings,
                                               results.FINGERPRINT: fpr.fingerprint(model_path),
                                               "started": results.now()})
    load_s = time.perf_counter() - t0
    # Longest first: an out-of-memory error shows in the first batch, not after an hour.
    order = sorted(todo, key=lambda i: -len(ids[i]))
    chunk = settings["batch_size"] if generator.name == "hf" else max(FAST_CHUNK, cfg.batch_size or 0)
    batches = [order[s: s + chunk] for s in range(0, len(order), chunk)]
    with DeviceMemory(device) as memory:
        n_tok, wall = _generate_batches(generator, batches, ids, texts, ps, out, shash, f"generating ({backend})")
    gen_stats.update(generated_tokens=n_tok, wall_s=wall)
    return {"generation": gen_stats, "memory": memory.result, "timing": {"load_s": load_s, "generate_s": wall}}


def _build_generator(model_path: str, cfg: EvalConfig, session: EvalSession, device, dtype: str, backend: str,
                     tokenizer):
    """The backend's Generator holding this checkpoint's weights: the session's when it already holds them
    (a second benchmark of the same checkpoint), the fast engine re-armed straight from the safetensors
    files when it can be, else a model loaded (under --memory_cap_gib) and put behind the backend."""
    cap_line = apply_memory_cap(cfg.memory_cap_gib, device)
    if cap_line:
        log(cap_line)
    stops = stop_token_ids(tokenizer, load_generation_config(model_path))
    spec = gen.GenSpec(cfg.max_new_tokens, stops, int(tokenizer.pad_token_id))
    key = (backend, str(device), dtype, cfg.batch_size, (spec.max_new_tokens, tuple(stops), spec.pad_id),
           weights_signature(model_path))
    g = session.generator
    if g is not None and session.generator_key == key:
        g.tokenizer = tokenizer
        return g  # already holds these weights
    session.generator = session.generator_key = None
    g = None
    if backend == "fast" and session.fast_generator is not None:
        g = gen.reload_fast_generator(session.fast_generator, model_path, tokenizer, spec, max_batch=cfg.batch_size,
                                      dtype=dtype, log=log)
    if g is None:
        model = load_model(model_path, dtype, device)
        g = gen.make_generator(backend, model, tokenizer, spec, max_batch=cfg.batch_size, device=device,
                               dtype=dtype, log=log, reuse=session.fast_generator)
    if backend == "fast":
        session.fast_generator = g if isinstance(g, gen.FastBackend) else None
    check_finite_weights(model_path, g)  # a diverged checkpoint is refused, not scored (docs/GUARANTEES.md)
    session.generator, session.generator_key = g, key
    return g


def _generate_batches(generator, batches: list[list[int]], ids: list[list[int]], texts: list[str],
                      ps: ifdata.PromptSet, out: Path, shash: str, desc: str) -> tuple[int, float]:
    """Generate batch by batch, appending each answer to the partial file; (generated tokens, wall s)."""
    from tqdm.auto import tqdm

    n_tok = 0
    bar = tqdm(total=sum(map(len, batches)), desc=desc, unit="prompt")
    t0 = time.time()
    try:
        for batch in batches:
            for i, c in zip(batch, generator.generate([ids[i] for i in batch])):
                e = ps.examples[i]
                append_jsonl(out / PARTIAL, results.response_row(e.key, e.prompt, texts[i], c.text, c.generated_tokens,
                                                                 c.hit_cap, settings_hash=shash))
                n_tok += c.generated_tokens
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{n_tok / max(time.time() - t0, 1e-9):.0f}")
    finally:
        bar.close()
    return n_tok, time.time() - t0


class DeviceMemory:
    """Torch and NVML peaks (and NVML samples) over a `with` block on a GPU; `.result` after it ({}-ish on CPU)."""

    def __init__(self, device):
        self.device = device
        self.monitor = None
        self.result: dict = {}

    def __enter__(self):
        if self.device.type == "cuda":
            import torch  # lazy: CUDA runs only; the CLI's --help and score-only runs need no torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self.monitor = MemoryMonitor(device_index=self.device.index or 0).start()
        return self

    def __exit__(self, *exc):
        if self.monitor is not None:
            self.monitor.stop()
        self.result = torch_peak_gib(self.device)
        if self.monitor is not None:
            self.result.update({k: v for k, v in self.monitor.summary().items()
                                if k in ("nvml_peak_gib", "nvml_mean_gib", "gpu_name", "gpu_total_gib")})
            self.result["samples"] = [{"t": t, "nvml_used_gib": round(u / 1024**3, 4)} for t, u in self.monitor.samples]
        return False


# ----------------------------------------------------------------------------------------- main entry
def evaluate_checkpoint(model_path: str | None, out_dir, cfg: EvalConfig | None = None, *,
                        loaded: EvalSession | None = None) -> dict:
    """Evaluate one model into out_dir; returns the summary dict (also written to out_dir/summary.json).

    All input checks run before anything is written.  With cfg.score_only, model_path may be None.
    """
    return start_checkpoint(model_path, out_dir, cfg, loaded=loaded).finish()


class Pending:
    """A checkpoint whose answers are generated: `finish()` scores them and writes the result directory
    (CPU only, so a sweep runs it in a background thread while the next checkpoint generates on the GPU).
    `summary` is set at once when there was nothing to do; `foreground_s`: seconds start_checkpoint took."""

    def __init__(self, finish=None, summary: dict | None = None, foreground_s: float = 0.0):
        self._finish, self.summary, self.foreground_s = finish, summary, foreground_s

    def finish(self) -> dict:
        if self.summary is None:
            self.summary = self._finish()
        return self.summary


def start_checkpoint(model_path: str | None, out_dir, cfg: EvalConfig | None = None, *,
                     loaded: EvalSession | None = None) -> Pending:
    """Check the inputs, then generate every missing answer (the GPU part of evaluate_checkpoint)."""
    t_start = time.time()
    cfg = cfg or EvalConfig()
    session = loaded if loaded is not None else EvalSession(cfg)
    out = Path(out_dir)
    if cfg.score_only:
        return Pending(summary=_score_only(model_path, out, cfg, session, t_start))
    model_path, ps, device, dtype, backend, settings, shash = _check_inputs(model_path, cfg, session)
    fp = checked_fingerprint(model_path)
    existing = check_out_dir(out, model_path, shash, settings, fp)
    if existing is not None:
        log(f"{out}: already complete with these settings; nothing to do")
        return Pending(summary=existing)
    t_tok = time.perf_counter()
    tokenizer = session.tokenizer(model_path, cfg)
    tok_s = time.perf_counter() - t_tok
    # OUT is created by its first write, once the model has loaded: a model that fails to load leaves no OUT
    what = "IFBench" if cfg.benchmark == "ifbench" else "IFEval"
    log(f"{what}: {len(ps.examples)} prompts from {ps.source}; model {model_path}; {device.type} {dtype}; "
        f"backend {backend}")
    gpath = generation_path(probe(device), backend, dtype)
    # the text of the template the prompts were rendered with, whatever its name (`model`, the fallback, a file):
    # what the report compares, so a base evaluated with its run's template file and checkpoints carrying that
    # template as their own share one curve (kept out of settings_hash, like the rest of the path)
    gpath["template_sha256"] = hashlib.sha256(chat_template_of(tokenizer).text.encode()).hexdigest()
    log(generation_line(gpath))
    res = generate_responses(model_path, out, cfg, session, ps, device, dtype, backend, shash, settings, tokenizer)
    gpath.update(res["generation"].get("path") or {})
    res["timing"]["load_s"] = res["timing"].get("load_s", 0.0) + tok_s

    def finish() -> dict:
        done = read_partial(out, shash, {e.key for e in ps.examples})
        missing = [e.key for e in ps.examples if e.key not in done]
        if missing:  # pragma: no cover - generation writes every prompt
            raise RuntimeError(f"{out / PARTIAL}: {len(missing)} prompts missing after generation (e.g. {missing[:5]})")
        rows = [{k: v for k, v in done[e.key].items() if k != "settings_hash"} for e in ps.examples]
        extra = {results.FINGERPRINT: fp, results.PATH: gpath, **({results.DROPPED: ps.dropped} if ps.dropped else {})}
        summary = _score_and_write(out, rows, ps, session, cfg, settings, shash, model_path, res, t_start, extra=extra)
        for f in (PARTIAL, PARTIAL_SETTINGS):
            (out / f).unlink(missing_ok=True)
        return summary

    return Pending(finish, foreground_s=time.time() - t_start)


def _check_inputs(model_path: str | None, cfg: EvalConfig, session: EvalSession):
    """Every check before generation, the tokenizer and its template included: (model path, prompts, device,
    dtype, backend, settings, hash)."""
    if not model_path:
        raise UserError("no model given: pass MODEL (a checkpoint directory, hub id or smollm2-135m-instruct-offline).")
    model_path = resolve_model(model_path)
    _check_loadable(model_path)
    if cfg.max_new_tokens < 1 or (cfg.batch_size is not None and cfg.batch_size < 1):
        raise UserError("--max_new_tokens and --batch_size must be at least 1.")
    ps = session.prompts(cfg)
    device = resolve_device(cfg)
    from sftbench.core.device import start_notes  # lazy: imports torch

    for note in start_notes(device):  # once per process: a CPU torch next to a GPU; Windows WDDM
        log(note)
    dtype = resolve_dtype(cfg, device)
    backend, why = resolve_backend(cfg, device)
    if why:
        log(why)
    template = chat_template_of(session.tokenizer(model_path, cfg))
    settings = build_settings(cfg, ps, device, dtype, backend, template)
    return model_path, ps, device, dtype, backend, settings, settings_hash(settings, model_path)


def _load_checked_tokenizer(model_path: str, cfg: EvalConfig, ps: ifdata.PromptSet):
    """The tokenizer, with its template rendered once: no template or a broken one is a UserError before any write."""
    tokenizer = load_tokenizer(model_path, cfg.chat_template, padding_side="left", log=log)
    try:
        gen.render_prompts(tokenizer, [ps.examples[0].prompt], cfg.system_prompt)
    except jinja2.TemplateError as e:
        where = f"--chat_template {cfg.chat_template}" if cfg.chat_template else f"{model_path}: the chat template"
        raise UserError(f"{where}: cannot render a prompt ({type(e).__name__}: {e}). Fix the template, or pass "
                        f"--chat_template plain.") from None
    return tokenizer


def _score_and_write(out: Path, rows: list[dict], ps: ifdata.PromptSet, session: EvalSession, cfg: EvalConfig,
                     settings: dict, shash: str, model_path: str | None, res: dict, t_start: float,
                     extra: dict | None = None) -> dict:
    """Score the rows, write the result directory (summary.json last) and log the four accuracies."""
    from sftbench.tasks.scoring import aggregate  # lazy: as above

    t0 = time.perf_counter()
    by_key = ps.by_key
    examples = [by_key[r["key"]] for r in rows]
    responses = [r["response"] for r in rows]
    if cfg.benchmark == "ifbench":
        from sftbench.tasks.ifbench import score_ifbench  # lazy: as above

        strict, loose = score_ifbench(examples, responses, session.scorer_for("ifbench"))
    else:
        strict, loose = session.scorer.score_all(examples, responses, progress=len(rows) > 50 and sys.stderr.isatty())
    agg = aggregate(strict, loose, seed=cfg.seed)
    timing = {**res.get("timing", {}), "score_s": time.perf_counter() - t0}
    mem = dict(res.get("memory", {}))
    samples = mem.pop("samples", None)
    summary = results.make_summary(
        model_path=model_path, step=model_step(model_path), settings=settings, settings_hash=shash, agg=agg,
        rows=rows, generation=res.get("generation", {}), memory=mem, memory_cap_gib=cfg.memory_cap_gib,
        git_commit=git_commit(), wall_s=time.time() - t_start, extra=extra, timing=timing)
    summary_path = results.write_result_dir(out, rows, strict, loose, samples, summary)
    a = agg["accuracy"]
    log(f"{settings.get('benchmark', 'ifeval')}: prompt strict {100 * a['prompt_strict']['value']:.2f}  inst strict {100 * a['inst_strict']['value']:.2f}  "
        f"prompt loose {100 * a['prompt_loose']['value']:.2f}  inst loose {100 * a['inst_loose']['value']:.2f}  "
        f"({len(rows)} prompts, {summary['counts']['hit_cap']} hit the cap) -> {summary_path}")
    return summary


def _score_only(model_path: str | None, out: Path, cfg: EvalConfig, session: EvalSession, t_start: float) -> dict:
    """Score a responses file: rows with "key" (ours) or only "prompt" (Google's format) and "response"."""
    src = Path(resolve_user_path(cfg.score_only))
    ps_all = session.prompts(dataclasses.replace(cfg, limit=None))
    by_key, by_prompt = ps_all.by_key, {e.prompt: e for e in ps_all.examples}
    rows, seen = [], set()
    for line, obj in iter_jsonl(src):
        where = f"{src}:{line}"
        if not isinstance(obj, dict) or not isinstance(obj.get("response"), str):
            raise UserError(f"{where}: each row needs a string `response` (and `key` or `prompt`).")
        if "key" in obj:
            ex = by_key.get(obj["key"])
            if ex is None:
                raise UserError(f"{where}: key {obj['key']!r} is not in the prompt set {ps_all.source}.")
        elif isinstance(obj.get("prompt"), str):
            ex = by_prompt.get(obj["prompt"])
            if ex is None:
                raise UserError(f"{where}: this prompt is not in the prompt set {ps_all.source} (a revised or "
                                f"foreign prompt); remove the line or pass the matching --data.")
        else:
            raise UserError(f"{where}: the row has neither `key` nor `prompt`.")
        if ex.key in seen:
            raise UserError(f"{where}: a second response for key {ex.key}.")
        seen.add(ex.key)
        rows.append({"key": ex.key, "prompt": ex.prompt, "prompt_text": obj.get("prompt_text"),
                     "response": obj["response"], "generated_tokens": obj.get("generated_tokens"),
                     "hit_cap": obj.get("hit_cap")})
    if not rows:
        raise UserError(f"{src}: no responses in this file.")
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if model_path:
        model_path = resolve_user_path(model_path)
    settings = {"backend": "score_only", "responses_path": str(src.resolve()),
                "responses_sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "subset": cfg.subset,
                "limit": cfg.limit, "data_path": ps_all.source, "data_sha256": ps_all.sha256, "seed": cfg.seed,
                "benchmark": cfg.benchmark}
    shash = settings_hash(settings, model_path)
    if out.resolve() == src.resolve().parent and (out / results.SUMMARY).is_file():
        pass  # rescoring a result directory in place: its summary is replaced
    else:
        existing = check_out_dir(out, model_path, shash, settings)
        if existing is not None:
            return existing
    out.mkdir(parents=True, exist_ok=True)
    return _score_and_write(out, rows, ps_all, session, cfg, settings, shash, model_path, {}, t_start,
                            extra={"scored_from": str(src.resolve())})


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The CLI: MODEL OUT, and one flag per EvalConfig field (generated by sftbench/core/cli.py)."""
    p = argparse.ArgumentParser(
        prog="ifeval/run.sh",
        usage="%(prog)s MODEL OUT [options]\n       %(prog)s [MODEL] OUT --score_only RESPONSES.jsonl [options]",
        description="IFEval one checkpoint: greedy generation with the model's chat template, lm-eval's checkers "
                    "(strict and loose), 95% CIs. Writes OUT/responses.jsonl, eval_results_{strict,loose}.jsonl and "
                    "summary.json (last). Rerun the same command to finish an interrupted run.",
        formatter_class=HelpFormatter)
    p.add_argument("paths", nargs="+", metavar="MODEL OUT",
                   help="MODEL: checkpoint directory, hub id, or smollm2-135m-instruct-offline; OUT: result directory. "
                        "With --score_only, MODEL is optional.")
    add_config_arguments(p, EvalConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_namespace(EvalConfig, args, config_defaults(EvalConfig))
    try:
        if cfg.score_only:
            if len(args.paths) not in (1, 2):
                raise UserError("with --score_only give OUT, or MODEL OUT.")
            model, out = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
        else:
            if len(args.paths) != 2:
                raise UserError(f"expected MODEL OUT, got {len(args.paths)} path(s): {' '.join(args.paths)}.")
            model, out = args.paths
        with DirLock(resolve_out_dir(out), what="evaluation", flag="OUT"):  # one writer per results dir
            evaluate_checkpoint(model, resolve_out_dir(out), cfg)
    except UserError as e:
        exit_with_user_error(e, PROG)
    except KeyboardInterrupt:
        log("interrupted; rerun the same command to generate only the missing prompts")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
