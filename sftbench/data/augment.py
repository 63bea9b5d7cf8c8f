"""Constraint augmentation of any chat data: verifiable instructions added to the last user turn, and an answer
that is checked to satisfy them by the checkers the evaluation uses (lm-eval's IFEval code, via sftbench.tasks.scoring).

    python -m sftbench.data.augment IN.jsonl OUT.jsonl [--fraction 0.5] [--types all] [--hold_out_types default]
                               [--seed 0] [--targets data|self --model PATH --samples 4 --temperature 0.7]

For a `fraction` of the conversations (chosen with `seed`), one to `max_constraints` compatible constraint types
(sftbench/data/augment_types.py: templates, rewrites, CONFLICTS) are appended to the last user turn, and the answer to
it is rewritten deterministically so that it satisfies them:
- targets "data": the dataset's own answer is rewritten;
- targets "self": the starting model answers the augmented prompt (`samples` samples at `temperature`, through an
  injected `generate(prompts, n, temperature) -> [[answer, ...], ...]`); a sample that passes as it is wins,
  else the first sample that passes after the same rewrite.  Single-turn conversations only.
An augmented example is kept only if its answer passes the checker of every constraint it lists; otherwise the
conversation stays as it was and the reason is counted.  Every output record is
    {"messages": [...], "constraints": [{"instruction_id": ..., "kwargs": {...}}, ...]}
(constraints empty when untouched), so anyone can re-verify it with `verify_record`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Callable, Literal, Optional

from sftbench.data import augment_types as T
from sftbench.core.cli import HelpFormatter, add_config_arguments, config_from_namespace, setting
from sftbench.core.errors import UserError, exit_with_user_error
from sftbench.core.io import iter_jsonl

# Bump when a rewrite, template or the selection changes, so cached augmented data is rebuilt.
AUGMENT_VERSION = 1

Generate = Callable[[list[str], int, float], list[list[str]]]


@dataclass
class AugmentConfig:
    fraction: float = setting(0.5, "Share of the conversations that get constraints (0..1).")
    types: str = setting("all", "Comma-separated IFEval instruction ids to add, or 'all' (every type in "
                                "sftbench/data/augment_types.py).")
    hold_out_types: str = setting("default", "Comma-separated ids never added, 'default' (augment_types.HELD_OUT: "
                                             "a fifth of IFEval's types, measured apart) or 'none'.")
    max_constraints: int = setting(3, "At most this many constraints per conversation (at least one).")
    seed: int = setting(0, "Seed of the selection, the constraints and their phrasing.")
    targets: Literal["data", "self"] = setting("data", "Answers to rewrite: the data's own, or the starting "
                                                       "model's (--model) answers to the augmented prompts.")
    model: Optional[str] = setting(None, "--targets self: the starting model (a local directory or HF id).")
    samples: int = setting(4, "--targets self: samples per prompt.")
    temperature: float = setting(0.7, "--targets self: sampling temperature.")
    max_new_tokens: int = setting(1024, "--targets self: generation cap per answer.")

    def check(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise UserError(f"--fraction {self.fraction}: give a share between 0 and 1.")
        if self.max_constraints < 1:
            raise UserError(f"--max_constraints {self.max_constraints}: give at least 1.")
        if self.targets == "self" and self.samples < 1:
            raise UserError(f"--samples {self.samples}: give at least 1.")
        if not self.allowed():
            raise UserError(f"--types {self.types} --hold_out_types {self.hold_out_types}: no type is left to add "
                            f"(held out: {', '.join(self.held_out())}). Name other types, or pass --hold_out_types none.")

    def allowed(self) -> list[str]:
        """The types this run may add, in pipeline order; UserError for unknown ids."""
        want = list(T.ORDER) if self.types.strip() == "all" else _ids(self.types, "--types")
        return [t for t in T.ORDER if t in want and t not in self.held_out()]

    def held_out(self) -> list[str]:
        if self.hold_out_types == "default":
            return list(T.HELD_OUT)
        return [] if self.hold_out_types == "none" else _ids(self.hold_out_types, "--hold_out_types", known_only=False)


def _ids(text: str, flag: str, known_only: bool = True) -> list[str]:
    ids = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    bad = [i for i in ids if known_only and i not in T.TYPES]
    if bad:
        raise UserError(f"{flag}: unknown or unsupported type(s) {bad}; the types this module writes are: "
                        f"{', '.join(T.ORDER)}.")
    return ids


@dataclass
class AugmentStats:
    """Counts of one run.  dropped: reason -> conversations left unaugmented; failed_checks: instruction id ->
    times its checker failed on a rewritten answer; per_type: id -> {"tried", "kept"}."""

    records: int = 0
    selected: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    failed_checks: dict[str, int] = field(default_factory=dict)
    per_type: dict[str, dict[str, int]] = field(default_factory=dict)
    constraints_per_example: dict[str, int] = field(default_factory=dict)
    target_source: dict[str, int] = field(default_factory=dict)
    held_out: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------


def _normalize(record, where: str) -> list[dict]:
    """The data stage's validation of one chat record (roles, order, empty turns)."""
    from sftbench.data.normalise import normalize_messages

    return normalize_messages(record, where)


