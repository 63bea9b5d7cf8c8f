"""Instruction-level accuracy on the constraint types seen in training and on the held-out ones (issue 13).

    python -m sftbench.analysis.seen_unseen RESULTS [--run RUN_DIR] [--held_out id,id,...]

A constraint-augmented run (`--augment_fraction`) never adds the held-out types (RUN/augment_stats.json
"held_out", else sftbench.data.augment_types.HELD_OUT), so an IFEval gain that exists only on the other types is
training to the test's phrasing, not instruction following.  `seen` = every IFEval instruction whose type is not
held out (as sftbench.data.augment_types.split_by_seen splits them).  Inputs are eval_results_strict.jsonl rows only.

    per_checkpoint({0: rows0, 30: rows30}, held_out) -> {0: GroupAccuracy, 30: GroupAccuracy}
    markdown_table(per) ; sentence(per[0], per[30])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from sftbench.data.augment_types import HELD_OUT

# A move smaller than this (in points) is not called a gain or a loss in the sentence.
MIN_POINTS = 0.5


@dataclass(frozen=True)
class GroupAccuracy:
    """Instruction-level strict accuracy per group: followed / total instructions."""

    seen_followed: int
    seen_total: int
    held_out_followed: int
    held_out_total: int

    @property
    def seen(self) -> float | None:
        return self.seen_followed / self.seen_total if self.seen_total else None

    @property
    def held_out(self) -> float | None:
        return self.held_out_followed / self.held_out_total if self.held_out_total else None

    def as_dict(self) -> dict:
        return {"seen": self.seen, "held_out": self.held_out, "counts": asdict(self)}


def default_held_out() -> list[str]:
    """sftbench.data.augment_types.HELD_OUT (through the run-directory library)."""
    return held_out_types(None)


def group_accuracy(rows: Iterable[Mapping], held_out: Iterable[str] | None = None) -> GroupAccuracy:
    """From eval_results_strict.jsonl rows ({"instruction_id_list", "follow_instruction_list", ...})."""
    held = set(default_held_out() if held_out is None else held_out)
    n = {True: [0, 0], False: [0, 0]}  # held out? -> [followed, total]
    for r in rows:
        for iid, ok in zip(r["instruction_id_list"], r["follow_instruction_list"]):
            n[iid in held][0] += bool(ok)
            n[iid in held][1] += 1
    return GroupAccuracy(n[False][0], n[False][1], n[True][0], n[True][1])


def per_checkpoint(results: Mapping[int, Iterable[Mapping]], held_out: Iterable[str] | None = None) -> dict[int, GroupAccuracy]:
    held = default_held_out() if held_out is None else list(held_out)
    return {step: group_accuracy(rows, held) for step, rows in sorted(results.items())}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(100 * (b - a), 1)


def table(per: Mapping[int, GroupAccuracy], start: int | None = 0) -> tuple[list[str], list[list[str]]]:
    """(head, rows): per checkpoint seen / held-out accuracy (%, followed/total) and the change vs `start` (points)."""
    base = per.get(start) if start is not None else None
    head = ["step", "seen types", "held-out types", "seen Δ vs start", "held-out Δ vs start"]
    rows = []
    for step, g in sorted(per.items()):
        ds = _delta(base.seen, g.seen) if base else None
        dh = _delta(base.held_out, g.held_out) if base else None
        rows.append([str(step), f"{_pct(g.seen)} ({g.seen_followed}/{g.seen_total})",
                     f"{_pct(g.held_out)} ({g.held_out_followed}/{g.held_out_total})",
                     "" if ds is None else f"{ds:+.1f}", "" if dh is None else f"{dh:+.1f}"])
    return head, rows


def markdown_table(per: Mapping[int, GroupAccuracy], start: int | None = 0) -> str:
    """The table() as markdown."""
    head, rows = table(per, start)
    lines = ["| " + " | ".join(head) + " |", "|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def sentence(start: GroupAccuracy, end: GroupAccuracy, min_points: float = MIN_POINTS) -> str:
    """One sentence on where the change from `start` to `end` is (moves under min_points count as none)."""
    ds, dh = _delta(start.seen, end.seen), _delta(start.held_out, end.held_out)
    if ds is None or dh is None:
        return "No held-out constraint types were evaluated, so seen and unseen types cannot be compared."
    moved = f"seen types moved {ds:+.1f} points, held-out types moved {dh:+.1f} points"
    if ds >= min_points and dh < min_points:
        return f"The gain is on trained constraint types only ({ds:+.1f} points): held-out types moved {dh:+.1f} points."
    if ds >= min_points and dh >= min_points:
        return f"The gain carries over to held-out constraint types: {moved}."
    if dh >= min_points:
        return f"Only held-out constraint types gained: {moved}."
    if ds <= -min_points or dh <= -min_points:
        return f"No gain on either group: {moved}."
    return f"No change on either group: {moved}."


# ---------------------------------------------------------------------------------------------- files


def held_out_of(run_dir: str | Path | None) -> list[str]:
    """The held-out types a run recorded (RUN/augment_stats.json), else augment_types.HELD_OUT."""
    return held_out_types(run_dir)


def load_results(results_dir: str | Path) -> dict[int, list[dict]]:
    """{step: eval_results_strict.jsonl rows} of a sweep's complete result directories (checkpoint-<step>/)."""
    from sftbench.eval.results import STRICT, read_summary
    from sftbench.core.io import read_jsonl
    from sftbench.core.rundir import checkpoint_step

    out = {}
    for child in sorted(Path(results_dir).iterdir()):
        step = checkpoint_step(child.name)
        if step is not None and (child / STRICT).is_file() and read_summary(child) is not None:
            out[step] = read_jsonl(child / STRICT)
    return out


