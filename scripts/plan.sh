#!/usr/bin/env bash
# Plan a run before starting it: peak VRAM by part, which GPUs it fits, steps, time and cost.
#   bash scripts/plan.sh --model_name_or_path HuggingFaceTB/SmolLM2-135M --model_max_length 1024 \
#        --per_device_train_batch_size 1 --gradient_accumulation_steps 64 --data_path sftbench/data/demo_chat.jsonl \
#        --num_train_epochs 5 [--method lora] [--gpu 4060-8gb,t4]
# (the trainer's flag names: a training command line can be pasted in)
# `bash scripts/plan.sh --help` explains every flag.  Works offline.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec "$PYTHON" -m sftbench.plan "$@"
