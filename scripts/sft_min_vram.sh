#!/usr/bin/env bash
# Fallback when even strategy A runs out of memory: length 512, effective batch 32 (micro-batch 1 x accumulation 32), max_rounds 4.
#   bash scripts/sft_min_vram.sh [MODEL [DATA [OUT]]] [--flag value ...]
# Measured as shipped (fast engine, same setting as sft_4060_aggressive.sh's figures): first step 14.9 s, 112k real
# tokens/s, peak torch 3.16 GiB, NVML 5.14 GiB. With --engine reference the planner predicts ~2.6 GiB torch / ~3.9 GiB
# NVML at length 512, micro-batch 1, checkpointing (measured by scripts/bench_plan.py: 2.64 / 4.12 GiB).
# For the fast engine lower the packed micro-batch too, e.g. --token_budget 8192 --vram_target_gib 5.
# The flags: sftbench/presets.py (PRESETS["min_vram"], shared with `sftbench train --preset min_vram`); everything
# else is TrainConfig's default (python train_hw_parallel.py --help).
PRESET=min_vram
. "$(dirname "$0")/_preset.sh"