def section(results_dir: str | Path, run_dir: str | Path | None = None, held_out: list[str] | None = None) -> str:
    """The report's markdown section: table (start = step 0 when evaluated) and the sentence for the last step."""
    held = held_out if held_out is not None else held_out_of(run_dir)
    per = per_checkpoint(load_results(results_dir), held)
    if not per:
        return ""
    steps = sorted(per)
    text = (f"## Seen and held-out constraint types\n\nInstruction-level strict accuracy; held out of training: "
            f"{', '.join(f'`{h}`' for h in held) or 'none'}.\n\n" + markdown_table(per, 0 if 0 in per else None))
    if 0 in per and steps[-1] != 0:
        text += f"\nFrom the start to step {steps[-1]}: {sentence(per[0], per[steps[-1]])}\n"
    return text


def main(argv: list[str] | None = None) -> int:
    from sftbench.core.errors import UserError, exit_with_user_error

    prog = "python -m sftbench.analysis.seen_unseen"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir", metavar="RESULTS", help="a sweep's results directory (checkpoint-<step>/)")
    p.add_argument("--run", default=None, help="the run directory (its augment_stats.json names the held-out types)")
    p.add_argument("--held_out", default=None, help="comma-separated held-out ids (overrides --run)")
    ns = p.parse_args(argv)
    try:
        if not Path(ns.results_dir).is_dir():
            raise UserError(f"{ns.results_dir}: results directory not found.")
        held = [h.strip() for h in ns.held_out.split(",") if h.strip()] if ns.held_out else None
        text = section(ns.results_dir, ns.run, held)
        if not text:
            raise UserError(f"{ns.results_dir}: no checkpoint-<step>/eval_results_strict.jsonl with a summary.json.")
    except UserError as e:
        exit_with_user_error(e, prog)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def held_out_types(run_dir: str | os.PathLike | None = None) -> list[str]:
    """The IFEval constraint types a run kept out of its constraint augmentation (--augment_hold_out_types):
    RUN/augment_stats.json's "held_out" when the trainer wrote one, else the default, augment_types.HELD_OUT
    (also the split to compare runs without augmentation by)."""
    f = Path(run_dir) / "augment_stats.json" if run_dir is not None else None
    if f is not None and f.is_file():
        try:
            held = json.loads(f.read_text(encoding="utf-8")).get("held_out")
        except (json.JSONDecodeError, OSError, AttributeError):
            held = None
        if isinstance(held, list):
            return [str(h) for h in held]
    return list(HELD_OUT)
