"""`python -m sftbench.plan`: parse the trainer's flags + PlanConfig, print the plan (tables or JSON)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace

from sftbench.core.errors import UserError, exit_with_user_error
from sftbench.core.gpus import EXTRA_GPUS, GPU, GPUS, PRICES, PRICES_AS_OF, get_gpu, training_precision
from sftbench.plan.config import PROG, PlanConfig, parse
from sftbench.plan.data import DataSize, measure_data
from sftbench.plan.dims import load_model_dims
from sftbench.plan.fast import DEFAULT_GPU_TOKEN_BUDGET, FastSpec
from sftbench.plan.memory import PlanSpec, estimate_peak_gib, spec_from_train_config
from sftbench.plan.report import format_fast, format_reference, optimizer_steps, plan_rows, resolve_engine, rows_json
from sftbench.plan.throughput import REFERENCE_GPU, reference_throughput


def specs_from_configs(tc, pc: PlanConfig) -> tuple[PlanSpec, FastSpec]:
    """The reference engine's PlanSpec and the fast engine's FastSpec of a training config."""
    dims = load_model_dims(tc.model_name_or_path)
    precision = training_precision(True) if pc.precision == "auto" else pc.precision  # bf16 = fp16 in memory
    spec = replace(spec_from_train_config(tc, dims), precision=precision, lora_base_dtype=pc.lora_base_dtype,
                   optimizer=pc.optimizer).validate()
    budget = tc.token_budget or DEFAULT_GPU_TOKEN_BUDGET
    if budget < tc.model_max_length:
        raise UserError(f"--token_budget {budget} is smaller than --model_max_length {tc.model_max_length}: "
                        f"a conversation must fit in one packed micro-batch (the trainer refuses it too).")
    fast = FastSpec(dims=dims, token_budget=budget, ce_chunk_size=tc.loss_chunk_size or 1024,
                    vram_target_gib=tc.vram_target_gib, memory_cap_gib=tc.memory_cap_gib,
                    checkpoint_layers=pc.checkpoint_layers)
    return spec, fast


def _gpus_and_prices(pc: PlanConfig) -> tuple[list[GPU], dict]:
    gpus = [get_gpu(k) for k in pc.gpu.split(",") if k.strip()] if pc.gpu else list(GPUS)
    if pc.gpu_mem_gib:
        h = get_gpu(REFERENCE_GPU)
        gpus.append(GPU("custom", f"custom {pc.gpu_mem_gib:g} GiB", pc.gpu_mem_gib, h.tflops, True, "--gpu_mem_gib",
                        h.mem_bw_gbs))
    prices = dict(PRICES)
    for item in pc.price:
        k, _, v = item.partition("=")
        try:
            prices[get_gpu(k).key] = float(v)
        except ValueError:
            raise UserError(f"--price {item}: expected KEY=USD_PER_HOUR, e.g. --price h100=2.10.") from None
    return gpus, prices


def _header(spec: PlanSpec, fast: FastSpec, data: DataSize, tc, pc: PlanConfig, steps: int, ref) -> list[str]:
    d, b = spec.dims, estimate_peak_gib(spec)
    meth = (f"LoRA r={spec.lora_rank} ({b.trainable_params / 1e6:.2f}M trainable, base {spec.lora_base_dtype})"
            if spec.method == "lora" else "full fine-tuning")
    window = spec.micro_batch * spec.grad_accum * pc.num_gpus
    out = [f"Model {d.name}: {b.total_params / 1e6:.1f}M parameters (hidden {d.hidden}, intermediate {d.intermediate}, "
           f"{d.layers} layers, {d.heads} heads / {d.kv_heads} KV heads, vocab {d.vocab}, "
           f"{'tied' if d.tie_word_embeddings else 'untied'} embeddings)",
           f"Run: {meth}, {pc.precision if pc.precision != 'auto' else 'bf16 (fp16 without bf16)'} autocast over fp32 "
           f"masters, model_max_length {spec.max_length}, micro-batch {spec.micro_batch} x accumulation {spec.grad_accum}"
           + (f" x {pc.num_gpus} GPUs" if pc.num_gpus > 1 else "") + f", --engine {tc.engine}",
           f"Data: {data.source}; effective batch {window}; {data.examples // window} optimizer steps per epoch x "
           f"{tc.num_train_epochs:g} epochs = {steps} optimizer steps"]
    if data.examples < window:
        out.append(f"  WARNING: fewer examples ({data.examples}) than one effective batch ({window}): the trainer will "
                   f"refuse; lower --gradient_accumulation_steps.")
    out.append(f"Reference engine's throughput scaled from {ref[0]:,.0f} tokens/s on an H100 at micro-batch {ref[1]} "
               f"({ref[2]}); fast engine's from measured runs (sftbench/plan/throughput.py); prices as of "
               f"{PRICES_AS_OF} (sftbench/core/gpus.py, --price KEY=USD)")
    return out


def format_plan(spec: PlanSpec, fast: FastSpec, data: DataSize, tc, pc: PlanConfig, gpus, ref, prices) -> str:
    engines = ["reference", "fast"] if pc.both_engines else [resolve_engine(tc.engine, spec.method)]
    steps = optimizer_steps(spec, data, tc.num_train_epochs, pc.num_gpus)
    out = _header(spec, fast, data, tc, pc, steps, ref)
    for e in engines:
        _, rows = plan_rows(spec, data, tc.num_train_epochs, pc.num_gpus, gpus, ref, prices, engine=e, fast=fast)
        out.append("")
        out += format_fast(spec, fast, rows) if e == "fast" else format_reference(spec, rows)
    out.append("")
    out.append("Estimates: reference engine worst-case padding; time assumes every conversation at the average length. "
               "Check with scripts/bench_plan.py on a GPU (predicted vs measured).")
    return "\n".join(out)


def plan_json(spec: PlanSpec, fast: FastSpec, data: DataSize, tc, pc: PlanConfig, gpus, ref, prices) -> dict:
    engines = ["reference", "fast"] if pc.both_engines else [resolve_engine(tc.engine, spec.method)]
    steps = optimizer_steps(spec, data, tc.num_train_epochs, pc.num_gpus)
    rows = []
    for e in engines:
        rows += rows_json(plan_rows(spec, data, tc.num_train_epochs, pc.num_gpus, gpus, ref, prices, engine=e,
                                    fast=fast)[1])
    return {"spec": {k: v for k, v in asdict(spec).items() if k != "dims"}, "model": asdict(spec.dims),
            "fast": {k: v for k, v in asdict(fast).items() if k != "dims"}, "engines": engines,
            "breakdown_gib": estimate_peak_gib(spec).as_dict(), "examples": data.examples,
            "avg_tokens": data.avg_tokens, "optimizer_steps": steps, "prices_as_of": PRICES_AS_OF, "gpus": rows}


def main(argv: list[str] | None = None) -> int:
    tc, pc = parse(argv)
    try:
        spec, fast = specs_from_configs(tc, pc)
        if pc.num_gpus < 1:
            raise UserError(f"--num_gpus must be >= 1 (got {pc.num_gpus}).")
        if tc.num_train_epochs <= 0:
            raise UserError(f"--num_train_epochs must be > 0 (got {tc.num_train_epochs}).")
        if tc.engine == "fast" and tc.method == "lora":
            raise UserError("--engine fast trains full weights only (as in the trainer); use --engine reference with --method lora.")
        data = measure_data(tc.data_path, pc.avg_tokens)
        gpus, prices = _gpus_and_prices(pc)
        ref = (pc.tokens_per_s, 1, "--tokens_per_s") if pc.tokens_per_s else reference_throughput()
        if pc.json:
            print(json.dumps(plan_json(spec, fast, data, tc, pc, gpus, ref, prices), indent=2))
        else:
            print(format_plan(spec, fast, data, tc, pc, gpus, ref, prices))
    except UserError as e:
        exit_with_user_error(e, PROG)
    return 0