def read_chat_jsonl(path: str | Path) -> list[dict]:
    """[{"messages": [...], ...other keys}] of a chat JSONL; UserError naming file and line for a missing file,
    bad UTF-8, malformed JSON or an invalid conversation (all checked before any work)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found. Give a .jsonl file with one {{\"messages\": [...]}} per line.")
    out = []
    for i, rec in iter_jsonl(path):  # names file, line and byte offset for bad UTF-8 or malformed JSON
        msgs = _normalize(rec, f"{path}:{i}")
        out.append({**{k: v for k, v in rec.items() if k not in ("messages", "conversations")}, "messages": msgs})
    if not out:
        raise UserError(f"{path}: no conversations in this file.")
    return out


# ------------------------------------------------------------------------------------------------------------
# Building one augmented example
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Draft:
    """The plan for one conversation: which types, their kwargs (internal "_" keys included), the prompt."""

    ids: list[str]
    kwargs: dict[str, dict]
    prompt: str
    answer: str


def public(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if not k.startswith("_")}


def choose_types(answer: str, request: str, allowed: list[str], rng: Random, max_k: int) -> dict[str, dict]:
    """{id: planned kwargs} for 1..max_k compatible types that suit this answer (empty when none does)."""
    pool = list(allowed)
    rng.shuffle(pool)
    k = rng.randint(1, max_k)
    chosen: dict[str, dict] = {}
    for iid in pool:
        if len(chosen) == k:
            break
        if all(T.compatible(iid, c) for c in chosen):
            kw = T.TYPES[iid].plan(answer, request, rng)
            if kw is not None:
                chosen[iid] = kw
    return chosen


def rewrite(answer: str, planned: dict[str, dict], keep: int | None = None) -> str:
    """Apply the chosen rewrites in pipeline order; `keep` overrides the sentences a cut keeps."""
    text = answer.strip()
    for iid in T.ORDER:
        if iid in planned:
            kw = planned[iid] if keep is None or not T.TYPES[iid].cuts else {**planned[iid], "_keep": keep}
            text = T.TYPES[iid].apply(text, kw)
    return text


def finalize(text: str, planned: dict[str, dict], rng: Random, util) -> dict[str, dict] | str:
    """Final kwargs of every planned type, or the id of the first that has no honest value for this text."""
    out = {}
    for iid in T.ORDER:
        if iid in planned:
            fin = T.TYPES[iid].finalize
            kw = planned[iid] if fin is None else fin(text, planned[iid], rng, util)
            if kw is None:
                return iid
            out[iid] = kw
    return out


def phrase(request: str, ids: list[str], kwargs: dict[str, dict], rng: Random) -> str:
    """The last user turn: the request, then one sentence per constraint (in the order they were chosen)."""
    sep = rng.choice(("\n\n", "\n", " "))
    return request.rstrip() + sep + " ".join(T.TYPES[i].describe(kwargs[i], rng) for i in ids)


def draft(answer: str, request: str, allowed: list[str], rng: Random, max_k: int, util) -> Draft | str:
    """A Draft with the data answer rewritten, or the reason why none could be made."""
    planned = choose_types(answer, request, allowed, rng, max_k)
    if not planned:
        return "no_suitable_type"
    text = rewrite(answer, planned)
    final = finalize(text, planned, rng, util)
    if isinstance(final, str):
        return f"no_valid_kwargs:{final}"
    ids = list(planned)
    return Draft(ids=ids, kwargs=final, prompt=phrase(request, ids, final, rng), answer=text)


class Checker:
    """lm-eval's IFEval checkers as the evaluation loads them (sftbench.tasks.scoring.Scorer), strict mode."""

    def __init__(self, seed: int = 0):
        from sftbench.tasks.scoring import Scorer

        self.scorer = Scorer(seed=seed)
        self.util = self.scorer.registry.instructions.instructions_util

    def failures(self, prompt: str, constraints: list[dict], response: str, key: int = 0) -> list[str]:
        """The instruction ids whose checker rejects `response` (empty: all pass)."""
        from sftbench.tasks.data import Example

        ids = [c["instruction_id"] for c in constraints]
        ex = Example(key=key, prompt=prompt, instruction_id_list=ids, kwargs=[dict(c["kwargs"]) for c in constraints])
        strict, _ = self.scorer.score_one(ex, response)
        return [i for i, ok in zip(ids, strict["follow_instruction_list"]) if not ok]


