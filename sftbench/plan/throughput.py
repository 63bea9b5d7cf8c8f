"""Tokens per second per GPU, for both engines, scaled from measured runs.

Reference engine (padded micro-batches through the HF model): a fixed per-micro-batch overhead (kernel
launches, Python: does not scale with the GPU) plus compute scaled by the GPU's published matrix rate,
both calibrated on one H100 measurement (docs/bench_train.md's `plan:` line, else DEFAULT_H100_TOKENS_PER_S).

Fast engine (packed rows of `token_budget` tokens, compiled layers): time per packed row =
    FAST overhead (per row, GPU-independent) + tokens x (compute / matrix rate + traffic / memory bandwidth)
the three coefficients solved from three measurements (FAST_MEASURED): two token budgets on an H200 give the
per-row overhead and the H200's per-token time; the H100 (same matrix rate, 70% of the bandwidth) splits
the per-token time into its compute and memory-bandwidth parts.  Checkpointed layers add a recompute
forward to the compute part ((3 + k / layers) / 4 of the all-checkpointed figure).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from sftbench.gpus import GPU, get_gpu
from sftbench.plan.memory import PlanSpec

# Throughput default: tokens/s of the reference recipe (micro-batch 1, gradient checkpointing) on one H100,
# HF Trainer measured here (NOTES.md: 1,013 real tokens/s).  docs/bench_train.md overrides it when it holds a
# line `plan: h100_tokens_per_s=NNNN micro_batch=M` (written by the training benchmark).
DEFAULT_H100_TOKENS_PER_S = 1013.0
DEFAULT_REF_MICRO_BATCH = 1
REFERENCE_GPU = "h100"
# Model FLOPs utilisation assumed when scaling compute between GPUs.
MFU = 0.35

# Fast engine, measured real tokens/s (SmolLM2-135M shape, all 30 layers checkpointed, fused projections,
# varlen attention): (gpu key, token budget, tokens/s, when).
FAST_MEASURED = (
    ("h200", 16384, 147_000.0, "2026-12-01, H200 capped to 8 GiB"),
    ("h200", 32768, 182_000.0, "2026-12-01, H200 capped to 8 GiB"),
    ("h100", 16384, 124_000.0, "2026-11-24, H100, 118k-130k over steps"),
)


def reference_throughput(root: Path | None = None) -> tuple[float, int, str]:
    """(tokens/s on an H100, micro-batch it was measured at, where the number comes from)."""
    root = root or Path(__file__).resolve().parents[2]
    f = root / "docs" / "bench_train.md"
    if f.is_file():
        m = re.search(r"plan:\s*h100_tokens_per_s\s*=\s*([0-9][0-9_.,]*)(?:\s+micro_batch\s*=\s*(\d+))?", f.read_text())
        if m:
            return float(m.group(1).replace(",", "").replace("_", "")), int(m.group(2) or 1), f"{f.name} (measured)"
    return DEFAULT_H100_TOKENS_PER_S, DEFAULT_REF_MICRO_BATCH, "default: HF Trainer on one H100 (NOTES.md), micro-batch 1"


def train_flops_per_token(spec: PlanSpec, seq: float) -> float:
    """Matmul FLOPs per trained token: forward 2x params (+ attention), backward 2x (inputs) + 2x (weights,
    full only), + one extra forward with checkpointing."""
    d = spec.dims
    fwd = 2.0 * (d.layers * d.layer_linear_params + d.embed_params) + 2.0 * d.layers * d.q_dim * seq  # causal attn
    bwd = fwd * (1.0 if spec.method == "lora" else 2.0)
    return fwd + bwd + (fwd if spec.gradient_checkpointing else 0.0)


def tokens_per_second(spec: PlanSpec, gpu: GPU, ref_tps: float, ref_mb: int, avg_len: float) -> float:
    """Throughput on `gpu`: a fixed per-micro-batch overhead (kernel launches, Python; does not scale with
    TFLOPS) plus compute scaled by the GPU's published peak, both calibrated on the H100 reference."""
    ref = get_gpu(REFERENCE_GPU)
    ref_spec = replace(spec, micro_batch=ref_mb)
    ref_tokens = ref_mb * avg_len
    compute_ref = ref_tokens * train_flops_per_token(ref_spec, avg_len) / (ref.tflops * 1e12 * MFU)
    overhead = max(ref_tokens / ref_tps - compute_ref, 0.0)
    tokens = spec.micro_batch * avg_len
    compute = tokens * train_flops_per_token(spec, avg_len) / (gpu.tflops * 1e12 * MFU)
    return tokens / (overhead + compute)


def fast_coefficients(measured=FAST_MEASURED) -> tuple[float, float, float]:
    """(seconds per packed row, compute s*TFLOPS per token, traffic s*GB/s per token) from FAST_MEASURED."""
    (g1, t1, r1, _), (g2, t2, r2, _), (g3, t3, r3, _) = measured
    if g1 != g2 or g3 == g1 or t1 == t2:
        raise ValueError("FAST_MEASURED: two token budgets on one GPU, then one on another GPU")
    a, b = get_gpu(g1), get_gpu(g3)
    per_tok_a = (t2 / r2 - t1 / r1) / (t2 - t1)
    overhead = t1 / r1 - t1 * per_tok_a
    per_tok_b = (t3 / r3 - overhead) / t3
    # per_tok = c / tflops + m / bandwidth on both GPUs: two equations in c and m
    det = (1 / a.tflops) * (1 / b.mem_bw_gbs) - (1 / b.tflops) * (1 / a.mem_bw_gbs)
    c = (per_tok_a / b.mem_bw_gbs - per_tok_b / a.mem_bw_gbs) / det
    m = (per_tok_b / a.tflops - per_tok_a / b.tflops) / det
    return overhead, max(c, 0.0), max(m, 0.0)


def fast_tokens_per_second(gpu: GPU, token_budget: int, checkpoint_layers: int, layers: int,
                           coefficients: tuple[float, float, float] | None = None) -> float:
    """Real tokens/s of the fast engine on `gpu` (one GPU; packing assumed full, as measured)."""
    overhead, c, m = coefficients or fast_coefficients()
    recompute = (3 + checkpoint_layers / max(layers, 1)) / 4
    per_token = c * recompute / gpu.tflops + m / gpu.mem_bw_gbs
    return token_budget / (overhead + token_budget * per_token)
