"""Did training help?  A verdict from paired tests of every trained checkpoint against the start (step 0).

Input, per metric: {step: per-prompt outcomes}, the same prompts in the same order for every step (step 0 =
the starting model).  Prompt-level metrics (prompt_strict, prompt_loose): one bool per prompt.
Instruction-level metrics (inst_strict, inst_loose): one list of bools per prompt (its instructions).

The test, for every metric alike: an exact two-sided sign test over prompts on the number of instructions a
prompt's response follows (A vs B).  Prompts where A follows more count for A, fewer for B, ties drop out;
p = binomial(b + c, 1/2) (`paired_stats.mcnemar_exact`).  At prompt level this *is* McNemar's exact test.
At instruction level it respects the clustering by prompt (a prompt is one paired unit, never its
instructions) and, being exact, gives the same p-value on every run (no bootstrap seed).

The outcome (per metric; the report's headline is prompt_strict):
  helped    - the best trained checkpoint beats the start, Holm-corrected over the trained checkpoints;
  hurt      - the start beats the best trained or the final checkpoint, Holm-corrected: keep the start;
  no_change - neither;
  no_start  - no step 0 was evaluated: no verdict (rerun the sweep with --include_base).
"Helped" wins over "hurt" when both hold (a peak, then a decline): the sentence then also names the decline.

The pick (prompt_strict): the start is a candidate.  Unless training helped, the pick is the start.  When it
helped, the pick is the earliest checkpoint that beats the start significantly and is not significantly
worse than the best (Holm over those compared with the best).  Without a start it is
`paired_stats.defensible_pick` over the trained checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from sftbench.analysis.paired_stats import format_p, holm, mcnemar_exact

METRICS = ("prompt_strict", "inst_strict", "prompt_loose", "inst_loose")
METRIC_LABELS = {"prompt_strict": "prompt-level strict", "inst_strict": "instruction-level strict",
                 "prompt_loose": "prompt-level loose", "inst_loose": "instruction-level loose"}
TEST_NAME = "exact sign test over prompts"
ALPHA = 0.05
INCLUDE_BASE_HINT = ("Rerun the sweep with `--include_base` (the starting model, as step 0) to evaluate it on "
                     "the same prompts.")


# ------------------------------------------------------------------------------------------ data
def counts(outcomes: Sequence) -> tuple[list[int], list[int]]:
    """(followed, total) per prompt: a bool is one instruction; a list of bools is a prompt's instructions."""
    fol, tot = [], []
    for o in outcomes:
        if isinstance(o, (list, tuple)):
            fol.append(sum(bool(x) for x in o))
            tot.append(len(o))
        else:
            fol.append(int(bool(o)))
            tot.append(1)
    return fol, tot


def accuracy(outcomes: Sequence) -> float:
    """Prompt level: mean of the bools.  Instruction level: instructions followed / instructions (pooled)."""
    fol, tot = counts(outcomes)
    return sum(fol) / sum(tot) if sum(tot) else 0.0


def outcomes_from_rows(rows: Mapping[int, Mapping[str, Sequence[dict]]]) -> dict[str, dict[int, list]]:
    """The four metrics' per-prompt outcomes from eval_results rows, aligned on the prompts all steps share.

    rows: {step: {"strict": eval_results_strict rows, "loose": eval_results_loose rows}}; a row has "key"
    (else its position), "follow_instruction_list" and optionally "follow_all_instructions".
    Returns {metric: {step: [outcome per prompt]}} in key order (the keys every step has in both modes).
    """
    by_key: dict[int, dict[str, dict]] = {}
    for step, modes in rows.items():
        by_key[step] = {}
        for mode in ("strict", "loose"):
            for i, r in enumerate(modes.get(mode, [])):
                by_key[step].setdefault(r.get("key", i), {})[mode] = r
    shared = None
    for step in by_key:
        ks = {k for k, v in by_key[step].items() if "strict" in v and "loose" in v}
        shared = ks if shared is None else shared & ks
    keys = sorted(shared or (), key=lambda k: (str(type(k)), k))
    out: dict[str, dict[int, list]] = {m: {} for m in METRICS}
    for step in sorted(by_key):
        for mode in ("strict", "loose"):
            lists = [[bool(x) for x in by_key[step][k][mode]["follow_instruction_list"]] for k in keys]
            alls = [bool(by_key[step][k][mode].get("follow_all_instructions", all(fl))) for k, fl in zip(keys, lists)]
            out[f"prompt_{mode}"][step] = alls
            out[f"inst_{mode}"][step] = lists
    return out