def constraints_of(d: Draft) -> list[dict]:
    return [{"instruction_id": i, "kwargs": public(d.kwargs[i])} for i in d.ids]


def verify_record(record: dict, checker: Checker) -> list[str]:
    """Re-check a written record: ids whose checker rejects its last assistant answer to its last user turn."""
    msgs = record["messages"]
    u = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    return checker.failures(msgs[u]["content"], record["constraints"], msgs[u + 1]["content"])


# ------------------------------------------------------------------------------------------------------------
# Whole data sets
# ------------------------------------------------------------------------------------------------------------


def _last_round(msgs: list[dict]) -> int | None:
    """Index of the last user turn, when an assistant answer follows it directly (None otherwise)."""
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users or users[-1] + 1 >= len(msgs) or msgs[users[-1] + 1]["role"] != "assistant":
        return None
    return users[-1]


def _with(rec: dict, u: int, d: Draft | None, answer: str | None = None) -> dict:
    msgs = [dict(m) for m in rec["messages"]]
    if d is None:
        return {**rec, "messages": msgs, "constraints": []}
    msgs[u]["content"], msgs[u + 1]["content"] = d.prompt, answer if answer is not None else d.answer
    return {**rec, "messages": msgs[: u + 2], "constraints": constraints_of(d)}


def augment_records(records: list[dict], cfg: AugmentConfig, *, checker: Checker | None = None,
                    generate: Generate | None = None, log=print) -> tuple[list[dict], AugmentStats]:
    """All records, in order, the selected ones augmented where their answer passes every checker."""
    cfg.check()
    t0 = time.monotonic()
    checker = checker or Checker(seed=cfg.seed)
    allowed = cfg.allowed()
    stats = AugmentStats(records=len(records), held_out=cfg.held_out())
    chosen = set(Random(cfg.seed).sample(range(len(records)), round(cfg.fraction * len(records))))
    stats.selected = len(chosen)
    out: list[dict] = [_with(r, 0, None) for r in records]
    drafts: dict[int, tuple[int, Draft]] = {}
    for i in sorted(chosen):
        msgs, u = records[i]["messages"], _last_round(records[i]["messages"])
        if u is None:
            stats.drop("no_final_answer")
            continue
        if cfg.targets == "self" and sum(m["role"] == "user" for m in msgs) > 1:
            stats.drop("multi_turn_for_self_targets")
            continue
        d = draft(msgs[u + 1]["content"], msgs[u]["content"], allowed, Random(f"{cfg.seed}:{i}"),
                  cfg.max_constraints, checker.util)
        if isinstance(d, str):
            stats.drop(d)
            continue
        drafts[i] = (u, d)
    if cfg.targets == "self":
        answers = _self_answers(drafts, cfg, checker, stats, generate)
    else:
        answers = {i: (d.answer, "data") for i, (u, d) in drafts.items()}
    for i, (u, d) in drafts.items():
        for iid in d.ids:
            stats.per_type.setdefault(iid, {"tried": 0, "kept": 0})["tried"] += 1
        if i not in answers:
            continue
        answer, source = answers[i]
        failed = checker.failures(d.prompt, constraints_of(d), answer, key=i) if source == "data" else []
        if failed:
            stats.drop("checker_failed")
            for f in failed:
                stats.failed_checks[f] = stats.failed_checks.get(f, 0) + 1
            continue
        out[i] = _with(records[i], u, d, answer)
        stats.kept += 1
        stats.target_source[source] = stats.target_source.get(source, 0) + 1
        stats.constraints_per_example[str(len(d.ids))] = stats.constraints_per_example.get(str(len(d.ids)), 0) + 1
        for iid in d.ids:
            stats.per_type[iid]["kept"] += 1
    stats.seconds = round(time.monotonic() - t0, 2)
    return out, stats


