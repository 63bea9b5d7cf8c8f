#!/usr/bin/env bash
# Strategy A for an 8 GB laptop GPU (RTX 4060): effective batch 64 (micro-batch 1 x accumulation 64),
# lr 4e-5, 5 epochs, warmup 0.2, length 1024, gradient checkpointing, mixed precision, max_rounds 6,
# a checkpoint every 20 optimizer steps, a log row every step.
#   bash scripts/sft_4060_8gb.sh [MODEL [DATA [OUT]]] [--flag value ...]     (or MODEL=... DATA=... OUT=... env vars)
# Measured peak VRAM: see the "measured" line below (filled from the GPU box run).
# measured: (not yet measured)
ACCUM=64
PRESET=(--num_train_epochs 5 --learning_rate 4e-5 --warmup_ratio 0.2 --model_max_length 1024
        --gradient_checkpointing True --max_rounds 6 --save_steps 20 --logging_steps 1 --save_total_limit 2)
. "$(dirname "$0")/_preset.sh"