# ------------------------------------------------------------------------------------------ tests
@dataclass
class Versus:
    """A paired comparison of checkpoint `step` with the start (step 0).  delta = acc(step) - acc(start)."""

    step: int
    acc: float  # fraction
    acc_start: float
    better: int  # prompts where the checkpoint follows more instructions than the start
    worse: int  # prompts where it follows fewer
    n: int
    p_value: float
    p_holm: float = 1.0

    @property
    def delta_points(self) -> float:
        return 100.0 * (self.acc - self.acc_start)


def sign_test(a: Sequence, b: Sequence) -> tuple[int, int, float]:
    """(prompts A follows more, prompts B follows more, two-sided exact p).  A, B: aligned outcomes."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must cover the same prompts ({len(a)} vs {len(b)})")
    fa, _ = counts(a)
    fb, _ = counts(b)
    more = sum(x > y for x, y in zip(fa, fb))
    fewer = sum(x < y for x, y in zip(fa, fb))
    return more, fewer, mcnemar_exact(more, fewer)


@dataclass
class MetricVerdict:
    """One metric's verdict.  vs_start: every trained step vs the start, Holm-adjusted as one family."""

    metric: str
    outcome: str  # "helped" | "hurt" | "no_change" | "no_start"
    steps: list[int]
    acc: dict[int, float]
    best: int  # the best trained step (ties: the earliest)
    final: int
    n: int
    alpha: float
    vs_start: dict[int, Versus] = field(default_factory=dict)
    first_below: int | None = None  # the first trained step significantly below the start

    @property
    def best_vs_start(self) -> Versus | None:
        return self.vs_start.get(self.best)

    @property
    def final_vs_start(self) -> Versus | None:
        return self.vs_start.get(self.final)

    def significant(self, step: int) -> bool:
        v = self.vs_start.get(step)
        return v is not None and v.p_holm < self.alpha


def decide(outcomes: Mapping[int, Sequence], metric: str = "prompt_strict", alpha: float = ALPHA) -> MetricVerdict:
    """The verdict for one metric.  outcomes: {step: per-prompt outcomes}, aligned; needs >= 1 trained step."""
    steps = sorted(outcomes)
    trained = [s for s in steps if s > 0]
    if not trained:
        raise ValueError("a verdict needs at least one trained checkpoint (step > 0)")
    n = {len(outcomes[s]) for s in steps}
    if len(n) != 1:
        raise ValueError(f"every step must be scored on the same prompts (lengths {sorted(n)})")
    acc = {s: accuracy(outcomes[s]) for s in steps}
    best = max(trained, key=lambda s: (acc[s], -s))
    v = MetricVerdict(metric, "no_start", steps, acc, best, trained[-1], n.pop(), alpha)
    if 0 not in outcomes:
        return v
    for s in trained:
        more, fewer, p = sign_test(outcomes[s], outcomes[0])
        v.vs_start[s] = Versus(s, acc[s], acc[0], more, fewer, v.n, p)
    for s, adj in zip(trained, holm([v.vs_start[s].p_value for s in trained])):
        v.vs_start[s].p_holm = adj
    below = [s for s in trained if v.significant(s) and acc[s] < acc[0]]
    v.first_below = below[0] if below else None
    if v.significant(best) and acc[best] > acc[0]:
        v.outcome = "helped"
    elif any(v.significant(s) and acc[s] < acc[0] for s in (best, v.final)):
        v.outcome = "hurt"
    else:
        v.outcome = "no_change"
    return v


def pick(v: MetricVerdict, outcomes: Mapping[int, Sequence]) -> int:
    """The step to keep (see the module docstring); 0 = the starting model."""
    from sftbench.analysis.paired_stats import defensible_pick

    if v.outcome == "no_start":
        trained = [s for s in v.steps if s > 0]
        return int(defensible_pick({s: outcomes[s] for s in trained}, trained, v.alpha).pick)
    if v.outcome != "helped":
        return 0
    cands = [s for s in v.steps if s > 0 and v.significant(s) and v.acc[s] > v.acc[0]]
    others = [s for s in cands if s != v.best]
    tests = [sign_test(outcomes[s], outcomes[v.best]) for s in others]
    adj = dict(zip(others, holm([t[2] for t in tests])))
    return next(s for s in cands if s == v.best or adj[s] >= v.alpha)


# ------------------------------------------------------------------------------------------ words
def default_name(step: int) -> str:
    return "the starting model (step 0)" if step == 0 else f"checkpoint-{step}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _p(vs: Versus) -> str:
    return f"p = {format_p(vs.p_holm)}"


