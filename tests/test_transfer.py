"""sftbench.analysis.transfer: the ranking's transfer guard on fixed per-prompt results (issue 22)."""

from __future__ import annotations

import pytest

from sftbench.analysis import transfer as TR

SEEN, HELD = "punctuation:no_comma", "startend:quotation"


def _rows(seen_ok: int, held_ok: int, n: int = 100, both_ok: int | None = None) -> dict:
    """{prompt: row}: n prompts with one trained type (the first seen_ok follow it), n with one held-out type
    (the first held_ok follow it), and n with both (the first both_ok follow both; default: none)."""
    out = {}
    for i in range(n):
        out[f"s{i}"] = _row([SEEN], [i < seen_ok])
        out[f"h{i}"] = _row([HELD], [i < held_ok])
        k = both_ok or 0
        out[f"b{i}"] = _row([SEEN, HELD], [i < k, i < k])
    return out


def _row(ids, oks):
    return {"instruction_id_list": ids, "follow_instruction_list": oks, "follow_all_instructions": all(oks)}


def _bench(ok: int, n: int = 100) -> dict:
    return {f"q{i}": _row(["count:word_count_range"], [i < ok]) for i in range(n)}


START = _rows(40, 40)


def test_transfers():
    t = TR.transfer_guard(START, _rows(70, 45), _bench(20), _bench(22), held_out=[HELD])
    assert t.verdict == TR.TRANSFERS and not t.blocks
    assert (t.ifeval.delta_points, t.seen.delta_points, t.held_out.delta_points, t.ifbench.delta_points) == \
        (11.67, 15.0, 2.5, 2.0)
    assert t.ifeval.p_value < 0.001 and t.ifeval.n_prompts == 300
    assert t.sentence.startswith("The gain transfers: IFEval prompt-level strict 26.7 -> 38.3 (+11.7 points, p = ")
    assert "IFBench prompt-level strict 20.0 -> 22.0 (+2.0 points, p = 0.50)" in t.sentence
    assert t.sentence.endswith("(at or above the start).")


def test_trained_types_only():
    t = TR.transfer_guard(START, _rows(70, 37), _bench(20), _bench(18), held_out=[HELD])
    assert t.verdict == TR.TRAINED_ONLY and not t.blocks
    assert t.held_out.delta_points == -1.5 and t.held_out.p_value > 0.05
    assert t.ifbench.delta_points == -2.0 and t.ifbench.p_value == 0.5
    assert t.sentence.startswith("The gain is on trained constraint types only: IFEval prompt-level strict ")
    assert "IFEval trained types (instruction-level) 20.0 -> 35.0 (+15.0 points" in t.sentence
    assert t.sentence.endswith("IFBench prompt-level strict 20.0 -> 18.0 (-2.0 points, p = 0.50) "
                               "(below the start, not significantly).")
    # without IFBench the held-out types alone decide
    assert TR.transfer_guard(START, _rows(70, 37), held_out=[HELD]).verdict == TR.TRAINED_ONLY
    assert TR.transfer_guard(START, _rows(70, 40), held_out=[HELD]).verdict == TR.TRANSFERS


def test_a_significant_fall_blocks_the_pick():
    held_falls = TR.transfer_guard(START, _rows(90, 10), _bench(20), _bench(20), held_out=[HELD])
    assert held_falls.verdict == TR.FALLS and held_falls.blocks
    assert held_falls.sentence.startswith("Not a pick: IFEval held-out types (instruction-level) 20.0 -> 5.0 "
                                          "(-15.0 points, p = ")
    bench_falls = TR.transfer_guard(START, _rows(70, 40), _bench(30), _bench(10), held_out=[HELD])
    assert bench_falls.verdict == TR.FALLS and bench_falls.ifbench.p_value < 0.001
    assert "IFBench prompt-level strict 30.0 -> 10.0 (-20.0 points" in bench_falls.sentence


def test_no_gain_and_pairing_errors():
    assert TR.transfer_guard(START, START, held_out=[HELD]).verdict == TR.NO_GAIN
    assert TR.transfer_guard(START, _rows(30, 45), held_out=[HELD]).verdict == TR.NO_GAIN
    lists = TR.transfer_guard(list(START.values()), list(_rows(70, 45).values()), held_out=[HELD])
    assert lists.verdict == TR.TRANSFERS and lists.as_dict()["blocks"] is False
    with pytest.raises(ValueError, match="different prompts"):
        TR.transfer_guard(START, {**START, "extra": _row([SEEN], [True])})
    with pytest.raises(ValueError, match="cannot be paired"):
        TR.transfer_guard(list(START.values()), list(START.values())[:-1])


def test_default_held_out_is_the_augmentations():
    from sftbench.data.augment_types import HELD_OUT

    assert HELD in HELD_OUT and SEEN not in HELD_OUT
    assert TR.transfer_guard(START, _rows(70, 45)).held_out.delta_points == 2.5
