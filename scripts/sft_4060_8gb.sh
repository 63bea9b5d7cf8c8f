#!/usr/bin/env bash
# Strategy A for an 8 GB laptop GPU (RTX 4060): effective batch 64 (micro-batch 1 x accumulation 64),
# lr 4e-5, 5 epochs, warmup 0.2, length 1024, gradient checkpointing, mixed precision, max_rounds 6,
# a checkpoint every 20 optimizer steps, a log row every step.
#   bash scripts/sft_4060_8gb.sh [MODEL [DATA [OUT]]] [--flag value ...]     (or MODEL=... DATA=... OUT=... env vars;
#   unset MODEL / DATA: TrainConfig's defaults; NPROC=N: N GPUs through accelerate, same effective batch)
# Engine: auto = the fast engine on a CUDA GPU (packed 16384-token micro-batches, layers checkpointed to stay
# under --vram_target_gib 6), the reference engine on CPU.
# Measured speed and memory of the presets as shipped: docs/gpu_results.md (GPU, date and command beside each).
# The flags: sftbench/presets.py (PRESETS["4060_8gb"], shared with `sftbench train --preset 4060_8gb`); everything
# else is TrainConfig's default (python train_hw_parallel.py --help).
PRESET=4060_8gb
. "$(dirname "$0")/_preset.sh"
