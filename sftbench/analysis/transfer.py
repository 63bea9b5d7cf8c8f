"""The transfer guard (issue 22): does a candidate's IFEval gain carry over to constraint types it never trained
on, or is it on the trained types only?  A pure function of per-prompt results; the search's ranking calls it for
each candidate against the start and never picks one that `blocks`.

    t = transfer_guard(start_ifeval, cand_ifeval, start_ifbench, cand_ifbench, held_out=HELD_OUT)
    t.verdict   # "transfers" | "trained types only" | "falls on held-out or IFBench (significant)" | "no gain"
    t.blocks    # True for the third: not a pick
    t.sentence  # the plain sentence for the report, with every figure and p-value
    pick_sentence([(name, t), ...])  # (the pick, the summary naming it and why higher ones were passed over)

Inputs are eval_results_strict.jsonl rows ({"instruction_id_list", "follow_instruction_list",
"follow_all_instructions"}), as {key: row} mappings (paired by key; the search keys them by prompt) or lists
(paired by position).  The four parts, each start vs candidate on the same prompts:
- IFEval prompt-level strict: exact McNemar (sftbench.analysis.paired_stats.compare);
- IFEval instruction-level strict on the trained ("seen") types and on the held-out types: paired bootstrap over
  prompts, clustered (paired_stats.paired_bootstrap: a prompt's instructions move together);
- IFBench prompt-level strict (every IFBench type is unseen by construction): exact McNemar.
The verdict:
- "falls on held-out or IFBench (significant)": the held-out types or IFBench are lower with p < alpha;
- "no gain": IFEval prompt-level strict is not above the start;
- "transfers": a gain, and the held-out types and IFBench at or above the start (point estimates: the issue's bar);
- "trained types only": a gain, but the held-out types or IFBench below the start (not significantly).
No Holm correction over the two guard tests: a guard that blocks on either fall errs towards not picking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from sftbench.analysis.paired_stats import compare, format_p, paired_bootstrap

TRANSFERS = "transfers"
TRAINED_ONLY = "trained types only"
FALLS = "falls on held-out or IFBench (significant)"
NO_GAIN = "no gain"


@dataclass(frozen=True)
class Part:
    """One start-vs-candidate comparison: accuracies (fractions), the change in points, the p-value, the test."""

    name: str
    start: float | None
    candidate: float | None
    p_value: float | None
    n_prompts: int
    test: str

    @property
    def delta_points(self) -> float | None:
        if self.start is None or self.candidate is None:
            return None
        return round(100 * (self.candidate - self.start), 2)

    def falls(self, alpha: float) -> bool:
        d = self.delta_points
        return d is not None and d < 0 and self.p_value is not None and self.p_value < alpha

    def text(self) -> str:
        d = self.delta_points
        if d is None:
            return f"{self.name} not measured"
        return (f"{self.name} {100 * self.start:.1f} -> {100 * self.candidate:.1f} ({d:+.1f} points, "
                f"p = {format_p(self.p_value)})")

    def as_dict(self) -> dict:
        return {"name": self.name, "start": self.start, "candidate": self.candidate, "delta_points": self.delta_points,
                "p_value": self.p_value, "n_prompts": self.n_prompts, "test": self.test}


@dataclass(frozen=True)
class Transfer:
    verdict: str
    ifeval: Part
    seen: Part
    held_out: Part
    ifbench: Part | None
    sentence: str

    @property
    def blocks(self) -> bool:
        """True when the ranking must not pick this candidate."""
        return self.verdict == FALLS

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "blocks": self.blocks, "sentence": self.sentence,
                "ifeval": self.ifeval.as_dict(), "seen": self.seen.as_dict(), "held_out": self.held_out.as_dict(),
                "ifbench": None if self.ifbench is None else self.ifbench.as_dict()}


def _paired(start, cand, what: str) -> tuple[list, list]:
    """Rows of start and candidate in one order: by key for mappings, by position for sequences."""
    if isinstance(start, Mapping) != isinstance(cand, Mapping):
        raise ValueError(f"{what}: give both results as {{key: row}} mappings or both as lists")
    if isinstance(start, Mapping):
        if set(start) != set(cand):
            raise ValueError(f"{what}: start and candidate were scored on different prompts "
                             f"({len(start)} vs {len(cand)}); they cannot be paired")
        keys = list(start)
        return [start[k] for k in keys], [cand[k] for k in keys]
    start, cand = list(start), list(cand)
    if len(start) != len(cand):
        raise ValueError(f"{what}: {len(start)} start rows vs {len(cand)} candidate rows; they cannot be paired")
    return start, cand


def _all(row: Mapping) -> bool:
    if "follow_all_instructions" in row:
        return bool(row["follow_all_instructions"])
    return all(row["follow_instruction_list"])


def _prompt_part(name: str, start: Sequence[Mapping], cand: Sequence[Mapping]) -> Part:
    a, b = [_all(r) for r in start], [_all(r) for r in cand]
    c = compare("candidate", b, "start", a)
    return Part(name, c.acc_b, c.acc_a, c.p_value, len(a), "exact McNemar")


def _group_part(name: str, start: Sequence[Mapping], cand: Sequence[Mapping], keep, seed: int) -> Part:
    """Instruction-level accuracy over the instructions `keep(iid)` selects, clustered paired bootstrap."""
    num_a, num_b, den = [], [], []
    for ra, rb in zip(start, cand):
        ids = ra["instruction_id_list"]
        if list(ids) != list(rb["instruction_id_list"]):
            raise ValueError(f"{name}: a prompt lists other instructions in the candidate's results")
        sel = [i for i, iid in enumerate(ids) if keep(iid)]
        num_a.append(sum(bool(ra["follow_instruction_list"][i]) for i in sel))
        num_b.append(sum(bool(rb["follow_instruction_list"][i]) for i in sel))
        den.append(len(sel))
    total = sum(den)
    if total == 0:
        return Part(name, None, None, None, 0, "paired bootstrap over prompts")
    res = paired_bootstrap(num_b, num_a, den, n_boot=4000, seed=seed)
    return Part(name, sum(num_a) / total, sum(num_b) / total, res.p_value, sum(d > 0 for d in den),
                "paired bootstrap over prompts")


def transfer_guard(start_ifeval, cand_ifeval, start_ifbench=None, cand_ifbench=None, *,
                   held_out: Iterable[str] | None = None, alpha: float = 0.05, seed: int = 0) -> Transfer:
    """The verdict on a candidate against the start (see the module docstring).  held_out: the IFEval types its
    training never added (None: sftbench.data.augment_types.HELD_OUT)."""
    if held_out is None:
        from sftbench.data.augment_types import HELD_OUT

        held_out = HELD_OUT
    held = set(held_out)
    s, c = _paired(start_ifeval, cand_ifeval, "IFEval")
    ifeval = _prompt_part("IFEval prompt-level strict", s, c)
    seen = _group_part("IFEval trained types (instruction-level)", s, c, lambda i: i not in held, seed)
    unseen = _group_part("IFEval held-out types (instruction-level)", s, c, lambda i: i in held, seed + 1)
    ifbench = None
    if start_ifbench is not None and cand_ifbench is not None:
        bs, bc = _paired(start_ifbench, cand_ifbench, "IFBench")
        ifbench = _prompt_part("IFBench prompt-level strict", bs, bc)
    guards = [p for p in (unseen, ifbench) if p is not None and p.delta_points is not None]
    fallen = [p for p in guards if p.falls(alpha)]
    gain = (ifeval.delta_points or 0) > 0
    if fallen:
        verdict = FALLS
        text = ("Not a pick: " + "; ".join(p.text() for p in fallen) + f" (significant at {alpha}), although "
                + ifeval.text() + ".")
    elif not gain:
        verdict, text = NO_GAIN, f"No gain: {ifeval.text()}."
    elif all(p.delta_points >= 0 for p in guards):
        verdict = TRANSFERS
        text = (f"The gain transfers: {ifeval.text()}; " + "; ".join(p.text() for p in guards)
                + (" (at or above the start)." if guards else " (no held-out type or IFBench result to check)."))
    else:
        verdict = TRAINED_ONLY
        below = [p for p in guards if p.delta_points < 0]
        text = (f"The gain is on trained constraint types only: {ifeval.text()}; {seen.text()}; but "
                + "; ".join(p.text() for p in below) + " (below the start, not significantly).")
    if ifbench is None and verdict != NO_GAIN:
        text += " " + NO_IFBENCH
    return Transfer(verdict, ifeval, seen, unseen, ifbench, text)


NO_IFBENCH = "IFBench was not evaluated: the guard checked the held-out IFEval types only."


def pick_sentence(ranked: Sequence[tuple[str, Transfer]]) -> tuple[str | None, str]:
    """The pick among candidates, best IFEval first ([(name, its Transfer against the start)]), and the summary
    that names it: the first that does not `block` and gains on IFEval; each candidate ranked above it that a
    significant fall blocked gets one sentence saying why it was passed over (its guard sentence).
    Returns (the pick's name or None = keep the starting model, the sentences)."""
    passed: list[str] = []
    for name, t in ranked:
        if t.blocks:
            passed.append(f"Passed over {name} (higher on IFEval): {t.sentence}")
            continue
        if t.verdict == NO_GAIN:
            break
        label = "" if t.verdict == TRANSFERS else " (labelled: its gain is on trained constraint types only)"
        return name, " ".join([f"The pick: {name}{label}. {t.sentence}", *passed])
    return None, " ".join(["No pick: no configuration gains on IFEval without a significant fall on the held-out "
                           "types or IFBench; keep the starting model.", *passed])
