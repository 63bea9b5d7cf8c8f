"""Constraint augmentation of any chat data: verifiable instructions added to the last user turn, and an answer
that is checked to satisfy them by the checkers the evaluation uses (lm-eval's IFEval code, via sftbench.tasks.scoring)
or, for the project's own training-only types ("train:..."), by sftbench.tasks.train_constraints.

    python -m sftbench.data.augment IN.jsonl OUT.jsonl [--fraction 0.5] [--types all] [--hold_out_types default]
                               [--seed 0] [--variants 1] [--targets data|self --model PATH --samples 4
                               --temperature 0.7 --top_p 1.0 --top_k 50 --multi_turn true]

For a `fraction` of the conversations (chosen with `seed`), `variants` drafts each add one to `max_constraints`
compatible constraint types (sftbench/data/augment_types.py: templates, rewrites, CONFLICTS) to the last user turn
(no two variants of a conversation carry the same constraints), and the answer to it is rewritten deterministically
so that it satisfies them:
- targets "data": the dataset's own answer is rewritten;
- targets "self": the starting model answers every variant's prompt in ONE call of an injected
  `generate(prompts, n, temperature) -> [[answer, ...], ...]` (`samples` seeded samples at `temperature` /
  `top_p` / `top_k`; the project's: project_generator); a sample that passes as it is wins, else the first that
  passes after the same rewrite.  Multi-turn conversations too (`multi_turn`): the model answers the last user
  turn with the earlier turns as context, and those turns are written back byte-identical.
A variant is kept only if its answer passes the checker of every constraint it lists; a conversation with no kept
variant stays as it was, and every reason is counted.  Every output record is
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
from sftbench.engine import generate as G
from sftbench.model.hf import load_tokenizer, stop_token_ids
from sftbench.model.load import load_model

# Bump when a rewrite, template or the selection changes, so cached augmented data is rebuilt.
AUGMENT_VERSION = 2  # 2: variants, multi-turn self targets, seeded sampling in the fast generator

# generate(prompts, n, temperature) -> n answers per prompt; a prompt is the last user turn's text, or (a
# multi-turn conversation) the messages up to and including that turn.
Generate = Callable[[list, int, float], list[list[str]]]


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
    variants: int = setting(1, "Constraint variants per selected conversation (other types, counts and phrasings); "
                               "each kept variant is its own record, and with --targets self all variants' prompts "
                               "are answered in one generation pass.")
    top_p: float = setting(1.0, "--targets self: nucleus sampling share (1 = the whole distribution).")
    top_k: int = setting(50, "--targets self: sample only among the k most likely tokens, then apply top_p among "
                             "them (0 = no limit; 50 is HF generate's default).")
    multi_turn: bool = setting(True, "--targets self: augment multi-turn conversations too (the model answers the "
                                     "last user turn with the earlier turns as context; they stay byte-identical).")

    def check(self, prefix: str = "") -> None:
        """UserError naming the flag as this CLI spells it (`--{prefix}{field}`: the trainer passes `augment_`)."""
        f = lambda name: f"--{prefix}{name}"  # noqa: E731
        if not 0.0 <= self.fraction <= 1.0:
            raise UserError(f"{f('fraction')} {self.fraction}: give a share between 0 and 1.")
        if self.max_constraints < 1:
            raise UserError(f"{f('max_constraints')} {self.max_constraints}: give at least 1.")
        if self.targets == "self" and self.samples < 1:
            raise UserError(f"{f('samples')} {self.samples}: give at least 1.")
        if self.variants < 1:
            raise UserError(f"{f('variants')} {self.variants}: give at least 1.")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"{f('top_p')} {self.top_p}: give a share in (0, 1].")
        if self.top_k < 0:
            raise UserError(f"{f('top_k')} {self.top_k}: give 0 (no limit) or more.")
        if not self.allowed(prefix):
            raise UserError(f"{f('types')} {self.types} {f('hold_out_types')} {self.hold_out_types}: no type is left to "
                            f"add (held out: {', '.join(self.held_out(prefix))}). Name other types, or pass "
                            f"{f('hold_out_types')} none.")

    def allowed(self, prefix: str = "") -> list[str]:
        """The types this run may add, in pipeline order; UserError for unknown ids (flags named with `prefix`)."""
        want = list(T.ORDER) if self.types.strip() == "all" else _ids(self.types, f"--{prefix}types")
        return [t for t in T.ORDER if t in want and t not in self.held_out(prefix)]

    def held_out(self, prefix: str = "") -> list[str]:
        if self.hold_out_types == "default":
            return list(T.HELD_OUT)
        return ([] if self.hold_out_types == "none"
                else _ids(self.hold_out_types, f"--{prefix}hold_out_types", known_only=False))


def _ids(text: str, flag: str, known_only: bool = True) -> list[str]:
    ids = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    bad = [i for i in ids if known_only and i not in T.TYPES]
    if bad:
        raise UserError(f"{flag}: unknown or unsupported type(s) {bad}; the types this module writes are: "
                        f"{', '.join(T.ORDER)}.")
    return ids


@dataclass
class AugmentStats:
    """Counts of one run.  dropped: reason -> variants not kept; failed_checks: instruction id -> times its checker
    failed on a rewritten answer; per_type: id -> counts over the variants that carry the type:
    "tried"; "passed_as_generated" (an answer as generated, a sample or the data's own, satisfied it);
    "passed_after_rewrite" (none did, the kept answer does after the rewrite); "kept" (the variant was kept).
    kept: records written with constraints (variants); conversations: conversations with at least one."""

    records: int = 0
    selected: int = 0
    kept: int = 0
    conversations: int = 0
    variants: int = 1
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
    """lm-eval's IFEval checkers as the evaluation loads them (sftbench.tasks.scoring.Scorer), strict mode, and the
    project's own training-only types (sftbench.tasks.train_constraints, ids "train:...")."""

    def __init__(self, seed: int = 0):
        from sftbench.tasks.scoring import Scorer

        self.scorer = Scorer(seed=seed)
        self.util = self.scorer.registry.instructions.instructions_util

    def failures(self, prompt: str, constraints: list[dict], response: str, key: int = 0) -> list[str]:
        """The instruction ids whose checker rejects `response` (empty: all pass)."""
        from sftbench.tasks import train_constraints as own
        from sftbench.tasks.data import Example

        bad = set(own.failures([c for c in constraints if own.is_own(c["instruction_id"])], response))
        theirs = [c for c in constraints if not own.is_own(c["instruction_id"])]
        if theirs:
            from sftbench.tasks.scoring import seeded

            ids = [c["instruction_id"] for c in theirs]
            ex = Example(key=key, prompt=prompt, instruction_id_list=ids, kwargs=[dict(c["kwargs"]) for c in theirs])
            # strict only (Scorer.score_one's strict half: the same inputs and seeding); loose mode would cost 8x
            inp = self.scorer.utils.InputExample(key=ex.key, instruction_id_list=ex.instruction_id_list,
                                                 prompt=ex.prompt, kwargs=ex.kwargs)
            with seeded(self.scorer.seed, ex.key):
                out = self.scorer.utils.test_instruction_following_strict(inp, response)
            bad |= {i for i, ok in zip(ids, out.follow_instruction_list) if not ok}
        return [c["instruction_id"] for c in constraints if c["instruction_id"] in bad]


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


def _variant(msgs: list[dict], u: int, allowed: list[str], cfg: AugmentConfig, i: int, v: int, util,
             seen: set) -> Draft | str:
    """Variant v of conversation i: a Draft whose constraints (ids and kwargs) no earlier variant has, or the
    reason there is none.  Variant 0 draws exactly what a run without variants draws."""
    reason = "duplicate_variant"
    for attempt in range(4):
        rng = Random(f"{cfg.seed}:{i}" if v == 0 and attempt == 0 else f"{cfg.seed}:{i}:{v}:{attempt}")
        d = draft(msgs[u + 1]["content"], msgs[u]["content"], allowed, rng, cfg.max_constraints, util)
        if isinstance(d, str):
            reason = d
            continue
        sig = json.dumps(constraints_of(d), sort_keys=True)
        if sig not in seen:
            seen.add(sig)
            return d
        reason = "duplicate_variant"
    return reason


def _prompt_of(msgs: list[dict], u: int, d: Draft):
    """What the model answers: the new last user turn alone, or (earlier turns) the messages up to it."""
    if u == 0:
        return d.prompt
    return [dict(m) for m in msgs[:u]] + [{"role": "user", "content": d.prompt}]


def augment_records(records: list[dict], cfg: AugmentConfig, *, checker: Checker | None = None,
                    generate: Generate | None = None, log=print) -> tuple[list[dict], AugmentStats]:
    """All records, in order; a selected conversation is replaced by its kept variants (each with the constraints
    its answer passes), or stays as it was when none is kept."""
    cfg.check()
    t0 = time.monotonic()
    checker = checker or Checker(seed=cfg.seed)
    allowed = cfg.allowed()
    stats = AugmentStats(records=len(records), held_out=cfg.held_out(), variants=cfg.variants)
    chosen = set(Random(cfg.seed).sample(range(len(records)), round(cfg.fraction * len(records))))
    stats.selected = len(chosen)
    drafts: dict[tuple[int, int], tuple[int, Draft]] = {}
    for i in sorted(chosen):
        msgs, u = records[i]["messages"], _last_round(records[i]["messages"])
        if u is None:
            stats.drop("no_final_answer")
            continue
        if cfg.targets == "self" and not cfg.multi_turn and sum(m["role"] == "user" for m in msgs) > 1:
            stats.drop("multi_turn_for_self_targets")
            continue
        seen: set = set()
        for v in range(cfg.variants):
            d = _variant(msgs, u, allowed, cfg, i, v, checker.util, seen)
            if isinstance(d, str):
                stats.drop(d)
            else:
                drafts[(i, v)] = (u, d)
    raw_pass: dict[tuple[int, int], set] = {k: set() for k in drafts}  # types an answer as generated satisfied
    if cfg.targets == "self":
        answers = _self_answers(drafts, records, cfg, checker, stats, generate, raw_pass)
    else:
        answers = {k: (d.answer, "data") for k, (u, d) in drafts.items()}
        for k, (u, d) in drafts.items():
            own = records[k[0]]["messages"][u + 1]["content"]
            failed = set(checker.failures(d.prompt, constraints_of(d), own, key=k[0]))
            raw_pass[k] = set(d.ids) - failed
    kept: dict[int, list[dict]] = {}
    for k, (u, d) in drafts.items():
        i = k[0]
        for iid in d.ids:
            pt = stats.per_type.setdefault(iid, {"tried": 0, "passed_as_generated": 0, "passed_after_rewrite": 0,
                                                 "kept": 0})
            pt["tried"] += 1
            pt["passed_as_generated"] += iid in raw_pass[k]
        if k not in answers:
            continue
        answer, source = answers[k]
        failed = checker.failures(d.prompt, constraints_of(d), answer, key=i) if source == "data" else []
        if failed:
            stats.drop("checker_failed")
            for f in failed:
                stats.failed_checks[f] = stats.failed_checks.get(f, 0) + 1
            continue
        kept.setdefault(i, []).append(_with(records[i], u, d, answer))
        stats.kept += 1
        stats.target_source[source] = stats.target_source.get(source, 0) + 1
        stats.constraints_per_example[str(len(d.ids))] = stats.constraints_per_example.get(str(len(d.ids)), 0) + 1
        for iid in d.ids:
            stats.per_type[iid]["kept"] += 1
            stats.per_type[iid]["passed_after_rewrite"] += iid not in raw_pass[k]
    stats.conversations = len(kept)
    out: list[dict] = []
    for i, r in enumerate(records):
        out.extend(kept.get(i) or [_with(r, 0, None)])
    stats.seconds = round(time.monotonic() - t0, 2)
    return out, stats


def best_sample(d: Draft, samples: list[str], checker: Checker, key: int = 0,
                passed: set | None = None) -> tuple[str, str] | None:
    """(answer, "self" | "self_rewritten"): the first sample that passes as generated (samples come in draw
    order, so this is an unbiased pick among the passing ones), else the first that passes after the rewrite (cuts
    tried from the whole answer down to one sentence); None when none passes.  An empty sample (one that ran to
    the cap) is never taken.  passed: filled with the types some sample satisfied as generated."""
    cons = constraints_of(d)
    first = None
    for s in samples:
        if not s.strip():
            continue
        failed = checker.failures(d.prompt, cons, s, key)
        if passed is not None:
            passed.update(set(d.ids) - set(failed))
        if not failed:  # every type satisfied: `passed` is complete, no later sample can add to it
            first = s
            break
    if first is not None:
        return first, "self"
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


def _self_answers(drafts: dict[tuple[int, int], tuple[int, Draft]], records: list[dict], cfg: AugmentConfig,
                  checker: Checker, stats: AugmentStats, generate: Generate | None,
                  raw_pass: dict[tuple[int, int], set]) -> dict[tuple[int, int], tuple[str, str]]:
    """The model's best answer per variant: every variant's prompt in ONE generate call (one loaded model)."""
    own = generate is None
    if own:
        if not cfg.model:
            raise UserError("--targets self needs --model PATH (the starting model whose answers are rewritten).")
        generate = project_generator(cfg.model, cfg.max_new_tokens, seed=cfg.seed, top_p=cfg.top_p,
                                     top_k=cfg.top_k)
    order = sorted(drafts)
    prompts = [_prompt_of(records[k[0]]["messages"], drafts[k][0], drafts[k][1]) for k in order]
    cands = generate(prompts, cfg.samples, cfg.temperature) if prompts else []
    if own:  # the generator's model and KV cache go before the trainer loads its model under the same cap
        del generate
        _release_device_memory()
    if len(cands) != len(order):
        raise ValueError(f"generate returned {len(cands)} lists for {len(order)} prompts")
    out = {}
    items = [(drafts[k][1], list(samples), k[0]) for k, samples in zip(order, cands)]
    for k, (best, passed) in zip(order, _verify_all(items, checker)):
        raw_pass[k].update(passed)
        if best is None:
            stats.drop("no_passing_sample")
        else:
            out[k] = best
    return out


# Verifying thousands of samples is CPU work (NLTK sentence splits, langdetect): past this many variants it is
# spread over worker processes (spawned: the parent may hold a CUDA context).  The results do not depend on it.
PARALLEL_FROM = 256
_WORKER: dict = {}


def _verify_one(item) -> tuple[tuple[str, str] | None, set]:
    d, samples, key = item
    passed: set = set()
    return best_sample(d, samples, _WORKER["checker"], key=key, passed=passed), passed


def _init_worker(seed: int) -> None:
    _WORKER["checker"] = Checker(seed=seed)


def _verify_all(items: list, checker: Checker) -> list[tuple[tuple[str, str] | None, set]]:
    """best_sample of every (draft, samples, key), in order: serially, or on up to 8 worker processes."""
    import os

    workers = min(8, (os.cpu_count() or 1) - 1)
    if len(items) >= PARALLEL_FROM and workers >= 2:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        try:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                     initargs=(checker.scorer.seed,)) as ex:
                return list(ex.map(_verify_one, items, chunksize=16))
        except (OSError, RuntimeError) as e:  # no processes allowed here: verify in this one
            print(f"[augment] parallel verification unavailable ({type(e).__name__}: {e}); verifying serially",
                  file=sys.stderr)
    _WORKER["checker"] = checker
    try:
        return [_verify_one(it) for it in items]
    finally:
        _WORKER.pop("checker", None)


