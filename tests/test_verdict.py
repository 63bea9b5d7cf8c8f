"""sftbench/analysis/verdict.py: did training help? Hand-made per-prompt fixtures, exact sentences."""

import pytest

from sftbench.analysis import verdict as V


def bools(n_true: int, n: int = 40, offset: int = 0) -> list[bool]:
    """n prompts, prompts offset .. offset+n_true-1 followed."""
    return [offset <= i < offset + n_true for i in range(n)]


def lists(prompt_level: list[bool]) -> list[list[bool]]:
    """Two instructions per prompt: the first follows the prompt-level outcome, the second always holds."""
    return [[b, True] for b in prompt_level]


def metrics(ps: dict[int, list[bool]]) -> dict[str, dict[int, list]]:
    return {"prompt_strict": ps, "inst_strict": {s: lists(v) for s, v in ps.items()},
            "prompt_loose": ps, "inst_loose": {s: lists(v) for s, v in ps.items()}}


HELPED = {0: bools(5), 10: bools(20), 20: bools(18)}
HURT = {0: bools(20), 10: bools(19), 20: bools(4)}
NO_CHANGE = {0: bools(10), 10: bools(12), 20: bools(11)}
NO_START = {10: bools(12), 20: bools(11)}


def test_sign_test_is_mcnemar_at_prompt_level_and_counts_prompts_at_instruction_level():
    assert V.sign_test(bools(20), bools(5)) == (15, 0, pytest.approx(2 * 0.5**15))
    # Instruction level: one prompt follows 2 of 2 vs 0 of 2 -> one prompt for A, not two instructions.
    assert V.sign_test([[True, True], [False]], [[False, False], [False]]) == (1, 0, 1.0)
    assert V.accuracy([[True, True], [False]]) == pytest.approx(2 / 3)


def test_helped():
    v = V.verdict(metrics(HELPED))
    assert v.outcome == "helped"
    assert v.pick == 10
    assert v.sentences == [
        "Training helped: checkpoint-10 follows 50.0% (prompt-level strict) against 12.5% for the starting model, "
        "+37.5 points, p = 1.2e-04 (exact sign test over prompts, Holm-corrected over 2 checkpoints, alpha 0.05).",
        "Best vs start: checkpoint-10 50.0% vs 12.5%, +37.5 points (checkpoint-10 follows more instructions on 15 "
        "prompts, the start on 0), p = 1.2e-04 (Holm-corrected), significant.",
        "Final vs start: checkpoint-20 45.0% vs 12.5%, +32.5 points (checkpoint-20 follows more instructions on 13 "
        "prompts, the start on 0), p = 2.4e-04 (Holm-corrected), significant.",
        "Pick: checkpoint-10.",
    ]
    md = V.markdown(v)
    assert "| prompt-level strict | 12.5% | checkpoint-10 50.0% | +37.5 (p = 1.2e-04) | checkpoint-20 45.0% | " \
           "+32.5 (p = 2.4e-04) | helped |" in md
    # Two instructions per prompt, the second always followed: 45/80 -> 60/80.
    assert "| instruction-level strict | 56.2% | checkpoint-10 75.0% | +18.8 (p = 1.2e-04) |" in md


def test_helped_earliest_significant_checkpoint_not_worse_than_best_is_picked():
    v = V.verdict(metrics({0: bools(5), 10: bools(19), 20: bools(20)}))
    assert (v.outcome, v.metrics["prompt_strict"].best, v.pick) == ("helped", 20, 10)


def test_hurt():
    v = V.verdict(metrics(HURT))
    assert v.outcome == "hurt"
    assert v.pick == 0
    assert v.sentences == [
        "Training hurt: keep the starting model. The start follows 50.0% (prompt-level strict) against 10.0% for "
        "the final checkpoint, checkpoint-20 (-40.0 points, p = 6.1e-05; exact sign test over prompts, "
        "Holm-corrected over 2 checkpoints, alpha 0.05). The first checkpoint significantly below the start is "
        "checkpoint-20 (10.0%, -40.0 points, p = 6.1e-05).",
        "Best vs start: checkpoint-10 47.5% vs 50.0%, -2.5 points (checkpoint-10 follows more instructions on 0 "
        "prompts, the start on 1), p = 1.0 (Holm-corrected), not significant.",
        "Final vs start: checkpoint-20 10.0% vs 50.0%, -40.0 points (checkpoint-20 follows more instructions on 0 "
        "prompts, the start on 16), p = 6.1e-05 (Holm-corrected), significant.",
        "Pick: the starting model (step 0).",
    ]
    assert "| prompt-level strict | 50.0% | checkpoint-10 47.5% | -2.5 (p = 1.0) | checkpoint-20 10.0% | " \
           "-40.0 (p = 6.1e-05) | hurt |" in V.markdown(v)


