#!/usr/bin/env bash
# Fallback when even strategy A runs out of memory: length 512, effective batch 32 (micro-batch 1 x accumulation 32), max_rounds 4.
#   bash scripts/sft_min_vram.sh [MODEL [DATA [OUT]]] [--flag value ...]
# Measured speed and memory of the presets as shipped, and the planner against measurements at length 512:
# docs/gpu_results.md. Plan this preset: python -m sftbench.plan --model_max_length 512 --gradient_accumulation_steps 32
# For the fast engine lower the packed micro-batch too, e.g. --token_budget 8192 --vram_target_gib 5.
# The flags: sftbench/presets.py (PRESETS["min_vram"], shared with `sftbench train --preset min_vram`); everything
# else is TrainConfig's default (python train_hw_parallel.py --help).
PRESET=min_vram
. "$(dirname "$0")/_preset.sh"