def _release_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Prompts (rendered, in tokens) longer than this are not answered by project_generator (the trainer's default
# --model_max_length: a longer example would be cut there).
MAX_PROMPT_TOKENS = 1024


def project_generator(model_path: str, max_new_tokens: int, *, seed: int = 0, top_p: float = 1.0,
                      top_k: int = 0) -> Generate:
    """The one adapter to the project's generation code: the tokenizer and chat template of sftbench.model.hf
    (as in training and evaluation), the system prompt policy and stop tokens of sftbench/engine/generate.py, and
    its generators: on a CUDA GPU the fast generator (the one the evaluation uses; greedy at temperature 0, else
    `n` seeded samples per prompt in the same continuous batch), on a CPU the HF generator with the same sampler.
    A prompt's samples are seeded by (seed, a hash of its rendered text, sample number): reproducible whatever
    else is generated with it.  An answer that ran to the cap comes back as "" (it never stopped: training on it
    would teach answers that never end)."""
    import torch  # lazy: the augmentation CLI and the trainer's rule-based path need no torch
    from tqdm.auto import tqdm

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(model_path, padding_side="left", log=lambda m: print(f"[augment] {m}", file=sys.stderr))
    dtype = G.pick_generation_dtype("auto", dev)
    model = load_model(model_path, dtype, dev)
    spec = G.GenSpec(max_new_tokens=max_new_tokens, stop_ids=stop_token_ids(tok, getattr(model, "generation_config", None)),
                     pad_id=tok.pad_token_id)
    fast = G.make_fast_generator(model, tok, spec, None, dev, dtype) if dev.type == "cuda" else None
    backend = fast if fast is not None else G.HFGenerator(model, tok, spec)
    step = None if fast is not None else 16  # HF pads a whole batch to its longest answer: keep batches small

    def render(p) -> str:
        if isinstance(p, str):
            return G.render_prompts(tok, [p])[0]
        return tok.apply_chat_template(list(p), add_generation_prompt=True, tokenize=False)

    def gen(prompts: list, n: int, temperature: float) -> list[list[str]]:
        texts = [render(p) for p in prompts]
        ids = G.encode(tok, texts)
        # a prompt past MAX_PROMPT_TOKENS gets no answer (""): one long multi-turn prompt would widen every decode
        # slot of the batch, and the trainer would cut such an example at its length limit anyway
        fit = [i for i, x in enumerate(ids) if len(x) <= MAX_PROMPT_TOKENS]
        keys = [hashlib.sha256(texts[i].encode()).hexdigest()[:16] for i in fit]
        k = n if temperature > 0 else 1  # greedy: one answer (n would be n copies of it)
        out: list[list[str]] = [[""] * k for _ in prompts]
        b = step or max(1, len(fit))
        print(f"[augment] answering {len(fit)} prompts x {k} on {dev.type} ({backend.name} generator"
              f"{', batches of %d' % b if b < len(fit) else ''})", file=sys.stderr)
        # a bar where the answers come in batches (the CPU path: minutes), on a terminal only (disable=None)
        bar = tqdm(total=len(fit), desc="augment: answers", unit="prompt", file=sys.stderr,
                   disable=True if b >= len(fit) else None)
        for a in range(0, len(fit), b):
            done = backend.sample([ids[i] for i in fit[a:a + b]], k, temperature, top_p=top_p, seed=seed,
                                  keys=keys[a:a + b], top_k=top_k)
            for j, i in enumerate(fit[a:a + b]):
                out[i] = ["" if c.hit_cap else c.text for c in done[j * k:(j + 1) * k]]
            bar.update(len(fit[a:a + b]))
        bar.close()
        return out

    return gen


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
    lines = [f"records {stats.records}, selected {stats.selected}, kept {stats.kept} (variants of "
             f"{stats.conversations} conversations, up to {stats.variants} each), "
             f"dropped {sum(stats.dropped.values())} {json.dumps(stats.dropped, sort_keys=True)}, {stats.seconds} s"]
    if stats.failed_checks:
        lines.append(f"checker failures by type: {json.dumps(stats.failed_checks, sort_keys=True)}")
    lines.append(f"  {'type':48s} {'tried':>6s} {'passed as generated':>20s} {'after rewrite':>14s} {'kept':>6s}")
    for iid in sorted(stats.per_type, key=lambda i: (T.ORDER.index(i) if i in T.ORDER else len(T.ORDER), i)):
        p = stats.per_type[iid]
        lines.append(f"  {iid:48s} {p['tried']:6d} {p.get('passed_as_generated', 0):20d} "
                     f"{p.get('passed_after_rewrite', 0):14d} {p['kept']:6d}")
    lines.append(f"held out: {', '.join(stats.held_out) or 'none'}")
    return "\n".join(lines)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def is_augment_output(path: str | Path) -> bool:
    """Whether `path` looks like what this command writes: its first record has "messages" and "constraints"
    (every output record has both).  An empty file counts (nothing to lose)."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
                if not line:
                    continue
                rec = json.loads(line)
                return isinstance(rec, dict) and "messages" in rec and "constraints" in rec
    except (OSError, ValueError):
        return False
    return True


def check_output_paths(inp: str, out: str, stats_json: str | None = None, *, force: bool = False) -> None:
    """UserError before any work: OUT (or --stats_json) is IN itself, OUT is a directory, or OUT exists and is
    not an earlier augmentation's output (unless force): a typo must not replace a data set or a notes file."""
    i, o = Path(inp), Path(out)
    if _same_file(i, o):
        raise UserError(f"OUT {out} is the input file {inp}: augmenting in place would overwrite the data it reads. "
                        f"Give another OUT.")
    if stats_json and (_same_file(Path(stats_json), i) or _same_file(Path(stats_json), o)):
        raise UserError(f"--stats_json {stats_json} is IN or OUT; give another file.")
    if o.is_dir():
        raise UserError(f"OUT {out} is a directory; give a file name, e.g. {o / 'augmented.jsonl'}.")
    if o.exists() and not force and not is_augment_output(o):
        raise UserError(f"OUT {out} exists and is not the output of an earlier augmentation (its first record has no "
                        f"\"constraints\" field), so it would be replaced. Give another OUT, or pass --force to "
                        f"replace it.")


def main(argv: list[str] | None = None) -> int:
    from sftbench.core.io import atomic_write_json, atomic_write_jsonl

    prog = "python -m sftbench.data.augment"
    p = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0])
    p.add_argument("input", metavar="IN", help="chat JSONL, one {\"messages\": [...]} per line")
    p.add_argument("output", metavar="OUT", help="augmented JSONL (written atomically)")
    p.add_argument("--stats_json", default=None, help="also write the counts to this JSON file")
    # CLI-only (not an AugmentConfig field, so a training config never inherits it)
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT that is not the output of an earlier augmentation")
    names = add_config_arguments(p, AugmentConfig)
    ns = p.parse_args(argv)
    try:
        check_output_paths(ns.input, ns.output, ns.stats_json, force=ns.force)
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
