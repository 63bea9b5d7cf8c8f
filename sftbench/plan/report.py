"""The plan per GPU (steps, fits, time, cost) for one engine, as rows, a table or JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sftbench.core.gpus import GPUS, PRICES, PRICES_AS_OF, GPU
from sftbench.plan.data import DataSize
from sftbench.plan.fast import FastSpec, fast_plan_for_gpu, max_token_budget
from sftbench.plan.memory import Breakdown, PlanSpec, estimate_peak_gib, max_length_that_fits, max_micro_batch, oom_advice
from sftbench.plan.throughput import fast_tokens_per_second, reference_throughput, tokens_per_second


@dataclass
class GpuRow:
    gpu: GPU
    fits: bool
    total_gib: float
    max_micro_batch: int          # reference engine: at max_length; fast engine: 0
    max_length: int               # reference engine: at the micro-batch; fast engine: 0
    tokens_per_s: float
    hours: float
    cost_usd: float
    engine: str = "reference"
    checkpoint_layers: int = 0    # fast engine: layers the trainer checkpoints on this card
    max_token_budget: int = 0     # fast engine: largest packed row that fits with every layer checkpointed
    breakdown: Breakdown | None = None
    path: str = ""                # what the trainer would run there (sftbench.core.capabilities), e.g. "varlen bf16, compiled, graphs"


def planned_path(g: GPU, engine: str) -> str:
    """The trainer's path on `g` (--precision/--compile/--attention auto), and what changes without Triton (PyTorch's
    Windows wheels): e.g. "buckets fp16+scaler, compiled (no Triton: eager)"; "?" for a GPU of unknown capability."""
    from sftbench.core.capabilities import assumed, decide_train_path, short_label
    from sftbench.core.gpus import COMPUTE_CAPABILITY

    cap = COMPUTE_CAPABILITY.get(g.key)
    if cap is None:
        return "?"
    labels = []
    for triton in (True, False):
        caps = assumed(g.name, cap, triton)
        labels.append(short_label(decide_train_path(caps, engine=engine,
                                                    precision="bf16" if caps.bf16_native else "fp16")))
    if labels[0] == labels[1]:
        return labels[0]
    return f"{labels[0]} (no Triton: {'eager, no graphs' if 'graphs' in labels[0] else 'eager'})"


def resolve_engine(engine: str, method: str) -> str:
    """The trainer's `--engine auto` on a CUDA GPU: fast for full fine-tuning, reference for LoRA."""
    if engine == "auto":
        return "fast" if method == "full" else "reference"
    return engine


def optimizer_steps(spec: PlanSpec, data: DataSize, epochs: float, num_gpus: int) -> int:
    window = spec.micro_batch * spec.grad_accum * num_gpus
    steps_per_epoch = data.examples // window
    return max(1, math.ceil(epochs * steps_per_epoch)) if steps_per_epoch else 0


def _row(g: GPU, engine: str, spec: PlanSpec, fast: FastSpec, tokens: float, avg_len: float, num_gpus: int,
         ref, prices) -> GpuRow:
    if engine == "fast":
        k, b = fast_plan_for_gpu(fast, g.mem_gib)
        tps = fast_tokens_per_second(g, fast.token_budget, k, spec.dims.layers) * num_gpus
        extra = dict(checkpoint_layers=k, max_token_budget=max_token_budget(fast, g.mem_gib))
        mmb = ml = 0
    else:
        b = estimate_peak_gib(spec)
        tps = tokens_per_second(spec, g, ref[0], ref[1], avg_len) * num_gpus
        extra, mmb, ml = {}, max_micro_batch(spec, g.mem_gib), max_length_that_fits(spec, g.mem_gib)
    hours = tokens / tps / 3600 if tps > 0 else float("inf")
    return GpuRow(g, b.total <= g.mem_gib * 0.97, b.total, mmb, ml, tps, hours,
                  hours * num_gpus * prices.get(g.key, float("nan")), engine=engine, breakdown=b,
                  path=planned_path(g, engine), **extra)


def plan_rows(spec: PlanSpec, data: DataSize, epochs: float, num_gpus: int = 1, gpus: list[GPU] | None = None,
              ref: tuple[float, int, str] | None = None, prices: dict | None = None, engine: str = "reference",
              fast: FastSpec | None = None) -> tuple[int, list[GpuRow]]:
    """(optimizer steps, one row per GPU) for `engine` (reference, fast, or auto as the trainer resolves it)."""
    ref = ref or reference_throughput()
    prices = PRICES if prices is None else prices
    engine = resolve_engine(engine, spec.method)
    fast = fast or FastSpec(dims=spec.dims, ce_chunk_size=spec.ce_chunk_size if spec.chunked_ce else 1024)
    steps = optimizer_steps(spec, data, epochs, num_gpus)
    avg_len = min(data.avg_tokens, spec.max_length)
    tokens = steps * spec.micro_batch * spec.grad_accum * num_gpus * avg_len
    return steps, [_row(g, engine, spec, fast, tokens, avg_len, num_gpus, ref, prices) for g in gpus or GPUS]


def _cost(r: GpuRow) -> str:
    return "free" if r.cost_usd == 0 else ("?" if math.isnan(r.cost_usd) else f"{r.cost_usd:.2f}")