def versus_sentence(v: MetricVerdict, vs: Versus, role: str, name=default_name) -> str:
    """e.g. "Final vs start: checkpoint-20 14.2% vs 20.3%, -6.1 points (the start follows more on 40 prompts,
    checkpoint-20 on 7), p = 1.2e-06 (Holm-corrected), significant." — stated whichever way it goes."""
    d = vs.delta_points
    who = name(vs.step)
    sig = "significant" if vs.p_holm < v.alpha else "not significant"
    return (f"{role} vs start: {who} {_pct(vs.acc)} vs {_pct(vs.acc_start)}, {d:+.1f} points ({who} follows "
            f"more instructions on {vs.better} prompts, the start on {vs.worse}), {_p(vs)} (Holm-corrected), {sig}.")


def headline(v: MetricVerdict, name=default_name) -> str:
    """The verdict in plain words (exact sentences; tested)."""
    label = METRIC_LABELS.get(v.metric, v.metric)
    k = len(v.vs_start)
    how = f"{TEST_NAME}, Holm-corrected over {k} checkpoint{'s' if k != 1 else ''}, alpha {v.alpha}"
    if v.outcome == "no_start":
        return (f"The verdict (did training help?) cannot be given: the starting model was not evaluated. "
                f"{INCLUDE_BASE_HINT}")
    b = v.best_vs_start
    if v.outcome == "helped":
        s = (f"Training helped: {name(v.best)} follows {_pct(b.acc)} ({label}) against {_pct(b.acc_start)} for the "
             f"starting model, {b.delta_points:+.1f} points, {_p(b)} ({how}).")
        if v.first_below is not None:
            f = v.vs_start[v.first_below]
            s += (f" Later training undid it: {name(v.first_below)} is significantly below the start "
                  f"({_pct(f.acc)}, {f.delta_points:+.1f} points, {_p(f)}).")
        return s
    if v.outcome == "hurt":
        worst = v.best if v.significant(v.best) and v.acc[v.best] < v.acc[0] else v.final
        w = v.vs_start[worst]
        role = "the best trained checkpoint" if worst == v.best else "the final checkpoint"
        f = v.vs_start[v.first_below]
        return (f"Training hurt: keep the starting model. The start follows {_pct(w.acc_start)} ({label}) against "
                f"{_pct(w.acc)} for {role}, {name(worst)} ({w.delta_points:+.1f} points, {_p(w)}; {how}). "
                f"The first checkpoint significantly below the start is {name(v.first_below)} ({_pct(f.acc)}, "
                f"{f.delta_points:+.1f} points, {_p(f)}).")
    keep = "Keep the starting model unless another criterion favours a checkpoint."
    if v.first_below is None:
        return (f"No measurable change: no trained checkpoint is significantly better or worse than the starting "
                f"model ({_pct(v.acc[0])}, {label}); the best, {name(v.best)}, is {b.delta_points:+.1f} points from "
                f"it, {_p(b)} ({how}). {keep}")
    # A dip in the middle that recovered: "no trained checkpoint ... worse" would be false.
    f = v.vs_start[v.first_below]
    return (f"No measurable change: neither the best nor the final trained checkpoint is significantly different "
            f"from the starting model ({_pct(v.acc[0])}, {label}); the best, {name(v.best)}, is "
            f"{b.delta_points:+.1f} points from it, {_p(b)} ({how}). On the way, {name(v.first_below)} was "
            f"significantly below the start ({_pct(f.acc)}, {f.delta_points:+.1f} points, {_p(f)}). {keep}")


@dataclass
class Verdict:
    """All four metrics; the headline and the pick come from prompt_strict."""

    metrics: dict[str, MetricVerdict]
    pick: int
    sentences: list[str]

    @property
    def outcome(self) -> str:
        return self.metrics["prompt_strict"].outcome


def verdict(per_metric: Mapping[str, Mapping[int, Sequence]], alpha: float = ALPHA, name=default_name) -> Verdict:
    """per_metric: {metric: {step: per-prompt outcomes}} (e.g. `outcomes_from_rows`); prompt_strict required."""
    if "prompt_strict" not in per_metric:
        raise ValueError("the verdict needs prompt_strict outcomes")
    mv = {m: decide(per_metric[m], m, alpha) for m in METRICS if m in per_metric}
    ps = mv["prompt_strict"]
    sentences = [headline(ps, name)]
    if ps.outcome != "no_start":
        sentences.append(versus_sentence(ps, ps.best_vs_start, "Best", name))
        sentences.append(versus_sentence(ps, ps.final_vs_start, "Final", name))
    chosen = pick(ps, per_metric["prompt_strict"])
    sentences.append(f"Pick: {name(chosen)}.")
    return Verdict(mv, chosen, sentences)