def best_sample(d: Draft, samples: list[str], checker: Checker, key: int = 0) -> tuple[str, str] | None:
    """(answer, "self" | "self_rewritten"): the first sample that passes as generated, else the first that passes
    after the rewrite (cuts tried from the whole answer down to one sentence); None when none passes."""
    cons = constraints_of(d)
    for s in samples:
        if s.strip() and not checker.failures(d.prompt, cons, s, key):
            return s, "self"
    cuts = any(T.TYPES[i].cuts for i in d.ids)
    for s in samples:
        if not s.strip():
            continue
        keeps = range(len(T.sentence_spans(s)), 0, -1) if cuts else [None]
        for keep in keeps:
            text = rewrite(s, d.kwargs, keep)
            if not checker.failures(d.prompt, cons, text, key):
                return text, "self_rewritten"
    return None


def _self_answers(drafts: dict[int, tuple[int, Draft]], cfg: AugmentConfig, checker: Checker, stats: AugmentStats,
                  generate: Generate | None) -> dict[int, tuple[str, str]]:
    own = generate is None
    if own:
        if not cfg.model:
            raise UserError("--targets self needs --model PATH (the starting model whose answers are rewritten).")
        generate = project_generator(cfg.model, cfg.max_new_tokens)
    order = sorted(drafts)
    cands = generate([drafts[i][1].prompt for i in order], cfg.samples, cfg.temperature)
    if own:  # the generator's model and KV cache go before the trainer loads its model under the same cap
        del generate
        _release_device_memory()
    if len(cands) != len(order):
        raise ValueError(f"generate returned {len(cands)} lists for {len(order)} prompts")
    out = {}
    for i, samples in zip(order, cands):
        best = best_sample(drafts[i][1], list(samples), checker, key=i)
        if best is None:
            stats.drop("no_passing_sample")
        else:
            out[i] = best
    return out


def _release_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def project_generator(model_path: str, max_new_tokens: int) -> Generate:
    """The one adapter to the project's generation code (sftbench/engine/generate.py): its tokenizer/template, system
    prompt policy and stop tokens.  Greedy (temperature 0, one sample) on a CUDA GPU goes through the fast
    generator (the same one the evaluation uses: seconds for hundreds of prompts); sampling (temperature > 0,
    several samples) uses HF `generate()`, since the fast generator decodes greedily."""
    import torch

    from sftbench.engine import generate as G

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = G.load_tokenizer(model_path)
    dtype = G.pick_generation_dtype("auto", dev)
    model = G.load_model(model_path, dtype, dev)
    stop = G.stop_token_ids(tok, getattr(model, "generation_config", None))
    spec = G.GenSpec(max_new_tokens=max_new_tokens, stop_ids=stop, pad_id=tok.pad_token_id)
    fast = G.make_fast_generator(model, tok, spec, None, dev, dtype) if dev.type == "cuda" else None

    def greedy(prompts: list[str]) -> list[list[str]]:
        ids = G.encode(tok, G.render_prompts(tok, prompts))
        # an answer cut off at the cap never stopped: training on it would teach answers that never end
        return [[] if c.hit_cap else [c.text] for c in fast.generate(ids)]

    def gen(prompts: list[str], n: int, temperature: float, batch: int = 16) -> list[list[str]]:
        if fast is not None and (temperature <= 0 or n == 1):
            return greedy(prompts)
        return _hf_sample(model, tok, stop, dev, max_new_tokens, prompts, n, temperature, batch)

    return gen