def format_breakdown(b: Breakdown, spec: PlanSpec, engine: str) -> list[str]:
    """The peak-VRAM lines of one breakdown."""
    ckpt = "with" if spec.gradient_checkpointing else "without"
    rows = [
        ("weights (fp32 masters" + (", frozen base + adapters)" if spec.method == "lora" else ")"), b.weights),
        ("gradients (fp32)", b.gradients),
        ("optimizer state (AdamW, fp32)", b.optimizer_state),
        (f"{'bf16/fp16' if spec.precision != 'fp32' else 'no'} working copies of the weights (autocast)", b.master_copies),
        ("activations (packed row, checkpointed layers as planned)" if engine == "fast" else
         f"activations ({ckpt} gradient checkpointing)", b.activations),
        ("logits / loss buffers" + (" (fused chunked CE)" if engine == "fast" else ""), b.logits_loss),
        ("= torch peak allocated", b.torch_allocated),
        ("allocator slack (reserved - allocated)", b.allocator_slack),
        ("CUDA context + libraries (NVML only)", b.cuda_context),
        ("= total device memory (NVML)", b.total),
    ]
    return [f"  {k:<58s} {v:7.2f} GiB" for k, v in rows]


def format_reference(spec: PlanSpec, rows: list[GpuRow]) -> list[str]:
    b = estimate_peak_gib(spec)
    out = [f"Reference engine (padded micro-batches through the HF model). Peak VRAM per GPU; peak during: {b.phase}"]
    out += format_breakdown(b, spec, "reference")
    out.append(f"  for comparison: activations with checkpointing {b.activations_ckpt:.2f} GiB, without "
               f"{b.activations_no_ckpt:.2f} GiB; loss buffers chunked {b.logits_chunked_ce:.2f} GiB, full logits "
               f"{b.logits_full_ce:.2f} GiB")
    out.append("")
    out.append(f"Per GPU, reference engine (needs {b.total:.2f} GiB; max micro-batch at length {spec.max_length}, "
               f"max length at micro-batch {spec.micro_batch}):")
    out.append(f"  {'GPU':<22s} {'GiB':>5s} {'fits':>5s} {'max micro-batch':>15s} {'max length':>10s} {'tokens/s':>9s} "
               f"{'hours':>7s} {'cost $':>7s}")
    for r in rows:
        out.append(f"  {r.gpu.name:<22s} {r.gpu.mem_gib:5.1f} {'yes' if r.fits else 'NO':>5s} {r.max_micro_batch:>15d} "
                   f"{r.max_length:>10d} {r.tokens_per_s:>9,.0f} {r.hours:>7.2f} {_cost(r):>7s}")
    misfits = [r for r in rows if not r.fits]
    if misfits:
        out += ["", f"Does not fit {', '.join(r.gpu.key for r in misfits)}. "
                + oom_advice(spec, min(r.gpu.mem_gib for r in misfits))]
    return out


def format_fast(spec: PlanSpec, fast: FastSpec, rows: list[GpuRow]) -> list[str]:
    first = rows[0]
    target = f"--vram_target_gib {fast.vram_target_gib:g}" if fast.vram_target_gib else "the card's memory"
    out = [f"Fast engine (packed rows of {fast.token_budget} tokens, compiled layers, fused chunked CE; layers "
           f"checkpointed as the trainer chooses them for {target}). Peak VRAM on {first.gpu.name}; peak during: "
           f"{first.breakdown.phase}"]
    out += format_breakdown(first.breakdown, spec, "fast")
    out.append(f"  for comparison: activations with every layer checkpointed {first.breakdown.activations_ckpt:.2f} GiB, "
               f"none {first.breakdown.activations_no_ckpt:.2f} GiB")
    out.append("")
    out.append("Per GPU, fast engine (max token budget: the largest packed row that fits with every layer checkpointed):")
    out.append(f"  {'GPU':<22s} {'GiB':>5s} {'fits':>5s} {'needs GiB':>9s} {'ckpt layers':>11s} {'max token budget':>16s} "
               f"{'tokens/s':>9s} {'hours':>7s} {'cost $':>7s}  path")
    for r in rows:
        out.append(f"  {r.gpu.name:<22s} {r.gpu.mem_gib:5.1f} {'yes' if r.fits else 'NO':>5s} {r.total_gib:9.2f} "
                   f"{r.checkpoint_layers:>5d} of {spec.dims.layers:<3d} {r.max_token_budget:>16d} {r.tokens_per_s:>9,.0f} "
                   f"{r.hours:>7.2f} {_cost(r):>7s}  {r.path}")
    out.append("  (path: what the trainer runs there with --precision/--compile/--attention auto; \"no Triton\": PyTorch's "
               "Windows wheels, where the layers run eagerly; tokens/s assume compiled layers: eager ones are slower, "
               "measure with scripts/bench_train.py --no-compile.)")
    if any(not r.gpu.bf16 or r.gpu.tflops < 20 for r in rows):
        out.append("  (GPUs without bf16 train in fp16 with a gradient scaler and, below compute capability 8.0, with "
                   "attention in length buckets instead of varlen: their fast-engine rates are scaled, not measured.)")
    return out


def rows_json(rows: list[GpuRow]) -> list[dict]:
    out = []
    for r in rows:
        d = {"gpu": r.gpu.key, "engine": r.engine, "mem_gib": r.gpu.mem_gib, "fits": r.fits,
             "total_gib": round(r.total_gib, 4), "max_micro_batch": r.max_micro_batch, "max_length": r.max_length,
             "tokens_per_s": round(r.tokens_per_s, 1), "hours": round(r.hours, 3),
             "cost_usd": None if math.isnan(r.cost_usd) else round(r.cost_usd, 2), "path": r.path}
        if r.engine == "fast":
            d.update(checkpoint_layers=r.checkpoint_layers, max_token_budget=r.max_token_budget,
                     breakdown_gib=r.breakdown.as_dict())
        out.append(d)
    return out
