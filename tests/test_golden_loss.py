"""Golden-loss recipe tests (torchtune style): the tiny model, a fixed inline dataset and a fixed seed; the first
8 logged losses of each engine pinned to literal values, and a checksum of the final weights.

The values were computed on commit 1ef06e8 (before the package was re-laid out into layers) and are unchanged
since: a change here means the trainer's maths changed (data order, masking, loss normalisation, optimizer,
schedule, engine), not just its code.  The invariance tests (resume == uninterrupted, fast == reference, 1 GPU
== 2) live in tests/test_train.py; these pin the numbers themselves.

The test only uses what both layouts share (the fixture `tiny_model_dir`, `train_hw_parallel.main`), so it runs
unchanged in an old worktree: `GOLDEN_PRINT=1 pytest tests/test_golden_loss.py -s` prints the values it got.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# 12 fixed conversations (system / multi-turn / single-turn), written here so no generator can change them.
CONVERSATIONS = [
    [("user", "Name three primary colours."), ("assistant", "Red, yellow and blue.")],
    [("system", "You answer in one word."), ("user", "Capital of France?"), ("assistant", "Paris.")],
    [("user", "What is 2 + 3?"), ("assistant", "2 + 3 = 5."), ("user", "And times 4?"), ("assistant", "5 x 4 = 20.")],
    [("user", "Write a haiku about rain."), ("assistant", "Soft rain on the roof\nthe garden drinks slowly\nclouds walk home at dusk")],
    [("user", "Translate 'good morning' to Spanish."), ("assistant", "Buenos dias.")],
    [("system", "Be brief."), ("user", "Why is the sky blue?"), ("assistant", "Air scatters blue light more than red light.")],
    [("user", "List two prime numbers."), ("assistant", "2 and 3."), ("user", "Two more?"), ("assistant", "5 and 7.")],
    [("user", "Spell 'cat' backwards."), ("assistant", "tac")],
    [("user", "Give me a synonym of happy."), ("assistant", "Joyful.")],
    [("user", "How many legs does a spider have?"), ("assistant", "Eight.")],
    [("system", "You are a helpful tutor."), ("user", "What is a noun?"),
     ("assistant", "A word that names a person, place, thing or idea.")],
    [("user", "Count to five."), ("assistant", "1, 2, 3, 4, 5."), ("user", "Now backwards."), ("assistant", "5, 4, 3, 2, 1.")],
]

N_LOSSES = 8
GOLDEN = {  # engine: (first 8 logged losses, (sum, sum of |w|) of the final weights in float64)
    "reference": ([5.983346, 5.977072, 5.850139, 5.573943, 5.467915, 5.396915, 5.230278, 5.192278],
                  (327.0404892742913, 1977.6039169717965)),
    "fast": ([5.983345, 5.977073, 5.850139, 5.573943, 5.467914, 5.396915, 5.230279, 5.192278],
             (327.0404850730183, 1977.6039144564702)),
}


def write_data(path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": r, "content": c} for r, c in conv]}) + "\n"
                            for conv in CONVERSATIONS), encoding="utf-8")
    return path


def recipe(model_dir: Path, data: Path, out: Path, engine: str) -> list[str]:
    """The fixed recipe: 8 steps of 4 conversations (micro-batch 2 x accumulation 2), linear warm-up then cosine."""
    flags = dict(model_name_or_path=model_dir, data_path=data, output_dir=out, max_steps=N_LOSSES,
                 per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-3,
                 lr_scheduler_type="cosine", warmup_steps=2, weight_decay=0.01, model_max_length=96, max_rounds=-1,
                 save_steps=N_LOSSES, logging_steps=1, seed=1234, data_cache_dir="none", progress=False,
                 loss_chunk_size=32, device="cpu", engine=engine)
    if engine == "fast":
        flags.update(attention="sdpa", token_budget=192)
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def weights_checksum(model_dir: Path) -> tuple[float, float]:
    """(sum, sum of |w|) over the final weights in float64: a checksum that a different CPU's last-bit rounding
    leaves within rel 1e-6 (scripts/check_identity.py compares the weights bit for bit)."""
    from safetensors.torch import load_file

    sd = load_file(str(model_dir / "model.safetensors"))
    ws = [sd[name].double() for name in sorted(sd)]
    return sum(float(w.sum()) for w in ws), sum(float(w.abs().sum()) for w in ws)


def run_recipe(model_dir: Path, tmp: Path, engine: str) -> tuple[list[float], tuple[float, float]]:
    import train_hw_parallel

    out = tmp / engine
    assert train_hw_parallel.main(recipe(model_dir, write_data(tmp / "chat.jsonl"), out, engine)) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r["loss"] for r in rows], weights_checksum(out)


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_golden_losses_and_final_weights(engine, tiny_model_dir, tmp_path):
    losses, checksum = run_recipe(tiny_model_dir, tmp_path, engine)
    if os.environ.get("GOLDEN_PRINT"):
        print(f"\nGOLDEN {engine}: ({losses!r}, {checksum!r})")
    want_losses, want_checksum = GOLDEN[engine]
    assert len(losses) == N_LOSSES
    assert losses == pytest.approx(want_losses, rel=1e-4)
    assert checksum == pytest.approx(want_checksum, rel=1e-6)