def _hf_sample(model, tok, stop, dev, max_new_tokens: int, prompts: list[str], n: int, temperature: float,
               batch: int) -> list[list[str]]:
    """n sampled answers per prompt through HF generate() (CPU, or sampling at a temperature)."""
    import torch
    from transformers import GenerationConfig

    from sftbench.engine import generate as G

    out = []
    for s in range(0, len(prompts), batch):
        enc = tok(G.render_prompts(tok, prompts[s:s + batch]), add_special_tokens=False, return_tensors="pt",
                  padding=True).to(dev)
        gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or None,
                              num_return_sequences=n, eos_token_id=stop, pad_token_id=tok.pad_token_id)
        with torch.inference_mode():
            ids = model.generate(**enc, generation_config=gc)[:, enc["input_ids"].shape[1]:].tolist()
        texts = [tok.decode(G.finish(r, stop, max_new_tokens)[0], skip_special_tokens=True) for r in ids]
        out.extend(texts[j:j + n] for j in range(0, len(texts), n))
    return out


def cache_key(data_fingerprint: str, cfg: AugmentConfig) -> str:
    """Key for a trainer's cache of augmented data: the data, every setting, this code's and lm-eval's versions."""
    try:
        from importlib.metadata import version

        lm = version("lm-eval")
    except Exception:  # pragma: no cover - lm-eval is a dependency
        lm = "?"
    blob = json.dumps({"v": AUGMENT_VERSION, "lm_eval": lm, "data": data_fingerprint, "cfg": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def augment_cached(records: list[dict], cfg: AugmentConfig, data_fingerprint: str, cache_dir: str | Path,
                   **kw) -> tuple[list[dict], AugmentStats, bool]:
    """`augment_records` through a cache (cache_dir/augment-<key>.jsonl + .stats.json): (records, stats, hit).
    The trainer's on-the-fly path; `data_fingerprint` is the one its tokenised-data cache already uses."""
    from sftbench.core.io import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl

    key = cache_key(data_fingerprint, cfg)[:16]
    data, meta = Path(cache_dir) / f"augment-{key}.jsonl", Path(cache_dir) / f"augment-{key}.stats.json"
    if data.is_file() and meta.is_file():
        return read_jsonl(data), AugmentStats(**read_json(meta)), True
    out, stats = augment_records(records, cfg, **kw)
    atomic_write_jsonl(data, out)
    atomic_write_json(meta, stats.as_dict())  # written last: its presence marks a complete entry
    return out, stats, False


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------


def summary(stats: AugmentStats) -> str:
    lines = [f"records {stats.records}, selected {stats.selected}, kept {stats.kept}, "
             f"dropped {sum(stats.dropped.values())} {json.dumps(stats.dropped, sort_keys=True)}, {stats.seconds} s"]
    if stats.failed_checks:
        lines.append(f"checker failures by type: {json.dumps(stats.failed_checks, sort_keys=True)}")
    for iid in T.ORDER:
        if iid in stats.per_type:
            p = stats.per_type[iid]
            lines.append(f"  {iid:48s} tried {p['tried']:4d} kept {p['kept']:4d}")
    lines.append(f"held out: {', '.join(stats.held_out) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sftbench.core.io import atomic_write_json, atomic_write_jsonl

    prog = "python -m sftbench.data.augment"
    p = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0])
    p.add_argument("input", metavar="IN", help="chat JSONL, one {\"messages\": [...]} per line")
    p.add_argument("output", metavar="OUT", help="augmented JSONL (written atomically)")
    p.add_argument("--stats_json", default=None, help="also write the counts to this JSON file")
    names = add_config_arguments(p, AugmentConfig)
    ns = p.parse_args(argv)
    try:
        cfg = config_from_namespace(AugmentConfig, ns, names)
        cfg.check()
        if cfg.targets == "self" and not cfg.model:
            raise UserError("--targets self needs --model PATH (the starting model whose answers are rewritten).")
        records = read_chat_jsonl(ns.input)
        out, stats = augment_records(records, cfg)
    except UserError as e:
        exit_with_user_error(e, prog)
    atomic_write_jsonl(ns.output, out)
    if ns.stats_json:
        atomic_write_json(ns.stats_json, stats.as_dict())
    print(summary(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
