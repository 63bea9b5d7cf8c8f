#!/usr/bin/env python
"""Check the planner's memory model on a GPU: predicted vs measured peak for a grid of configurations.

    python scripts/bench_plan.py                       # SmolLM2-135M shape, 12 full + 4 LoRA configs
    python scripts/bench_plan.py --lengths 512 1024 --micro_batches 1 4 --out bench_plan.json

Each configuration runs the trainer's own step (sftbench.train.step: the model set-up, the reference engine with
its loss, AdamW with the schedule, clipping) on a randomly initialised model of the given config (no weights or
data needed): fp32 master weights, bf16 autocast (fp16 with a gradient scaler where the GPU has no bf16), HF
gradient checkpointing (non-reentrant), the chunked CE of --loss_chunk_size (0: full logits), fused AdamW,
`--grad_accum` micro-batches per step, two optimizer steps; the peak is measured on the second step (AdamW
state and accumulated gradients alive, as in a long run).
Measured: torch.cuda.max_memory_allocated (compared with the planner's `torch_allocated`), and the device
total as NVML sees it (sampled every 5 ms, and reconstructed as peak reserved + the context measured before
the run), compared with the planner's `total`.  Prints one row per config and the error %; exits 1 when
fewer than `--min_within` configs are within 10% on torch allocated.

Fast engine rows (`--token_budgets`, `--checkpoint_plans`): the trainer's own code path (sftbench.train.engines.
make_engine + sftbench.train.step.train_step, so CUDA graphs on varlen, on rows packed by
sftbench.data.packing, fused AdamW, compiled, bf16), random conversations of up to `--fast_max_length` tokens; peak of the last of `--fast_steps`
steps, and real tokens/s over the steps after the first (compilation).  Printed next to the planner's
estimate_fast_peak_gib (NVML) and fast_tokens_per_second, with error %.  `--checkpoint_plans` entries are a
number of checkpointed layers or `auto` (the trainer's choice for --vram_target_gib on this card).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3


def random_model(dims):
    """A randomly initialised fp32 LlamaForCausalLM of the given shape (memory does not depend on the weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=dims.vocab, hidden_size=dims.hidden, intermediate_size=dims.intermediate,
                      num_hidden_layers=dims.layers, num_attention_heads=dims.heads, num_key_value_heads=dims.kv_heads,
                      head_dim=dims.hd, max_position_embeddings=max(dims.max_position_embeddings or 0, 8192),
                      tie_word_embeddings=dims.tie_word_embeddings, use_cache=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(torch.float32)


def trainer(model, device, total_steps: int, checkpoint_layers: int | None = None, **flags):
    """The trainer's own pieces for `flags` (sftbench.train.step / engines, what train() runs): the model prepared
    (HF checkpointing, on the device), bf16 autocast (fp16 with a gradient scaler where the GPU has no bf16),
    the engine, AdamW (fused on CUDA) and the schedule.  Returns (cfg, engine, optimizer, scheduler)."""
    import torch

    from sftbench.config.train import TrainConfig
    from sftbench.core.cli import config_from_flat
    from sftbench.train.dist import Dist
    from sftbench.train.engines import make_engine
    from sftbench.train.step import optimizer_and_schedule, precision_and_scaler, prepare_model

    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    cfg = config_from_flat(TrainConfig, {"precision": precision, "learning_rate": 1e-5, "weight_decay": 0.0,
                                         "lr_scheduler_type": "constant", **flags})
    prepare_model(model, cfg, device)
    prec, scaler = precision_and_scaler(cfg, device)
    engine = make_engine(model, cfg, device, Dist(), prec, scaler, pad_id=0, explicit=True,
                         checkpoint_layers=checkpoint_layers)
    opt, sched = optimizer_and_schedule(model, cfg, device, total_steps)
    return cfg, engine, opt, sched


def measure(spec, device, steps: int = 2) -> dict:
    """Run `steps` optimizer steps of the trainer's reference engine (sftbench.train.step.train_step: padded
    micro-batches through CausalLMLossSum, --loss_chunk_size, AdamW, clipping); peak of the last one."""
    import torch

    from sftbench.core.memory import MemoryMonitor
    from sftbench.train.step import add_lora, target_count, train_step

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    mon = MemoryMonitor(device_index=device.index or 0, interval_s=0.005)
    base_used = mon.sample()
    context = None if base_used is None else base_used - torch.cuda.memory_reserved(device)
    flags = dict(engine="reference", method=spec.method, lora_rank=spec.lora_rank,
                 gradient_checkpointing=spec.gradient_checkpointing,
                 loss_chunk_size=spec.ce_chunk_size if spec.chunked_ce else 0,
                 per_device_train_batch_size=spec.micro_batch, gradient_accumulation_steps=spec.grad_accum,
                 model_max_length=spec.max_length)
    model = random_model(spec.dims)
    if spec.method == "lora":
        from sftbench.config.train import TrainConfig
        from sftbench.core.cli import config_from_flat

        if spec.lora_base_dtype == "bf16":  # the planner's option of a bf16 frozen base (the trainer keeps fp32)
            model = model.to(torch.bfloat16)
        model = add_lora(model, config_from_flat(TrainConfig, {"lora_rank": spec.lora_rank}))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    cfg, engine, opt, sched = trainer(model, device, steps, **flags)
    g = torch.Generator(device="cpu").manual_seed(0)
    t0 = time.time()
    for step in range(steps):
        if step == steps - 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            mon.samples.clear()
            mon.start()
        micro = []
        for _ in range(spec.grad_accum):
            ids = torch.randint(3, spec.dims.vocab, (spec.micro_batch, spec.max_length), generator=g).tolist()
            micro.append([{"input_ids": x, "labels": x} for x in ids])  # every token a target: the worst case
        n_window = sum(target_count(e) for mb in micro for e in mb)
        train_step(engine, opt, sched, micro, n_window, step, cfg.max_grad_norm)
    torch.cuda.synchronize()
    mon.stop()
    out = {"torch_peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
           "torch_peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
           "nvml_sampled_peak_gib": None if mon.peak_bytes() is None else mon.peak_bytes() / GIB,
           "context_gib": None if context is None else context / GIB, "wall_s": time.time() - t0}
    out["nvml_reconstructed_gib"] = None if context is None else out["torch_peak_reserved_gib"] + out["context_gib"]
    del model, opt, engine
    gc.collect()
    torch.cuda.empty_cache()
    return out


def measure_fast(dims, token_budget: int, ckpt_layers: int, device, steps: int, max_len: int) -> dict:
    """Run the trainer's fast-engine step `steps` times on random packed rows; peak of the last, tokens/s after the first."""
    import torch

    from sftbench.core.memory import MemoryMonitor
    from sftbench.train.step import train_step

    gc.collect()
    torch.cuda.empty_cache()
    mon = MemoryMonitor(device_index=device.index or 0, interval_s=0.005)
    # The trainer's own engine (sftbench.train.engines.FastEngine: CUDA graphs on varlen) and step, one row per step.
    cfg, engine, opt, sched = trainer(random_model(dims), device, steps, checkpoint_layers=ckpt_layers, engine="fast",
                                      token_budget=token_budget, loss_chunk_size=1024, fuse_projections=True,
                                      model_max_length=max_len, cuda_graphs=True)
    model = engine.model
    g = torch.Generator().manual_seed(0)
    real, t_start = 0, None
    for step in range(steps):
        if step == steps - 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            mon.samples.clear()
            mon.start()
        if step == 1:
            torch.cuda.synchronize()
            t_start, real = time.time(), 0
        exs, used = [], 0
        while True:  # fill the row with conversations of random length, as packing does
            n = int(torch.randint(max_len // 4, max_len + 1, (1,), generator=g))
            if used + n > token_budget:
                break
            ids = torch.randint(3, dims.vocab, (n,), generator=g).tolist()
            exs.append({"input_ids": ids, "labels": ids})
            used += n
        n_t = sum(len(e["input_ids"]) - 1 for e in exs)
        real += train_step(engine, opt, sched, [exs], n_t, step, cfg.max_grad_norm).real_tokens
    torch.cuda.synchronize()
    mon.stop()
    out = {"torch_peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
           "nvml_sampled_peak_gib": None if mon.peak_bytes() is None else mon.peak_bytes() / GIB,
           "tokens_per_s": real / max(time.time() - t_start, 1e-9)}
    del model, opt, engine
    gc.collect()
    torch.cuda.empty_cache()
    return out


def fast_rows(a, dims, device) -> list[dict]:
    """Predicted vs measured for each token budget x checkpoint plan."""
    import torch

    from sftbench.plan.fast import FastSpec, estimate_fast_peak_gib, trainer_checkpoint_layers
    from sftbench.plan.throughput import fast_tokens_per_second, get_gpu

    props = torch.cuda.get_device_properties(device)
    total = props.total_memory / GIB
    try:
        gpu = get_gpu(a.gpu_key) if a.gpu_key else None
    except Exception:
        gpu = None
    print(f"\nfast engine (planner's GPU entry: {gpu.key if gpu else 'none: give --gpu_key for tokens/s'})")
    print(f"{'budget':>7s} {'ckpt':>5s} | {'pred torch':>10s} {'meas torch':>10s} {'err%':>6s} | {'pred NVML':>9s} "
          f"{'meas NVML':>9s} {'err%':>6s} | {'pred tok/s':>10s} {'meas tok/s':>10s} {'err%':>6s}")
    rows = []
    for budget in a.token_budgets:
        for plan in a.checkpoint_plans:
            spec = FastSpec(dims=dims, token_budget=budget, vram_target_gib=a.vram_target_gib)
            k = trainer_checkpoint_layers(spec, total) if plan == "auto" else int(plan)
            b = estimate_fast_peak_gib(spec, k)
            try:
                m = measure_fast(dims, budget, k, device, a.fast_steps, a.fast_max_length)
            except torch.cuda.OutOfMemoryError:
                print(f"{budget:7d} {k:5d}  OOM (predicted {b.total:.2f} GiB)")
                gc.collect()
                torch.cuda.empty_cache()
                continue
            pt = fast_tokens_per_second(gpu, budget, k, dims.layers) if gpu else float("nan")
            nv = m["nvml_sampled_peak_gib"] or float("nan")
            e_a = 100 * (b.torch_allocated - m["torch_peak_allocated_gib"]) / m["torch_peak_allocated_gib"]
            e_n = 100 * (b.total - nv) / nv
            e_t = 100 * (pt - m["tokens_per_s"]) / m["tokens_per_s"]
            print(f"{budget:7d} {k:5d} | {b.torch_allocated:10.3f} {m['torch_peak_allocated_gib']:10.3f} {e_a:+6.1f} | "
                  f"{b.total:9.3f} {nv:9.3f} {e_n:+6.1f} | {pt:10,.0f} {m['tokens_per_s']:10,.0f} {e_t:+6.1f}", flush=True)
            rows.append({"engine": "fast", "token_budget": budget, "checkpoint_layers": k, "predicted": b.as_dict(),
                         "predicted_tokens_per_s": pt, "measured": m, "err_alloc_pct": e_a, "err_nvml_pct": e_n,
                         "err_tokens_per_s_pct": e_t})
    ok = [r for r in rows if abs(r["err_nvml_pct"]) <= 10 and abs(r["err_tokens_per_s_pct"]) <= 25]
    print(f"fast engine: {len(ok)}/{len(rows)} rows within 10% (NVML) and 25% (tokens/s)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct-offline", help="Config to instantiate (local dir, hub id, built-in name).")
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048], help="max_length values.")
    ap.add_argument("--micro_batches", type=int, nargs="+", default=[1, 4], help="micro-batch values.")
    ap.add_argument("--grad_accum", type=int, default=2, help="Micro-batches per optimizer step (>1: gradients alive during forwards).")
    ap.add_argument("--loss_chunk_size", type=int, default=1024, help="Chunked CE rows (0 = full logits).")
    ap.add_argument("--lora_rank", type=int, default=16, help="Rank for the LoRA configs.")
    ap.add_argument("--no_lora", action="store_true", help="Skip the LoRA configs (e.g. without peft).")
    ap.add_argument("--extra_full_ce", action="store_true", help="Also run full-logits CE variants.")
    ap.add_argument("--min_within", type=int, default=6, help="Exit 1 unless at least this many configs are within 10%%.")
    ap.add_argument("--out", default=None, help="Also write the rows as JSON here.")
    ap.add_argument("--token_budgets", type=int, nargs="*", default=[8192, 16384, 32768],
                    help="Fast engine rows: packed tokens per micro-batch (none: skip the fast engine).")
    ap.add_argument("--checkpoint_plans", nargs="+", default=["auto", "30", "20"],
                    help="Fast engine rows: checkpointed layers, or `auto` (the trainer's choice).")
    ap.add_argument("--vram_target_gib", type=float, default=6.0, help="The trainer's --vram_target_gib for `auto`.")
    ap.add_argument("--fast_steps", type=int, default=6, help="Fast engine steps per row (the first compiles).")
    ap.add_argument("--fast_max_length", type=int, default=1024, help="Longest random conversation in a packed row.")
    ap.add_argument("--gpu_key", default=None, help="The planner's key for this GPU (h100, h200, ...) for predicted tokens/s; "
                                                    "default: guessed from the device name.")
    ap.add_argument("--skip_reference", action="store_true", help="Only the fast engine rows.")
    a = ap.parse_args(argv)

    import torch

    from sftbench.plan import PlanSpec, estimate_peak_gib, load_model_dims

    if not torch.cuda.is_available():
        print("bench_plan.py: error: needs a CUDA GPU (it measures device memory).", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    dims = load_model_dims(a.model)
    if a.gpu_key is None:
        name = torch.cuda.get_device_name(device).lower()
        a.gpu_key = next((k for k in ("h200", "h100", "a100", "l4", "t4", "4090", "3090", "a10g") if k in name), None)
    fast = fast_rows(a, dims, device) if a.token_budgets else []
    if a.skip_reference:
        if a.out:
            from sftbench.core.io import atomic_write_json

            atomic_write_json(a.out, {"gpu": torch.cuda.get_device_name(device), "rows": fast})
        return 0
    base = PlanSpec(dims=dims, grad_accum=a.grad_accum, chunked_ce=a.loss_chunk_size > 0,
                    ce_chunk_size=a.loss_chunk_size or 1024,
                    precision="bf16" if torch.cuda.is_bf16_supported() else "fp16")
    specs = []
    for L in a.lengths:
        for mb in a.micro_batches:
            for ck in (True, False):
                specs.append(replace(base, max_length=L, micro_batch=mb, gradient_checkpointing=ck))
    if a.extra_full_ce:
        specs += [replace(s, chunked_ce=False) for s in list(specs)]
    if not a.no_lora:
        for L in a.lengths[:2]:
            for ck in (True, False):
                specs.append(replace(base, method="lora", lora_rank=a.lora_rank, max_length=L, micro_batch=1, gradient_checkpointing=ck))
    print(f"GPU: {torch.cuda.get_device_name(device)}; model {dims.name}; torch {torch.__version__}")
    hdr = (f"{'method':6s} {'len':>5s} {'mb':>3s} {'ckpt':>4s} {'ce':>7s} | {'pred alloc':>10s} {'meas alloc':>10s} {'err%':>6s} | "
           f"{'pred NVML':>9s} {'meas NVML':>9s} {'err%':>6s} | phase")
    print(hdr)
    rows, within = [], 0
    for s in specs:
        b = estimate_peak_gib(s)
        try:
            m = measure(s, device)
        except torch.cuda.OutOfMemoryError:
            print(f"{s.method:6s} {s.max_length:5d} {s.micro_batch:3d} {str(s.gradient_checkpointing)[0]:>4s}  OOM (predicted {b.total:.2f} GiB)")
            gc.collect()
            torch.cuda.empty_cache()
            continue
        err_a = 100 * (b.torch_allocated - m["torch_peak_allocated_gib"]) / m["torch_peak_allocated_gib"]
        nv = m["nvml_sampled_peak_gib"] or m["nvml_reconstructed_gib"]
        if m["nvml_reconstructed_gib"] and nv is not None:
            nv = max(nv, m["nvml_reconstructed_gib"])
        err_n = None if nv is None else 100 * (b.total - nv) / nv
        within += abs(err_a) <= 10
        ce = f"ch{s.ce_chunk_size}" if s.chunked_ce else "full"
        print(f"{s.method:6s} {s.max_length:5d} {s.micro_batch:3d} {str(s.gradient_checkpointing)[0]:>4s} {ce:>7s} | "
              f"{b.torch_allocated:10.3f} {m['torch_peak_allocated_gib']:10.3f} {err_a:+6.1f} | "
              f"{b.total:9.3f} {nv if nv is not None else float('nan'):9.3f} "
              f"{err_n if err_n is not None else float('nan'):+6.1f} | {b.phase}", flush=True)
        rows.append({"method": s.method, "max_length": s.max_length, "micro_batch": s.micro_batch,
                     "gradient_checkpointing": s.gradient_checkpointing, "chunked_ce": s.chunked_ce,
                     "ce_chunk_size": s.ce_chunk_size, "grad_accum": s.grad_accum, "predicted": b.as_dict(),
                     "measured": m, "err_alloc_pct": err_a, "err_nvml_pct": err_n})
    print(f"{within}/{len(rows)} configs within 10% (torch allocated); mean |err| "
          f"{sum(abs(r['err_alloc_pct']) for r in rows) / max(len(rows), 1):.1f}%")
    if a.out:
        from sftbench.core.io import atomic_write_json

        atomic_write_json(a.out, {"gpu": torch.cuda.get_device_name(device), "rows": rows + fast})
    return 0 if within >= a.min_within else 1


if __name__ == "__main__":
    sys.exit(main())