def test_hurt_names_the_first_significant_decline():
    v = V.verdict(metrics({0: bools(20), 10: bools(3), 20: bools(2), 30: bools(19)}))
    mv = v.metrics["prompt_strict"]
    assert (mv.outcome, mv.best, mv.first_below) == ("no_change", 30, 10)
    v = V.verdict(metrics({0: bools(20), 10: bools(19), 20: bools(3), 30: bools(2)}))
    assert (v.outcome, v.metrics["prompt_strict"].first_below) == ("hurt", 20)
    assert "The first checkpoint significantly below the start is checkpoint-20 (7.5%" in v.sentences[0]


def test_no_change():
    v = V.verdict(metrics(NO_CHANGE))
    assert v.outcome == "no_change"
    assert v.pick == 0
    assert v.sentences[0] == (
        "No measurable change: no trained checkpoint is significantly better or worse than the starting model "
        "(25.0%, prompt-level strict); the best, checkpoint-10, is +5.0 points from it, p = 1.0 (exact sign test "
        "over prompts, Holm-corrected over 2 checkpoints, alpha 0.05). Keep the starting model unless another "
        "criterion favours a checkpoint.")
    assert v.sentences[-1] == "Pick: the starting model (step 0)."


def test_no_start():
    v = V.verdict(metrics(NO_START))
    assert v.outcome == "no_start"
    assert v.sentences == [
        "The verdict (did training help?) cannot be given: the starting model was not evaluated. Rerun the sweep "
        "with `--include_base` (the starting model, as step 0) to evaluate it on the same prompts.",
        "Pick: checkpoint-10.",
    ]
    assert "| prompt-level strict | not evaluated | checkpoint-10 30.0% | — | checkpoint-20 27.5% | — | no start |" \
        in V.markdown(v)


def test_outcomes_from_rows_aligns_on_keys():
    def row(key, fl):
        return {"key": key, "follow_instruction_list": fl, "follow_all_instructions": all(fl)}

    rows = {0: {"strict": [row(2, [True]), row(1, [False, True])], "loose": [row(1, [True, True]), row(2, [True])]},
            5: {"strict": [row(1, [True, True]), row(2, [False]), row(3, [True])],
                "loose": [row(1, [True, True]), row(2, [False]), row(3, [True])]}}
    out = V.outcomes_from_rows(rows)
    assert out["prompt_strict"] == {0: [False, True], 5: [True, False]}
    assert out["inst_strict"] == {0: [[False, True], [True]], 5: [[True, True], [False]]}
    assert out["prompt_loose"] == {0: [True, True], 5: [True, False]}


def test_bad_input():
    with pytest.raises(ValueError, match="same prompts"):
        V.decide({0: [True], 5: [True, False]})
    with pytest.raises(ValueError, match="trained checkpoint"):
        V.decide({0: [True]})


def test_the_issue_case_start_best_final_six_points_below_is_hurt():
    """Issue 12: the start was best and the final 6.1 points below it (20.3 -> 14.2 over 541 prompts); the
    old report said 'no measurable change'.  Here: checkpoint-5 loses 5 of the start's prompts; the final
    keeps 60 of the start's 110 and gains 17 others (77 = 14.2%)."""
    n = 541
    start = bools(110, n)
    ck5 = bools(105, n)
    final = [i < 60 or 200 <= i < 217 for i in range(n)]
    v = V.verdict(metrics({0: start, 5: ck5, 10: bools(95, n), 20: final}))
    mv = v.metrics["prompt_strict"]
    assert (v.outcome, v.pick, mv.best, mv.first_below) == ("hurt", 0, 5, 10)
    assert v.sentences[0].startswith(
        "Training hurt: keep the starting model. The start follows 20.3% (prompt-level strict) against 14.2% for "
        "the final checkpoint, checkpoint-20 (-6.1 points, p = ")
    assert "The first checkpoint significantly below the start is checkpoint-10 (17.6%, -2.8 points, p = " \
        in v.sentences[0]
    assert v.sentences[1].startswith("Best vs start: checkpoint-5 19.4% vs 20.3%, -0.9 points (checkpoint-5 follows "
                                     "more instructions on 0 prompts, the start on 5), p = ")
