#!/usr/bin/env python
"""What the trainer's guards cost (issue 24: each must stay under 1% of a step / of a checkpoint write), measured
through the product's own functions on a real model:

    python scripts/bench_guards.py --model HuggingFaceTB/SmolLM2-135M-Instruct [--seq 1024 --batch 8 --steps 10]

Per step: sftbench.train.stop.check_finite_step (two host floats the loop already has) against the time of a
training step (forward, backward, clip, fused AdamW, the loss brought to the host as the loop does).
Per checkpoint: the free-space check (checkpoint_bytes + sftbench.core.io.check_free_space) and the weights'
NaN/Inf check (sftbench.train.stop.weights_finite) against the time to write the weights (save_pretrained).
Per evaluation: sftbench.model.load.check_finite_weights on the model in the evaluation dtype.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def timed(fn, n: int, sync) -> float:
    """Median seconds of fn() over n calls (after one warm-up), synchronising the device around each."""
    fn()
    ts = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model directory or hub id (Llama architecture)")
    ap.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step")
    ap.add_argument("--steps", type=int, default=10, help="timed repetitions of each measurement")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast / evaluation dtype")
    a = ap.parse_args(argv)

    from sftbench.core import io
    from sftbench.model.load import check_finite_weights, load_causal_lm
    from sftbench.model.offline import resolve_model_path
    from sftbench.train.setup import checkpoint_bytes
    from sftbench.train.stop import check_finite_step, weights_finite

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    path = resolve_model_path(a.model)
    model = load_causal_lm(path, torch.float32, llama_only=True).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=dt, enabled=a.dtype != "fp32"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss), float(gn)  # the loop's own host syncs

    step_s = timed(step, a.steps, sync)
    loss, gn = step()
    run = SimpleNamespace(model=model, optimizer=opt, cfg=SimpleNamespace(learning_rate=1e-5), out=Path("."))
    finite_step_s = timed(lambda: check_finite_step(run, 1, loss, gn), 1000, lambda: None)

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "checkpoint-1"
        free_s = timed(lambda: io.check_free_space(target, checkpoint_bytes(run)), a.steps, lambda: None)
        weights_s = timed(lambda: weights_finite(model), a.steps, sync)
        save_s = timed(lambda: model.save_pretrained(target, safe_serialization=True), max(1, a.steps // 5), sync)
    eval_model = model.to(dt).eval()
    eval_s = timed(lambda: check_finite_weights(path, eval_model), a.steps, sync)

    def pct(x, of):
        return round(100 * x / of, 4) if of > 0 and math.isfinite(of) else None

    print(json.dumps({
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "model": str(a.model),
        "batch_x_seq": [a.batch, a.seq], "dtype": a.dtype,
        "step_s": round(step_s, 5),
        "nonfinite_step_check_s": finite_step_s, "nonfinite_step_check_pct_of_step": pct(finite_step_s, step_s),
        "weights_save_s": round(save_s, 4),
        "free_space_check_s": round(free_s, 6), "free_space_check_pct_of_save": pct(free_s, save_s),
        "weights_finite_check_s": round(weights_s, 6), "weights_finite_check_pct_of_save": pct(weights_s, save_s),
        "eval_weights_finite_check_s": round(eval_s, 6),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
