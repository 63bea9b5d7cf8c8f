#!/usr/bin/env bash
# Strategy B: effective batch 48, lr 6e-5, 6 epochs, length 768, max_rounds 8, weight decay 0.02.
#   bash scripts/sft_4060_aggressive.sh [MODEL [DATA [OUT]]] [--flag value ...]
# Not measured on its own on the GPU box (same engine as sft_4060_8gb.sh; its token budget, not the length,
# sets the fast engine's memory: expect the sft_4060_8gb.sh figures). Plan: python -m sftbench.plan --max_length 768 --grad_accum 48
ACCUM=48
PRESET=(--num_train_epochs 6 --learning_rate 6e-5 --warmup_ratio 0.2 --model_max_length 768 --weight_decay 0.02
        --gradient_checkpointing True --max_rounds 8 --save_steps 20 --logging_steps 1 --save_total_limit 2)
. "$(dirname "$0")/_preset.sh"
