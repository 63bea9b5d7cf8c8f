#!/usr/bin/env bash
# Plan a run before starting it: peak VRAM by part, which GPUs it fits, steps, time and cost.
#   bash scripts/plan.sh --model HuggingFaceTB/SmolLM2-135M --max_length 1024 --micro_batch 1 --grad_accum 64 \
#        --data sftbench/data/demo_chat.jsonl --epochs 5 [--method lora] [--gpu 4060-8gb,t4]
# `bash scripts/plan.sh --help` explains every flag.  Works offline.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec "$PYTHON" -m sftbench.plan "$@"
