"""Tokens per second per GPU, for both engines, scaled from measured runs.

Reference engine (padded micro-batches through the HF model): a fixed per-micro-batch overhead (kernel
launches, Python: does not scale with the GPU) plus compute scaled by the GPU's published matrix rate,
both calibrated on one H100 measurement (docs/bench_train.md's `plan:` line, else DEFAULT_H100_TOKENS_PER_S).

Fast engine (packed rows of `token_budget` tokens, compiled layers, each row replayed as a CUDA graph):
time per packed row =
    FAST overhead (per row, GPU-independent) + tokens x (compute / matrix rate + traffic / memory bandwidth)
Two token budgets measured on an H200 (FAST_MEASURED) give the per-row overhead and the H200's per-token time;
the profile of that run splits the per-token time into its matrix part (matmuls and flash attention,
FAST_MATRIX_SHARE of the device kernel time) and its memory-bound part (the compiled elementwise kernels, the
fused CE's softmax, gradient accumulation, the optimizer), scaled by the matrix rate and the memory bandwidth
of another GPU.  Checkpointed layers add a recompute forward to the compute part ((3 + k / layers) / 4 of the
all-checkpointed figure).  Checked on the H200 (scripts/bench_plan.py, 2026-12-01): see docs/bench_train.md.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from sftbench.core.gpus import GPU, get_gpu
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
# varlen attention, CUDA graphs, rows filled with random conversations; scripts/bench_plan.py):
# (gpu key, token budget, tokens/s, when).
FAST_MEASURED = (
    ("h200", 8192, 176_600.0, "2026-12-01, H200, scripts/bench_plan.py, CUDA graphs"),
    ("h200", 16384, 200_100.0, "2026-12-01, H200, scripts/bench_plan.py, CUDA graphs"),
)
# Share of the device kernel time in matrix units (matmuls + flash attention) in the profile of
# fast@16384:30:fused on the H200, 2026-12-01 (scripts/bench_train.py profile.txt: 39.5 of 67.7 ms per row).
FAST_MATRIX_SHARE = 0.58


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


def fast_coefficients(measured=FAST_MEASURED, matrix_share: float = FAST_MATRIX_SHARE) -> tuple[float, float, float]:
    """(seconds per packed row, compute s*TFLOPS per token, traffic s*GB/s per token) from two token budgets
    measured on one GPU and the profile's matrix share of the per-token time."""
    (g1, t1, r1, _), (g2, t2, r2, _) = measured
    if g1 != g2 or t1 == t2:
        raise ValueError("FAST_MEASURED: two token budgets on one GPU")
    gpu = get_gpu(g1)
    per_tok = (t2 / r2 - t1 / r1) / (t2 - t1)
    overhead = max(t1 / r1 - t1 * per_tok, 0.0)
    return overhead, per_tok * matrix_share * gpu.tflops, per_tok * (1 - matrix_share) * gpu.mem_bw_gbs


def fast_tokens_per_second(gpu: GPU, token_budget: int, checkpoint_layers: int, layers: int,
                           coefficients: tuple[float, float, float] | None = None) -> float:
    """Real tokens/s of the fast engine on `gpu` (one GPU; packing assumed full, as measured)."""
    overhead, c, m = coefficients or fast_coefficients()
    recompute = (3 + checkpoint_layers / max(layers, 1)) / 4
    per_token = c * recompute / gpu.tflops + m / gpu.mem_bw_gbs
    return token_budget / (overhead + token_budget * per_token)
