#!/usr/bin/env bash
# Strategy B: effective batch 48 (micro-batch 1 x accumulation 48), lr 6e-5, 6 epochs, length 768, max_rounds 8, weight decay 0.02.
#   bash scripts/sft_4060_aggressive.sh [MODEL [DATA [OUT]]] [--flag value ...]
# Measured speed and memory of the presets as shipped: docs/gpu_results.md (GPU, date and command beside each).
# Plan: python -m sftbench.plan --model_max_length 768 --gradient_accumulation_steps 48
# The flags: sftbench/presets.py (PRESETS["4060_aggressive"], shared with `sftbench train --preset 4060_aggressive`); everything
# else is TrainConfig's default (python train_hw_parallel.py --help).
PRESET=4060_aggressive
. "$(dirname "$0")/_preset.sh"
