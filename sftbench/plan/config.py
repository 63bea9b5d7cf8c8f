"""The plan stage's settings: the trainer's own fields (names and defaults from TrainConfig) plus PlanConfig.

The planner plans a training command, so it takes the trainer's flags (`--model_max_length`,
`--per_device_train_batch_size`, `--gradient_accumulation_steps`, `--engine`, `--token_budget`, ...) with the
trainer's defaults, read from sftbench.config.train.TrainConfig: a training command line can be pasted in.
Options that only make sense for a plan (which GPUs, prices, JSON) live in PlanConfig.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from sftbench.core.cli import ArgumentParser, add_config_arguments, config_from_namespace, flat_fields, setting
from sftbench.core.gpus import GPUS, PRICES_AS_OF
from sftbench.config.train import TrainConfig

PROG = "python -m sftbench.plan"

# The trainer's settings a plan depends on (everything else in TrainConfig does not change memory or time).
TRAIN_FIELDS = ("model_name_or_path", "data_path", "model_max_length", "per_device_train_batch_size",
                "gradient_accumulation_steps", "num_train_epochs", "method", "lora_rank", "gradient_checkpointing",
                "loss_chunk_size", "engine", "token_budget", "vram_target_gib", "memory_cap_gib")


@dataclass
class PlanConfig:
    avg_tokens: Optional[float] = setting(
        None, "Average tokens per conversation (overrides the chars/4 estimate; default 512 when --data_path is a number).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = setting(
        "auto", "Autocast dtype; auto = bf16 where the GPU has it, else fp16 (same memory; T4/P100).")
    lora_base_dtype: Literal["fp32", "bf16"] = setting("fp32", "Dtype of the frozen base weights under LoRA.")
    optimizer: Literal["fused", "foreach"] = setting(
        "fused", "Reference engine's AdamW: fused (the trainer on CUDA) or foreach (one more param-sized buffer).")
    both_engines: bool = setting(False, "Show the reference and the fast engine, one after the other.")
    checkpoint_layers: Optional[int] = setting(
        None, "Fast engine: plan this many checkpointed layers instead of the trainer's choice (for checks).")
    gpu: Optional[str] = setting(None, f"Only these GPUs (comma-separated keys: {', '.join(g.key for g in GPUS)}, h200). "
                                       "Default: all in the table.")
    gpu_mem_gib: Optional[float] = setting(None, "Also plan for a custom card with this much memory (GiB).")
    num_gpus: int = setting(1, "Data-parallel GPUs (e.g. 2 for Kaggle's T4 x2): divides steps and time.")
    tokens_per_s: Optional[float] = setting(
        None, "Reference engine: measured training tokens/s to scale the time estimates from (default: the "
              "calibration in docs/bench_train.md's `plan:` line, else the planner's built-in one).")
    price: list = setting([], f"Override a GPU-hour price (table dated {PRICES_AS_OF}); repeatable.", cli=False)
    json: bool = setting(False, "Print the plan as JSON instead of tables.")


def build_parser() -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """(parser, TrainConfig names on it, PlanConfig names on it)."""
    p = ArgumentParser(
        prog=PROG,
        description="Plan a fine-tuning run: predicted peak VRAM by part, which GPUs it fits, optimizer steps, and "
        "time and cost per GPU, for the engine the trainer will run (--engine auto: the fast engine on a CUDA GPU "
        "for full fine-tuning, the reference engine for LoRA).  Takes the trainer's flags and defaults.  'total' is "
        "device memory as NVML / nvidia-smi report it (torch's peak + allocator slack + CUDA context).")
    g = p.add_argument_group("training run (the trainer's flags and defaults)")
    leaves = flat_fields(TrainConfig)  # the trainer's flat flag names, sub-configs walked
    train_names = add_config_arguments(g, TrainConfig, skip=[n for n in leaves if n not in TRAIN_FIELDS])
    q = p.add_argument_group("plan")
    plan_names = add_config_arguments(q, PlanConfig)
    q.add_argument("--price", action="append", default=[], metavar="KEY=USD_PER_HOUR",
                   help=dataclasses.fields(PlanConfig)[[f.name for f in dataclasses.fields(PlanConfig)].index("price")]
                   .metadata["help"])
    return p, train_names, plan_names + ["price"]


def parse(argv: list[str] | None = None) -> tuple[TrainConfig, PlanConfig]:
    p, train_names, plan_names = build_parser()
    ns = p.parse_args(argv)
    return config_from_namespace(TrainConfig, ns, train_names), config_from_namespace(PlanConfig, ns, plan_names)
