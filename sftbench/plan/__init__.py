"""Plan a fine-tuning run before starting it: peak VRAM, which GPUs fit, steps, time and cost, per engine.

    python -m sftbench.plan --model_name_or_path HuggingFaceTB/SmolLM2-135M --model_max_length 1024 \
        --per_device_train_batch_size 1 --gradient_accumulation_steps 64 --data_path sftbench/data/demo_chat.jsonl \
        --num_train_epochs 5 [--method lora] [--gpu t4] [--both_engines]

Homes: dims.py (model shapes), memory.py (reference engine's memory, fits, auto batch, OOM advice),
fast.py (fast engine's memory and the trainer's checkpoint choice), throughput.py (tokens/s per GPU, both
engines), data.py (conversations and tokens in a chat file), report.py (rows, tables, JSON per engine),
config.py (the CLI: the trainer's fields + PlanConfig), cli.py (main).

API for the trainer: `estimate_peak_gib(spec) -> Breakdown`, `pick_auto_batch(spec, gpu_mem_gib,
effective_batch) -> (micro_batch, grad_accum)`, `oom_advice(spec, gpu_mem_gib) -> str`,
`oom_advice_for_config(train_config)`, `spec_from_train_config(train_config)`.
"""

from sftbench.plan.data import DataSize, measure_data
from sftbench.plan.dims import BUILTIN_MODELS, SMOLLM2_135M, ModelDims, dims_from_config, load_model_dims
from sftbench.plan.fast import FastSpec, estimate_fast_peak_gib, fast_plan_for_gpu, trainer_checkpoint_layers
from sftbench.plan.memory import (GIB, Breakdown, PlanSpec, estimate_peak_gib, fits, layer_activation_bytes,
                                  max_length_that_fits, max_micro_batch, oom_advice, oom_advice_for_config,
                                  pick_auto_batch, spec_from_train_config)
from sftbench.plan.report import GpuRow, plan_rows
from sftbench.plan.throughput import fast_tokens_per_second, reference_throughput, tokens_per_second


def main(argv=None) -> int:
    from sftbench.plan.cli import main as _main

    return _main(argv)


__all__ = ["GIB", "SMOLLM2_135M", "BUILTIN_MODELS", "Breakdown", "DataSize", "FastSpec", "GpuRow", "ModelDims",
           "PlanSpec", "dims_from_config", "estimate_fast_peak_gib", "estimate_peak_gib", "fast_plan_for_gpu",
           "fast_tokens_per_second", "fits", "layer_activation_bytes", "load_model_dims", "main",
           "max_length_that_fits", "max_micro_batch", "measure_data", "oom_advice", "oom_advice_for_config",
           "pick_auto_batch", "plan_rows", "reference_throughput", "spec_from_train_config", "tokens_per_second",
           "trainer_checkpoint_layers"]