TABLE_HEAD = ["metric", "start", "best trained", "best − start", "final", "final − start", "outcome"]


def table(v: Verdict, name=default_name) -> tuple[list[str], list[list[str]]]:
    """(head, rows): one row per metric: start, best, final, deltas with Holm p, outcome."""
    rows = []
    for m, mv in v.metrics.items():
        start = _pct(mv.acc[0]) if 0 in mv.acc else "not evaluated"
        b, f = mv.best_vs_start, mv.final_vs_start
        db = f"{b.delta_points:+.1f} ({_p(b)})" if b else "—"
        df = f"{f.delta_points:+.1f} ({_p(f)})" if f else "—"
        rows.append([METRIC_LABELS[m], start, f"{name(mv.best)} {_pct(mv.acc[mv.best])}", db,
                     f"{name(mv.final)} {_pct(mv.acc[mv.final])}", df, mv.outcome.replace("_", " ")])
    return list(TABLE_HEAD), rows


def footnote(v: Verdict) -> str:
    return (f"Deltas in points; p-values: {TEST_NAME} (McNemar's exact test at prompt level; at instruction "
            f"level on the number of a prompt's instructions followed), Holm-corrected over the trained "
            f"checkpoints compared with the start, alpha {next(iter(v.metrics.values())).alpha}.")


def markdown(v: Verdict, name=default_name) -> str:
    """The sentences, then `table` as Markdown, then `footnote`."""
    head, rows = table(v, name)
    lines = [" ".join(v.sentences), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", footnote(v)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ a family of runs
# The recipe search (sftbench.search) compares the checkpoints of several configurations with one start: every
# (configuration, checkpoint) is one member of the family, Holm over them all.  Its sentences are written here,
# with the same test, p-value format and phrases as a single run's verdict above.
BETTER, WORSE, SAME = "better than start", "worse than start", "no significant change"


def compare_with_start(start: Sequence, trained: Sequence[tuple[int, Sequence]]) -> list[Versus]:
    """Each trained checkpoint's outcomes vs the start's (`sign_test`; at prompt level McNemar's exact test),
    Holm-adjusted over all of them as one family.  trained: [(step, outcomes aligned with start)]."""
    acc0 = accuracy(start)
    out = []
    for step, o in trained:
        more, fewer, p = sign_test(o, start)
        out.append(Versus(step, accuracy(o), acc0, more, fewer, len(o), p))
    for v, adj in zip(out, holm([v.p_value for v in out])):
        v.p_holm = adj
    return out


def versus_label(vs: Versus, alpha: float = ALPHA) -> str:
    """BETTER / WORSE (Holm-adjusted p below alpha, by the sign of the change) or SAME."""
    if vs.p_holm < alpha and vs.delta_points > 0:
        return BETTER
    if vs.p_holm < alpha and vs.delta_points < 0:
        return WORSE
    return SAME


def family_headline(ranked: Sequence[tuple[str, Versus]], alpha: float = ALPHA, metric: str = "prompt_strict") -> str:
    """The verdict over a family compared with one start, in one or two sentences (exact; tested).
    ranked: [(name, Versus)], best first (e.g. "lr2e-5 checkpoint-40"); at least one."""
    label = METRIC_LABELS.get(metric, metric)
    k = len(ranked)
    how = f"{TEST_NAME}, Holm-corrected over {k} checkpoint{'s' if k != 1 else ''}, alpha {alpha}"
    better = [(n, v) for n, v in ranked if versus_label(v, alpha) == BETTER]
    worse = [(n, v) for n, v in ranked if versus_label(v, alpha) == WORSE]
    name, b = ranked[0]
    start = f"{_pct(b.acc_start)}, {label}"
    if better:
        n, w = better[0]
        return (f"Training helped: {n} follows {_pct(w.acc)} ({label}) against {_pct(w.acc_start)} for the starting "
                f"model, {w.delta_points:+.1f} points, {_p(w)} ({how}); {len(better)} of {k} checkpoints are "
                f"significantly better.")
    tail = f" {len(worse)} of {k} checkpoints are significantly worse than the start." if worse else ""
    if b.delta_points > 0 or not worse:
        return (f"No configuration is significantly better than the starting model ({start}); the best, {name}, is "
                f"{b.delta_points:+.1f} points from it, {_p(b)} ({how}). Keep the starting model.{tail}")
    return (f"Training hurt: every checkpoint is below the starting model ({start}); the best, {name}, is "
            f"{b.delta_points:+.1f} points, {_p(b)} ({how}). Keep the starting model.{tail}")
